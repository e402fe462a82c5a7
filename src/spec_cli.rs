//! `meshgate spec validate DIR [--previous DIR]`: lints a specs directory for CI pipelines.

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
