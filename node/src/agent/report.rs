//! Task state reports, batched: whatever queued while the previous batch was
//! being committed goes to the dispatcher as one status call (one
//! `ReportTaskStatuses` entry). A batch that fails (no leader, the disk
//! full, the manager gone) is kept and retried with backoff, merged with
//! newer reports, so the agent can fire and forget. `heartbeats` sends an
//! empty report every heartbeat period.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use swarmlet_proto::TaskStatus;
use tokio::sync::{mpsc, watch};

use super::source::AssignmentSource;

/// At most this many reports per raft entry (about 100 bytes each).
const BATCH: usize = 1000;
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::UnboundedSender<TaskStatus>,
}

impl Reporter {
    pub fn spawn(source: Arc<dyn AssignmentSource>, shutdown: watch::Receiver<bool>) -> Reporter {
        let (tx, rx) = mpsc::unbounded_channel();
        crate::daemon::spawn_critical("task reporter", run(source, rx, shutdown));
        Reporter { tx }
    }

    /// Queues a report; it reaches the store unless its task is gone.
    pub fn send(&self, status: TaskStatus) {
        let _ = self.tx.send(status);
    }
}

/// Keeps the furthest state per task (the store ignores a step back anyway).
fn merge(pending: &mut BTreeMap<String, TaskStatus>, s: TaskStatus) {
    match pending.get(&s.task_id) {
        Some(old) if old.state > s.state => {}
        _ => {
            pending.insert(s.task_id.clone(), s);
        }
    }
}

/// Tells the dispatcher every heartbeat period that this node is alive.
pub async fn heartbeats(source: Arc<dyn AssignmentSource>, mut shutdown: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        match source.report(Vec::new()).await {
            Ok(()) => {
                if failing {
                    tracing::info!("heartbeats reach a manager again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("heartbeat failed: {e}");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(source.heartbeat_period()) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn run(
    source: Arc<dyn AssignmentSource>,
    mut rx: mpsc::UnboundedReceiver<TaskStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending: BTreeMap<String, TaskStatus> = BTreeMap::new();
    let mut backoff = RETRY_FIRST;
    loop {
        if pending.is_empty() {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => merge(&mut pending, s),
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
        while let Ok(s) = rx.try_recv() {
            merge(&mut pending, s);
        }
        let mut updates = Vec::with_capacity(pending.len().min(BATCH));
        while updates.len() < BATCH {
            match pending.pop_first() {
                Some((_, s)) => updates.push(s),
                None => break,
            }
        }
        match source.report(updates.clone()).await {
            Ok(()) => backoff = RETRY_FIRST,
            Err(e) => {
                tracing::debug!(
                    reports = updates.len(),
                    "reporting task states failed, retrying: {e}"
                );
                for s in updates {
                    if !pending.contains_key(&s.task_id) {
                        pending.insert(s.task_id.clone(), s);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmlet_proto::TaskState;

    #[test]
    fn merge_keeps_the_furthest_state() {
        let s = |state| TaskStatus {
            task_id: "t".into(),
            state,
            message: String::new(),
            error: None,
            endpoint: None,
        };
        let mut p = BTreeMap::new();
        merge(&mut p, s(TaskState::Running));
        merge(&mut p, s(TaskState::Starting));
        assert_eq!(p["t"].state, TaskState::Running);
        merge(&mut p, s(TaskState::Shutdown));
        assert_eq!(p["t"].state, TaskState::Shutdown);
    }
}
