//! The manager quorum: a raft-rs `RawNode` driven by one tokio task.
//!
//! raft-rs does no IO, threads or clock; this module owns them: a 100 ms tick,
//! durable storage (`storage`), and the apply loop that feeds committed
//! entries to the `Store` and answers the proposer.
//!
//! Architecture invariant: a proposal is answered only after its entry is
//! committed *and* applied to the store, so a client never sees an
//! acknowledgement for a change the store does not have.
//!
//! Architecture invariant: a failed write of the raft file never ends the
//! node. The `Ready` that could not be saved is kept and saved again with
//! backoff; meanwhile proposals are refused with the reason (e.g. "no space
//! left under DATA_DIR") and everything that only reads (the mesh, running
//! replicas, the API's reads) goes on. Corrupt or unreadable data, in
//! contrast, stops the node with a message naming the file.

mod logger;
pub mod storage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::{ConfChange, ConfChangeV2, EntryType, Snapshot};
use raft::{RawNode, Ready, StateRole, Storage as _};
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
/// First and longest wait between attempts to save after a failed write.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

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
    /// The raft file cannot be written now (a full disk, an IO error); the
    /// node retries by itself. `held`: this proposal is in the unsaved batch
    /// and takes effect once the write succeeds.
    #[error("{reason}{}", held_note(*.held))]
    Unwritable {
        reason: String,
        disk_full: bool,
        held: bool,
    },
}

fn held_note(held: bool) -> &'static str {
    if held {
        ". This change is not saved yet: it takes effect once the node can write again (it is lost if the node stops before)"
    } else {
        ""
    }
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
    applied: watch::Receiver<u64>,
    /// The commit index the raft file held when the node started.
    committed_at_start: u64,
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

    /// Waits until the store has applied every entry that was committed
    /// before this start (the replay of the log), so nobody reads a store
    /// that is still missing changes it acknowledged before a restart.
    pub async fn wait_replayed(&self) -> Result<(), ProposeError> {
        let target = self.committed_at_start;
        self.applied
            .clone()
            .wait_for(|a| *a >= target)
            .await
            .map(|_| ())
            .map_err(|_| ProposeError::Stopped)
    }
}

pub struct RaftConfig {
    pub id: u64,
}

/// Starts the raft node on `storage` and returns its handle and task.
///
/// `bootstrap`: this node founds a new cluster as its only voter, and this
/// is its first state (the cluster and this node). It is written as the
/// cluster's first snapshot in one durable step, so a crash during `init`
/// leaves either no swarm (no conf state yet) or a whole one.
pub fn start(
    cfg: RaftConfig,
    storage: DiskStorage,
    store: Arc<Store>,
    bootstrap: Option<State>,
    shutdown: watch::Receiver<bool>,
) -> Result<
    (
        RaftHandle,
        tokio::task::JoinHandle<Result<(), StorageError>>,
    ),
    StorageError,
> {
    let path = storage.path().to_path_buf();
    if let Some(state) = bootstrap {
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = 1;
        meta.term = 1;
        meta.mut_conf_state().voters = vec![cfg.id];
        let data = serde_json::to_vec(&state).map_err(StorageError::Encode)?;
        snap.set_data(data.into());
        crate::fault::point("init.before_bootstrap");
        storage.apply_snapshot(&snap)?;
        crate::fault::point("init.after_bootstrap");
    }
    // Rebuild the state machine: the snapshot first, then raft replays the
    // committed entries after it. A snapshot that does not read stops the
    // node: starting from an empty state would later be compacted over the
    // good one.
    let applied = storage.snapshot_index();
    if let Some(data) = storage.snapshot_data() {
        let state = serde_json::from_slice::<State>(&data).map_err(|source| {
            StorageError::UnreadableState {
                path: path.display().to_string(),
                what: "snapshot".into(),
                source,
            }
        })?;
        store.restore(state);
    }
    let committed_at_start = storage.initial_state()?.hard_state.commit;
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
    let (applied_tx, applied_rx) = watch::channel(applied);
    let driver = Driver {
        node,
        store,
        pending: HashMap::new(),
        leader: leader_tx,
        applied: applied_tx,
        path,
        unsaved: None,
        stalled: false,
        backoff: RETRY_FIRST,
        next_compaction: tokio::time::Instant::now(),
    };
    let task = tokio::spawn(driver.run(rx, shutdown));
    Ok((
        RaftHandle {
            tx,
            leader,
            applied: applied_rx,
            committed_at_start,
        },
        task,
    ))
}

type Reply = oneshot::Sender<Result<(), ProposeError>>;

/// What a failed write left to save, and when to try again.
struct Unsaved {
    /// A `Ready` whose entries and hard state are not on disk yet. raft-rs
    /// requires it be persisted and handed back through `advance` before
    /// anything else changes the node ("DO NOT call any function like step,
    /// propose, campaign": `RawNode::ready`'s docs), so while it waits the
    /// driver neither ticks nor proposes; it only retries the write.
    ready: Option<Ready>,
    /// A commit index (from a `LightReady`) not on disk yet.
    commit: Option<u64>,
    reason: String,
    disk_full: bool,
    retry_at: tokio::time::Instant,
}

struct Driver {
    node: RawNode<DiskStorage>,
    store: Arc<Store>,
    pending: HashMap<u64, Reply>,
    leader: watch::Sender<bool>,
    applied: watch::Sender<u64>,
    path: PathBuf,
    unsaved: Option<Unsaved>,
    /// Set from the first failed write until a retry succeeds (logs once).
    stalled: bool,
    backoff: Duration,
    next_compaction: tokio::time::Instant,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// True if any of `entries` carries a proposal (not a leader's empty entry).
fn carries_proposals(entries: &[raft::eraftpb::Entry]) -> bool {
    entries.iter().any(|e| !e.get_data().is_empty())
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
            let retry_at = self.unsaved.as_ref().map(|u| u.retry_at);
            tokio::select! {
                _ = ticker.tick() => {
                    if self.unsaved.is_none() {
                        self.node.tick();
                    }
                }
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
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                    self.retry_save()?;
                }
                _ = shutdown.changed() => return Ok(()),
            }
            self.on_ready()?;
        }
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Propose { command, reply } => {
                if let Some(u) = &self.unsaved {
                    let _ = reply.send(Err(ProposeError::Unwritable {
                        reason: u.reason.clone(),
                        disk_full: u.disk_full,
                        held: false,
                    }));
                    return;
                }
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
        if self.unsaved.is_some() {
            return Ok(()); // nothing moves until the failed write is saved
        }
        if !self.node.has_ready() {
            self.update_leadership();
            return Ok(());
        }
        let mut ready = self.node.ready();
        // Messages to other voters go out through the node transport once
        // there are other voters; with one voter there are none.
        let _ = ready.take_messages();
        if !ready.snapshot().is_empty() {
            // Only a follower receives snapshots (none exist yet); a failed
            // write here is fatal until followers exist to test the retry.
            let snap = ready.snapshot().clone();
            self.node.store().apply_snapshot(&snap)?;
            let state = serde_json::from_slice::<State>(snap.get_data()).map_err(|source| {
                StorageError::UnreadableState {
                    path: self.path.display().to_string(),
                    what: "snapshot from the leader".into(),
                    source,
                }
            })?;
            self.store.restore(state);
            self.applied.send_replace(snap.get_metadata().index);
        }
        // Committed entries in a Ready were saved by an earlier Ready.
        let committed = ready.take_committed_entries();
        self.apply_entries(committed)?;
        self.save_and_advance(ready)
    }

    /// Saves `ready`'s entries and hard state, then advances raft and applies
    /// what that commits. A write that fails for IO reasons keeps `ready`
    /// for `retry_save` instead of ending the node.
    fn save_and_advance(&mut self, mut ready: Ready) -> Result<(), StorageError> {
        match self.node.store().append(ready.entries(), ready.hs()) {
            Ok(()) => {}
            Err(e) if e.is_io() => {
                self.stall(&e, Some(ready), None);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        if carries_proposals(ready.entries()) {
            crate::fault::point("raft.after_append");
        }
        let _ = ready.take_persisted_messages();
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            match self.node.store().set_commit(commit) {
                Ok(()) => {}
                // The entries themselves are saved, so applying them is
                // safe; only the commit index waits for the disk.
                Err(e) if e.is_io() => self.stall(&e, None, Some(commit)),
                Err(e) => return Err(e),
            }
        }
        let _ = light.take_messages();
        self.apply_entries(light.take_committed_entries())?;
        self.node.advance_apply();
        self.update_leadership();
        if self.unsaved.is_none() {
            self.maybe_compact();
        }
        Ok(())
    }

    /// A write failed: remember what is unsaved, refuse proposals until it is
    /// saved, and answer the proposals caught in it.
    fn stall(&mut self, e: &StorageError, ready: Option<Ready>, commit: Option<u64>) {
        let disk_full = e.is_disk_full();
        let data_dir = self
            .path
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let reason = if disk_full {
            format!(
                "no space left under DATA_DIR {data_dir}: the node keeps serving its running replicas but cannot save changes; free some space there and it resumes by itself"
            )
        } else {
            format!(
                "cannot write the raft log {}: {e}; the node keeps serving its running replicas and retries by itself",
                self.path.display()
            )
        };
        if !self.stalled {
            tracing::error!("{reason}");
            self.stalled = true;
        } else {
            tracing::debug!("saving the raft log failed again: {e}");
        }
        // The proposals waiting are in the unsaved Ready (a stalled commit
        // index alone does not hold them back: their entries are saved).
        let waiting = if ready.is_some() {
            std::mem::take(&mut self.pending)
        } else {
            HashMap::new()
        };
        for (_, reply) in waiting {
            let _ = reply.send(Err(ProposeError::Unwritable {
                reason: reason.clone(),
                disk_full,
                held: true,
            }));
        }
        self.unsaved = Some(Unsaved {
            ready,
            commit,
            reason,
            disk_full,
            retry_at: tokio::time::Instant::now() + self.backoff,
        });
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
    }

    /// Tries again to save what a failed write left.
    fn retry_save(&mut self) -> Result<(), StorageError> {
        let Some(mut u) = self.unsaved.take() else {
            return Ok(());
        };
        if let Some(commit) = u.commit {
            match self.node.store().set_commit(commit) {
                Ok(()) => u.commit = None,
                Err(e) if e.is_io() => {
                    self.unsaved = Some(u);
                    let ready = self.unsaved.as_mut().and_then(|u| u.ready.take());
                    self.stall(&e, ready, Some(commit));
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(ready) = u.ready.take() {
            self.save_and_advance(ready)?;
        }
        if self.unsaved.is_none() {
            self.backoff = RETRY_FIRST;
            self.stalled = false;
            tracing::info!("the raft log is writable again; accepting changes");
        }
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<raft::eraftpb::Entry>) -> Result<(), StorageError> {
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.get_data().is_empty() => {
                    // the empty entry a new leader appends
                }
                EntryType::EntryNormal => {
                    // A committed entry this node cannot read stops it:
                    // skipping it would make this replica differ from the
                    // others, and later snapshots would make that permanent.
                    let env: Envelope =
                        serde_json::from_slice(entry.get_data()).map_err(|source| {
                            StorageError::UnreadableState {
                                path: self.path.display().to_string(),
                                what: format!("committed entry {}", entry.index),
                                source,
                            }
                        })?;
                    let result = self.store.apply(&env);
                    if let Err(e) = &result {
                        tracing::debug!(index = entry.index, "command refused: {e}");
                    }
                    if let Some(reply) = self.pending.remove(&env.proposal_id) {
                        crate::fault::point("raft.after_apply");
                        let _ = reply.send(result.map_err(ProposeError::from));
                    }
                }
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    protobuf::Message::merge_from_bytes(&mut cc, entry.get_data())
                        .map_err(|e| self.corrupt_entry(entry.index, e))?;
                    let cs = self.node.apply_conf_change(&cc)?;
                    self.node.store().set_conf_state(cs)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    protobuf::Message::merge_from_bytes(&mut cc, entry.get_data())
                        .map_err(|e| self.corrupt_entry(entry.index, e))?;
                    let cs = self.node.apply_conf_change(&cc)?;
                    self.node.store().set_conf_state(cs)?;
                }
            }
            self.applied.send_replace(entry.index);
        }
        Ok(())
    }

    fn corrupt_entry(&self, index: u64, source: protobuf::ProtobufError) -> StorageError {
        StorageError::Corrupt {
            path: self.path.display().to_string(),
            key: format!("committed entry {index}"),
            source: Box::new(source),
        }
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

    /// Compacts the log into a snapshot of the store every `COMPACT_EVERY`
    /// entries. Optional work: when it fails (the store does not serialize,
    /// the disk is full) the log just stays longer and it is tried again
    /// later; it never writes a snapshot without the state.
    fn maybe_compact(&mut self) {
        let applied = self.node.raft.raft_log.applied;
        let storage = self.node.store();
        if applied < storage.snapshot_index() + COMPACT_EVERY
            || tokio::time::Instant::now() < self.next_compaction
        {
            return;
        }
        let result = self
            .store
            .snapshot_bytes()
            .map_err(StorageError::Encode)
            .and_then(|data| storage.compact(applied, data));
        match result {
            Ok(()) => tracing::debug!(applied, "raft log compacted"),
            Err(e) => {
                tracing::warn!("compacting the raft log failed (retrying in a minute): {e}");
                self.next_compaction = tokio::time::Instant::now() + Duration::from_secs(60);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{ConfState, Entry, HardState};

    fn temp_file(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("swarmlet-raft-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("raft.redb")
    }

    #[tokio::test]
    async fn an_unreadable_snapshot_stops_the_start_naming_the_file() {
        let path = temp_file("snap");
        {
            let s = DiskStorage::open(&path).unwrap();
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 1;
            snap.mut_metadata().term = 1;
            snap.mut_metadata().mut_conf_state().voters = vec![1];
            snap.set_data(b"not a state".to_vec().into());
            s.apply_snapshot(&snap).unwrap();
        }
        let storage = DiskStorage::open(&path).unwrap();
        let store = Arc::new(Store::new());
        let (_tx, shutdown) = watch::channel(false);
        let err = start(RaftConfig { id: 1 }, storage, store, None, shutdown)
            .err()
            .expect("the start must fail");
        let msg = err.to_string();
        assert!(matches!(err, StorageError::UnreadableState { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("backup"), "says what to do: {msg}");
    }

    #[tokio::test]
    async fn an_unreadable_committed_entry_stops_raft() {
        let path = temp_file("entry");
        {
            let s = DiskStorage::open(&path).unwrap();
            s.set_conf_state(ConfState::from((vec![1], vec![])))
                .unwrap();
            let mut e = Entry {
                index: 1,
                term: 1,
                ..Default::default()
            };
            e.set_data(b"{garbage".to_vec().into());
            let hs = HardState {
                term: 1,
                commit: 1,
                ..Default::default()
            };
            s.append(&[e], Some(&hs)).unwrap();
        }
        let storage = DiskStorage::open(&path).unwrap();
        let store = Arc::new(Store::new());
        let (_tx, shutdown) = watch::channel(false);
        let (handle, task) = start(RaftConfig { id: 1 }, storage, store, None, shutdown).unwrap();
        let result = task.await.unwrap();
        let err = result.expect_err("raft must stop, not skip the entry");
        assert!(err.to_string().contains("committed entry 1"), "{err}");
        assert!(
            handle.wait_replayed().await.is_err(),
            "never reports a replay it did not do"
        );
    }
}
