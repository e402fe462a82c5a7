//! The cluster side of `meshgate spec plan` / `spec apply`: rdkafka's admin client reads the
//! topics of the specs' namespaces and applies a plan (create, grow partitions, set configs;
//! never shrink or delete).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use meshgate_governance::{
    Catalog, ConfigChange, ExistingTopic, PartitionChange, Plan, PlannedTopic,
};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Serialize;
use serde_json::{Value, json};
use thiserror::Error;

/// Why the cluster could not be reached or read.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The admin client could not be made (a bad client property, say).
    #[error("cannot create the Kafka admin client: {0}")]
    Client(#[source] KafkaError),
    /// The runtime the admin calls run on could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The cluster's metadata could not be read.
    #[error("cannot read the metadata of {bootstrap}: {source}")]
    Metadata {
        /// The bootstrap servers asked.
        bootstrap: String,
        /// rdkafka's reason.
        source: KafkaError,
    },
}

/// How to reach a cluster.
#[derive(Clone, Debug)]
pub struct ClusterAddress {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Further librdkafka client properties (`security.protocol`, SASL, ...).
    pub properties: Vec<(String, String)>,
    /// Deadline of each admin request, and of waiting for changes to show in the metadata.
    pub timeout: Duration,
}

/// An admin client of one cluster.
pub struct Cluster {
    admin: AdminClient<DefaultClientContext>,
    bootstrap: String,
    timeout: Duration,
    rt: tokio::runtime::Runtime,
}

/// What was read of the cluster.
pub struct State {
    /// The topics in the specs' owned namespaces, with partitions and (where read) configs.
    pub existing: Vec<ExistingTopic>,
    /// Declared topics whose configs could not be read, and why: the plan then lists every
    /// config their spec declares as a change (current value unknown).
    pub configs_unknown: BTreeMap<String, String>,
    /// Per declared topic, the configs set on the topic itself (source: dynamic topic
    /// config), `None` for a sensitive one whose value is hidden: what a (non-incremental)
    /// AlterConfigs must send again so as not to reset them.
    topic_level: HashMap<String, BTreeMap<String, Option<String>>>,
}

/// A step of the plan that did not happen.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// `create`, `increase_partitions`, `update_configs` or `wait`.
    pub action: &'static str,
    /// The topic.
    pub name: String,
    /// Why.
    pub error: String,
}

/// What `apply` did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Created topics (partitions as the metadata shows them once visible).
    pub created: Vec<PlannedTopic>,
    /// Partition counts raised.
    pub increased: Vec<PartitionChange>,
    /// Configs set.
    pub configured: Vec<ConfigChange>,
    /// Steps that failed (every other step was tried).
    pub failed: Vec<Failure>,
    /// What the operator should know (a broker that chose defaults it could not, say).
    pub notes: Vec<String>,
}

impl Outcome {
    /// Whether anything changed on the cluster.
    pub fn changed(&self) -> bool {
        !(self.created.is_empty() && self.increased.is_empty() && self.configured.is_empty())
    }

    /// The JSON report of `meshgate spec apply --json`.
    pub fn to_json(&self, plan: &Plan, state: &State) -> Value {
        json!({
            "plan": plan,
            "configs_unknown": state.configs_unknown,
            "changed": self.changed(),
            "created": self.created,
            "increased_partitions": self.increased,
            "updated_configs": self.configured,
            "refused": plan.refused,
            "failed": self.failed,
            "unmanaged": plan.unmanaged,
            "notes": self.notes,
        })
    }
}

fn describe(e: &KafkaError, api: &str) -> String {
    match e {
        KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature) => {
            format!("the broker does not support {api} (not in its ApiVersions)")
        }
        e => format!("{api}: {e}"),
    }
}

impl Cluster {
    /// An admin client of the cluster at `addr` (nothing is sent yet).
    pub fn connect(addr: &ClusterAddress) -> Result<Cluster, AdminError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &addr.bootstrap);
        for (k, v) in &addr.properties {
            config.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> =
            config.create().map_err(AdminError::Client)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AdminError::Runtime)?;
        Ok(Cluster {
            admin,
            bootstrap: addr.bootstrap.clone(),
            timeout: addr.timeout.max(Duration::from_secs(1)),
            rt,
        })
    }

    fn opts(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    /// Partition counts of every topic the metadata shows.
    fn partitions(&self) -> Result<HashMap<String, u32>, AdminError> {
        let md = self
            .admin
            .inner()
            .fetch_metadata(None, self.timeout)
            .map_err(|source| AdminError::Metadata {
                bootstrap: self.bootstrap.clone(),
                source,
            })?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_string(), t.partitions().len() as u32))
            .collect())
    }

    /// The topics in the specs' owned namespaces, and the configs of the declared ones.
    pub fn read(&self, catalog: &Catalog) -> Result<State, AdminError> {
        let mut existing: Vec<ExistingTopic> = self
            .partitions()?
            .into_iter()
            .filter(|(name, _)| catalog.owner_of_kafka_topic(name).is_some())
            .map(|(name, partitions)| ExistingTopic {
                name,
                partitions,
                configs: BTreeMap::new(),
            })
            .collect();
        existing.sort_by(|a, b| a.name.cmp(&b.name));
        let mut state = State {
            existing,
            configs_unknown: BTreeMap::new(),
            topic_level: HashMap::new(),
        };
        let declared: Vec<String> = state
            .existing
            .iter()
            .filter(|t| catalog.channel_by_kafka_topic(&t.name).is_some())
            .map(|t| t.name.clone())
            .collect();
        if declared.is_empty() {
            return Ok(state);
        }
        let specs: Vec<ResourceSpecifier<'_>> = declared
            .iter()
            .map(|n| ResourceSpecifier::Topic(n.as_str()))
            .collect();
        let results = match self
            .rt
            .block_on(self.admin.describe_configs(&specs, &self.opts()))
        {
            Ok(r) => r,
            Err(e) => {
                let why = describe(&e, "DescribeConfigs");
                for name in declared {
                    state.configs_unknown.insert(name, why.clone());
                }
                return Ok(state);
            }
        };
        // librdkafka answers in the order of the request.
        let mut configs: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for (name, result) in declared.iter().zip(results) {
            match result {
                Ok(resource) => {
                    let mut values = BTreeMap::new();
                    let mut own = BTreeMap::new();
                    for e in resource.entries {
                        if e.source == ConfigSource::DynamicTopic {
                            own.insert(e.name.clone(), e.value.clone());
                        }
                        if let Some(v) = e.value {
                            values.insert(e.name, v);
                        }
                    }
                    configs.insert(name.clone(), values);
                    state.topic_level.insert(name.clone(), own);
                }
                Err(code) => {
                    state
                        .configs_unknown
                        .insert(name.clone(), format!("DescribeConfigs: {code}"));
                }
            }
        }
        for t in &mut state.existing {
            if let Some(c) = configs.remove(&t.name) {
                t.configs = c;
            }
        }
        Ok(state)
    }

    /// Applies `plan`: every step is tried; what fails is in [`Outcome::failed`].
    pub fn apply(&self, plan: &Plan, state: &State) -> Outcome {
        let mut out = Outcome::default();
        self.create(&plan.create, &mut out);
        self.increase(&plan.increase_partitions, &mut out);
        self.configure(&plan.update_configs, state, &mut out);
        self.wait_visible(&mut out);
        out
    }

    fn create(&self, topics: &[PlannedTopic], out: &mut Outcome) {
        if topics.is_empty() {
            return;
        }
        // Unset partitions / replicas: -1, the broker's defaults (CreateTopics v4, Kafka
        // 2.4+). Older brokers cannot: librdkafka refuses before sending, and those topics
        // are created with 1 instead.
        let build = |fallback: bool| -> Vec<NewTopic<'_>> {
            let dflt = if fallback { 1 } else { -1 };
            topics
                .iter()
                .map(|t| {
                    let partitions = t.partitions.map_or(dflt, |p| p as i32);
                    let replicas = t.replicas.map_or(dflt, i32::from);
                    t.configs.iter().fold(
                        NewTopic::new(&t.name, partitions, TopicReplication::Fixed(replicas)),
                        |nt, (k, v)| nt.set(k, v),
                    )
                })
                .collect()
        };
        let uses_defaults = topics
            .iter()
            .any(|t| t.partitions.is_none() || t.replicas.is_none());
        let mut result = self
            .rt
            .block_on(self.admin.create_topics(&build(false), &self.opts()));
        if uses_defaults
            && matches!(
                result,
                Err(KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature))
            )
        {
            out.notes.push(
                "the broker cannot choose default partitions or replicas (CreateTopics \
                 before v4, Kafka < 2.4): the ones the specs leave out were created as 1"
                    .into(),
            );
            result = self
                .rt
                .block_on(self.admin.create_topics(&build(true), &self.opts()));
        }
        match result {
            Err(e) => {
                let error = describe(&e, "CreateTopics");
                for t in topics {
                    out.failed.push(Failure {
                        action: "create",
                        name: t.name.clone(),
                        error: error.clone(),
                    });
                }
            }
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(name) => {
                            if let Some(t) = topics.iter().find(|t| t.name == name) {
                                out.created.push(t.clone());
                            }
                        }
                        Err((name, code)) => out.failed.push(Failure {
                            action: "create",
                            name,
                            error: format!("CreateTopics: {code}"),
                        }),
                    }
                }
            }
        }
    }

    fn increase(&self, changes: &[PartitionChange], out: &mut Outcome) {
        if changes.is_empty() {
            return;
        }
        let parts: Vec<NewPartitions<'_>> = changes
            .iter()
            .map(|c| NewPartitions::new(&c.name, c.to as usize))
            .collect();
        match self
            .rt
            .block_on(self.admin.create_partitions(&parts, &self.opts()))
        {
            Err(e) => {
                let error = describe(&e, "CreatePartitions");
                for c in changes {
                    out.failed.push(Failure {
                        action: "increase_partitions",
                        name: c.name.clone(),
                        error: error.clone(),
                    });
                }
            }
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(name) => {
                            if let Some(c) = changes.iter().find(|c| c.name == name) {
                                out.increased.push(c.clone());
                            }
                        }
                        Err((name, code)) => out.failed.push(Failure {
                            action: "increase_partitions",
                            name,
                            error: format!("CreatePartitions: {code}"),
                        }),
                    }
                }
            }
        }
    }

    /// Config updates, one AlterConfigs resource per topic. rdkafka 0.39 has no safe
    /// IncrementalAlterConfigs, and AlterConfigs replaces every topic-level config of the
    /// topic: so the request carries the topic's current topic-level configs too, and a
    /// topic whose configs could not be read (or hide a sensitive value) is not altered.
    fn configure(&self, changes: &[ConfigChange], state: &State, out: &mut Outcome) {
        let mut by_topic: BTreeMap<&str, Vec<&ConfigChange>> = BTreeMap::new();
        for c in changes {
            by_topic.entry(c.name.as_str()).or_default().push(c);
        }
        let fail = |name: &str, error: String, out: &mut Outcome| {
            out.failed.push(Failure {
                action: "update_configs",
                name: name.to_string(),
                error,
            })
        };
        let mut resources: Vec<AlterConfig<'_>> = Vec::new();
        let mut groups: Vec<Vec<&ConfigChange>> = Vec::new();
        for (name, cs) in by_topic {
            if let Some(why) = state.configs_unknown.get(name) {
                fail(
                    name,
                    format!(
                        "not altered: its current configs could not be read ({why}), and \
                         AlterConfigs would reset the ones not sent"
                    ),
                    out,
                );
                continue;
            }
            let own = state.topic_level.get(name);
            if let Some((k, _)) = own.and_then(|o| o.iter().find(|(_, v)| v.is_none())) {
                fail(
                    name,
                    format!(
                        "not altered: its config {k} is sensitive (value hidden), and \
                         AlterConfigs would reset it"
                    ),
                    out,
                );
                continue;
            }
            let mut ac = AlterConfig::new(ResourceSpecifier::Topic(name));
            for (k, v) in own.into_iter().flatten() {
                if let Some(v) = v {
                    ac = ac.set(k, v);
                }
            }
            for c in &cs {
                ac = ac.set(&c.key, &c.to);
            }
            resources.push(ac);
            groups.push(cs);
        }
        if resources.is_empty() {
            return;
        }
        match self
            .rt
            .block_on(self.admin.alter_configs(&resources, &self.opts()))
        {
            Err(e) => {
                let error = describe(&e, "AlterConfigs");
                for cs in &groups {
                    fail(&cs[0].name, error.clone(), out);
                }
            }
            Ok(results) => {
                // In the order of the request, as DescribeConfigs.
                for (cs, r) in groups.iter().zip(results) {
                    match r {
                        Ok(_) => out.configured.extend(cs.iter().map(|c| (*c).clone())),
                        Err((_, code)) => fail(&cs[0].name, format!("AlterConfigs: {code}"), out),
                    }
                }
            }
        }
    }

    /// Waits (polling the metadata, with the deadline) until every created topic is in
    /// the metadata, with the partitions asked for, and every increase shows.
    fn wait_visible(&self, out: &mut Outcome) {
        let mut want: BTreeMap<String, Option<u32>> = out
            .created
            .iter()
            .map(|t| (t.name.clone(), t.partitions))
            .collect();
        for c in &out.increased {
            want.insert(c.name.clone(), Some(c.to));
        }
        if want.is_empty() {
            return;
        }
        let deadline = Instant::now() + self.timeout;
        let mut seen = HashMap::new();
        loop {
            if let Ok(p) = self.partitions() {
                seen = p;
            }
            let missing: Vec<&String> = want
                .iter()
                .filter(|(name, n)| match seen.get(*name) {
                    None => true,
                    Some(&have) => n.is_some_and(|n| have < n),
                })
                .map(|(name, _)| name)
                .collect();
            if missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for name in missing {
                    out.failed.push(Failure {
                        action: "wait",
                        name: name.clone(),
                        error: format!(
                            "accepted, but not in the metadata as asked after {:?}",
                            self.timeout
                        ),
                    });
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Report what the cluster chose for the broker-default partition counts.
        for t in &mut out.created {
            if t.partitions.is_none() {
                t.partitions = seen.get(&t.name).copied();
            }
        }
    }
}
