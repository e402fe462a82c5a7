//! Criterion benchmarks of the topic trie: uncached and cached matches, inserts and removes at
//! 1k, 100k and 1M subscriptions with 1% and 10% wildcard filters (and 1M with none).
//!
//! `cargo bench -p meshgate-benches --bench trie` (add `-- --test` for a quick smoke run).
//! `TRIE_BENCH_ONLY=1M/10pct` builds and measures that configuration alone (the others are
//! built even when a criterion filter skips their measurements).

use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshgate_topic::{Filter, MatchCache, Matches, Trie};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const REGIONS: [&str; 12] = [
    "us-east",
    "us-west",
    "us-central",
    "eu-west",
    "eu-central",
    "eu-north",
    "ap-south",
    "ap-east",
    "ap-north",
    "sa-east",
    "af-south",
    "me-central",
];
const SENSORS: [&str; 6] = ["rpm", "temp", "pressure", "vibration", "fuel", "oil"];

/// Topics of 4 to 6 levels in three families, from a space of tens of millions.
fn topic(rng: &mut StdRng) -> String {
    topic_in(rng, 1)
}

/// Like [`topic`] with `scale` times more stores, sites and ships: most of these topics fall
/// outside what the filters were drawn from, so they match nothing or only a broad wildcard.
fn topic_in(rng: &mut StdRng, scale: u32) -> String {
    let region = REGIONS[rng.random_range(0..REGIONS.len())];
    match rng.random_range(0..3) {
        0 => format!(
            "orders/{region}/store-{}/{}",
            rng.random_range(0..2000 * scale),
            rng.random_range(0..1000)
        ),
        1 => format!(
            "telemetry/{region}/site-{}/line-{}/m-{}",
            rng.random_range(0..500 * scale),
            rng.random_range(0..20),
            rng.random_range(0..200)
        ),
        _ => format!(
            "fleet/{region}/ship-{}/engine-{}/sensor-{}/{}",
            rng.random_range(0..300 * scale),
            rng.random_range(0..4),
            rng.random_range(0..50),
            SENSORS[rng.random_range(0..SENSORS.len())]
        ),
    }
}

/// A wildcard filter derived from a random topic, as narrow as real subscriptions tend to be:
/// `*` for one middle level, `prefix*` for one level (its last character dropped), or the last
/// level replaced by `>`; one in five combines two of these. At least three levels stay literal,
/// so no filter takes a whole region (`orders/us-east/*/>`).
fn wildcard(rng: &mut StdRng) -> String {
    loop {
        let t = topic(rng);
        let mut levels: Vec<String> = t.split('/').map(String::from).collect();
        let n = levels.len();
        let kinds = if rng.random_bool(0.2) { 2 } else { 1 };
        for _ in 0..kinds {
            match rng.random_range(0..3) {
                0 => levels[rng.random_range(1..n - 1)] = "*".into(),
                1 => {
                    let i = rng.random_range(2..n);
                    let level = &levels[i];
                    if level.ends_with('*') || level.len() < 3 {
                        continue;
                    }
                    levels[i] = format!("{}*", &level[..level.len() - 1]);
                }
                _ => {
                    levels[n - 1] = ">".into();
                    break;
                }
            }
        }
        let literal = levels
            .iter()
            .filter(|l| !l.ends_with('*') && *l != ">")
            .count();
        if literal < n && literal >= 3 {
            return levels.join("/");
        }
    }
}

/// `count` distinct filters, `wild_percent` of them with a wildcard.
fn filters(
    rng: &mut StdRng,
    count: usize,
    wild_percent: usize,
    avoid: &HashSet<String>,
) -> Vec<Filter> {
    let mut seen = HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let wild = out.len() % 100 < wild_percent;
        let text = if wild { wildcard(rng) } else { topic(rng) };
        if avoid.contains(&text) || !seen.insert(text.clone()) {
            continue;
        }
        out.push(Filter::parse(&text).expect("generated filters are valid"));
    }
    out
}

struct Setup {
    label: String,
    trie: Trie<u32, u32>,
    /// Topics to publish: half are subscribed literal filters, half random (mostly unsubscribed).
    topics: Vec<String>,
    /// Filters not in the trie, for the insert and remove benchmarks.
    batch: Vec<Filter>,
}

fn setup(subs: usize, wild_percent: usize) -> Setup {
    let mut rng = StdRng::seed_from_u64(0x5eed ^ (subs as u64) ^ ((wild_percent as u64) << 40));
    let all = filters(&mut rng, subs, wild_percent, &HashSet::new());
    let texts: HashSet<String> = all.iter().map(|f| f.to_string()).collect();
    let batch = filters(&mut rng, 1000, wild_percent, &texts);
    let mut trie = Trie::new();
    let start = Instant::now();
    for (i, f) in all.iter().enumerate() {
        trie.insert(f, None, i as u32, i as u32);
    }
    let built = start.elapsed();
    let literal: Vec<&Filter> = all.iter().filter(|f| f.is_literal()).collect();
    let topics: Vec<String> = (0..4096)
        .map(|i| match i % 2 {
            0 => literal[rng.random_range(0..literal.len())].to_string(),
            _ => topic_in(&mut rng, 10),
        })
        .collect();
    let mut out = Matches::new();
    let (mut matched, mut entries) = (0, 0);
    for t in &topics {
        trie.match_into(t, &mut out);
        matched += usize::from(!out.is_empty());
        entries += out.subscribers().len();
    }
    let label = format!("{}/{wild_percent}pct", human(subs));
    eprintln!(
        "trie {label}: built {subs} entries in {:.0} ms ({:.2} M inserts/s); {:.0}% of the \
         benchmark topics match, {:.2} entries per match on average",
        built.as_secs_f64() * 1e3,
        subs as f64 / built.as_secs_f64() / 1e6,
        matched as f64 * 100.0 / topics.len() as f64,
        entries as f64 / topics.len() as f64,
    );
    Setup {
        label,
        trie,
        topics,
        batch,
    }
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn bench_trie(c: &mut Criterion) {
    let only = std::env::var("TRIE_BENCH_ONLY").ok();
    // 1M with no wildcard at all is the baseline: the flat map of literal filters alone.
    let configs = [
        (1_000, 1),
        (1_000, 10),
        (100_000, 1),
        (100_000, 10),
        (1_000_000, 0),
        (1_000_000, 1),
        (1_000_000, 10),
    ];
    for (subs, wild_percent) in configs {
        let label = format!("{}/{wild_percent}pct", human(subs));
        if only.as_ref().is_some_and(|o| *o != label) {
            continue;
        }
        let mut s = setup(subs, wild_percent);
        let mut group = c.benchmark_group(format!("trie/{}", s.label));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));

        group.throughput(Throughput::Elements(1));
        group.bench_function("match_uncached", |b| {
            let mut out = Matches::new();
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (s.topics.len() - 1);
                s.trie.match_into(black_box(&s.topics[i]), &mut out);
                black_box(out.subscribers().len())
            })
        });

        // The same work on 16 topics whose trie paths stay in the CPU caches: the gap to
        // `match_uncached` is the cost of cache misses, the rest is computation.
        group.bench_function("match_uncached_hot16", |b| {
            let mut out = Matches::new();
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 15;
                s.trie.match_into(black_box(&s.topics[i]), &mut out);
                black_box(out.subscribers().len())
            })
        });

        // 256 hot topics in a 4096-slot cache: after warming, every lookup is a hit.
        let hot = &s.topics[..256];
        let mut cache = MatchCache::new(4096);
        for t in hot {
            cache.lookup(&s.trie, t);
        }
        group.bench_function("match_cached", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (hot.len() - 1);
                black_box(
                    cache
                        .lookup(&s.trie, black_box(&hot[i]))
                        .subscribers()
                        .len(),
                )
            })
        });
        eprintln!(
            "trie {}: cache hits {} misses {}",
            s.label,
            cache.hits(),
            cache.misses()
        );

        group.throughput(Throughput::Elements(s.batch.len() as u64));
        let base = subs as u32;
        group.bench_function("insert", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    for (i, f) in s.batch.iter().enumerate() {
                        s.trie.insert(f, None, base + i as u32, 0);
                    }
                    spent += start.elapsed();
                    for (i, f) in s.batch.iter().enumerate() {
                        s.trie.remove(f, None, base + i as u32);
                    }
                }
                spent
            })
        });
        group.bench_function("remove", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    for (i, f) in s.batch.iter().enumerate() {
                        s.trie.insert(f, None, base + i as u32, 0);
                    }
                    let start = Instant::now();
                    for (i, f) in s.batch.iter().enumerate() {
                        black_box(s.trie.remove(f, None, base + i as u32));
                    }
                    spent += start.elapsed();
                }
                spent
            })
        });
        group.finish();
        assert_eq!(
            s.trie.len(),
            subs,
            "the batch benchmarks leave the trie as built"
        );
    }
}

criterion_group!(benches, bench_trie);
criterion_main!(benches);
