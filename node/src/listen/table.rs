//! The connections of one listener, capped, with the order in which they
//! became idle so that a full table evicts the longest-idle one.
//!
//! "Idle" means no request in flight: waiting for the next request on a
//! keep-alive connection, or still receiving a request head (a slowloris
//! client never gets past that). A connection with a request in flight is
//! never evicted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

struct Entry {
    /// Requests in flight (hyper http1 serves one at a time; a count keeps
    /// this correct whatever it does).
    busy: u32,
    /// Key in `Inner::idle` while `busy == 0`.
    idle_seq: Option<u64>,
    evict: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    /// Connections accepted and not yet ended (evicted ones included until
    /// their task has closed them).
    live: usize,
    next_id: u64,
    next_seq: u64,
    conns: HashMap<u64, Entry>,
    /// Idle connections, oldest first.
    idle: BTreeMap<u64, u64>,
}

pub struct Table {
    cap: usize,
    inner: Mutex<Inner>,
    freed: Notify,
}

/// One admitted connection. Dropping it frees its place.
pub struct Conn {
    table: Arc<Table>,
    id: u64,
    pub evicted: Arc<Notify>,
}

impl Table {
    pub fn new(cap: usize) -> Arc<Table> {
        Arc::new(Table {
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent data (every
        // update is a few map operations), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection: into a free place, else tells the
    /// longest-idle connection to close and takes its place once it has
    /// (so the cap holds exactly, however fast connections arrive), else
    /// waits until a connection ends.
    pub async fn admit(self: &Arc<Self>) -> Conn {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut g = self.lock();
                let inner = &mut *g;
                if inner.live < self.cap {
                    inner.live += 1;
                    let id = inner.next_id;
                    inner.next_id += 1;
                    let seq = inner.next_seq;
                    inner.next_seq += 1;
                    let evict = Arc::new(Notify::new());
                    inner.conns.insert(
                        id,
                        Entry {
                            busy: 0,
                            idle_seq: Some(seq),
                            evict: evict.clone(),
                        },
                    );
                    inner.idle.insert(seq, id);
                    return Conn {
                        table: self.clone(),
                        id,
                        evicted: evict,
                    };
                }
                if let Some((_, victim)) = inner.idle.pop_first() {
                    if let Some(e) = inner.conns.remove(&victim) {
                        e.evict.notify_one();
                    }
                }
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

impl Conn {
    /// A request started.
    pub fn busy(&self) {
        let mut g = self.table.lock();
        let inner = &mut *g;
        if let Some(e) = inner.conns.get_mut(&self.id) {
            e.busy += 1;
            if let Some(seq) = e.idle_seq.take() {
                inner.idle.remove(&seq);
            }
        }
    }

    /// A request ended (its response was written or abandoned).
    pub fn idle(&self) {
        let mut g = self.table.lock();
        let inner = &mut *g;
        if let Some(e) = inner.conns.get_mut(&self.id) {
            e.busy = e.busy.saturating_sub(1);
            if e.busy == 0 && e.idle_seq.is_none() {
                let seq = inner.next_seq;
                inner.next_seq += 1;
                e.idle_seq = Some(seq);
                inner.idle.insert(seq, self.id);
            }
        }
        drop(g);
        // An idle connection can be evicted: a waiting admission may proceed.
        self.table.freed.notify_one();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        {
            let mut g = self.table.lock();
            let inner = &mut *g;
            if let Some(e) = inner.conns.remove(&self.id) {
                if let Some(seq) = e.idle_seq {
                    inner.idle.remove(&seq);
                }
            }
            inner.live -= 1;
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
