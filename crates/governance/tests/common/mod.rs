//! Shared helpers of the integration tests (included with `mod common;`).

#![allow(dead_code)]

use std::path::PathBuf;

use meshgate_governance::load::load_dir;
use meshgate_governance::{Catalog, Problem, Sources};

/// The fixture folder `tests/specs/<name>`.
pub fn specs_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/specs")
        .join(name)
}

/// Loads a fixture folder.
pub fn sources(name: &str) -> Sources {
    load_dir(&specs_dir(name)).expect("fixture folder readable")
}

/// Builds a fixture folder's catalog, which must have no problem.
pub fn catalog(name: &str) -> Catalog {
    let (catalog, problems) = Catalog::build(&sources(name), 1);
    assert_eq!(
        problems,
        Vec::<Problem>::new(),
        "fixture {name} has problems"
    );
    catalog
}
