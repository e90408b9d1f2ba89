//! The manager quorum: the sans-IO raft core (`core`) driven by one tokio
//! task, the thin shell that owns the IO.
//!
//! The shell ticks the core from a clock (100 ms), hands each `Ready`'s
//! writes to a dedicated disk thread (one durable write, one fsync, per
//! Ready; the reactor never waits on the disk), sends messages through the
//! injected `RaftTransport` in the order raft-rs requires (a Ready's
//! `messages` at once, its `persisted_messages` only after the write),
//! applies committed entries to the `Store` and answers proposers. The same
//! core runs under the deterministic simulation (`sim`, tests only) with
//! in-memory storage, network and clock.
//!
//! Architecture invariant: a proposal is answered only after its entry is
//! committed *and* applied to the store, and after the commit index that
//! covers it is durable, so a client never sees an acknowledgement for a
//! change the store does not have, before or after a restart. A proposal
//! whose leader lost leadership before it committed is answered
//! `ProposeError::Unknown`: it may still commit.
//!
//! Architecture invariant: a failed write of the raft file never ends the
//! node. The `Ready` that could not be saved is kept and saved again with
//! backoff; meanwhile proposals are refused with the reason (e.g. "no space
//! left under DATA_DIR") and everything that only reads (the mesh, running
//! replicas, the API's reads) goes on. Corrupt or unreadable data, in
//! contrast, stops the node with a message naming the file.

pub mod core;
mod logger;
#[cfg(test)]
mod sim;
pub mod storage;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::{Message, Snapshot};
use raft::Storage as _;
use swarmlet_proto::{Command, Envelope};
use tokio::sync::{mpsc, oneshot, watch};

use self::core::{AfterPersist, Committed, Core, CoreConfig, CoreError, ReadyOut};
pub use self::core::{Fate, MemberChange, PeerStatus};
use crate::store::{State, Store, StoreError};
pub use storage::{DiskStorage, MemStorage, RaftStorage, StorageError};

/// Raft tick; elections after 10–20 ticks (DESIGN.md: 1–2 s, not Swarm's 10–20 s).
pub const TICK: Duration = Duration::from_millis(100);
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 1;
/// Entries kept after the last snapshot before the log is compacted.
const COMPACT_EVERY: u64 = 1000;
/// First and longest wait between attempts to save after a failed write.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Where outgoing raft messages go. Non-blocking: an implementation queues
/// and returns (raft tolerates lost messages; it retries by itself). Called
/// in the order raft-rs requires; per destination, in send order.
pub trait RaftTransport: Send + Sync {
    fn send(&self, to: u64, msgs: Vec<Message>);
}

/// The transport of a node that has no peers (a single-node swarm).
pub struct NoTransport;

impl RaftTransport for NoTransport {
    fn send(&self, to: u64, msgs: Vec<Message>) {
        tracing::debug!(
            to,
            count = msgs.len(),
            "no transport: raft messages dropped"
        );
    }
}

/// A proposal's result: the log index it was committed and applied at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProposeOutcome {
    pub index: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// Not proposed (or certainly not committed): retry at `leader`.
    #[error("this node is not the raft leader{}", leader_note(*.leader))]
    NotLeader { leader: Option<u64> },
    /// Leadership changed while the proposal was pending: it may or may not
    /// commit. Check before retrying (or retry with an idempotency key).
    #[error("the raft leader changed while this change was pending; it may or may not have been applied, check before retrying")]
    Unknown { index: u64 },
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

fn leader_note(leader: Option<u64>) -> String {
    match leader {
        Some(l) => format!(" (raft peer {l} is)"),
        None => " (no leader is known right now)".into(),
    }
}

fn held_note(held: bool) -> &'static str {
    if held {
        ". This change is not saved yet: it takes effect once the node can write again (it is lost if the node stops before)"
    } else {
        ""
    }
}

type Reply = oneshot::Sender<Result<ProposeOutcome, ProposeError>>;

enum Request {
    // Boxed: a `Command` (a whole service spec) is far larger than the
    // other requests, and every queued request would pay for it.
    Propose { command: Box<Command>, reply: Reply },
    Member { change: MemberChange, reply: Reply },
    Step(Box<Message>),
    Peers(oneshot::Sender<Vec<PeerStatus>>),
}

/// Cheap to clone; how the rest of the node talks to raft.
#[derive(Clone)]
pub struct RaftHandle {
    id: u64,
    tx: mpsc::Sender<Request>,
    is_leader: watch::Receiver<bool>,
    leader: watch::Receiver<Option<u64>>,
    applied: watch::Receiver<u64>,
    /// The commit index the raft file held when the node started.
    committed_at_start: u64,
}

impl RaftHandle {
    /// This node's raft ID.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Proposes `command` and waits until it is committed and applied here.
    pub async fn propose(&self, command: Command) -> Result<ProposeOutcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Propose {
                command: Box::new(command),
                reply,
            })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    async fn member(&self, change: MemberChange) -> Result<ProposeOutcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Member { change, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Adds `raft_id` as a learner (receives the log, does not vote);
    /// answered once the change is applied here.
    pub async fn add_learner(&self, raft_id: u64) -> Result<ProposeOutcome, ProposeError> {
        self.member(MemberChange::AddLearner(raft_id)).await
    }

    /// Makes learner `raft_id` a voter.
    pub async fn promote(&self, raft_id: u64) -> Result<ProposeOutcome, ProposeError> {
        self.member(MemberChange::Promote(raft_id)).await
    }

    /// Removes `raft_id` (voter or learner) from the configuration.
    pub async fn remove(&self, raft_id: u64) -> Result<ProposeOutcome, ProposeError> {
        self.member(MemberChange::Remove(raft_id)).await
    }

    /// Hands an inbound message (from the transport) to raft. Never blocks:
    /// when the driver is far behind the message is dropped, which raft
    /// tolerates.
    pub fn step(&self, msg: Message) {
        if let Err(e) = self.tx.try_send(Request::Step(Box::new(msg))) {
            tracing::debug!("raft message dropped: {e}");
        }
    }

    /// Every peer of the configuration; `reachable` and `matched` as the
    /// leader sees them (ask the leader for a cluster-wide view).
    pub async fn peers_status(&self) -> Result<Vec<PeerStatus>, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Peers(reply))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)
    }

    pub fn is_leader(&self) -> bool {
        *self.is_leader.borrow()
    }

    /// Wakes when this node gains or loses leadership.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.is_leader.clone()
    }

    /// The raft ID of the leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        *self.leader.borrow()
    }

    /// Wakes when the known leader changes.
    pub fn leader_watch(&self) -> watch::Receiver<Option<u64>> {
        self.leader.clone()
    }

    /// Raft's applied index: the same number means the same state on every
    /// node.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until this node's store has applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<u64, ProposeError> {
        self.applied
            .clone()
            .wait_for(|a| *a >= index)
            .await
            .map(|a| *a)
            .map_err(|_| ProposeError::Stopped)
    }

    /// Waits until the store has applied every entry that was committed
    /// before this start (the replay of the log), so nobody reads a store
    /// that is still missing changes it acknowledged before a restart.
    pub async fn wait_replayed(&self) -> Result<(), ProposeError> {
        self.wait_applied(self.committed_at_start).await.map(|_| ())
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
    transport: Arc<dyn RaftTransport>,
    shutdown: watch::Receiver<bool>,
) -> Result<
    (
        RaftHandle,
        tokio::task::JoinHandle<Result<(), StorageError>>,
    ),
    StorageError,
> {
    if let Some(state) = bootstrap {
        let snap = bootstrap_snapshot(cfg.id, &state)?;
        crate::fault::point("init.before_bootstrap");
        storage.apply_snapshot(&snap)?;
        crate::fault::point("init.after_bootstrap");
    }
    let applied = restore_store(&storage, &store)?;
    let single_voter = storage.conf_state().voters == vec![cfg.id];
    // A single voter commits everything its log holds as soon as it leads
    // (an entry saved just before a crash, never acknowledged), so its
    // replay waits for all of it: the API then never shows a state that
    // changes under the client a moment later.
    let committed_at_start = if single_voter {
        storage
            .initial_state()?
            .hard_state
            .commit
            .max(storage.last_index()?)
    } else {
        storage.initial_state()?.hard_state.commit
    };
    let core_cfg = CoreConfig {
        id: cfg.id,
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        applied,
        seed: rand::random(),
    };
    let mut core = Core::new(&core_cfg, storage.clone(), &logger::logger()).map_err(core_err)?;
    if single_voter {
        // Nobody else can win; don't wait out an election timeout.
        core.campaign().map_err(core_err)?;
    }
    let (tx, rx) = mpsc::channel(1024);
    let (is_leader_tx, is_leader) = watch::channel(false);
    let (leader_tx, leader) = watch::channel(None);
    let (applied_tx, applied_rx) = watch::channel(applied);
    let driver = Driver {
        core,
        disk: DiskThread::spawn(storage.clone()),
        storage,
        store,
        transport,
        pending: HashMap::new(),
        next_proposal: rand::random::<u64>() | 1,
        is_leader: is_leader_tx,
        leader: leader_tx,
        applied: applied_tx,
        unsaved: None,
        stalled: false,
        backoff: RETRY_FIRST,
        next_compaction: tokio::time::Instant::now(),
    };
    let task = tokio::spawn(driver.run(rx, shutdown));
    Ok((
        RaftHandle {
            id: cfg.id,
            tx,
            is_leader,
            leader,
            applied: applied_rx,
            committed_at_start,
        },
        task,
    ))
}

/// The first snapshot of a new cluster: `state` at index 1, `id` its voter.
pub fn bootstrap_snapshot(id: u64, state: &State) -> Result<Snapshot, StorageError> {
    let mut snap = Snapshot::default();
    let meta = snap.mut_metadata();
    meta.index = 1;
    meta.term = 1;
    meta.mut_conf_state().voters = vec![id];
    let data = serde_json::to_vec(state).map_err(StorageError::Encode)?;
    snap.set_data(data.into());
    Ok(snap)
}

/// Rebuilds the state machine from the storage's snapshot (raft then replays
/// the committed entries after it) and returns the snapshot's index. A
/// snapshot that does not read stops the node: starting from an empty state
/// would later be compacted over the good one.
pub fn restore_store<S: RaftStorage>(storage: &S, store: &Store) -> Result<u64, StorageError> {
    if let Some(data) = storage.snapshot_data() {
        let state = serde_json::from_slice::<State>(&data).map_err(|source| {
            StorageError::UnreadableState {
                path: storage.describe(),
                what: "snapshot".into(),
                source: source.into(),
            }
        })?;
        store.restore(state);
    }
    Ok(storage.snapshot_index())
}

fn core_err(e: CoreError) -> StorageError {
    match e {
        CoreError::Storage(e) => e,
        other => StorageError::Raft(Box::new(raft::Error::ConfigInvalid(other.to_string()))),
    }
}

/// The dedicated thread that does the raft file's writes, one job at a
/// time, in order; the driver awaits each job's answer without blocking the
/// reactor.
struct DiskThread<S> {
    jobs: std::sync::mpsc::Sender<DiskJob<S>>,
}

type DiskWork<S> = Box<dyn FnOnce(&S) -> Result<(), StorageError> + Send>;
type DiskJob<S> = (DiskWork<S>, oneshot::Sender<Result<(), StorageError>>);

impl<S: RaftStorage> DiskThread<S> {
    fn spawn(storage: S) -> Self {
        let (jobs, rx) = std::sync::mpsc::channel::<DiskJob<S>>();
        let spawned = std::thread::Builder::new()
            .name("raft-disk".into())
            .spawn(move || {
                while let Ok((work, reply)) = rx.recv() {
                    let _ = reply.send(work(&storage));
                }
            });
        if let Err(e) = spawned {
            // Without the thread every write fails as an IO error: the node
            // stalls and says so instead of acknowledging anything.
            tracing::error!("cannot start the raft disk thread: {e}");
        }
        DiskThread { jobs }
    }

    async fn run(
        &self,
        work: impl FnOnce(&S) -> Result<(), StorageError> + Send + 'static,
    ) -> Result<(), StorageError> {
        let (reply, rx) = oneshot::channel();
        let gone = || {
            StorageError::Db(Box::new(redb::Error::Io(std::io::Error::other(
                "the raft disk thread is not running",
            ))))
        };
        self.jobs
            .send((Box::new(work), reply))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// What a failed write left to save, and when to try again.
struct Unsaved {
    /// A Ready whose snapshot, entries and hard state are not on disk yet.
    /// raft-rs requires it be persisted before anything else changes the
    /// node, so while it waits the core takes no input (it answers `Busy`);
    /// the driver only retries the write.
    ready: Option<ReadyOut>,
    /// A commit index (from an `AfterPersist`) not on disk yet.
    commit: Option<u64>,
    reason: String,
    disk_full: bool,
    retry_at: tokio::time::Instant,
}

struct Driver {
    core: Core<DiskStorage>,
    storage: DiskStorage,
    disk: DiskThread<DiskStorage>,
    store: Arc<Store>,
    transport: Arc<dyn RaftTransport>,
    /// Proposals waiting for their entry: proposal id → (index, reply).
    pending: HashMap<u64, (u64, Reply)>,
    next_proposal: u64,
    is_leader: watch::Sender<bool>,
    leader: watch::Sender<Option<u64>>,
    applied: watch::Sender<u64>,
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

/// Sends `msgs` in order, one batch per destination (order within a
/// destination is kept; raft needs no order across destinations).
pub fn send_all(transport: &dyn RaftTransport, msgs: Vec<Message>) {
    let mut batches: Vec<(u64, Vec<Message>)> = Vec::new();
    for m in msgs {
        match batches.iter_mut().find(|(to, _)| *to == m.to) {
            Some((_, b)) => b.push(m),
            None => batches.push((m.to, vec![m])),
        }
    }
    for (to, b) in batches {
        transport.send(to, b);
    }
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
                        let _ = self.core.tick();
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
                    self.retry_save().await?;
                }
                _ = shutdown.changed() => return Ok(()),
            }
            self.process().await?;
        }
    }

    fn unwritable(&self) -> Option<ProposeError> {
        self.unsaved.as_ref().map(|u| ProposeError::Unwritable {
            reason: u.reason.clone(),
            disk_full: u.disk_full,
            held: false,
        })
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Propose { command, reply } => {
                if let Some(e) = self.unwritable() {
                    let _ = reply.send(Err(e));
                    return;
                }
                let id = self.next_id();
                let env = Envelope {
                    proposal_id: id,
                    at_ms: now_ms(),
                    command: *command,
                };
                let data = match crate::store::entry::encode(&env) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(ProposeError::Raft(e.to_string())));
                        return;
                    }
                };
                let result = self.core.propose(id, data);
                self.track(id, result, reply);
            }
            Request::Member { change, reply } => {
                if let Some(e) = self.unwritable() {
                    let _ = reply.send(Err(e));
                    return;
                }
                let id = self.next_id();
                let result = self.core.propose_conf_change(id, change);
                self.track(id, result, reply);
            }
            Request::Step(m) => {
                // While a write is retried the core takes no input; raft
                // resends what it needs.
                let _ = self.core.step(*m);
            }
            Request::Peers(reply) => {
                let _ = reply.send(self.core.peers_status());
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_proposal = self.next_proposal.wrapping_add(2);
        self.next_proposal
    }

    fn track(&mut self, id: u64, result: Result<u64, CoreError>, reply: Reply) {
        match result {
            Ok(index) => {
                self.pending.insert(id, (index, reply));
            }
            Err(CoreError::NotLeader { leader }) => {
                let _ = reply.send(Err(ProposeError::NotLeader { leader }));
            }
            Err(e) => {
                let _ = reply.send(Err(ProposeError::Raft(e.to_string())));
            }
        }
    }

    /// Handles every Ready the core has, each persisted before the next.
    async fn process(&mut self) -> Result<(), StorageError> {
        while self.unsaved.is_none() {
            let Some(mut rd) = self.core.ready() else {
                break;
            };
            self.answer_fates(&rd.fates);
            send_all(&*self.transport, std::mem::take(&mut rd.messages));
            self.save_and_advance(rd).await?;
        }
        self.update_leadership();
        if self.unsaved.is_none() {
            self.maybe_compact().await;
        }
        Ok(())
    }

    fn answer_fates(&mut self, fates: &[(u64, Fate)]) {
        for (id, fate) in fates {
            if let Some((index, reply)) = self.pending.remove(id) {
                let _ = reply.send(Err(match fate {
                    Fate::Unknown => ProposeError::Unknown { index },
                    Fate::Lost => ProposeError::NotLeader {
                        leader: self.core.leader(),
                    },
                }));
            }
        }
    }

    /// Writes `rd`, then sends what waited for the write, applies what it
    /// commits and advances the core. A write that fails for IO reasons
    /// keeps `rd` for `retry_save` instead of ending the node.
    async fn save_and_advance(&mut self, mut rd: ReadyOut) -> Result<(), StorageError> {
        if rd.needs_write() {
            let (snap, ents, hs) = (
                rd.snapshot.clone(),
                rd.entries.clone(),
                rd.hard_state.clone(),
            );
            let written = self
                .disk
                .run(move |s| {
                    if let Some(snap) = &snap {
                        s.apply_snapshot(snap)?;
                    }
                    s.append(&ents, hs.as_ref())
                })
                .await;
            match written {
                Ok(()) => {}
                Err(e) if e.is_io() => {
                    rd.messages.clear(); // already sent
                    self.stall(&e, Some(rd), None);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            if carries_proposals(&rd.entries) {
                crate::fault::point("raft.after_append");
            }
        }
        send_all(&*self.transport, std::mem::take(&mut rd.persisted_messages));
        if let Some(snap) = &rd.snapshot {
            self.install_snapshot(snap)?;
        }
        let committed = std::mem::take(&mut rd.committed);
        self.apply_entries(committed).await?;
        let after: AfterPersist = self.core.persisted(rd.number);
        if let Some(commit) = after.commit {
            match self.disk.run(move |s| s.set_commit(commit)).await {
                Ok(()) => {}
                // The entries themselves are saved, so applying them is
                // safe; only the commit index waits for the disk.
                Err(e) if e.is_io() => self.stall(&e, None, Some(commit)),
                Err(e) => return Err(e),
            }
        }
        send_all(&*self.transport, after.messages);
        self.apply_entries(after.committed).await?;
        Ok(())
    }

    /// A follower got the leader's snapshot (persisted by now): the store
    /// becomes its state.
    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        let state = serde_json::from_slice::<State>(snap.get_data()).map_err(|source| {
            StorageError::UnreadableState {
                path: self.storage.describe(),
                what: "snapshot from the leader".into(),
                source: source.into(),
            }
        })?;
        self.store.restore(state);
        // The core moves raft's applied index there in `persisted`.
        self.applied.send_replace(snap.get_metadata().index);
        Ok(())
    }

    /// A write failed: remember what is unsaved, refuse proposals until it is
    /// saved, and answer the proposals caught in it.
    fn stall(&mut self, e: &StorageError, ready: Option<ReadyOut>, commit: Option<u64>) {
        let disk_full = e.is_disk_full();
        let path = self.storage.path();
        let data_dir = path
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
                path.display()
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
        for (_, (_, reply)) in waiting {
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
    async fn retry_save(&mut self) -> Result<(), StorageError> {
        let Some(mut u) = self.unsaved.take() else {
            return Ok(());
        };
        if let Some(commit) = u.commit {
            match self.disk.run(move |s| s.set_commit(commit)).await {
                Ok(()) => u.commit = None,
                Err(e) if e.is_io() => {
                    let ready = u.ready.take();
                    self.stall(&e, ready, Some(commit));
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(ready) = u.ready.take() {
            self.save_and_advance(ready).await?;
        }
        if self.unsaved.is_none() {
            self.backoff = RETRY_FIRST;
            self.stalled = false;
            tracing::info!("the raft log is writable again; accepting changes");
        }
        Ok(())
    }

    async fn apply_entries(
        &mut self,
        entries: Vec<raft::eraftpb::Entry>,
    ) -> Result<(), StorageError> {
        for entry in entries {
            match self.core.on_committed(&entry).map_err(core_err)? {
                Committed::Empty => {}
                Committed::Command { data, proposal } => {
                    // A committed entry this node cannot read stops it:
                    // skipping it would make this replica differ from the
                    // others, and later snapshots would make that permanent.
                    let env: Envelope = crate::store::entry::decode(&data).map_err(|source| {
                        StorageError::UnreadableState {
                            path: self.storage.describe(),
                            what: format!("committed entry {}", entry.index),
                            source,
                        }
                    })?;
                    let result = self.store.apply(&env);
                    if let Err(e) = &result {
                        tracing::debug!(index = entry.index, "command refused: {e}");
                    }
                    if let Some((_, reply)) = proposal.and_then(|id| self.pending.remove(&id)) {
                        crate::fault::point("raft.after_apply");
                        let _ = reply.send(
                            result
                                .map(|()| ProposeOutcome { index: entry.index })
                                .map_err(ProposeError::from),
                        );
                    }
                }
                Committed::ConfChange { proposal, result } => {
                    let answer = match result {
                        Ok(cs) => {
                            self.disk.run(move |s| s.set_conf_state(cs)).await?;
                            Ok(ProposeOutcome { index: entry.index })
                        }
                        Err(e) => {
                            tracing::warn!(index = entry.index, "conf change skipped: {e}");
                            Err(ProposeError::Raft(e))
                        }
                    };
                    if let Some((_, reply)) = proposal.and_then(|id| self.pending.remove(&id)) {
                        let _ = reply.send(answer);
                    }
                }
            }
            self.core.applied_to(entry.index);
            self.applied.send_replace(entry.index);
        }
        Ok(())
    }

    fn update_leadership(&mut self) {
        let is_leader = self.core.is_leader();
        self.is_leader
            .send_if_modified(|l| std::mem::replace(l, is_leader) != is_leader);
        let leader = self.core.leader();
        self.leader
            .send_if_modified(|l| std::mem::replace(l, leader) != leader);
    }

    /// Compacts the log into a snapshot of the store every `COMPACT_EVERY`
    /// entries, or when raft needs a snapshot with the state in it for a
    /// follower. Optional work: when it fails (the store does not
    /// serialize, the disk is full) the log just stays longer and it is
    /// tried again later; it never writes a snapshot without the state.
    async fn maybe_compact(&mut self) {
        let wanted = self.core.snapshot_wanted();
        let applied = *self.applied.borrow();
        if applied <= self.storage.snapshot_index()
            || (!wanted && applied < self.storage.snapshot_index() + COMPACT_EVERY)
            || tokio::time::Instant::now() < self.next_compaction
        {
            return;
        }
        let result = match self.store.snapshot_bytes().map_err(StorageError::Encode) {
            Ok(data) => self.disk.run(move |s| s.compact(applied, data)).await,
            Err(e) => Err(e),
        };
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

    /// A raft log file in a temp dir of its own, removed with the guard.
    struct TempLog {
        dir: std::path::PathBuf,
        path: std::path::PathBuf,
    }

    impl std::ops::Deref for TempLog {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.path
        }
    }

    impl Drop for TempLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn temp_file(name: &str) -> TempLog {
        let dir = std::env::temp_dir().join(format!("swarmlet-raft-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempLog {
            path: dir.join("raft.redb"),
            dir,
        }
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
        let err = start(
            RaftConfig { id: 1 },
            storage,
            store,
            None,
            Arc::new(NoTransport),
            shutdown,
        )
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
        let (handle, task) = start(
            RaftConfig { id: 1 },
            storage,
            store,
            None,
            Arc::new(NoTransport),
            shutdown,
        )
        .unwrap();
        let result = task.await.unwrap();
        let err = result.expect_err("raft must stop, not skip the entry");
        assert!(err.to_string().contains("committed entry 1"), "{err}");
        assert!(
            handle.wait_replayed().await.is_err(),
            "never reports a replay it did not do"
        );
    }

    /// Delivers messages between drivers of one process (the lead's
    /// transport does this over the cluster port).
    #[derive(Default)]
    struct Loopback {
        peers: std::sync::OnceLock<Vec<RaftHandle>>,
    }

    impl RaftTransport for Loopback {
        fn send(&self, to: u64, msgs: Vec<Message>) {
            if let Some(h) = self
                .peers
                .get()
                .and_then(|p| p.iter().find(|h| h.id() == to))
            {
                for m in msgs {
                    h.step(m);
                }
            }
        }
    }

    #[tokio::test]
    async fn three_drivers_elect_one_leader_replicate_and_redirect() {
        let (_tx, shutdown) = watch::channel(false);
        let transport = Arc::new(Loopback::default());
        let mut snap = bootstrap_snapshot(1, &State::default()).unwrap();
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        let mut handles = Vec::new();
        let mut stores = Vec::new();
        let mut logs = Vec::new();
        for id in 1..=3u64 {
            let log = temp_file(&format!("three-{id}"));
            let storage = DiskStorage::open(&log).unwrap();
            logs.push(log);
            storage.apply_snapshot(&snap).unwrap();
            let store = Arc::new(Store::new());
            let (h, _task) = start(
                RaftConfig { id },
                storage,
                store.clone(),
                None,
                transport.clone(),
                shutdown.clone(),
            )
            .unwrap();
            handles.push(h);
            stores.push(store);
        }
        assert!(transport.peers.set(handles.clone()).is_ok());
        let mut watch = handles[0].leader_watch();
        let leader = *watch.wait_for(|l| l.is_some()).await.unwrap();
        let leader = leader.expect("a leader");
        let lh = handles.iter().find(|h| h.id() == leader).unwrap();
        lh.leadership().wait_for(|l| *l).await.unwrap();
        let follower = handles.iter().find(|h| h.id() != leader).unwrap();
        let service = swarmlet_proto::Service {
            id: "s1".into(),
            spec: swarmlet_proto::ServiceSpec {
                name: "web".into(),
                replicas: 1,
                image: swarmlet_proto::Image::Wasm {
                    digest: "sha256:0".into(),
                    name: "w.wasm".into(),
                    size: 1,
                },
                ports: vec![],
                limits: Default::default(),
                allow_outbound: Vec::new(),
                instance_reuse: 0,
                instance_concurrency: 0,
                env: vec![],
                stop_grace_period_ms: None,
            },
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let cmd = Command::CreateService { service };
        match follower.propose(cmd.clone()).await {
            Err(ProposeError::NotLeader { leader: Some(l) }) => assert_eq!(l, leader),
            other => panic!("a follower must name the leader, got {other:?}"),
        }
        let out = lh.propose(cmd).await.unwrap();
        for (h, store) in handles.iter().zip(&stores) {
            h.wait_applied(out.index).await.unwrap();
            assert!(store.read().services.contains_key("s1"), "node {}", h.id());
        }
        let peers = lh.peers_status().await.unwrap();
        assert_eq!(peers.len(), 3);
        assert!(
            peers.iter().all(|p| p.voter && p.matched >= out.index),
            "{peers:?}"
        );
        // A learner that never answers is added, then refused promotion twice.
        lh.add_learner(9).await.unwrap();
        assert!(matches!(
            lh.add_learner(9).await,
            Err(ProposeError::Raft(_))
        ));
        let peers = lh.peers_status().await.unwrap();
        assert!(
            peers
                .iter()
                .any(|p| p.raft_id == 9 && !p.voter && !p.reachable),
            "{peers:?}"
        );
        lh.remove(9).await.unwrap();
        assert!(!lh
            .peers_status()
            .await
            .unwrap()
            .iter()
            .any(|p| p.raft_id == 9));
    }
}
