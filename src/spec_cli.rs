//! `meshgate spec validate DIR [--previous DIR]`: lints a specs directory for CI pipelines.
//!
//! `meshgate spec plan` / `meshgate spec apply`: provision the Kafka topics the specs declare
//! (create, grow partitions, set configs; never shrink or delete) with rdkafka's admin client.
//! Both need the `kafka` cargo feature (on by default).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use clap::Args;
use meshgate_governance::{Catalog, Date, Problem, check_compatible_at, load};

/// Arguments of `meshgate spec validate`.
#[derive(Args)]
pub(crate) struct ValidateArgs {
    /// Directory of AsyncAPI specs (and the schema files they reference).
    dir: PathBuf,
    /// The specs as they were (e.g. the main branch): the new ones must stay compatible for
    /// the consumers of the old ones (schemas, channels, partitions, end-of-life notice).
    #[arg(long, value_name = "DIR")]
    previous: Option<PathBuf>,
}

fn build(dir: &Path) -> anyhow::Result<(Catalog, Vec<Problem>)> {
    let sources = load::load_dir(dir)
        .with_context(|| format!("cannot read the specs in {}", dir.display()))?;
    Ok(Catalog::build(&sources, 1))
}

/// Prints every problem as `file:line: message` (paths relative to DIR); fails if any.
pub(crate) fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let (next, mut problems) = build(&args.dir)?;
    if let Some(prev_dir) = &args.previous {
        let (prev, prev_problems) = build(prev_dir)?;
        if !prev_problems.is_empty() {
            eprintln!(
                "note: the previous specs have {} problem(s) themselves; comparing what loads",
                prev_problems.len()
            );
        }
        let today = Date::from_system_time(SystemTime::now());
        problems.extend(check_compatible_at(&prev, &next, today));
    }
    for p in &problems {
        println!("{}", p);
    }
    if !problems.is_empty() {
        bail!("{} problem(s) in {}", problems.len(), args.dir.display());
    }
    println!(
        "{}: {} data product(s), {} channel(s): valid",
        args.dir.display(),
        next.products().len(),
        next.channels().len()
    );
    Ok(())
}

/// Arguments of `meshgate spec plan` and `meshgate spec apply`.
#[derive(Args)]
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub(crate) struct ClusterArgs {
    /// Directory of AsyncAPI specs (and the schema files they reference).
    #[arg(long, value_name = "DIR")]
    specs: PathBuf,
    /// The Kafka cluster's bootstrap servers (`bootstrap.servers`; comma-separated).
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: String,
    /// A librdkafka client property, e.g. `security.protocol=SASL_SSL` (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    properties: Vec<(String, String)>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Deadline of each step against the cluster (reading it, each admin request, waiting for
    /// changes to show in its metadata), in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The catalog of `dir`, or an error after listing its problems (`file:line: message`) on
/// stderr: nothing is planned from specs that do not validate.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
fn valid_catalog(dir: &Path) -> anyhow::Result<Catalog> {
    let (catalog, problems) = build(dir)?;
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!(
            "{} problem(s) in {}: nothing planned (see `meshgate spec validate`)",
            problems.len(),
            dir.display()
        );
    }
    Ok(catalog)
}

#[cfg(not(feature = "kafka"))]
const NO_KAFKA: &str = "this meshgate was built without Kafka support (cargo feature `kafka`); \
                        `spec plan` and `spec apply` need it: build with default features";

/// `meshgate spec plan`: what `spec apply` would change, as text or JSON; exit 0.
#[cfg(not(feature = "kafka"))]
pub(crate) fn plan(_args: ClusterArgs) -> anyhow::Result<()> {
    bail!(NO_KAFKA)
}

/// `meshgate spec apply`: makes the cluster match the specs.
#[cfg(not(feature = "kafka"))]
pub(crate) fn apply(_args: ClusterArgs) -> anyhow::Result<()> {
    bail!(NO_KAFKA)
}

/// `meshgate spec plan`: reads the specs and the cluster, prints what `spec apply` would change
/// (text or JSON); exit 0 when both could be read.
#[cfg(feature = "kafka")]
pub(crate) fn plan(args: ClusterArgs) -> anyhow::Result<()> {
    let catalog = valid_catalog(&args.specs)?;
    let cluster = kafka::Cluster::connect(&args)?;
    let state = cluster.read(&catalog)?;
    let plan = meshgate_governance::plan(&catalog, &state.existing);
    if args.json {
        let mut v = serde_json::to_value(&plan)?;
        v["configs_unknown"] = serde_json::json!(state.configs_unknown);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{plan}");
        kafka::print_unknown_configs(&state.configs_unknown);
    }
    Ok(())
}

/// `meshgate spec apply`: plans as `spec plan`, then creates topics, raises partition counts
/// and sets configs; prints what changed. Refused shrinks and failed steps are reported after
/// the rest is applied and make the exit status non-zero.
#[cfg(feature = "kafka")]
pub(crate) fn apply(args: ClusterArgs) -> anyhow::Result<()> {
    let catalog = valid_catalog(&args.specs)?;
    let cluster = kafka::Cluster::connect(&args)?;
    let state = cluster.read(&catalog)?;
    let plan = meshgate_governance::plan(&catalog, &state.existing);
    let outcome = cluster.apply(&plan, &state);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome.to_json(&plan, &state))?
        );
    } else {
        outcome.print(&plan, &state);
    }
    let (refused, failed) = (plan.refused.len(), outcome.failed.len());
    if refused + failed > 0 {
        bail!("{refused} change(s) refused, {failed} failed; every other change was applied");
    }
    Ok(())
}

#[cfg(feature = "kafka")]
mod kafka {
    //! The cluster side of `spec plan` / `spec apply`: rdkafka's admin client.

    use std::collections::{BTreeMap, HashMap};
    use std::time::{Duration, Instant};

    use anyhow::Context as _;
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
    use serde_json::{Value, json};

    use super::ClusterArgs;

    /// An admin client of one cluster.
    pub(super) struct Cluster {
        admin: AdminClient<DefaultClientContext>,
        bootstrap: String,
        timeout: Duration,
        rt: tokio::runtime::Runtime,
    }

    /// What was read of the cluster.
    pub(super) struct State {
        /// The topics in the specs' owned namespaces, with partitions and (where read) configs.
        pub(super) existing: Vec<ExistingTopic>,
        /// Declared topics whose configs could not be read, and why: the plan then lists every
        /// config their spec declares as a change (current value unknown).
        pub(super) configs_unknown: BTreeMap<String, String>,
        /// Per declared topic, the configs set on the topic itself (source: dynamic topic
        /// config), `None` for a sensitive one whose value is hidden: what a (non-incremental)
        /// AlterConfigs must send again so as not to reset them.
        topic_level: HashMap<String, BTreeMap<String, Option<String>>>,
    }

    /// A step of the plan that did not happen.
    pub(super) struct Failure {
        action: &'static str,
        name: String,
        error: String,
    }

    /// What `apply` did.
    #[derive(Default)]
    pub(super) struct Outcome {
        /// Created topics (partitions as the metadata shows them once visible).
        created: Vec<PlannedTopic>,
        increased: Vec<PartitionChange>,
        configured: Vec<ConfigChange>,
        pub(super) failed: Vec<Failure>,
        notes: Vec<String>,
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
        pub(super) fn connect(args: &ClusterArgs) -> anyhow::Result<Cluster> {
            let mut config = ClientConfig::new();
            config.set("bootstrap.servers", &args.bootstrap);
            for (k, v) in &args.properties {
                config.set(k, v);
            }
            let admin: AdminClient<DefaultClientContext> = config
                .create()
                .context("cannot create the Kafka admin client")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            Ok(Cluster {
                admin,
                bootstrap: args.bootstrap.clone(),
                timeout: Duration::from_secs(args.timeout.max(1)),
                rt,
            })
        }

        fn opts(&self) -> AdminOptions {
            AdminOptions::new()
                .request_timeout(Some(self.timeout))
                .operation_timeout(Some(self.timeout))
        }

        /// Partition counts of every topic the metadata shows.
        fn partitions(&self) -> anyhow::Result<HashMap<String, u32>> {
            let md = self
                .admin
                .inner()
                .fetch_metadata(None, self.timeout)
                .with_context(|| format!("cannot read the metadata of {}", self.bootstrap))?;
            Ok(md
                .topics()
                .iter()
                .filter(|t| t.error().is_none())
                .map(|t| (t.name().to_string(), t.partitions().len() as u32))
                .collect())
        }

        /// The topics in the specs' owned namespaces, and the configs of the declared ones.
        pub(super) fn read(&self, catalog: &Catalog) -> anyhow::Result<State> {
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
        pub(super) fn apply(&self, plan: &Plan, state: &State) -> Outcome {
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
                            Err((_, code)) => {
                                fail(&cs[0].name, format!("AlterConfigs: {code}"), out)
                            }
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

    /// The note under a plan whose current configs are partly unknown.
    pub(super) fn print_unknown_configs(unknown: &BTreeMap<String, String>) {
        if unknown.is_empty() {
            return;
        }
        println!(
            "note: the current configs of {} topic(s) could not be read; \"(unset)\" above means \
             unknown for them:",
            unknown.len()
        );
        for (name, why) in unknown {
            println!("  {name}: {why}");
        }
    }

    impl Outcome {
        fn changed(&self) -> bool {
            !(self.created.is_empty() && self.increased.is_empty() && self.configured.is_empty())
        }

        pub(super) fn to_json(&self, plan: &Plan, state: &State) -> Value {
            json!({
                "plan": plan,
                "configs_unknown": state.configs_unknown,
                "changed": self.changed(),
                "created": self.created,
                "increased_partitions": self.increased,
                "updated_configs": self.configured,
                "refused": plan.refused,
                "failed": self.failed.iter().map(|f| json!({
                    "action": f.action, "name": f.name, "error": f.error,
                })).collect::<Vec<_>>(),
                "unmanaged": plan.unmanaged,
                "notes": self.notes,
            })
        }

        pub(super) fn print(&self, plan: &Plan, state: &State) {
            let or_default = |v: Option<String>| v.unwrap_or_else(|| "default".into());
            for t in &self.created {
                let mut line = format!(
                    "+ created {} (partitions: {}, replicas: {})",
                    t.name,
                    or_default(t.partitions.map(|p| p.to_string())),
                    or_default(t.replicas.map(|r| r.to_string())),
                );
                for (k, v) in &t.configs {
                    line.push_str(&format!(" {k}={v}"));
                }
                println!("{line}");
            }
            for c in &self.increased {
                println!("~ partitions {}: {} -> {}", c.name, c.from, c.to);
            }
            for c in &self.configured {
                println!(
                    "~ config {} {}: {} -> {}",
                    c.name,
                    c.key,
                    c.from.as_deref().unwrap_or("(unset)"),
                    c.to
                );
            }
            for c in &plan.refused {
                println!(
                    "! refused: partitions of {} cannot shrink from {} to {}",
                    c.name, c.from, c.to
                );
            }
            for f in &self.failed {
                println!("! failed: {} {}: {}", f.action, f.name, f.error);
            }
            for name in &plan.unmanaged {
                println!("  unmanaged (left alone): {name}");
            }
            for n in &self.notes {
                println!("note: {n}");
            }
            if !state.configs_unknown.is_empty() {
                print_unknown_configs(&state.configs_unknown);
            }
            if !self.changed() {
                println!("no changes");
            }
        }
    }
}
