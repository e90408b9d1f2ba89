//! On the leader only: turns desired services into tasks with node
//! assignments, replaces failed tasks, trims history.
//!
//! Architecture invariant: the orchestrator changes the cluster only through
//! raft proposals; `reconcile` decides, this loop proposes.

mod backoff;
pub mod managers;
mod reconcile;
pub mod scheduler;
mod slot;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::raft::{ProposeError, RaftHandle};
use crate::store::Store;

pub use reconcile::reconcile;

/// Runs until `shutdown`. Wakes on every store change and at least every
/// second (restart back-off is time-based).
pub async fn run(store: Arc<Store>, raft: RaftHandle, mut shutdown: watch::Receiver<bool>) {
    let mut changes = store.changes();
    let mut leadership = raft.leadership();
    loop {
        if raft.is_leader() {
            let commands = reconcile(&store.read(), now_ms());
            for command in commands {
                match raft.propose(command).await {
                    Ok(_) => {}
                    // Decided on a state that moved on (a service removed or
                    // scaled meanwhile); the next round decides again.
                    Err(ProposeError::Refused(e)) => {
                        tracing::debug!("orchestrator proposal refused: {e}")
                    }
                    // Already logged by raft, once; it retries by itself.
                    Err(e @ ProposeError::Unwritable { .. }) => {
                        tracing::debug!("orchestrator proposal failed: {e}")
                    }
                    Err(e) => tracing::warn!("orchestrator proposal failed: {e}"),
                }
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = leadership.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
