//! The connections of one listener, capped, with the order in which they
//! became idle so that a full table evicts the longest-idle one.
//!
//! "Idle" means no request in flight: waiting for the next request on a
//! keep-alive connection, or still receiving a request head (a slowloris
//! client never gets past that). A connection with a request in flight is
//! never evicted.
//!
//! The request path only touches two atomics of its own connection (when it
//! went idle, as a sequence number, or `BUSY`); the table's lock is taken when
//! a connection opens or closes, and the eviction scan (only when the table is
//! full) is O(connections of this listener), about a microsecond per thousand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// `Slot::idle_seq` while a request is in flight.
const BUSY: u64 = u64::MAX;
/// `Slot::idle_seq` once chosen for eviction.
const EVICTED: u64 = u64::MAX - 1;

struct Slot {
    /// Requests in flight (hyper http1 serves one at a time; a count keeps
    /// this correct whatever it does).
    busy: AtomicU32,
    /// When the connection last became idle (the table's sequence), `BUSY`
    /// or `EVICTED`.
    idle_seq: AtomicU64,
    evict: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    /// Connections accepted and not yet ended (an evicted one counts until
    /// its task has closed it).
    live: usize,
    next_id: u64,
    conns: HashMap<u64, Arc<Slot>>,
}

pub struct Table {
    cap: usize,
    inner: Mutex<Inner>,
    seq: AtomicU64,
    /// An admission waits for a connection to end or become idle.
    waiting: AtomicBool,
    freed: Notify,
}

/// One admitted connection. Dropping it frees its place.
pub struct Conn {
    table: Arc<Table>,
    id: u64,
    slot: Arc<Slot>,
    pub evicted: Arc<Notify>,
}

impl Table {
    pub fn new(cap: usize) -> Arc<Table> {
        Arc::new(Table {
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
            seq: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent data (every
        // update is a map operation and a counter), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection: into a free place, else tells the
    /// longest-idle connection to close and takes its place once it has
    /// (so the cap holds exactly, however fast connections arrive), else
    /// waits until a connection ends or becomes idle.
    pub async fn admit(self: &Arc<Self>) -> Conn {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            {
                let mut g = self.lock();
                let inner = &mut *g;
                if inner.live < self.cap {
                    self.waiting.store(false, Ordering::SeqCst);
                    inner.live += 1;
                    let id = inner.next_id;
                    inner.next_id += 1;
                    let evict = Arc::new(Notify::new());
                    let slot = Arc::new(Slot {
                        busy: AtomicU32::new(0),
                        idle_seq: AtomicU64::new(self.seq.fetch_add(1, Ordering::SeqCst)),
                        evict: evict.clone(),
                    });
                    inner.conns.insert(id, slot.clone());
                    return Conn {
                        table: self.clone(),
                        id,
                        slot,
                        evicted: evict,
                    };
                }
                evict_longest_idle(inner);
            }
            freed.await;
        }
    }

    /// Connections open on this listener.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.lock().live
    }
}

/// Tells the connection idle the longest to close, if any is idle. A
/// connection whose request starts during the scan is skipped (the
/// compare-exchange fails), never cut.
fn evict_longest_idle(inner: &mut Inner) {
    loop {
        let victim = inner
            .conns
            .iter()
            .map(|(id, s)| (s.idle_seq.load(Ordering::SeqCst), *id))
            .filter(|(seq, _)| *seq < EVICTED)
            .min();
        let Some((seq, id)) = victim else {
            return;
        };
        let Some(slot) = inner.conns.get(&id) else {
            return;
        };
        if slot
            .idle_seq
            .compare_exchange(seq, EVICTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            slot.evict.notify_one();
            inner.conns.remove(&id);
            return;
        }
    }
}

impl Conn {
    /// A request started.
    pub fn busy(&self) {
        if self.slot.busy.fetch_add(1, Ordering::SeqCst) == 0 {
            // Keeps EVICTED: an evicted connection stays evicted.
            let _ = self
                .slot
                .idle_seq
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                    (s != EVICTED).then_some(BUSY)
                });
        }
    }

    /// A request ended (its response was written or abandoned).
    pub fn idle(&self) {
        if self.slot.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            let seq = self.table.seq.fetch_add(1, Ordering::SeqCst);
            let _ = self
                .slot
                .idle_seq
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                    (s != EVICTED).then_some(seq)
                });
            // An idle connection can be evicted: a waiting admission may proceed.
            if self.table.waiting.load(Ordering::SeqCst) {
                self.table.freed.notify_one();
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        {
            let mut g = self.table.lock();
            g.conns.remove(&self.id);
            g.live -= 1;
        }
        self.table.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_table_evicts_the_longest_idle_connection_never_a_busy_one() {
        let t = Table::new(2);
        let a = t.admit().await;
        let b = t.admit().await;
        a.busy(); // a has a request in flight; b is idle (a slow head, say)
        let admitting = tokio::spawn({
            let t = t.clone();
            async move { t.admit().await }
        });
        // b was told to go, a was not; c gets in once b has closed.
        tokio::time::timeout(std::time::Duration::from_secs(5), b.evicted.notified())
            .await
            .expect("the idle connection b is evicted");
        assert_eq!(t.live(), 2, "b counts until its task closes it");
        assert!(!admitting.is_finished());
        drop(b);
        let c = admitting.await.expect("c admitted");
        assert_eq!(t.live(), 2);
        // Now a and c are busy: a new connection waits for one to end.
        c.busy();
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.admit().await.id }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no place while both are busy");
        c.idle();
        drop(c);
        let id = waiter.await.expect("admitted once c ended");
        assert_eq!(id, 3);
    }

    #[tokio::test]
    async fn an_idle_connection_goes_before_one_that_just_finished_a_request() {
        let t = Table::new(2);
        let a = t.admit().await; // idle since admission
        let b = t.admit().await;
        b.busy();
        b.idle(); // idle again, but more recently than a
        let _c = tokio::spawn({
            let t = t.clone();
            async move { t.admit().await }
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), a.evicted.notified())
            .await
            .expect("a, idle the longest, is evicted");
    }
}
