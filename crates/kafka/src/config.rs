//! `[[kafka]]` tables of the node configuration: one per cluster, with its sources and sinks.

use std::collections::BTreeMap;

use meshgate_bridge::template::{Known, Template};
use meshgate_topic::Filter;
use serde::{Deserialize, Serialize};

/// Placeholders of a source's topic template.
pub(crate) const SOURCE_VARS: Known<'static> = Known {
    names: &["topic", "partition", "offset", "key"],
    headers: true,
    payload: true,
    levels: false,
};

/// Placeholders of a sink's topic and key templates.
pub(crate) const SINK_VARS: Known<'static> = Known {
    names: &["topic", "key"],
    headers: true,
    payload: false,
    levels: true,
};

/// One Kafka cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Name of the cluster, unique in the mesh: the provenance of its records, the loop rule's
    /// member, and a label in `/v1/bridges` and `/metrics`.
    pub name: String,
    /// `host:port[,host:port...]` (librdkafka `bootstrap.servers`).
    pub bootstrap: String,
    /// App id the cluster's records are published as; consumer groups start with it. Default:
    /// the cluster's name.
    #[serde(default)]
    pub app_id: Option<String>,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` with `sasl_username` / `sasl_password`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// SASL password.
    #[serde(default)]
    pub sasl_password: Option<String>,
    /// PEM file of the CA that signed the brokers' certificates.
    #[serde(default)]
    pub ssl_ca_location: Option<String>,
    /// PEM client certificate (mutual TLS).
    #[serde(default)]
    pub ssl_certificate_location: Option<String>,
    /// PEM client key (mutual TLS).
    #[serde(default)]
    pub ssl_key_location: Option<String>,
    /// Further librdkafka properties, passed as they are (e.g. `"fetch.wait.max.ms" = "10"`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Sources: Kafka topics into the mesh.
    #[serde(default)]
    pub source: Vec<KafkaSource>,
    /// Sinks: mesh subscriptions into Kafka topics.
    #[serde(default)]
    pub sink: Vec<KafkaSink>,
}

/// Kafka topics consumed into the mesh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    /// Name, unique within the cluster.
    pub name: String,
    /// Topic names; a name starting with `^` is a regular expression (librdkafka).
    pub topics: Vec<String>,
    /// Mesh topic of each record. Default `{topic}`: the Kafka topic with `.` turned into `/`.
    /// Also `{partition}`, `{offset}`, `{key}`, `{header.NAME}`, `{payload.FIELD}`.
    #[serde(default = "topic_template")]
    pub topic_template: String,
    /// Consumer group; must start with the app id. Default `APP_ID.SOURCE_NAME`.
    #[serde(default)]
    pub group: Option<String>,
    /// Where a new group starts: `earliest` (default) or `latest`.
    #[serde(default = "earliest")]
    pub start: String,
    /// Most records published before their offsets are stored (one commit wait per batch).
    #[serde(default = "batch")]
    pub batch: usize,
}

/// A mesh subscription produced into Kafka.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSink {
    /// Name, unique within the cluster.
    pub name: String,
    /// Mesh filter, wildcards allowed (`orders/*/us/>`).
    pub filter: String,
    /// Kafka topic of each event. Default `{topic}`: the mesh topic with `/` turned into `.`.
    /// Also `{level.N}`, `{key}`, `{header.NAME}`.
    #[serde(default = "topic_template")]
    pub topic_template: String,
    /// Record key when the event has none (an event from Kafka keeps its own). Default: none.
    #[serde(default)]
    pub key_template: Option<String>,
    /// Idempotent producer (default true): no duplicates or reordering from producer retries.
    #[serde(default = "yes")]
    pub idempotent: bool,
    /// Most events per produce batch.
    #[serde(default = "batch")]
    pub batch: usize,
}

fn topic_template() -> String {
    "{topic}".into()
}
fn earliest() -> String {
    "earliest".into()
}
fn batch() -> usize {
    1000
}
fn yes() -> bool {
    true
}

impl KafkaConfig {
    /// The app id records are published as.
    pub fn app_id(&self) -> &str {
        self.app_id.as_deref().unwrap_or(&self.name)
    }

    /// Checks names, templates, filters and groups; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let at = |what: &str| format!("kafka {:?}: {what}", self.name);
        if self.name.is_empty() || self.name.contains('/') {
            return Err(at("name must be non-empty and without '/'"));
        }
        if self.bootstrap.is_empty() {
            return Err(at("bootstrap is empty"));
        }
        if let Some(p) = &self.security_protocol
            && !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&p.as_str())
        {
            return Err(at(&format!(
                "security_protocol {p:?}: expected plaintext, ssl, sasl_plaintext or sasl_ssl"
            )));
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.source {
            let at = |what: &str| at(&format!("source {:?}: {what}", s.name));
            if !names.insert(&s.name) {
                return Err(at("duplicate name"));
            }
            if s.topics.is_empty() {
                return Err(at("topics is empty"));
            }
            Template::parse(&s.topic_template, SOURCE_VARS)
                .map_err(|e| at(&format!("topic_template: {e}")))?;
            if !["earliest", "latest"].contains(&s.start.as_str()) {
                return Err(at(&format!(
                    "start {:?}: expected earliest or latest",
                    s.start
                )));
            }
            if let Some(g) = &s.group
                && !g.starts_with(self.app_id())
            {
                return Err(at(&format!(
                    "group {g:?} must start with the app id {:?}",
                    self.app_id()
                )));
            }
            if s.batch == 0 {
                return Err(at("batch must be at least 1"));
            }
        }
        for s in &self.sink {
            let at = |what: &str| at(&format!("sink {:?}: {what}", s.name));
            if !names.insert(&s.name) {
                return Err(at("duplicate name"));
            }
            Filter::parse(&s.filter).map_err(|e| at(&format!("filter {:?}: {e}", s.filter)))?;
            Template::parse(&s.topic_template, SINK_VARS)
                .map_err(|e| at(&format!("topic_template: {e}")))?;
            if let Some(k) = &s.key_template {
                Template::parse(k, SINK_VARS).map_err(|e| at(&format!("key_template: {e}")))?;
            }
            if s.batch == 0 {
                return Err(at("batch must be at least 1"));
            }
        }
        Ok(())
    }

    /// The consumer group of `source`.
    pub fn group_of(&self, source: &KafkaSource) -> String {
        source
            .group
            .clone()
            .unwrap_or_else(|| format!("{}.{}", self.app_id(), source.name))
    }

    /// librdkafka settings shared by every client of the cluster.
    pub(crate) fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c.set("client.id", format!("meshgate-{}", self.app_id()));
        // Reconnect quickly after an outage, never slower than 10 s.
        c.set("reconnect.backoff.ms", "100");
        c.set("reconnect.backoff.max.ms", "10000");
        let opt = [
            ("security.protocol", &self.security_protocol),
            ("sasl.mechanism", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                c.set(k, v);
            }
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> KafkaConfig {
        serde_json::from_value(toml_to_json(toml_text)).unwrap()
    }

    // The node reads TOML through figment; here a tiny subset is enough: build JSON directly.
    fn toml_to_json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn validation_names_the_key() {
        let ok = r#"{"name":"dc1","bootstrap":"127.0.0.1:9092","app_id":"shop",
            "source":[{"name":"o","topics":["orders"],"topic_template":"orders/{header.region}/{key}"}],
            "sink":[{"name":"s","filter":"orders/*/us/>"}]}"#;
        let c = parse(ok);
        c.validate().unwrap();
        assert_eq!(c.group_of(&c.source[0]), "shop.o");
        for (bad, want) in [
            (
                r#""topic_template":"orders/{regin}""#,
                "unknown placeholder {regin}",
            ),
            (r#""group":"other.g""#, "must start with the app id"),
            (r#""start":"middle""#, "expected earliest or latest"),
        ] {
            let text = ok.replace(r#""topic_template":"orders/{header.region}/{key}""#, bad);
            let text = if bad.contains("template") {
                text
            } else {
                text.replace(
                    r#""topics":["orders"]"#,
                    &format!(r#""topics":["orders"],{bad}"#),
                )
            };
            let e = parse(&text).validate().unwrap_err();
            assert!(e.contains(want) && e.contains("source \"o\""), "{e}");
        }
        let e = parse(&ok.replace("orders/*/us/>", "orders/>/x"))
            .validate()
            .unwrap_err();
        assert!(e.contains("sink \"s\": filter"), "{e}");
    }
}
