//! Whether a node's connection works: a node whose connection failed leaves
//! every rotation for `PENALTY`, then gets requests again (and stays if its
//! connection works). The dispatcher's `Down` removes a node from the routes
//! for good; this covers the seconds before that, and paths that fail while
//! the node still heartbeats.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a node whose connection failed is left out.
pub const PENALTY: Duration = Duration::from_secs(5);

/// Milliseconds since the first call (a monotonic clock cheap to store in
/// an atomic).
pub fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One peer node's connection health, shared by every replica on it.
#[derive(Debug, Default)]
pub struct Health {
    /// `now_ms()` until which the node is left out (0: never failed).
    out_until: AtomicU64,
}

impl Health {
    pub fn is_out(&self, now: u64) -> bool {
        self.out_until.load(Ordering::Relaxed) > now
    }

    /// The connection failed: out of rotation for `PENALTY` from `now`.
    /// Returns whether it was in rotation until now.
    pub fn failed(&self, now: u64) -> bool {
        let until = now.saturating_add(u64::try_from(PENALTY.as_millis()).unwrap_or(u64::MAX));
        let before = self.out_until.swap(until, Ordering::Relaxed);
        before <= now
    }

    /// A request got an answer: back in rotation. Returns whether it had
    /// been out.
    pub fn worked(&self) -> bool {
        if self.out_until.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.out_until.swap(0, Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_node_is_out_for_the_penalty_then_back() {
        let h = Health::default();
        assert!(!h.is_out(1000));
        assert!(h.failed(1000), "first failure takes it out");
        assert!(!h.failed(1500), "already out");
        assert!(h.is_out(1500 + 4999));
        assert!(
            !h.is_out(1500 + 5000),
            "the penalty runs from the last failure"
        );
        assert!(h.worked());
        assert!(!h.is_out(1600));
        assert!(!h.worked());
    }
}
