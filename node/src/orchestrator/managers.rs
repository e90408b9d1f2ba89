//! The manager set follows the store. On the leader, raft's configuration is
//! reconciled with the store's manager nodes, one change at a time (raft
//! applies one configuration change before the next):
//! a manager missing from raft joins as a learner; a learner that has caught
//! up with the log becomes a voter; a peer whose node is no longer a manager
//! (demoted or removed) leaves. A new leader simply continues.
//!
//! Architecture invariant: a node votes only after it holds the log up to
//! (nearly) the leader's applied index, so adding managers never stalls
//! commits behind a voter that is still copying the log.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use swarmlet_proto::NodeRole;
use tokio::sync::watch;

use crate::raft::RaftHandle;
use crate::store::Store;

/// A learner within this many entries of the leader's applied index counts
/// as caught up.
const CAUGHT_UP: u64 = 5;

/// One step towards the store's manager set, if one is due.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    AddLearner(u64),
    Promote(u64),
    Remove(u64),
}

/// `peers`: (raft ID, voter, matched) of raft's configuration.
pub fn next_step(
    managers: &BTreeSet<u64>,
    peers: &[(u64, bool, u64)],
    me: u64,
    applied: u64,
) -> Option<Step> {
    let known: BTreeSet<u64> = peers.iter().map(|p| p.0).collect();
    if let Some(id) = managers.iter().find(|id| !known.contains(id)) {
        return Some(Step::AddLearner(*id));
    }
    if let Some(p) = peers
        .iter()
        .find(|p| !p.1 && managers.contains(&p.0) && p.2 + CAUGHT_UP >= applied)
    {
        return Some(Step::Promote(p.0));
    }
    // Others first; a demoted leader removes itself last (it then stops
    // counting in the quorum, and its node restarts as a worker: see
    // `roles::watch_demotion`; the others elect a new leader).
    peers
        .iter()
        .filter(|p| !managers.contains(&p.0))
        .min_by_key(|p| p.0 == me)
        .map(|p| Step::Remove(p.0))
}

pub async fn run(store: Arc<Store>, raft: RaftHandle, mut shutdown: watch::Receiver<bool>) {
    let mut changes = store.changes();
    let mut leadership = raft.leadership();
    loop {
        if raft.is_leader() {
            let managers: BTreeSet<u64> = store
                .read()
                .nodes
                .values()
                .filter(|n| n.role == NodeRole::Manager)
                .map(|n| n.raft_id)
                .collect();
            if let Ok(peers) = raft.peers_status().await {
                let peers: Vec<(u64, bool, u64)> = peers
                    .iter()
                    .map(|p| (p.raft_id, p.voter, p.matched))
                    .collect();
                let step = next_step(&managers, &peers, raft.id(), raft.applied_index());
                let result = match &step {
                    Some(Step::AddLearner(id)) => Some(raft.add_learner(*id).await),
                    Some(Step::Promote(id)) => Some(raft.promote(*id).await),
                    Some(Step::Remove(id)) => Some(raft.remove(*id).await),
                    None => None,
                };
                match (step, result) {
                    (Some(step), Some(Ok(_))) => {
                        tracing::info!(?step, "raft membership changed");
                        continue; // the next step may be due at once
                    }
                    (Some(step), Some(Err(e))) => {
                        tracing::debug!(?step, "raft membership change failed: {e}")
                    }
                    _ => {}
                }
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = leadership.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learners_first_then_voters_then_removals() {
        let m = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        // A new manager joins as a learner.
        assert_eq!(
            next_step(&m(&[1, 2]), &[(1, true, 10)], 1, 10),
            Some(Step::AddLearner(2))
        );
        // A learner far behind waits; caught up, it votes.
        assert_eq!(
            next_step(&m(&[1, 2]), &[(1, true, 100), (2, false, 3)], 1, 100),
            None
        );
        assert_eq!(
            next_step(&m(&[1, 2]), &[(1, true, 100), (2, false, 98)], 1, 100),
            Some(Step::Promote(2))
        );
        // A demoted or removed manager leaves; a demoted leader leaves last.
        assert_eq!(
            next_step(&m(&[1]), &[(1, true, 9), (2, true, 9)], 1, 9),
            Some(Step::Remove(2))
        );
        assert_eq!(
            next_step(&m(&[2]), &[(1, true, 9), (2, true, 9), (3, true, 9)], 1, 9),
            Some(Step::Remove(3))
        );
        assert_eq!(
            next_step(&m(&[2]), &[(1, true, 9), (2, true, 9)], 1, 9),
            Some(Step::Remove(1))
        );
    }
}
