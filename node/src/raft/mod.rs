//! The manager quorum: a raft-rs `RawNode` driven by one tokio task.
//!
//! raft-rs does no IO, threads or clock; this module owns them: a 100 ms tick,
//! durable storage (`storage`), and the apply loop that feeds committed
//! entries to the `Store` and answers the proposer.
//!
//! Architecture invariant: a proposal is answered only after its entry is
//! committed *and* applied to the store, so a client never sees an
//! acknowledgement for a change the store does not have.

mod logger;
pub mod storage;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::{ConfChange, ConfChangeV2, EntryType, Snapshot};
use raft::{RawNode, StateRole};
use swarmlet_proto::{Command, Envelope};
use tokio::sync::{mpsc, oneshot, watch};

use crate::store::{State, Store, StoreError};
pub use storage::{DiskStorage, StorageError};

/// Raft tick; elections after 10–20 ticks (DESIGN.md: 1–2 s, not Swarm's 10–20 s).
pub const TICK: Duration = Duration::from_millis(100);
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 1;
/// Entries kept after the last snapshot before the log is compacted.
const COMPACT_EVERY: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the raft leader")]
    NotLeader,
    #[error("{0}")]
    Refused(#[from] StoreError),
    #[error("the raft node has stopped")]
    Stopped,
    #[error("raft refused the proposal: {0}")]
    Raft(String),
}

enum Request {
    Propose {
        command: Command,
        reply: oneshot::Sender<Result<(), ProposeError>>,
    },
}

/// Cheap to clone; how the rest of the node talks to raft.
#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Request>,
    leader: watch::Receiver<bool>,
}

impl RaftHandle {
    /// Proposes `command` and waits until it is committed and applied.
    pub async fn propose(&self, command: Command) -> Result<(), ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Propose { command, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Wakes when this node gains or loses leadership.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }
}

pub struct RaftConfig {
    pub id: u64,
}

/// Starts the raft node on `storage` and returns its handle and task.
///
/// `bootstrap`: this node founds a new cluster as its only voter.
pub fn start(
    cfg: RaftConfig,
    storage: DiskStorage,
    store: Arc<Store>,
    bootstrap: bool,
    shutdown: watch::Receiver<bool>,
) -> Result<
    (
        RaftHandle,
        tokio::task::JoinHandle<Result<(), StorageError>>,
    ),
    StorageError,
> {
    if bootstrap {
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = 1;
        meta.term = 1;
        meta.mut_conf_state().voters = vec![cfg.id];
        snap.set_data(store.snapshot_bytes().unwrap_or_default().into());
        storage.apply_snapshot(&snap)?;
    }
    // Rebuild the state machine: the snapshot first, then raft replays the
    // committed entries after it.
    let applied = storage.snapshot_index();
    if let Some(data) = storage.snapshot_data() {
        match serde_json::from_slice::<State>(&data) {
            Ok(state) => store.restore(state),
            Err(e) => tracing::error!("raft snapshot holds no readable store state: {e}"),
        }
    }
    let config = raft::Config {
        id: cfg.id,
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        pre_vote: true,
        check_quorum: true,
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    let single_voter = storage.conf_state().voters == vec![cfg.id];
    let mut node = RawNode::new(&config, storage, &logger::logger())?;
    if single_voter {
        // Nobody else can win; don't wait out an election timeout.
        node.campaign()?;
    }
    let (tx, rx) = mpsc::channel(1024);
    let (leader_tx, leader) = watch::channel(false);
    let driver = Driver {
        node,
        store,
        pending: HashMap::new(),
        leader: leader_tx,
    };
    let task = tokio::spawn(driver.run(rx, shutdown));
    Ok((RaftHandle { tx, leader }, task))
}

type Reply = oneshot::Sender<Result<(), ProposeError>>;

struct Driver {
    node: RawNode<DiskStorage>,
    store: Arc<Store>,
    pending: HashMap<u64, Reply>,
    leader: watch::Sender<bool>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), StorageError> {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => { self.node.tick(); }
                req = rx.recv() => match req {
                    Some(req) => {
                        self.handle(req);
                        // Batch whatever else is queued into the same Ready.
                        while let Ok(req) = rx.try_recv() {
                            self.handle(req);
                        }
                    }
                    None => return Ok(()),
                },
                _ = shutdown.changed() => return Ok(()),
            }
            self.on_ready()?;
        }
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Propose { command, reply } => {
                if self.node.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(ProposeError::NotLeader));
                    return;
                }
                let proposal_id = rand::random::<u64>() | 1;
                let env = Envelope {
                    proposal_id,
                    at_ms: now_ms(),
                    command,
                };
                let data = match serde_json::to_vec(&env) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(ProposeError::Raft(e.to_string())));
                        return;
                    }
                };
                match self.node.propose(vec![], data) {
                    Ok(()) => {
                        self.pending.insert(proposal_id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ProposeError::Raft(e.to_string())));
                    }
                }
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), StorageError> {
        if !self.node.has_ready() {
            self.update_leadership();
            return Ok(());
        }
        let mut ready = self.node.ready();
        // Messages to other voters go out through the node transport once
        // there are other voters; with one voter there are none.
        let _ = ready.take_messages();
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.node.store().apply_snapshot(&snap)?;
            match serde_json::from_slice::<State>(snap.get_data()) {
                Ok(state) => self.store.restore(state),
                Err(e) => tracing::error!("snapshot from leader holds no readable state: {e}"),
            }
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed)?;
        self.node.store().append(ready.entries(), ready.hs())?;
        let _ = ready.take_persisted_messages();
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.store().set_commit(commit)?;
        }
        let _ = light.take_messages();
        self.apply_entries(light.take_committed_entries())?;
        self.node.advance_apply();
        self.update_leadership();
        self.maybe_compact()?;
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<raft::eraftpb::Entry>) -> Result<(), StorageError> {
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    if entry.get_data().is_empty() {
                        continue; // the empty entry a new leader appends
                    }
                    let env: Envelope = match serde_json::from_slice(entry.get_data()) {
                        Ok(env) => env,
                        Err(e) => {
                            tracing::error!(
                                index = entry.index,
                                "skipping unreadable raft entry: {e}"
                            );
                            continue;
                        }
                    };
                    let result = self.store.apply(&env);
                    if let Err(e) = &result {
                        tracing::debug!(index = entry.index, "command refused: {e}");
                    }
                    if let Some(reply) = self.pending.remove(&env.proposal_id) {
                        let _ = reply.send(result.map_err(ProposeError::from));
                    }
                }
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    if protobuf::Message::merge_from_bytes(&mut cc, entry.get_data()).is_ok() {
                        let cs = self.node.apply_conf_change(&cc)?;
                        self.node.store().set_conf_state(cs)?;
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    if protobuf::Message::merge_from_bytes(&mut cc, entry.get_data()).is_ok() {
                        let cs = self.node.apply_conf_change(&cc)?;
                        self.node.store().set_conf_state(cs)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn update_leadership(&mut self) {
        let is_leader = self.node.raft.state == StateRole::Leader;
        self.leader
            .send_if_modified(|l| std::mem::replace(l, is_leader) != is_leader);
        if !is_leader && !self.pending.is_empty() {
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(ProposeError::NotLeader));
            }
        }
    }

    fn maybe_compact(&mut self) -> Result<(), StorageError> {
        let applied = self.node.raft.raft_log.applied;
        let storage = self.node.store();
        if applied >= storage.snapshot_index() + COMPACT_EVERY {
            let data = self.store.snapshot_bytes().unwrap_or_default();
            storage.compact(applied, data)?;
            tracing::debug!(applied, "raft log compacted");
        }
        Ok(())
    }
}
