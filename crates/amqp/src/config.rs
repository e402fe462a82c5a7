//! `[[amqp]]` tables of the node configuration: one per AMQP 0-9-1 broker (a RabbitMQ vhost),
//! with its sources and sinks.

use std::collections::HashSet;

use lapin::uri::AMQPUri;
use meshgate_bridge::template::{Known, Template};
use meshgate_topic::Filter;
use serde::{Deserialize, Serialize};

/// Placeholders of a source's topic template.
pub(crate) const SOURCE_VARS: Known<'static> = Known {
    names: &["topic", "exchange", "queue"],
    headers: true,
    payload: true,
    levels: false,
};

/// Placeholders of a sink's routing-key template.
pub(crate) const SINK_VARS: Known<'static> = Known {
    names: &["topic"],
    headers: true,
    payload: false,
    levels: true,
};

/// Longest AMQP short string (queue, exchange and routing key names), in bytes.
const SHORT_STRING_MAX: usize = 255;

/// One AMQP broker (one virtual host of it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// Name of the broker, unique in the mesh: the provenance of its messages, the loop rule's
    /// member, and a label in `/v1/bridges` and `/metrics`.
    pub name: String,
    /// `amqp://USER:PASS@HOST:PORT/VHOST` (vhost `/` is written `%2f`), or `amqps://` for TLS
    /// (rustls, system roots). Query parameters `heartbeat`, `frame_max`, `channel_max`,
    /// `connection_timeout` and `auth_mechanism` are understood.
    pub url: String,
    /// App id the broker's messages are published into the mesh as. Default: the name.
    #[serde(default)]
    pub app_id: Option<String>,
    /// Sources: queues consumed into the mesh.
    #[serde(default)]
    pub source: Vec<AmqpSource>,
    /// Sinks: mesh subscriptions published into exchanges.
    #[serde(default)]
    pub sink: Vec<AmqpSink>,
}

/// A queue consumed into the mesh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSource {
    /// Name, unique within the broker.
    pub name: String,
    /// The queue consumed (manual acks).
    pub queue: String,
    /// Declare the queue (durable) before consuming. Default false: the queue must exist.
    #[serde(default)]
    pub declare: bool,
    /// Bindings of the queue, declared at every (re)connect. The exchanges must exist.
    #[serde(default)]
    pub bindings: Vec<Binding>,
    /// Mesh topic of each message. Default `{topic}`: the routing key with `.` turned into `/`.
    /// Also `{exchange}`, `{queue}`, `{header.NAME}`, `{payload.FIELD}` (JSON payloads).
    #[serde(default = "topic")]
    pub topic_template: String,
    /// Most unacknowledged deliveries the broker sends (`basic.qos`); also the largest batch
    /// published before one acknowledgement. Default 1000.
    #[serde(default = "prefetch")]
    pub prefetch: u16,
}

/// A binding of a source's queue to an exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The exchange bound from.
    pub exchange: String,
    /// Binding key (`orders.#` on a topic exchange; ignored by fanout exchanges).
    pub routing_key: String,
}

/// A mesh subscription published into an exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSink {
    /// Name, unique within the broker.
    pub name: String,
    /// Mesh filter, wildcards allowed (`orders/*/us/>`).
    pub filter: String,
    /// The exchange published to (must exist; `""` is the default exchange).
    pub exchange: String,
    /// Routing key of each event. Default `{topic}`: the mesh topic with `/` turned into `.`.
    /// Also `{level.N}` and `{header.NAME}`.
    #[serde(default = "topic")]
    pub routing_key_template: String,
    /// Most events published before waiting for their publisher confirms. Default 512.
    #[serde(default = "batch")]
    pub batch: usize,
}

fn topic() -> String {
    "{topic}".into()
}
fn prefetch() -> u16 {
    1000
}
fn batch() -> usize {
    512
}

impl AmqpConfig {
    /// The app id messages are published as.
    pub fn app_id(&self) -> &str {
        self.app_id.as_deref().unwrap_or(&self.name)
    }

    /// Checks the url, names, templates and filters; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let at = |what: &str| format!("amqp {:?}: {what}", self.name);
        if !is_name(&self.name) {
            return Err(at(
                "name must be non-empty, of letters, digits, '.', '_' or '-'",
            ));
        }
        parse_url(&self.url).map_err(|e| at(&format!("url: {e}")))?;
        if self.app_id.as_deref() == Some("") {
            return Err(at("app_id is empty"));
        }
        let mut names = HashSet::new();
        for (i, s) in self.source.iter().enumerate() {
            let at = |what: &str| at(&format!("source[{i}] {:?}: {what}", s.name));
            if !is_name(&s.name) {
                return Err(at(
                    "name must be non-empty, of letters, digits, '.', '_' or '-'",
                ));
            }
            if !names.insert(&s.name) {
                return Err(at(
                    "duplicate name (sources and sinks of a broker share names)",
                ));
            }
            short("queue", &s.queue, false).map_err(|e| at(&e))?;
            for (j, b) in s.bindings.iter().enumerate() {
                short(&format!("bindings[{j}].exchange"), &b.exchange, false)
                    .map_err(|e| at(&e))?;
                short(&format!("bindings[{j}].routing_key"), &b.routing_key, true)
                    .map_err(|e| at(&e))?;
            }
            Template::parse(&s.topic_template, SOURCE_VARS)
                .map_err(|e| at(&format!("topic_template: {e}")))?;
            if s.prefetch == 0 {
                return Err(at("prefetch must be at least 1"));
            }
        }
        for (i, s) in self.sink.iter().enumerate() {
            let at = |what: &str| at(&format!("sink[{i}] {:?}: {what}", s.name));
            if !is_name(&s.name) {
                return Err(at(
                    "name must be non-empty, of letters, digits, '.', '_' or '-'",
                ));
            }
            if !names.insert(&s.name) {
                return Err(at(
                    "duplicate name (sources and sinks of a broker share names)",
                ));
            }
            Filter::parse(&s.filter).map_err(|e| at(&format!("filter {:?}: {e}", s.filter)))?;
            short("exchange", &s.exchange, true).map_err(|e| at(&e))?;
            Template::parse(&s.routing_key_template, SINK_VARS)
                .map_err(|e| at(&format!("routing_key_template: {e}")))?;
            if s.batch == 0 {
                return Err(at("batch must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Names end up in journal directories and metric labels.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn short(key: &str, value: &str, empty_ok: bool) -> Result<(), String> {
    if value.is_empty() && !empty_ok {
        return Err(format!("{key} is empty"));
    }
    if value.len() > SHORT_STRING_MAX {
        return Err(format!(
            "{key} is {} bytes, AMQP allows {SHORT_STRING_MAX}",
            value.len()
        ));
    }
    Ok(())
}

/// Parses an AMQP url. `amq-protocol-uri` reads the host with `Url::domain`, which is `None` for
/// an IP address and silently becomes `localhost`: the host is taken from the url here instead.
pub(crate) fn parse_url(text: &str) -> Result<AMQPUri, String> {
    let url = url::Url::parse(text).map_err(|e| format!("invalid url: {e}"))?;
    if !matches!(url.scheme(), "amqp" | "amqps") {
        return Err(format!("scheme {:?}: expected amqp or amqps", url.scheme()));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err("no host".into()),
    };
    // The parse error of amq-protocol-uri never contains the password: it names a field.
    let mut uri: AMQPUri = text.parse().map_err(|e| format!("invalid url: {e}"))?;
    uri.authority.host = host;
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: serde_json::Value) -> Result<AmqpConfig, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "name": "rabbit-eu",
            "url": "amqp://guest:guest@127.0.0.1:5672/%2f",
            "source": [{"name": "orders", "queue": "orders",
                        "bindings": [{"exchange": "ex", "routing_key": "orders.#"}]}],
            "sink": [{"name": "out", "filter": "orders/us/>", "exchange": "ex"}],
        })
    }

    #[test]
    fn defaults_and_a_valid_config() {
        let c = config(base()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.app_id(), "rabbit-eu");
        assert_eq!(c.source[0].topic_template, "{topic}");
        assert_eq!(c.source[0].prefetch, 1000);
        assert!(!c.source[0].declare);
        assert_eq!(c.sink[0].routing_key_template, "{topic}");
        assert_eq!(c.sink[0].batch, 512);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let mut v = base();
        v["source"][0]["prefech"] = 10.into();
        assert!(config(v).unwrap_err().contains("prefech"));
    }

    #[test]
    fn errors_name_the_key() {
        for (path, value, want) in [
            (
                "/source/0/topic_template",
                "o/{rk}",
                "source[0] \"orders\": topic_template",
            ),
            (
                "/sink/0/routing_key_template",
                "{payload.x}",
                "routing_key_template",
            ),
            ("/sink/0/filter", "a//b", "sink[0] \"out\": filter"),
            ("/url", "http://x/", "url: scheme \"http\""),
            ("/url", "nonsense", "url: invalid url"),
            ("/source/0/queue", "", "queue is empty"),
            ("/sink/0/name", "orders", "duplicate name"),
            ("/name", "a/b", "name must be"),
        ] {
            let mut v = base();
            let (parent, key) = path.rsplit_once('/').unwrap();
            let parent = if parent.is_empty() {
                &mut v
            } else {
                v.pointer_mut(parent).unwrap()
            };
            parent[key] = value.into();
            let e = config(v).unwrap().validate().unwrap_err();
            assert!(e.contains(want), "{path}={value}: {e}");
        }
        let mut v = base();
        v["source"][0]["prefetch"] = 0.into();
        let e = config(v).unwrap().validate().unwrap_err();
        assert!(e.contains("prefetch"), "{e}");
    }

    #[test]
    fn ip_hosts_stay_ip_hosts() {
        let u = parse_url("amqp://u:p%40ss@10.1.2.3:5673/v1").unwrap();
        assert_eq!(u.authority.host, "10.1.2.3");
        assert_eq!(u.authority.port, 5673);
        assert_eq!(u.authority.userinfo.password, "p@ss");
        assert_eq!(u.vhost, "v1");
        let u = parse_url("amqps://[::1]/%2f").unwrap();
        assert_eq!(u.authority.host, "::1");
        assert_eq!(u.authority.port, 5671);
        assert_eq!(u.vhost, "/");
        let u = parse_url("amqp://rabbit.example").unwrap();
        assert_eq!(u.authority.host, "rabbit.example");
    }
}
