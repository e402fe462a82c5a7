//! The mesh registry at scale, on the seeded simulation of `meshgate-registry` (feature `sim`):
//! a 1,000-node mesh bootstrapping, then faults (loss, duplicates, reordering, link cuts,
//! partitions, restarts) and a heal; then one node holding 100k filters and a node joining.
//! Prints virtual convergence times, wall times and gossip bytes (prost `encoded_len`).
//!
//! `cargo bench -p meshgate-benches --bench mesh_sim` (add `-- --test` for a quick small run).
//! `MESH_SIM_NODES`, `MESH_SIM_FILTERS` and `MESH_SIM_SEED` override the sizes and the seed.

use std::time::Instant;

use anyhow::{Context, bail};
use meshgate_registry::sim::{Chaos, Faults, Sim, SimConfig, topic};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--test");
    let nodes = env_or("MESH_SIM_NODES", if quick { 60 } else { 1000 }) as usize;
    let filters = env_or("MESH_SIM_FILTERS", if quick { 5_000 } else { 100_000 }) as usize;
    let seed = env_or("MESH_SIM_SEED", 7);
    println!(
        "mesh_sim: {nodes} nodes, seed {seed}{}",
        if quick { " (--test)" } else { "" }
    );
    mesh(nodes, seed)?;
    join(filters, seed)?;
    Ok(())
}

/// Bytes per node: mean and max of what each node sent.
fn per_node(sim: &Sim) -> (u64, u64) {
    let sent = &sim.stats.bytes_sent;
    let total: u64 = sent.iter().sum();
    (
        total / sent.len().max(1) as u64,
        sent.iter().copied().max().unwrap_or(0),
    )
}

fn report(phase: &str, sim: &Sim, virtual_ms: u64, wall: std::time::Duration) {
    let (mean, max) = per_node(sim);
    println!(
        "  {phase:<28} {virtual_ms:>7} virtual ms {:>8.2} s wall | sent per node: mean {} max {} \
         | digests {} deltas {} ({} messages)",
        wall.as_secs_f64(),
        human(mean),
        human(max),
        human(sim.stats.digest_bytes),
        human(sim.stats.delta_bytes),
        sim.stats.messages,
    );
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 10 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b if b >= 10 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn mesh(nodes: usize, seed: u64) -> anyhow::Result<()> {
    let wall = Instant::now();
    let mut sim = Sim::new(SimConfig::new(seed, nodes));
    for _ in 0..nodes * 3 {
        sim.random_interest_op();
    }
    let took = sim
        .run_until_converged(600_000)
        .context("bootstrap did not converge")?;
    report("bootstrap", &sim, took, wall.elapsed());

    sim.stats.reset();
    let wall = Instant::now();
    sim.set_faults(Faults {
        loss: 0.05,
        duplicate: 0.02,
        reorder: 0.1,
    });
    sim.chaos(30_000, Chaos::default());
    report("30 s of faults", &sim, 30_000, wall.elapsed());

    sim.stats.reset();
    let wall = Instant::now();
    sim.heal_all();
    let took = sim
        .run_until_converged(600_000)
        .context("no convergence after the heal")?;
    report("heal to convergence", &sim, took, wall.elapsed());

    sim.stats.reset();
    let wall = Instant::now();
    sim.run_for(10_000);
    report("10 s quiet (anti-entropy)", &sim, 10_000, wall.elapsed());
    // Idle gossip must stay under 50 kbit/s per node: once in sync, summaries only.
    let (mean, max) = per_node(&sim);
    println!(
        "  quiet gossip per node: mean {:.0} B/s ({:.2} kbit/s), max {:.0} B/s ({:.2} kbit/s)",
        mean as f64 / 10.0,
        mean as f64 * 8.0 / 10_000.0,
        max as f64 / 10.0,
        max as f64 * 8.0 / 10_000.0,
    );

    let wall = Instant::now();
    sim.check_mirrors().map_err(anyhow::Error::msg)?;
    let events = 200;
    let (mut copies, mut dests) = (0, 0);
    for _ in 0..events {
        let n = sim.len();
        let origin = sim.rng().below(n);
        let topic = topic(sim.rng());
        let r = sim.publish(origin, &topic).map_err(anyhow::Error::msg)?;
        copies += r.link_copies;
        dests += r.destinations;
    }
    println!(
        "  routing: {events} events, {:.1} destinations and {:.1} link copies per event, all \
         exact ({:.2} s wall)",
        dests as f64 / events as f64,
        copies as f64 / events as f64,
        wall.elapsed().as_secs_f64()
    );
    if let Some(e) = sim.errors().first() {
        bail!("change feed: {e}");
    }
    Ok(())
}

/// One node holds `filters` filters in a small mesh; a new node joins (linked to another node)
/// and receives them.
fn join(filters: usize, seed: u64) -> anyhow::Result<()> {
    let wall = Instant::now();
    let mut sim = Sim::new(SimConfig::new(seed, 10));
    sim.bulk_interest(0, filters);
    let took = sim
        .run_until_converged(600_000)
        .context("the 10-node mesh did not converge")?;
    println!(
        "join: node 0 of 10 holds {filters} filters; the mesh converged in {took} virtual ms \
         ({:.2} s wall)",
        wall.elapsed().as_secs_f64()
    );

    sim.stats.reset();
    let wall = Instant::now();
    let start = sim.now_ms();
    let joined = sim.add_node();
    sim.add_link(joined, 5, 1);
    let target = sim.held(0, 0);
    while sim.held(joined, 0) != target {
        if sim.now_ms() - start > 600_000 {
            bail!("the new node did not receive the entry");
        }
        sim.run_for(10);
    }
    let took = sim.now_ms() - start;
    println!(
        "  new node received the {filters}-filter entry in {took} virtual ms ({:.2} s wall): \
         {} received by it, {} sent in all",
        wall.elapsed().as_secs_f64(),
        human(sim.stats.bytes_received[joined]),
        human(sim.stats.bytes_sent.iter().sum()),
    );
    let took = sim
        .run_until_converged(600_000)
        .context("no convergence after the join")?;
    println!("  whole mesh converged {took} virtual ms later");
    Ok(())
}
