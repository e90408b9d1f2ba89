//! The sans-IO raft core: raft-rs's `RawNode` plus the bookkeeping every
//! shell needs (which proposal an entry answers, seeded election timeouts,
//! conf changes), with no tokio, clock, disk or network in it.
//!
//! Inputs: `tick`, `propose`, `propose_conf_change`, `step` (inbound
//! messages), and, for each `Ready` handed out by `ready()`, `persisted` once
//! the shell made its entries, hard state and snapshot durable. Outputs are
//! plain values (`ReadyOut`, `AfterPersist`, `Committed`): what to send now,
//! what to persist, what to send only after that persist, what to apply.
//!
//! Architecture invariant: raft-rs's ordering rules hold by construction:
//! between `ready()` and `persisted()` every input is refused
//! (`CoreError::Busy`), `ReadyOut::messages` may go out at once,
//! `ReadyOut::persisted_messages` and everything in `AfterPersist` only
//! after the persist, and committed entries are applied in order.
//!
//! Architecture invariant: the core draws no randomness of its own choosing:
//! raft-rs's election timeout is pinned to `election_tick`, and the
//! randomization raft needs is done here from a seeded RNG, by letting a
//! non-leader skip 0..election_tick ticks after each change of term, role or
//! leader. Same seed and same inputs, same outputs.

use std::collections::BTreeMap;

use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState,
    Message, Snapshot,
};
use raft::{RawNode, Ready, StateRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::storage::{RaftStorage, StorageError};

/// How the core is set up; everything it needs, nothing it reads itself.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub id: u64,
    /// Ticks without a leader before a pre-vote; the effective timeout is
    /// randomized in `election_tick..2*election_tick`.
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// The index the state machine already holds (the snapshot's).
    pub applied: u64,
    /// Seeds the election-timeout randomization.
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("this node is not the raft leader")]
    NotLeader { leader: Option<u64> },
    /// raft-rs dropped the proposal (e.g. a leader transfer or another conf
    /// change in flight).
    #[error("raft refused the proposal: {0}")]
    Dropped(String),
    #[error("{0}")]
    BadConfChange(String),
    /// An input arrived between `ready()` and `persisted()`.
    #[error("a Ready is being persisted; inputs wait until it is")]
    Busy,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What became of a proposal that will not be answered by `Committed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Leadership changed while it was pending: it may still commit.
    Unknown,
    /// Another entry was committed at its index: it never will.
    Lost,
}

/// A Ready, as values. Persist `snapshot`, `entries`, `hard_state` (in one
/// durable write), then call `Core::persisted(number)`.
#[derive(Debug, Default)]
pub struct ReadyOut {
    pub number: u64,
    /// Send now (a leader replicates while it persists).
    pub messages: Vec<Message>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// Send only after the persist (votes, a follower's acks).
    pub persisted_messages: Vec<Message>,
    /// Committed entries (durable since an earlier Ready) to apply, in order,
    /// each through `Core::on_committed`.
    pub committed: Vec<Entry>,
    /// Proposals whose fate changed; the shell answers their proposers.
    pub fates: Vec<(u64, Fate)>,
}

impl ReadyOut {
    /// True when the persist has anything to write.
    pub fn needs_write(&self) -> bool {
        self.snapshot.is_some() || !self.entries.is_empty() || self.hard_state.is_some()
    }
}

/// What a persisted Ready released (raft-rs's `LightReady`).
#[derive(Debug, Default)]
pub struct AfterPersist {
    /// A newer commit index: persist it before applying `committed`, so a
    /// restart replays everything that was acknowledged.
    pub commit: Option<u64>,
    pub messages: Vec<Message>,
    pub committed: Vec<Entry>,
}

/// One committed entry, decoded.
#[derive(Debug)]
pub enum Committed {
    /// A new leader's empty entry.
    Empty,
    /// An application command; `proposal`: the id given to `propose` if this
    /// node proposed it.
    Command {
        data: Vec<u8>,
        proposal: Option<u64>,
    },
    /// A membership change, already applied to raft. On `Ok` persist the new
    /// conf state; an `Err` (an invalid change) is skipped by every replica
    /// alike.
    ConfChange {
        proposal: Option<u64>,
        result: Result<ConfState, String>,
    },
}

/// A membership change, as the handle offers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    AddLearner(u64),
    /// Learner → voter.
    Promote(u64),
    Remove(u64),
}

/// One peer as this node sees it (meaningful on the leader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub raft_id: u64,
    pub voter: bool,
    /// The leader heard from it within the last election timeout and it
    /// has acknowledged entries (always true for the node itself; false for
    /// others on a non-leader).
    pub reachable: bool,
    /// The highest log index known to be on it.
    pub matched: u64,
}

pub struct Core<S: RaftStorage> {
    node: RawNode<S>,
    id: u64,
    rng: StdRng,
    election_tick: usize,
    /// Ticks a non-leader swallows before raft sees them (see module doc).
    skip_ticks: usize,
    /// (term, role, leader) after the last input, to notice raft's resets.
    seen: (u64, StateRole, u64),
    /// This node's proposals awaiting commit: index → (term, proposal id).
    pending: BTreeMap<u64, (u64, u64)>,
    fates: Vec<(u64, Fate)>,
    /// The Ready handed out and not yet persisted.
    ready: Option<Ready>,
    /// The index of a snapshot in the outstanding Ready.
    ready_snapshot: Option<u64>,
    /// Leader ticks each peer has spent waiting for a snapshot.
    snapshot_wait: BTreeMap<u64, usize>,
}

fn id_context(id: u64) -> Vec<u8> {
    id.to_le_bytes().to_vec()
}

fn context_id(ctx: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(ctx).ok().map(u64::from_le_bytes)
}

impl<S: RaftStorage> Core<S> {
    pub fn new(cfg: &CoreConfig, storage: S, logger: &slog::Logger) -> Result<Self, CoreError> {
        let config = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            // Pinned: raft-rs would randomize with thread_rng (module doc).
            min_election_tick: cfg.election_tick,
            max_election_tick: cfg.election_tick + 1,
            heartbeat_tick: cfg.heartbeat_tick,
            pre_vote: true,
            check_quorum: true,
            applied: cfg.applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        let node = RawNode::new(&config, storage, logger)
            .map_err(|e| CoreError::Storage(StorageError::from(e)))?;
        let mut core = Core {
            seen: (0, StateRole::Follower, 0),
            node,
            id: cfg.id,
            rng: StdRng::seed_from_u64(cfg.seed),
            election_tick: cfg.election_tick,
            skip_ticks: 0,
            pending: BTreeMap::new(),
            fates: Vec::new(),
            ready: None,
            ready_snapshot: None,
            snapshot_wait: BTreeMap::new(),
        };
        core.observe();
        Ok(core)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn storage(&self) -> &S {
        self.node.store()
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn leader(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|l| *l != raft::INVALID_ID)
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn role(&self) -> StateRole {
        self.node.raft.state
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    pub fn applied_index(&self) -> u64 {
        self.node.raft.raft_log.applied
    }

    /// True between `ready()` and `persisted()`.
    pub fn busy(&self) -> bool {
        self.ready.is_some()
    }

    fn idle(&self) -> Result<(), CoreError> {
        if self.ready.is_some() {
            return Err(CoreError::Busy);
        }
        Ok(())
    }

    /// Notices raft's resets (term, role or leader changed): draws the next
    /// election delay and settles the proposals a lost leadership leaves.
    fn observe(&mut self) {
        let now = (
            self.node.raft.term,
            self.node.raft.state,
            self.node.raft.leader_id,
        );
        if now == self.seen {
            return;
        }
        if self.seen.1 == StateRole::Leader && now.1 != StateRole::Leader {
            for (_, (_, id)) in std::mem::take(&mut self.pending) {
                self.fates.push((id, Fate::Unknown));
            }
        }
        self.seen = now;
        self.skip_ticks = self.rng.gen_range(0..self.election_tick.max(1));
    }

    /// Starts an election now (a single voter does so on start).
    pub fn campaign(&mut self) -> Result<(), CoreError> {
        self.idle()?;
        self.node
            .campaign()
            .map_err(|e| CoreError::Dropped(e.to_string()))?;
        self.observe();
        Ok(())
    }

    pub fn tick(&mut self) -> Result<(), CoreError> {
        self.idle()?;
        if !self.is_leader() && self.skip_ticks > 0 {
            self.skip_ticks -= 1;
            return Ok(());
        }
        self.node.tick();
        if self.is_leader() {
            self.retry_stuck_snapshots();
        }
        self.observe();
        Ok(())
    }

    /// raft-rs waits for the application to report a sent snapshot's fate;
    /// our transport is fire-and-forget, so a snapshot lost on the way would
    /// leave the peer waiting forever. A peer still waiting after a few
    /// election timeouts is reported failed, and raft sends it again.
    fn retry_stuck_snapshots(&mut self) {
        let waiting: Vec<u64> = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(_, p)| p.state == raft::ProgressState::Snapshot)
            .map(|(id, _)| *id)
            .collect();
        self.snapshot_wait.retain(|id, _| waiting.contains(id));
        let limit = 3 * self.election_tick;
        for id in waiting {
            let t = self.snapshot_wait.entry(id).or_insert(0);
            *t += 1;
            if *t > limit {
                *t = 0;
                self.node.report_snapshot(id, raft::SnapshotStatus::Failure);
            }
        }
    }

    /// Steps an inbound message. Messages raft cannot use (from a removed
    /// peer, a stale term) are dropped, as raft expects of a lossy network.
    pub fn step(&mut self, m: Message) -> Result<(), CoreError> {
        self.idle()?;
        if let Err(e) = self.node.step(m) {
            tracing::debug!(target: "raft", "message dropped: {e}");
        }
        self.observe();
        Ok(())
    }

    /// Proposes `data` (a leader only). `id` comes back in
    /// `Committed::Command::proposal` or in a `Fate`. Returns the log index
    /// the entry was given.
    pub fn propose(&mut self, id: u64, data: Vec<u8>) -> Result<u64, CoreError> {
        self.idle()?;
        if !self.is_leader() {
            return Err(CoreError::NotLeader {
                leader: self.leader(),
            });
        }
        self.node
            .propose(id_context(id), data)
            .map_err(|e| CoreError::Dropped(e.to_string()))?;
        Ok(self.track(id))
    }

    fn track(&mut self, id: u64) -> u64 {
        let index = self.node.raft.raft_log.last_index();
        self.pending.insert(index, (self.node.raft.term, id));
        index
    }

    /// Proposes a membership change (a leader only), checked against the
    /// current configuration first so a useless change is refused with a
    /// reason instead of committing as a no-op.
    pub fn propose_conf_change(&mut self, id: u64, change: MemberChange) -> Result<u64, CoreError> {
        self.idle()?;
        if !self.is_leader() {
            return Err(CoreError::NotLeader {
                leader: self.leader(),
            });
        }
        let conf = self.node.raft.prs().conf().to_conf_state();
        let (kind, node) = match change {
            MemberChange::AddLearner(n) => {
                if conf.voters.contains(&n) || conf.learners.contains(&n) {
                    return Err(CoreError::BadConfChange(format!(
                        "raft peer {n} is already a member"
                    )));
                }
                (ConfChangeType::AddLearnerNode, n)
            }
            MemberChange::Promote(n) => {
                if !conf.learners.contains(&n) {
                    return Err(CoreError::BadConfChange(format!(
                        "raft peer {n} is not a learner; add it as a learner first"
                    )));
                }
                (ConfChangeType::AddNode, n)
            }
            MemberChange::Remove(n) => {
                if !conf.voters.contains(&n) && !conf.learners.contains(&n) {
                    return Err(CoreError::BadConfChange(format!(
                        "raft peer {n} is not a member"
                    )));
                }
                if conf.voters == [n] {
                    return Err(CoreError::BadConfChange(format!(
                        "raft peer {n} is the last voter; removing it would leave no quorum"
                    )));
                }
                (ConfChangeType::RemoveNode, n)
            }
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = node;
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        self.node
            .propose_conf_change(id_context(id), cc)
            .map_err(|e| CoreError::Dropped(e.to_string()))?;
        Ok(self.track(id))
    }

    /// Hands out the next Ready, if there is one (and none is outstanding).
    pub fn ready(&mut self) -> Option<ReadyOut> {
        if self.ready.is_some() {
            return None;
        }
        if !self.node.has_ready() {
            return if self.fates.is_empty() {
                None
            } else {
                Some(ReadyOut {
                    fates: std::mem::take(&mut self.fates),
                    ..Default::default()
                })
            };
        }
        let mut rd = self.node.ready();
        let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        self.ready_snapshot = snapshot.as_ref().map(|s| s.get_metadata().index);
        let out = ReadyOut {
            number: rd.number(),
            messages: rd.take_messages(),
            snapshot,
            entries: rd.take_entries(),
            hard_state: rd.hs().cloned(),
            persisted_messages: rd.take_persisted_messages(),
            committed: rd.take_committed_entries(),
            fates: std::mem::take(&mut self.fates),
        };
        self.ready = Some(rd);
        Some(out)
    }

    /// The shell made Ready `number` durable (and sent its persisted
    /// messages after that; if it held a snapshot, the state machine was
    /// restored from it). Returns what that released.
    pub fn persisted(&mut self, number: u64) -> AfterPersist {
        let Some(rd) = self.ready.take() else {
            return AfterPersist::default();
        };
        debug_assert_eq!(rd.number(), number, "Readies are persisted in order");
        let mut light = self.node.advance_append(rd);
        if let Some(index) = self.ready_snapshot.take() {
            self.applied_to(index);
        }
        self.observe();
        AfterPersist {
            commit: light.commit_index(),
            messages: light.take_messages(),
            committed: light.take_committed_entries(),
        }
    }

    /// Decodes a committed entry, applies a conf change to raft, and says
    /// whose proposal it answers. Call in log order, then `applied_to`.
    pub fn on_committed(&mut self, e: &Entry) -> Result<Committed, CoreError> {
        let proposal = self.settle(e);
        Ok(match e.get_entry_type() {
            EntryType::EntryNormal if e.get_data().is_empty() => Committed::Empty,
            EntryType::EntryNormal => Committed::Command {
                data: e.get_data().to_vec(),
                proposal,
            },
            EntryType::EntryConfChange => {
                let mut cc = raft::eraftpb::ConfChange::default();
                protobuf::Message::merge_from_bytes(&mut cc, e.get_data())
                    .map_err(|source| self.corrupt(e.index, source))?;
                Committed::ConfChange {
                    proposal,
                    result: self.node.apply_conf_change(&cc).map_err(|e| e.to_string()),
                }
            }
            EntryType::EntryConfChangeV2 => {
                let mut cc = ConfChangeV2::default();
                protobuf::Message::merge_from_bytes(&mut cc, e.get_data())
                    .map_err(|source| self.corrupt(e.index, source))?;
                Committed::ConfChange {
                    proposal,
                    result: self.node.apply_conf_change(&cc).map_err(|e| e.to_string()),
                }
            }
        })
    }

    /// Matches a committed entry to this node's pending proposals: the one
    /// at its index and term is answered; any older one, or one at its index
    /// with another term, lost its place.
    fn settle(&mut self, e: &Entry) -> Option<u64> {
        let mut answered = None;
        while let Some((&index, &(term, id))) = self.pending.first_key_value() {
            if index > e.index {
                break;
            }
            self.pending.remove(&index);
            if index == e.index && term == e.term && context_id(e.get_context()) == Some(id) {
                answered = Some(id);
            } else {
                self.fates.push((id, Fate::Lost));
            }
        }
        answered
    }

    fn corrupt(&self, index: u64, source: protobuf::ProtobufError) -> CoreError {
        CoreError::Storage(StorageError::Corrupt {
            path: self.node.store().describe(),
            key: format!("committed entry {index}"),
            source: Box::new(source),
        })
    }

    /// The shell applied everything up to `index`.
    pub fn applied_to(&mut self, index: u64) {
        if index > self.node.raft.raft_log.applied {
            self.node.advance_apply_to(index);
        }
    }

    /// True (once) when raft wanted to send a snapshot but storage had none
    /// with the state in it: the shell should compact at the applied index.
    pub fn snapshot_wanted(&self) -> bool {
        self.node.store().take_snapshot_wanted()
    }

    /// The peers of the current configuration.
    pub fn peers_status(&self) -> Vec<PeerStatus> {
        let prs = self.node.raft.prs();
        let conf = prs.conf().to_conf_state();
        let leader = self.is_leader();
        let mut out: Vec<PeerStatus> = conf
            .voters
            .iter()
            .map(|id| (*id, true))
            .chain(conf.learners.iter().map(|id| (*id, false)))
            .map(|(raft_id, voter)| {
                let pr = prs.get(raft_id);
                PeerStatus {
                    raft_id,
                    voter,
                    // raft-rs starts a new peer as recently active; it
                    // counts as reachable once it answered (matched > 0).
                    reachable: raft_id == self.id
                        || (leader && pr.is_some_and(|p| p.recent_active && p.matched > 0)),
                    matched: if raft_id == self.id {
                        self.node.raft.raft_log.persisted
                    } else {
                        pr.map(|p| p.matched).unwrap_or(0)
                    },
                }
            })
            .collect();
        out.sort_by_key(|p| p.raft_id);
        out
    }

    /// Tells raft a peer could not be reached (the transport failed).
    pub fn report_unreachable(&mut self, id: u64) {
        if self.ready.is_none() {
            self.node.report_unreachable(id);
        }
    }
}
