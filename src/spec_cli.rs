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
    let cluster = meshgate_kafka::admin::Cluster::connect(&kafka::address(&args))?;
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
    let cluster = meshgate_kafka::admin::Cluster::connect(&kafka::address(&args))?;
    let state = cluster.read(&catalog)?;
    let plan = meshgate_governance::plan(&catalog, &state.existing);
    let outcome = cluster.apply(&plan, &state);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome.to_json(&plan, &state))?
        );
    } else {
        kafka::print_outcome(&outcome, &plan, &state);
    }
    let (refused, failed) = (plan.refused.len(), outcome.failed.len());
    if refused + failed > 0 {
        bail!("{refused} change(s) refused, {failed} failed; every other change was applied");
    }
    Ok(())
}

#[cfg(feature = "kafka")]
mod kafka {
    //! Printing what `spec plan` / `spec apply` found and did (the admin client itself is
    //! `meshgate_kafka::admin`).

    use std::collections::BTreeMap;
    use std::time::Duration;

    use meshgate_governance::Plan;
    use meshgate_kafka::admin::{ClusterAddress, Outcome, State};

    use super::ClusterArgs;

    /// Where `args` says the cluster is.
    pub(super) fn address(args: &ClusterArgs) -> ClusterAddress {
        ClusterAddress {
            bootstrap: args.bootstrap.clone(),
            properties: args.properties.clone(),
            timeout: Duration::from_secs(args.timeout.max(1)),
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

    /// Prints what `apply` did, then what it refused, failed and left alone.
    pub(super) fn print_outcome(outcome: &Outcome, plan: &Plan, state: &State) {
        let or_default = |v: Option<String>| v.unwrap_or_else(|| "default".into());
        for t in &outcome.created {
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
        for c in &outcome.increased {
            println!("~ partitions {}: {} -> {}", c.name, c.from, c.to);
        }
        for c in &outcome.configured {
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
        for f in &outcome.failed {
            println!("! failed: {} {}: {}", f.action, f.name, f.error);
        }
        for name in &plan.unmanaged {
            println!("  unmanaged (left alone): {name}");
        }
        for n in &outcome.notes {
            println!("note: {n}");
        }
        if !state.configs_unknown.is_empty() {
            print_unknown_configs(&state.configs_unknown);
        }
        if !outcome.changed() {
            println!("no changes");
        }
    }
}
