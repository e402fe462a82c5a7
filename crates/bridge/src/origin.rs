//! Loop rules. Two clusters may exchange the same topic tree both ways, and a node may have a
//! sink and a source on the same Kafka topic: no event may circle.
//!
//! - A sink stamps every record it writes with the [`ORIGIN_HEADER`] (the node and the member
//!   the event came from); a source never consumes a record that carries it back into the mesh.
//! - A sink never writes an event into the member it came from (its provenance says which).

use meshgate_proto::Envelope;

/// Header on every record a sink writes: `NODE/PROTOCOL/MEMBER` of the event's way in.
pub const ORIGIN_HEADER: &str = "meshgate-origin";

/// Header on events republished by a replay, so subscribers can tell history from live data.
pub const REPLAY_HEADER: &str = "meshgate-replay";

/// Whether a record with these header names was written by a meshgate sink.
pub fn came_from_mesh<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|n| n == ORIGIN_HEADER)
}

/// Whether `event` entered the mesh from member `member` of `protocol` (so a sink into that
/// member must not write it back).
pub fn is_from(event: &Envelope, protocol: &str, member: &str) -> bool {
    event
        .provenance
        .as_ref()
        .is_some_and(|p| p.protocol == protocol && p.member == member)
}

/// The value of [`ORIGIN_HEADER`] for `event` leaving through a sink of node `node`.
pub fn origin_value(node: &str, event: &Envelope) -> String {
    let mut out = String::new();
    write_origin(node, event, &mut out);
    out
}

/// [`origin_value`] into `out` (cleared first): a sink reuses one buffer for every record.
pub fn write_origin(node: &str, event: &Envelope, out: &mut String) {
    out.clear();
    out.push_str(if event.origin_node.is_empty() {
        node
    } else {
        &event.origin_node
    });
    match &event.provenance {
        Some(p) => {
            out.push('/');
            out.push_str(&p.protocol);
            out.push('/');
            out.push_str(&p.member);
        }
        None => out.push_str("/client/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_proto::Provenance;

    #[test]
    fn provenance_decides() {
        let mut e = Envelope::default();
        assert!(!is_from(&e, "kafka", "a"));
        assert_eq!(origin_value("n1", &e), "n1/client/");
        e.provenance = Some(Provenance {
            protocol: "kafka".into(),
            member: "a".into(),
        });
        e.origin_node = "n0".into();
        assert!(is_from(&e, "kafka", "a"));
        assert!(!is_from(&e, "kafka", "b"));
        assert!(!is_from(&e, "amqp", "a"));
        assert_eq!(origin_value("n1", &e), "n0/kafka/a");
        assert!(came_from_mesh(["x", ORIGIN_HEADER].into_iter()));
        assert!(!came_from_mesh(["x"].into_iter()));
    }
}
