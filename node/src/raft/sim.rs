//! Deterministic simulation of the raft core: N nodes (3–5), each a `Core`
//! over `MemStorage` applying `Envelope` commands to a real `Store`, on a
//! simulated network (seeded loss, delays that reorder, partitions) and a
//! simulated clock, with crashes that restart a node from what it persisted
//! only (some between two steps, some after a leader sent its appends but
//! before it persisted them). Nodes 4 and 5 join through conf changes
//! (learner, then promoted). Everything random comes from one seed, so a
//! failing seed replays exactly.
//!
//! Checked on every step and at the end of each schedule:
//! - state machine safety: whatever any node applies at an index (across
//!   restarts too) is the same entry, and each node applies in log order;
//! - at most one leader per term;
//! - once healed (partitions gone, crashed nodes restarted, no loss) the
//!   cluster converges: one leader, every node applied up to its log end;
//! - every acknowledged proposal is in every node's store, and the stores
//!   are equal;
//! - desired == actual once healed: the orchestrator (`reconcile` on the
//!   leader's store) and an agent per node (reporting the tasks its own,
//!   possibly lagging, store assigns to it, through the leader as the
//!   dispatcher does) bring every service, created and scaled by clients
//!   during the chaos, to exactly its replica count, all running, none on
//!   a drained node (clients pause, drain and reactivate nodes during the
//!   chaos; once healed one node stays drained).
//!
//! `SWARMLET_SIM_SEEDS=N` runs seeds 1..=N (default 200);
//! `SWARMLET_SIM_SEED=S` replays one; `scripts/sim.sh` runs many more.

use std::collections::{BTreeMap, BTreeSet};

use raft::eraftpb::Message;
use raft::StateRole;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swarmlet_proto::{Command, Envelope, Image, Service, ServiceSpec};

use super::core::{Committed, Core, CoreConfig, MemberChange};
use super::storage::{MemStorage, RaftStorage};
use crate::store::{State, Store};

/// Simulated time units per raft tick.
const TICK_EVERY: u64 = 10;
const CHAOS_UNITS: u64 = 3000;
const HEAL_UNITS: u64 = 6000;
/// Entries after the last snapshot before a node compacts (small, so
/// snapshots are sent to lagging and new nodes).
const COMPACT_AT: u64 = 25;
/// Simulated time units between two rounds of the orchestrator and agents.
const CONTROL_EVERY: u64 = 20;

/// Deliberate bugs, to show the checker catches them.
#[derive(Clone, Copy, Default)]
struct Bugs {
    /// Acknowledge a proposal as soon as the leader accepted it (before it
    /// is committed).
    ack_on_propose: bool,
}

struct Node {
    id: u64,
    storage: MemStorage,
    core: Option<Core<MemStorage>>,
    store: Store,
    /// The last index applied to `store` (since its last restart).
    applied: u64,
    /// Crash at the next Ready, after sending its messages, before
    /// persisting it.
    crash_before_persist: bool,
    /// Client proposals waiting on this node: proposal id → service name.
    waiting: BTreeMap<u64, String>,
}

struct Flight {
    from: u64,
    to: u64,
    msg: Message,
}

struct Sim {
    rng: StdRng,
    bugs: Bugs,
    now: u64,
    nodes: Vec<Node>,
    /// In-flight messages by (delivery time, send order).
    net: BTreeMap<(u64, u64), Flight>,
    seq: u64,
    loss: f64,
    max_delay: u64,
    /// Partition: node id → group; messages cross groups never.
    group: BTreeMap<u64, u8>,
    /// Every index any node applied: (term, data).
    log: BTreeMap<u64, (u64, Vec<u8>)>,
    leaders: BTreeMap<u64, u64>,
    acked: Vec<String>,
    next_proposal: u64,
    stats: Stats,
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    acked: usize,
    crashes: usize,
    snapshots_installed: usize,
    partitions: usize,
    conf_changes: usize,
    availability_changes: usize,
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn node_name(raft_id: u64) -> String {
    format!("node-{raft_id}")
}

fn service(name: &str, at: u64) -> Service {
    Service {
        id: format!("id-{name}"),
        spec: ServiceSpec {
            name: name.to_string(),
            replicas: 1,
            image: Image::Wasm {
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
        created_at_ms: at,
        updated_at_ms: at,
    }
}

impl Sim {
    fn new(seed: u64, bugs: Bugs) -> Result<Sim, String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(3..=5u64);
        let loss = [0.0, 0.01, 0.05, 0.15][rng.gen_range(0..4)];
        let max_delay = rng.gen_range(1..=40);
        // The founders share the first snapshot (as `init` writes it for one).
        // Every node is in the store from the start, Ready, so the
        // orchestrator places tasks on all of them.
        let mut first = State::default();
        for id in 1..=n {
            first.nodes.insert(
                node_name(id),
                swarmlet_proto::Node {
                    id: node_name(id),
                    raft_id: id,
                    hostname: node_name(id),
                    role: swarmlet_proto::NodeRole::Manager,
                    availability: swarmlet_proto::Availability::Active,
                    addr: String::new(),
                    created_at_ms: 0,
                    status: swarmlet_proto::NodeStatus::ready(),
                    port_problems: Vec::new(),
                },
            );
        }
        let mut snap = super::bootstrap_snapshot(1, &first).map_err(|e| e.to_string())?;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        let mut nodes = Vec::new();
        for id in 1..=n {
            let storage = MemStorage::new();
            if id <= 3 {
                storage.apply_snapshot(&snap).map_err(|e| e.to_string())?;
            }
            nodes.push(Node {
                id,
                storage,
                core: None,
                store: Store::new(),
                applied: 0,
                crash_before_persist: false,
                waiting: BTreeMap::new(),
            });
        }
        let mut sim = Sim {
            rng,
            bugs,
            now: 0,
            nodes,
            net: BTreeMap::new(),
            seq: 0,
            loss,
            max_delay,
            group: BTreeMap::new(),
            log: BTreeMap::new(),
            leaders: BTreeMap::new(),
            acked: Vec::new(),
            next_proposal: 1,
            stats: Stats::default(),
        };
        for i in 0..sim.nodes.len() {
            sim.start(i)?;
        }
        Ok(sim)
    }

    /// Starts (or restarts) node `i` from what its storage holds.
    fn start(&mut self, i: usize) -> Result<(), String> {
        let seed = self.rng.gen();
        let node = &mut self.nodes[i];
        node.store = Store::new();
        node.applied =
            super::restore_store(&node.storage, &node.store).map_err(|e| e.to_string())?;
        let cfg = CoreConfig {
            id: node.id,
            election_tick: 10,
            heartbeat_tick: 1,
            applied: node.applied,
            seed,
        };
        node.core = Some(
            Core::new(&cfg, node.storage.clone(), &logger())
                .map_err(|e| format!("node {} does not start: {e}", node.id))?,
        );
        Ok(())
    }

    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.core = None;
        node.crash_before_persist = false;
        // Its clients never hear back: not acknowledged.
        node.waiting.clear();
        self.stats.crashes += 1;
    }

    fn send(&mut self, from: u64, msgs: Vec<Message>, lossy: bool) {
        for msg in msgs {
            if lossy && self.rng.gen_bool(self.loss) {
                continue;
            }
            let at = self.now + self.rng.gen_range(1..=self.max_delay);
            self.seq += 1;
            let to = msg.to;
            self.net.insert((at, self.seq), Flight { from, to, msg });
        }
    }

    fn connected(&self, a: u64, b: u64) -> bool {
        self.group.get(&a).copied().unwrap_or(0) == self.group.get(&b).copied().unwrap_or(0)
    }

    fn deliver(&mut self) -> Result<(), String> {
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let f = entry.remove();
            if !self.connected(f.from, f.to) {
                continue;
            }
            let Some(node) = self.nodes.iter_mut().find(|n| n.id == f.to) else {
                continue;
            };
            if let Some(core) = node.core.as_mut() {
                core.step(f.msg).map_err(|e| format!("step: {e}"))?;
            }
        }
        Ok(())
    }

    /// Handles node `i`'s Readies as the driver does, synchronously.
    fn process(&mut self, i: usize) -> Result<(), String> {
        loop {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return Ok(());
            };
            let Some(mut rd) = core.ready() else { break };
            let from = self.nodes[i].id;
            for (id, _fate) in &rd.fates {
                // Unknown or lost: the client gets no acknowledgement.
                self.nodes[i].waiting.remove(id);
            }
            let msgs = std::mem::take(&mut rd.messages);
            self.send(from, msgs, true);
            if self.nodes[i].crash_before_persist && rd.needs_write() {
                self.crash(i);
                return Ok(());
            }
            let storage = self.nodes[i].storage.clone();
            if let Some(snap) = &rd.snapshot {
                storage.apply_snapshot(snap).map_err(|e| e.to_string())?;
            }
            storage
                .append(&rd.entries, rd.hard_state.as_ref())
                .map_err(|e| e.to_string())?;
            let msgs = std::mem::take(&mut rd.persisted_messages);
            self.send(from, msgs, true);
            if let Some(snap) = &rd.snapshot {
                let state: State = serde_json::from_slice(snap.get_data())
                    .map_err(|e| format!("node {from}: snapshot without a state: {e}"))?;
                let node = &mut self.nodes[i];
                node.store.restore(state);
                node.applied = snap.get_metadata().index;
                self.stats.snapshots_installed += 1;
            }
            self.apply(i, std::mem::take(&mut rd.committed))?;
            let Some(core) = self.nodes[i].core.as_mut() else {
                return Ok(());
            };
            let after = core.persisted(rd.number);
            if let Some(c) = after.commit {
                storage.set_commit(c).map_err(|e| e.to_string())?;
            }
            self.send(from, after.messages, true);
            self.apply(i, after.committed)?;
        }
        self.maybe_compact(i)
    }

    fn apply(&mut self, i: usize, entries: Vec<raft::eraftpb::Entry>) -> Result<(), String> {
        for e in entries {
            let node = &mut self.nodes[i];
            let id = node.id;
            if e.index != node.applied + 1 {
                return Err(format!(
                    "node {id} applies entry {} after {}: not in log order",
                    e.index, node.applied
                ));
            }
            match self.log.get(&e.index) {
                Some((term, data)) if *term != e.term || data.as_slice() != e.get_data() => {
                    return Err(format!(
                        "node {id} applies entry {} of term {}, another node applied one of term {term} there",
                        e.index, e.term
                    ));
                }
                Some(_) => {}
                None => {
                    self.log.insert(e.index, (e.term, e.get_data().to_vec()));
                }
            }
            let Some(core) = node.core.as_mut() else {
                return Ok(());
            };
            match core.on_committed(&e).map_err(|e| e.to_string())? {
                Committed::Empty => {}
                Committed::Command { data, proposal } => {
                    let env: Envelope = crate::store::entry::decode(&data)
                        .map_err(|e| format!("node {id}: unreadable entry: {e}"))?;
                    let ok = node.store.apply(&env).is_ok();
                    if let Some(name) = proposal.and_then(|p| node.waiting.remove(&p)) {
                        if ok && !self.bugs.ack_on_propose {
                            self.acked.push(name);
                        }
                    }
                }
                Committed::ConfChange { result, .. } => {
                    if let Ok(cs) = result {
                        node.storage.set_conf_state(cs).map_err(|e| e.to_string())?;
                    }
                }
            }
            core.applied_to(e.index);
            node.applied = e.index;
        }
        Ok(())
    }

    fn maybe_compact(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let Some(core) = node.core.as_ref() else {
            return Ok(());
        };
        let wanted = core.snapshot_wanted();
        let snap_index = node.storage.snapshot_index();
        if node.applied > snap_index && (wanted || node.applied >= snap_index + COMPACT_AT) {
            let data = node.store.snapshot_bytes().map_err(|e| e.to_string())?;
            node.storage
                .compact(node.applied, data)
                .map_err(|e| format!("node {}: compact: {e}", node.id))?;
        }
        Ok(())
    }

    fn leader(&self) -> Option<usize> {
        // The live node that leads in the highest term.
        (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.role() == StateRole::Leader)
            })
            .max_by_key(|i| self.nodes[*i].core.as_ref().map(|c| c.term()))
    }

    fn propose(&mut self) {
        let Some(i) = self.leader() else { return };
        let id = self.next_proposal;
        self.next_proposal += 1;
        let name = format!("svc-{id}");
        let env = Envelope {
            proposal_id: id,
            at_ms: self.now,
            command: Command::CreateService {
                service: service(&name, self.now),
            },
        };
        let data = crate::store::entry::encode(&env).unwrap_or_default();
        let node = &mut self.nodes[i];
        if let Some(core) = node.core.as_mut() {
            if core.propose(id, data).is_ok() {
                if self.bugs.ack_on_propose {
                    self.acked.push(name.clone());
                }
                node.waiting.insert(id, name);
            }
        }
    }

    /// Grows the cluster: the next node not yet a member joins as a learner,
    /// a caught-up learner is promoted.
    fn change_membership(&mut self) {
        let Some(i) = self.leader() else { return };
        let id = self.next_proposal;
        self.next_proposal += 1;
        let all: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let peers = core.peers_status();
        let last = core.last_index();
        let change = if let Some(l) = peers.iter().find(|p| !p.voter) {
            if l.matched + 5 < last {
                return; // not caught up yet
            }
            MemberChange::Promote(l.raft_id)
        } else {
            let members: BTreeSet<u64> = peers.iter().map(|p| p.raft_id).collect();
            match all.into_iter().find(|n| !members.contains(n)) {
                Some(n) => MemberChange::AddLearner(n),
                None => return,
            }
        };
        if core.propose_conf_change(id, change).is_ok() {
            self.stats.conf_changes += 1;
        }
    }

    /// Proposes `command` on the leader, nobody waiting for it (the
    /// orchestrator's and the agents' proposals: they decide again next
    /// round if it is lost).
    fn propose_unacked(&mut self, command: Command) {
        let Some(i) = self.leader() else { return };
        let id = self.next_proposal;
        self.next_proposal += 1;
        let env = Envelope {
            proposal_id: id,
            at_ms: self.now,
            command,
        };
        let data = crate::store::entry::encode(&env).unwrap_or_default();
        if let Some(core) = self.nodes[i].core.as_mut() {
            let _ = core.propose(id, data);
        }
    }

    /// One round of the control plane above raft: the orchestrator's
    /// `reconcile` on the leader's store, and on every live node an agent
    /// that "runs" the tasks its own (maybe lagging) store assigns to it
    /// and reports them through the leader, as the dispatcher does.
    fn control(&mut self) {
        if let Some(l) = self.leader() {
            let commands = crate::orchestrator::reconcile(&self.nodes[l].store.read(), self.now);
            for c in commands {
                self.propose_unacked(c);
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() {
                continue;
            }
            let me = node_name(self.nodes[i].id);
            let updates: Vec<swarmlet_proto::TaskStatus> = self.nodes[i]
                .store
                .read()
                .tasks
                .values()
                .filter(|t| t.node_id.as_deref() == Some(me.as_str()))
                // As the dispatcher: a `New` task waits out its restart
                // back-off and is not handed to its node yet.
                .filter(|t| t.state != swarmlet_proto::TaskState::New)
                .filter_map(|t| {
                    let state = match t.desired_state {
                        swarmlet_proto::DesiredState::Running
                            if t.state < swarmlet_proto::TaskState::Running =>
                        {
                            swarmlet_proto::TaskState::Running
                        }
                        swarmlet_proto::DesiredState::Shutdown if !t.state.is_terminal() => {
                            swarmlet_proto::TaskState::Shutdown
                        }
                        _ => return None,
                    };
                    Some(swarmlet_proto::TaskStatus {
                        task_id: t.id.clone(),
                        state,
                        message: String::new(),
                        error: None,
                        endpoint: None,
                    })
                })
                .collect();
            if !updates.is_empty() {
                self.propose_unacked(Command::ReportTaskStatuses {
                    node_id: me,
                    updates,
                });
            }
        }
    }

    /// A client scales a random service of the leader's store.
    fn scale(&mut self) {
        let Some(l) = self.leader() else { return };
        let ids: Vec<String> = self.nodes[l]
            .store
            .read()
            .services
            .keys()
            .cloned()
            .collect();
        if ids.is_empty() {
            return;
        }
        let service_id = ids[self.rng.gen_range(0..ids.len())].clone();
        let replicas = self.rng.gen_range(0..=3);
        self.propose_unacked(Command::ScaleService {
            service_id,
            replicas,
        });
    }

    /// A client sets a random node's availability (active, pause or drain).
    fn set_availability(&mut self) {
        let id = self.nodes[self.rng.gen_range(0..self.nodes.len())].id;
        let availability = match self.rng.gen_range(0..4) {
            0 => swarmlet_proto::Availability::Pause,
            1 => swarmlet_proto::Availability::Drain,
            _ => swarmlet_proto::Availability::Active,
        };
        self.propose_unacked(Command::SetNodeAvailability {
            node_id: node_name(id),
            availability,
        });
        self.stats.availability_changes += 1;
    }

    /// While healing: every node but the first drained one becomes active
    /// again (so every service has somewhere to run).
    fn reactivate(&mut self) {
        let Some(l) = self.leader() else { return };
        let mut changes = Vec::new();
        {
            let state = self.nodes[l].store.read();
            let mut kept_drained = false;
            for n in state.nodes.values() {
                match n.availability {
                    swarmlet_proto::Availability::Active => {}
                    swarmlet_proto::Availability::Drain if !kept_drained => kept_drained = true,
                    _ => changes.push(n.id.clone()),
                }
            }
        }
        for node_id in changes {
            self.propose_unacked(Command::SetNodeAvailability {
                node_id,
                availability: swarmlet_proto::Availability::Active,
            });
        }
    }

    /// Desired == actual on the leader's store: every service has exactly
    /// `replicas` tasks that should run, and all of them run, none on a
    /// drained node.
    fn replicas_converged(&self) -> Result<(), String> {
        let Some(l) = self.leader() else {
            return Err("no leader".into());
        };
        let state = self.nodes[l].store.read();
        for s in state.services.values() {
            let live: Vec<_> = state
                .tasks_of(&s.id)
                .filter(|t| t.desired_state == swarmlet_proto::DesiredState::Running)
                .collect();
            let running = live
                .iter()
                .filter(|t| t.state == swarmlet_proto::TaskState::Running)
                .count();
            if let Some(t) = live.iter().find(|t| {
                t.node_id
                    .as_ref()
                    .and_then(|n| state.nodes.get(n))
                    .is_some_and(|n| n.availability == swarmlet_proto::Availability::Drain)
            }) {
                return Err(format!(
                    "service {}: task {} still runs on a drained node",
                    s.spec.name, t.id
                ));
            }
            if live.len() as u64 != s.spec.replicas || running as u64 != s.spec.replicas {
                return Err(format!(
                    "service {} wants {} replicas: {} tasks should run, {} run",
                    s.spec.name,
                    s.spec.replicas,
                    live.len(),
                    running
                ));
            }
        }
        Ok(())
    }

    fn check_leaders(&mut self) -> Result<(), String> {
        for node in &self.nodes {
            let Some(core) = node.core.as_ref() else {
                continue;
            };
            if core.role() == StateRole::Leader {
                let first = *self.leaders.entry(core.term()).or_insert(node.id);
                if first != node.id {
                    return Err(format!(
                        "two leaders in term {}: nodes {first} and {}",
                        core.term(),
                        node.id
                    ));
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, chaos: bool) -> Result<(), String> {
        self.now += 1;
        if chaos {
            self.chaos()?;
        }
        for i in 0..self.nodes.len() {
            let phase = self.nodes[i].id * 3;
            if (self.now + phase).is_multiple_of(TICK_EVERY) {
                if let Some(core) = self.nodes[i].core.as_mut() {
                    core.tick().map_err(|e| e.to_string())?;
                }
            }
        }
        self.deliver()?;
        for i in 0..self.nodes.len() {
            self.process(i)?;
        }
        if self.now.is_multiple_of(CONTROL_EVERY) {
            self.control();
        }
        self.check_leaders()
    }

    fn chaos(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        if self.rng.gen_bool(0.0008) {
            let i = self.rng.gen_range(0..n);
            if self.nodes[i].core.is_some() {
                if self.rng.gen_bool(0.5) {
                    self.crash(i);
                } else {
                    self.nodes[i].crash_before_persist = true;
                }
            }
        }
        for i in 0..n {
            if self.nodes[i].core.is_none() && self.rng.gen_bool(0.004) {
                self.start(i)?;
            }
        }
        if self.rng.gen_bool(0.001) {
            self.group.clear();
            for node in &self.nodes {
                let g = self.rng.gen_range(0..2u8);
                self.group.insert(node.id, g);
            }
            self.stats.partitions += 1;
        }
        if !self.group.is_empty() && self.rng.gen_bool(0.003) {
            self.group.clear();
        }
        if self.rng.gen_bool(0.02) {
            self.propose();
        }
        if self.rng.gen_bool(0.005) {
            self.scale();
        }
        if n > 3 && self.rng.gen_bool(0.002) {
            self.change_membership();
        }
        if self.rng.gen_bool(0.002) {
            self.set_availability();
        }
        Ok(())
    }

    /// Heals everything and runs until the cluster converges.
    fn heal(&mut self) -> Result<(), String> {
        self.group.clear();
        self.loss = 0.0;
        for i in 0..self.nodes.len() {
            self.nodes[i].crash_before_persist = false;
            if self.nodes[i].core.is_none() {
                self.start(i)?;
            }
        }
        // Finish growing the cluster, then settle.
        let deadline = self.now + HEAL_UNITS;
        while self.now < deadline {
            self.step(false)?;
            if self.now.is_multiple_of(50) && self.nodes.len() > 3 {
                self.change_membership();
            }
            if self.now.is_multiple_of(50) {
                self.reactivate();
            }
            if self.converged() && self.replicas_converged().is_ok() {
                return Ok(());
            }
        }
        Err(format!(
            "the healed cluster did not converge in {HEAL_UNITS} time units ({}): {}",
            self.replicas_converged().err().unwrap_or_default(),
            self.describe()
        ))
    }

    fn converged(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let Some(lc) = self.nodes[l].core.as_ref() else {
            return false;
        };
        let last = lc.last_index();
        lc.commit_index() == last
            && self.nodes.iter().all(|n| {
                n.applied == last
                    && n.core
                        .as_ref()
                        .is_some_and(|c| c.leader() == Some(self.nodes[l].id))
            })
    }

    fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| match &n.core {
                Some(c) => format!(
                    "node {} {:?} term {} leader {:?} commit {} last {} applied {} snapshot {} peers {:?}",
                    n.id,
                    c.role(),
                    c.term(),
                    c.leader(),
                    c.commit_index(),
                    c.last_index(),
                    n.applied,
                    n.storage.snapshot_index(),
                    if c.is_leader() { c.peers_status() } else { vec![] }
                ),
                None => format!("node {} down", n.id),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn check_stores(&self) -> Result<(), String> {
        let first = serde_json::to_string(&*self.nodes[0].store.read()).unwrap_or_default();
        for node in &self.nodes {
            let state = node.store.read();
            for name in &self.acked {
                if !state.services.values().any(|s| &s.spec.name == name) {
                    return Err(format!(
                        "acknowledged service {name} is missing on node {}",
                        node.id
                    ));
                }
            }
            let json = serde_json::to_string(&*state).unwrap_or_default();
            if json != first {
                return Err(format!(
                    "node {}'s store differs from node {}'s",
                    node.id, self.nodes[0].id
                ));
            }
        }
        Ok(())
    }
}

/// Runs one schedule; a panic (raft-rs's own assertions) is a failure of
/// that seed too, reported with it.
fn run(seed: u64, bugs: Bugs) -> Result<Stats, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_schedule(seed, bugs)))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {what}"))
        })
}

fn run_schedule(seed: u64, bugs: Bugs) -> Result<Stats, String> {
    let mut sim = Sim::new(seed, bugs)?;
    for _ in 0..CHAOS_UNITS {
        sim.step(true)?;
    }
    sim.heal()?;
    sim.check_stores()?;
    sim.stats.acked = sim.acked.len();
    Ok(sim.stats)
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("SWARMLET_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n: u64 = std::env::var("SWARMLET_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let base: u64 = std::env::var("SWARMLET_SIM_SEED_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    (base..base + n).collect()
}

#[test]
fn seeded_schedules_keep_raft_safe_and_lose_no_acknowledged_write() {
    let seeds = seeds();
    let mut total = Stats::default();
    let mut failed = Vec::new();
    for &seed in &seeds {
        match run(seed, Bugs::default()) {
            Ok(s) => {
                total.acked += s.acked;
                total.crashes += s.crashes;
                total.snapshots_installed += s.snapshots_installed;
                total.partitions += s.partitions;
                total.conf_changes += s.conf_changes;
                total.availability_changes += s.availability_changes;
            }
            Err(e) => {
                eprintln!("seed {seed} failed: {e}\n  replay: SWARMLET_SIM_SEED={seed} cargo test --release -p swarmlet --lib raft::sim");
                failed.push(seed);
            }
        }
    }
    eprintln!("{} seeds: {total:?}", seeds.len());
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
    // The schedules must actually exercise what they claim to.
    if seeds.len() >= 50 {
        assert!(total.acked > 0 && total.crashes > 0 && total.partitions > 0);
        assert!(
            total.snapshots_installed > 0
                && total.conf_changes > 0
                && total.availability_changes > 0,
            "{total:?}"
        );
    }
}

#[test]
fn the_same_seed_replays_the_same_schedule() {
    let trace = |seed| {
        let mut sim = Sim::new(seed, Bugs::default()).unwrap();
        let mut out = Vec::new();
        for _ in 0..CHAOS_UNITS {
            sim.step(true).unwrap();
            out.push((sim.log.len(), sim.acked.len(), sim.leaders.len()));
        }
        (out, sim.describe())
    };
    assert_eq!(trace(7), trace(7));
}

#[test]
fn the_checker_catches_acknowledging_before_commit() {
    let bugs = Bugs {
        ack_on_propose: true,
    };
    let caught = (1..=60u64).filter(|s| run(*s, bugs).is_err()).count();
    eprintln!("acknowledging at propose time: caught in {caught} of 60 schedules");
    assert!(
        caught > 0,
        "acknowledging proposals before commit went unnoticed in 60 schedules"
    );
}
