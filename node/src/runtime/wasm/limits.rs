//! What one request's instance may take from the node: its own memory limit
//! (`--limit-memory`) and a share of the node-wide instance memory budget
//! (`swarmlet daemon --instance-memory-budget`).
//!
//! Every instance's linear memory is counted against the budget as it grows
//! (wasmtime asks the store's `ResourceLimiter` before each growth, the
//! initial allocation included) and given back when the instance is dropped.
//! A growth past the budget waits briefly (the guest is suspended, not the
//! thread) for other instances to give memory back, then fails as on a full
//! machine (the guest's `memory.grow` returns -1) and its request answers
//! 503; new requests wait likewise before they instantiate: the daemon's
//! memory stays bounded however many requests arrive.
//!
//! Architecture invariant: the linear memory of all live instances together
//! never exceeds the budget.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use wasmtime::ResourceLimiterAsync;

/// How long a guest's `memory.grow` waits for budget before it fails:
/// shorter than a request's wait for a slot, since the guest already holds
/// memory that others may be waiting for.
const GROW_WAIT: Duration = Duration::from_millis(500);

/// The node-wide budget for the linear memory of all live instances.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
    freed: Notify,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// The default: half of the machine's memory (`MemTotal`), or 2 GiB
    /// when /proc/meminfo cannot be read.
    pub fn default_limit() -> usize {
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            })
            .map(|kib| kib << 10);
        total.map_or(2 << 30, |t| t / 2)
    }

    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes of linear memory live instances hold now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, bytes: usize) -> bool {
        let limit = self.limit();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|n| *n <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }

    /// Waits up to `wait` until the budget has room for a new instance
    /// (`need` bytes); false if it never had.
    pub async fn wait_for_room(&self, need: usize, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.used().saturating_add(need) <= self.limit() {
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
    }
}

/// One store's limiter: its instance's memory limit, and its share of the
/// node's budget, given back when the store is dropped.
pub(super) struct InstanceLimiter {
    memory_limit: usize,
    budget: Arc<MemoryBudget>,
    /// Bytes taken from the budget by this store.
    taken: usize,
    /// Taken for the growth in progress (given back if it fails).
    pending: usize,
    denied_by_budget: bool,
    /// Also set on such a denial, for whoever answers the requests of an
    /// instance it cannot reach (concurrent WASIp3 requests).
    denial_flag: Option<Arc<AtomicBool>>,
}

impl InstanceLimiter {
    pub(super) fn new(memory_limit: usize, budget: Arc<MemoryBudget>) -> Self {
        InstanceLimiter {
            memory_limit,
            budget,
            taken: 0,
            pending: 0,
            denied_by_budget: false,
            denial_flag: None,
        }
    }

    /// A flag set when a growth of this instance is denied by the budget,
    /// readable without the store.
    pub(super) fn denial_flag(&mut self) -> Arc<AtomicBool> {
        self.denial_flag
            .get_or_insert_with(|| Arc::new(AtomicBool::new(false)))
            .clone()
    }
}

impl InstanceLimiter {
    /// Whether a growth of this instance failed because the node's budget
    /// was in use (so its request gets 503, not 500).
    pub(super) fn denied_by_budget(&self) -> bool {
        self.denied_by_budget
    }

    async fn grow(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> bool {
        self.pending = 0;
        if desired > self.memory_limit || maximum.is_some_and(|m| desired > m) {
            return false;
        }
        let extra = desired.saturating_sub(current);
        // Wait (the guest, not the thread) for other instances to give memory back.
        let deadline = tokio::time::Instant::now() + GROW_WAIT;
        while !self.budget.try_take(extra) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.budget.wait_for_room(extra, left).await {
                tracing::warn!(
                    used = self.budget.used(),
                    budget = self.budget.limit(),
                    "instance memory budget exhausted: a guest's memory.grow to {desired} bytes failed"
                );
                self.denied_by_budget = true;
                if let Some(flag) = &self.denial_flag {
                    flag.store(true, Ordering::Relaxed);
                }
                return false;
            }
        }
        self.taken += extra;
        self.pending = extra;
        true
    }
}

type GrowFuture<'a> = Pin<Box<dyn Future<Output = wasmtime::Result<bool>> + Send + 'a>>;

// `ResourceLimiterAsync` is declared with `#[async_trait]`; these are its
// methods written out, so the node needs no async-trait dependency.
impl ResourceLimiterAsync for InstanceLimiter {
    fn memory_growing<'a, 'b>(
        &'a mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> GrowFuture<'b>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move { Ok(self.grow(current, desired, maximum).await) })
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        tracing::debug!("memory growth failed: {error:?}");
        self.budget.give_back(self.pending);
        self.taken -= self.pending;
        self.pending = 0;
        Ok(())
    }

    fn table_growing<'a, 'b>(
        &'a mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> GrowFuture<'b>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move { Ok(maximum.is_none_or(|m| desired <= m)) })
    }
}

impl Drop for InstanceLimiter {
    fn drop(&mut self) {
        self.budget.give_back(self.taken);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn growth_stops_at_the_budget_and_dropping_gives_it_back() {
        let budget = MemoryBudget::new(10 << 20);
        let mut a = InstanceLimiter::new(8 << 20, budget.clone());
        let mut b = InstanceLimiter::new(8 << 20, budget.clone());
        assert!(a.grow(0, 6 << 20, None).await);
        assert!(!a.grow(6 << 20, 9 << 20, None).await, "over its own limit");
        assert!(!a.denied_by_budget());
        assert!(!b.grow(0, 6 << 20, None).await, "over the budget");
        assert!(b.denied_by_budget());
        assert!(b.grow(0, 4 << 20, None).await);
        assert_eq!(budget.used(), 10 << 20);
        drop(a);
        assert_eq!(budget.used(), 4 << 20);
        b.memory_grow_failed(wasmtime::Error::msg("no")).unwrap();
        assert_eq!(budget.used(), 0);
        assert!(MemoryBudget::default_limit() > 0);
    }

    #[tokio::test]
    async fn a_growth_waits_for_memory_given_back() {
        let budget = MemoryBudget::new(10 << 20);
        let mut a = InstanceLimiter::new(8 << 20, budget.clone());
        let mut b = InstanceLimiter::new(8 << 20, budget.clone());
        assert!(a.grow(0, 8 << 20, None).await);
        let waiting = tokio::spawn(async move { b.grow(0, 8 << 20, None).await });
        tokio::task::yield_now().await;
        drop(a);
        assert!(
            waiting.await.unwrap(),
            "b should get the memory a gave back"
        );
    }
}
