//! Exponential backoff with jitter for reconnecting to a broker that went away.

use std::time::Duration;

use tokio::sync::watch;

use crate::status::BridgeStatus;

/// Doubles from `min` to `max`, with up to a quarter of jitter; [`Backoff::reset`] after success.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, never waits longer than `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = d.as_millis() as u64 / 4;
        let j = if jitter > 0 { rand_below(jitter) } else { 0 };
        d + Duration::from_millis(j)
    }

    /// Jumps to the longest wait (an error that retrying soon will not cure).
    pub fn exhaust(&mut self) {
        self.next = self.max;
    }

    /// Back to the shortest wait.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

/// After an error of a source or sink: marks it down with `error`, counts a retry and waits the
/// next backoff. False when the node stops meanwhile.
pub async fn retry_later(
    status: &BridgeStatus,
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
    error: &str,
) -> bool {
    status.down(error);
    status
        .retries
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::select! {
        _ = shutdown.changed() => false,
        _ = tokio::time::sleep(backoff.next_delay()) => true,
    }
}

fn rand_below(n: u64) -> u64 {
    // Jitter needs no quality: the clock's low bits will do.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    t % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let waits: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        for (w, base) in waits.iter().zip([100, 200, 400, 800, 800, 800]) {
            assert!(*w >= base && *w < base + base / 4 + 1, "{waits:?}");
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(126));
    }
}
