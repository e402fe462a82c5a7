//! A small seeded PRNG (SplitMix64) and the random topics and filters of the simulation.
//!
//! Its own generator rather than `rand`: the same seed gives the same run on every build.

/// SplitMix64: fast, seedable, good enough for a simulation.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + ((u128::from(self.next_u64()) * u128::from(hi - lo + 1)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64) < p * (1u64 << 53) as f64
    }

    /// A random element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const L1: [&str; 4] = ["orders", "telemetry", "alerts", "chat"];
const L2: [&str; 4] = ["eu", "us", "ap", "uk"];
const L3: [&str; 4] = ["s1", "s2", "s3", "t1"];
const GROUPS: [&str; 3] = ["g1", "g2", "g3"];

/// A random three-level topic from a small space, so that filters often match.
pub fn topic(rng: &mut SimRng) -> String {
    format!("{}/{}/{}", rng.pick(&L1), rng.pick(&L2), rng.pick(&L3))
}

/// A random filter over the topic space: literal, `*`, `prefix*` and `>` levels.
pub fn filter(rng: &mut SimRng) -> String {
    let (a, b, c) = (*rng.pick(&L1), *rng.pick(&L2), *rng.pick(&L3));
    match rng.below(8) {
        0 | 1 => format!("{a}/{b}/{c}"),
        2 => format!("{a}/*/{c}"),
        3 => format!("{a}/{}*/>", &b[..1]),
        4 => format!("{a}/>"),
        5 => format!("*/{b}/*"),
        6 => format!("{a}/{b}/{}*", &c[..1]),
        _ if rng.chance(0.2) => ">".to_owned(),
        _ => format!("{a}/{b}/>"),
    }
}

/// No group (most of the time) or one of a few queue groups.
pub fn group(rng: &mut SimRng) -> Option<String> {
    rng.chance(0.3).then(|| (*rng.pick(&GROUPS)).to_owned())
}

#[cfg(test)]
mod tests {
    use meshgate_topic::Filter;

    use super::*;

    #[test]
    fn generated_filters_parse_and_the_generator_is_seeded() {
        let mut rng = SimRng::new(7);
        for _ in 0..1000 {
            assert!(Filter::parse(&filter(&mut rng)).is_ok());
            assert!(rng.below(3) < 3);
            let r = rng.range(5, 7);
            assert!((5..=7).contains(&r));
        }
        let (mut a, mut b) = (SimRng::new(1), SimRng::new(1));
        assert_eq!(topic(&mut a), topic(&mut b));
        assert!(!SimRng::new(1).chance(0.0));
        assert!(SimRng::new(1).chance(1.0));
    }
}
