//! Seeded simulations of the mesh registry: faults, then convergence and routing checks.
//!
//! Every failure names its seed; rerun one with `SIM_SEED=<seed>`.

use meshgate_registry::sim::{Chaos, Faults, Sim, SimConfig, topic};

/// Seeds to run: `SIM_SEED` alone if set, else the given ones.
fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => default.to_vec(),
    }
}

/// Runs `f` for each seed, reporting the failing seed.
fn for_seeds(default: &[u64], f: impl Fn(u64) -> Result<String, String>) {
    for seed in seeds(default) {
        let started = std::time::Instant::now();
        match f(seed) {
            Ok(summary) => println!("seed {seed}: {summary} ({:.1?} wall)", started.elapsed()),
            Err(e) => panic!("seed {seed} failed (rerun with SIM_SEED={seed}): {e}"),
        }
    }
}

/// Publishes `events` events on random topics from random live origins; all must be delivered
/// exactly as the interest says. Returns (link copies, destinations) summed.
fn publish_random(sim: &mut Sim, events: usize) -> Result<(usize, usize), String> {
    let (mut copies, mut dests) = (0, 0);
    for _ in 0..events {
        let n = sim.len();
        let origin = sim.rng().below(n);
        let topic = topic(sim.rng());
        let report = sim.publish(origin, &topic)?;
        copies += report.link_copies;
        dests += report.destinations;
    }
    Ok((copies, dests))
}

fn chaos_then_converge(seed: u64, nodes: usize, chaos_ms: u64) -> Result<String, String> {
    let mut cfg = SimConfig::new(seed, nodes);
    cfg.faults = Faults {
        loss: 0.1,
        duplicate: 0.05,
        reorder: 0.2,
    };
    let mut sim = Sim::new(cfg);
    sim.run_for(3_000);
    sim.chaos(chaos_ms, Chaos::default());
    sim.heal_all();
    let Some(took) = sim.run_until_converged(120_000) else {
        sim.check_converged()?;
        return Err("no convergence within 120 s".into());
    };
    sim.check_mirrors()?;
    let (copies, dests) = publish_random(&mut sim, 300)?;
    if let Some(e) = sim.errors().first() {
        return Err(e.clone());
    }
    Ok(format!(
        "{nodes} nodes converged {took} ms after the faults stopped; 300 events, {dests} \
         destinations, {copies} link copies"
    ))
}

#[test]
fn a_hundred_nodes_converge_after_faults_and_route_exactly() {
    for_seeds(&[1, 2, 3], |seed| chaos_then_converge(seed, 100, 30_000));
}

#[test]
fn small_meshes_converge_after_long_faults() {
    for_seeds(&[11, 12, 13, 14, 15, 16], |seed| {
        chaos_then_converge(seed, 12, 120_000)
    });
}

#[test]
fn a_lasting_partition_converges_per_component() {
    for_seeds(&[21, 22], |seed| {
        let mut sim = Sim::new(SimConfig::new(seed, 40));
        for _ in 0..200 {
            sim.random_interest_op();
        }
        sim.run_for(10_000);
        let n = sim.len();
        let side: Vec<usize> = (0..n).filter(|_| sim.rng().chance(0.5)).collect();
        sim.partition(&side);
        // Entries of the other side expire after 20 s unreachable.
        sim.run_for(21_000);
        let took = sim
            .run_until_converged(60_000)
            .ok_or_else(|| sim.check_converged().err().unwrap_or_default())?;
        sim.check_mirrors()?;
        publish_random(&mut sim, 200)?;
        let comps = sim.components();
        let count = comps
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        Ok(format!(
            "{count} components converged {took} ms after expiry"
        ))
    });
}

#[test]
fn after_convergence_each_event_crosses_each_tree_link_once() {
    for_seeds(&[31, 32], |seed| {
        let mut cfg = SimConfig::new(seed, 100);
        // Unit costs and many extra links: equal-cost paths everywhere.
        cfg.max_cost = 1;
        cfg.extra_links = 200;
        let mut sim = Sim::new(cfg);
        for i in 0..sim.len() {
            sim.subscribe(i, ">", None, true);
        }
        sim.run_until_converged(60_000).ok_or("no convergence")?;
        sim.check_mirrors()?;
        for _ in 0..50 {
            let n = sim.len();
            let origin = sim.rng().below(n);
            let report = sim.publish(origin, "orders/eu/s1")?;
            // Every node is a destination: the copies form a spanning tree.
            if report.link_copies != sim.len() - 1 || report.max_copies_per_link != 1 {
                return Err(format!("{report:?}"));
            }
        }
        Ok("spanning-tree forwarding".into())
    })
}

#[test]
fn queue_groups_are_served_once_by_the_nearest_member() {
    for_seeds(&[41], |seed| {
        let mut sim = Sim::new(SimConfig::new(seed, 30));
        for i in (0..sim.len()).step_by(3) {
            sim.subscribe(i, "orders/>", Some("workers"), true);
        }
        sim.subscribe(1, "orders/*/s1", None, true);
        sim.run_until_converged(60_000).ok_or("no convergence")?;
        let mut served = std::collections::BTreeSet::new();
        for _ in 0..60 {
            // `publish` checks that one member serves the group, and that it is the nearest.
            let report = sim.publish(2, "orders/eu/s1")?;
            served.insert(report.destinations);
        }
        Ok(format!("destinations per event: {served:?}"))
    })
}
