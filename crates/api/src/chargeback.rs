//! `GET /v1/chargeback`: metered traffic per app.

use serde::{Deserialize, Serialize};

/// Metered traffic in `[from, to)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChargebackView {
    /// Unix seconds, inclusive (minute resolution); `None`: since the oldest minute kept.
    pub from: Option<u64>,
    /// Unix seconds, exclusive; `None`: until now.
    pub to: Option<u64>,
    /// Sums per (app, topic, kind, peer), the most bytes first.
    pub rows: Vec<ChargebackRow>,
}

/// One app's traffic on one topic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChargebackRow {
    /// The app (`anonymous` for clients without one).
    pub app: String,
    /// The topic's owner, when the catalog knows it.
    pub owner: Option<String>,
    /// The topic.
    pub topic: String,
    /// `produced`, `delivered` or `link`.
    pub kind: String,
    /// For `link`: the peer the events left for.
    pub peer: Option<String>,
    /// Events.
    pub messages: u64,
    /// Bytes.
    pub bytes: u64,
}

impl ChargebackView {
    /// The CSV of `GET /v1/chargeback?format=csv`: a header, then one line per row.
    pub fn to_csv(&self) -> String {
        let mut out = format!("{}\n", ChargebackRow::CSV_HEADER);
        for r in &self.rows {
            out.push_str(&r.csv_cells().join(","));
            out.push('\n');
        }
        out
    }
}

impl ChargebackRow {
    /// The CSV columns, in [`ChargebackRow::csv_cells`] order.
    pub const CSV_HEADER: &'static str = "app,owner,topic,kind,peer,messages,bytes";

    /// The row's CSV fields, quoted where they need to be (empty for a missing owner or peer).
    pub fn csv_cells(&self) -> [String; 7] {
        [
            csv_field(&self.app),
            csv_field(self.owner.as_deref().unwrap_or_default()),
            csv_field(&self.topic),
            csv_field(&self.kind),
            csv_field(self.peer.as_deref().unwrap_or_default()),
            self.messages.to_string(),
            self.bytes.to_string(),
        ]
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let v = ChargebackView {
            from: None,
            to: None,
            rows: vec![ChargebackRow {
                app: "acme.shop".into(),
                owner: None,
                topic: "a,b/\"c\"".into(),
                kind: "produced".into(),
                peer: None,
                messages: 3,
                bytes: 30,
            }],
        };
        assert_eq!(
            v.to_csv(),
            "app,owner,topic,kind,peer,messages,bytes\nacme.shop,,\"a,b/\"\"c\"\"\",produced,,3,30\n"
        );
    }
}
