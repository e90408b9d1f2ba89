//! On managers: the service a node's agent talks to (swarmkit's dispatcher).
//!
//! A node's agent asks for its assignments with a long poll, reports its
//! tasks' states in batches, and sends a heartbeat every
//! `heartbeat_period` when it has nothing to report. The same methods serve
//! the manager's own agent in process (`agent::InProcess`) and workers over
//! the cluster port (`routes`, mounted by the transport, which names the
//! caller from its client certificate).
//!
//! - Assignments (`assignments.rs`): every non-terminal task of the node,
//!   with the services they belong to. The first answer of a session is
//!   full; later ones carry only what changed since the answer the agent
//!   names in `since` (the dispatcher keeps the last view it sent each
//!   node), or wait for a store change up to `wait_ms`. Answers come from
//!   the applied store, so a node never learns of an uncommitted assignment.
//! - Status: reports are checked against the store (a node reports only its
//!   own tasks) and proposed as one `ReportTaskStatuses` entry carrying the
//!   caller's node ID; the store refuses the entry otherwise. The answer
//!   waits for the commit.
//! - Liveness (`liveness.rs`): any call from a node is a heartbeat. The
//!   leader marks a node `Down` when it has not heard from it for
//!   `node_down_after`, and `Ready` when it hears from it again; the
//!   orchestrator then moves a `Down` node's tasks. A follower passes the
//!   heartbeats it receives on to the leader every `FORWARD_EVERY`
//!   (`POST /v1/dispatcher/heartbeats`), and refuses heartbeats (so the
//!   agent fails over) while it cannot reach the leader.
//!
//! Timing (defaults): heartbeat every 1 s, `Down` after 3 s without one,
//! checked every 250 ms; a dead node's replicas are reassigned ~3.3 s after
//! its last heartbeat and run elsewhere once the new node has loaded the
//! component (DESIGN.md: < 5 s). A new leader waits a full `node_down_after`
//! before it marks anyone down.
//!
//! Wiring: every manager builds one `Dispatcher` (with `Forwarding` once it
//! can reach other managers), runs `dispatcher::run`, hands it to its own
//! agent through `agent::InProcess`, and mounts `routes` on the cluster
//! port; a worker runs the agent on `agent::remote::RemoteSource`.
//!
//! Architecture invariant: the store accepts a task's state only from the
//! task's node, and the node ID a dispatcher acts for is the authenticated
//! caller's, never one from a request body.

pub mod assignments;
pub mod call;
pub mod liveness;
pub mod routes;
pub mod routing;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmlet_proto::dispatcher::{
    Assignments, AssignmentsRequest, ForwardedHeartbeats, PortReport, Session, StatusAck,
    StatusReport,
};
use swarmlet_proto::{Command, NodeRole, TaskStatus};
use tokio::sync::watch;

use crate::raft::{ProposeError, RaftHandle};
use crate::store::Store;
use assignments::{diff, view_of, NodeView};
pub use call::{CallError, ClusterCall};
use liveness::Liveness;

/// `--node-down-after`'s default: three missed heartbeats.
pub const DEFAULT_NODE_DOWN_AFTER: Duration = Duration::from_secs(3);
/// The longest heartbeat period (shorter when `node_down_after` is < 3 s).
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);
/// How often the leader checks for silent nodes.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How often a follower passes heartbeats on to the leader.
pub const FORWARD_EVERY: Duration = Duration::from_millis(250);
/// Longest an assignments long poll waits.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Who is calling, as the transport authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub node_id: String,
    pub role: NodeRole,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DispatcherError {
    #[error("node {0} is not a member of this swarm (was it removed? join it again), or this manager has not caught up yet")]
    UnknownNode(String),
    #[error("only managers may forward heartbeats")]
    NotManager,
    /// Try again, or another manager.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

impl DispatcherError {
    /// The HTTP status the route answers with.
    pub fn status_code(&self) -> u16 {
        match self {
            DispatcherError::UnknownNode(_) | DispatcherError::NotManager => 403,
            DispatcherError::Unavailable(_) => 503,
            DispatcherError::BadRequest(_) => 400,
            DispatcherError::NotFound(_) => 404,
            DispatcherError::Internal(_) => 500,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DispatcherConfig {
    pub node_down_after: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            node_down_after: DEFAULT_NODE_DOWN_AFTER,
        }
    }
}

impl DispatcherConfig {
    /// How often the leader checks for silent nodes.
    pub fn check_every(&self) -> Duration {
        CHECK_EVERY
            .min(self.node_down_after / 4)
            .max(Duration::from_millis(10))
    }

    /// At least three heartbeats fit in `node_down_after`.
    pub fn heartbeat_period(&self) -> Duration {
        HEARTBEAT_PERIOD
            .min(self.node_down_after / 3)
            .max(Duration::from_millis(10))
    }
}

/// What a follower needs to pass heartbeats on to the leader.
pub struct Forwarding {
    pub call: Arc<dyn ClusterCall>,
    /// The leader's cluster address, if one is known.
    pub leader_addr: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    /// Proposes through the leader (a follower's status reports).
    pub writer: Arc<crate::link::Writer>,
}

struct ForwardState {
    pending: HashSet<String>,
    /// Since when passing heartbeats on fails (`None`: it works).
    failing_since: Option<Instant>,
}

/// The last view sent to a node, and the answer's number.
struct Sent {
    seq: u64,
    view: NodeView,
}

pub struct Dispatcher {
    /// This manager's node ID.
    node_id: String,
    store: Arc<Store>,
    raft: RaftHandle,
    cfg: DispatcherConfig,
    session_id: String,
    seq: AtomicU64,
    sent: Mutex<HashMap<String, Sent>>,
    liveness: Liveness,
    forwarding: Option<Forwarding>,
    forward: Mutex<ForwardState>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Dispatcher {
    pub fn new(
        node_id: String,
        store: Arc<Store>,
        raft: RaftHandle,
        cfg: DispatcherConfig,
        forwarding: Option<Forwarding>,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            node_id,
            store,
            raft,
            cfg,
            session_id: crate::identity::random_id(16),
            seq: AtomicU64::new(1),
            sent: Mutex::new(HashMap::new()),
            liveness: Liveness::default(),
            forwarding,
            forward: Mutex::new(ForwardState {
                pending: HashSet::new(),
                failing_since: None,
            }),
        })
    }

    pub fn config(&self) -> DispatcherConfig {
        self.cfg
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Cluster addresses of the managers, for agents to fail over to.
    pub fn managers(&self) -> Vec<String> {
        self.store
            .read()
            .nodes
            .values()
            .filter(|n| n.role == NodeRole::Manager && !n.addr.is_empty())
            .map(|n| n.addr.clone())
            .collect()
    }

    /// This manager's own cluster address, as the store has it.
    pub fn own_addr(&self) -> Option<String> {
        self.store
            .read()
            .nodes
            .get(&self.node_id)
            .map(|n| n.addr.clone())
    }

    fn known(&self, caller: &Caller) -> Result<(), DispatcherError> {
        if self.store.read().nodes.contains_key(&caller.node_id) {
            Ok(())
        } else {
            Err(DispatcherError::UnknownNode(caller.node_id.clone()))
        }
    }

    /// Records a heartbeat of `node`; on a follower, queues it for the
    /// leader and refuses it while the leader cannot be reached, so that
    /// the agent tries another manager instead of being marked down.
    pub fn heartbeat(&self, node: &str) -> Result<(), DispatcherError> {
        self.liveness.heard(node);
        if self.forwarding.is_none() || self.raft.is_leader() {
            return Ok(());
        }
        lock(&self.forward).pending.insert(node.to_string());
        self.cut_off()
    }

    /// A follower that has not reached the leader for two heartbeat
    /// periods is probably cut off (its store may be behind): it sends
    /// agents elsewhere rather than serve them stale assignments or let the
    /// leader mark them down.
    fn cut_off(&self) -> Result<(), DispatcherError> {
        if self.forwarding.is_none() || self.raft.is_leader() {
            return Ok(());
        }
        match lock(&self.forward).failing_since {
            Some(since) if since.elapsed() > 2 * self.cfg.heartbeat_period() => {
                Err(DispatcherError::Unavailable(format!(
                    "this manager cannot reach the raft leader (for {:.1}s); try another manager",
                    since.elapsed().as_secs_f64()
                )))
            }
            _ => Ok(()),
        }
    }

    /// `POST /v1/dispatcher/session`.
    pub fn session(&self, caller: &Caller) -> Result<Session, DispatcherError> {
        self.known(caller)?;
        self.heartbeat(&caller.node_id)?;
        Ok(Session {
            session_id: self.session_id.clone(),
            node_id: caller.node_id.clone(),
            heartbeat_period_ms: self.cfg.heartbeat_period().as_millis() as u64,
            managers: self.managers(),
        })
    }

    /// `POST /v1/dispatcher/assignments`: the long poll.
    pub async fn assignments(
        &self,
        caller: &Caller,
        req: AssignmentsRequest,
    ) -> Result<Assignments, DispatcherError> {
        self.known(caller)?;
        self.cut_off()?;
        let node = caller.node_id.as_str();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(req.wait_ms).min(MAX_WAIT);
        let mut changes = self.store.changes();
        let mut timed_out = false;
        loop {
            changes.borrow_and_update();
            let view = view_of(&self.store.read(), node);
            {
                let mut sent = lock(&self.sent);
                let base = match &req.since {
                    Some(s) if s.session_id == self.session_id => {
                        sent.get(node).filter(|b| b.seq == s.seq)
                    }
                    _ => None,
                };
                let answer = match base {
                    None => Some(Assignments {
                        session_id: self.session_id.clone(),
                        seq: 0,
                        full: true,
                        tasks: view.tasks.values().cloned().collect(),
                        removed_tasks: Vec::new(),
                        services: view.services.values().cloned().collect(),
                        removed_services: Vec::new(),
                        routes: Some(view.routes.clone()),
                    }),
                    Some(base) => {
                        let d = diff(&base.view, &view);
                        if d.is_empty() && !timed_out {
                            None
                        } else {
                            Some(Assignments {
                                session_id: self.session_id.clone(),
                                seq: 0,
                                full: false,
                                tasks: d.tasks,
                                removed_tasks: d.removed_tasks,
                                services: d.services,
                                removed_services: d.removed_services,
                                routes: d.routes,
                            })
                        }
                    }
                };
                if let Some(mut a) = answer {
                    a.seq = self.seq.fetch_add(1, Ordering::Relaxed);
                    sent.insert(node.to_string(), Sent { seq: a.seq, view });
                    return Ok(a);
                }
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() {
                    return Err(DispatcherError::Unavailable("the store has stopped".into()));
                },
                _ = tokio::time::sleep_until(deadline) => timed_out = true,
            }
        }
    }

    /// `POST /v1/dispatcher/status`: task states (and a heartbeat).
    pub async fn status(
        &self,
        caller: &Caller,
        req: StatusReport,
    ) -> Result<StatusAck, DispatcherError> {
        self.known(caller)?;
        self.heartbeat(&caller.node_id)?;
        let node = caller.node_id.as_str();
        let mut refused = Vec::new();
        let mut accepted: Vec<TaskStatus> = Vec::new();
        {
            let state = self.store.read();
            for u in req.updates {
                match state.tasks.get(&u.task_id) {
                    // Removed meanwhile: nothing to report on.
                    None => {}
                    Some(t) if t.node_id.as_deref() == Some(node) => accepted.push(u),
                    Some(_) => refused.push(u.task_id),
                }
            }
        }
        if !refused.is_empty() {
            tracing::warn!(
                node,
                tasks = ?refused,
                "refused task reports from a node about tasks that are not its own"
            );
        }
        let n = accepted.len();
        if n > 0 {
            let command = Command::ReportTaskStatuses {
                node_id: node.to_string(),
                updates: accepted,
            };
            self.write(command).await.map_err(|e| match e {
                crate::link::WriteError::Propose(ProposeError::Refused(e)) => {
                    DispatcherError::BadRequest(e.to_string())
                }
                e => DispatcherError::Unavailable(format!("storing the task reports: {e}")),
            })?;
        }
        Ok(StatusAck {
            accepted: n,
            refused,
            heartbeat_period_ms: self.cfg.heartbeat_period().as_millis() as u64,
            managers: self.managers(),
        })
    }

    /// Proposes `command` through the leader (this node's raft when it
    /// has no forwarding, i.e. a single manager).
    async fn write(&self, command: Command) -> Result<u64, crate::link::WriteError> {
        match &self.forwarding {
            Some(fw) => fw.writer.propose(command).await,
            None => self
                .raft
                .propose(command)
                .await
                .map(|o| o.index)
                .map_err(crate::link::WriteError::from),
        }
    }

    /// `POST /v1/dispatcher/ports`: the published ports the caller cannot
    /// listen on. Stored only when they differ from what the store holds.
    pub async fn ports(&self, caller: &Caller, req: PortReport) -> Result<(), DispatcherError> {
        self.known(caller)?;
        let node = caller.node_id.as_str();
        let same = self
            .store
            .read()
            .nodes
            .get(node)
            .is_some_and(|n| n.port_problems == req.problems);
        if same {
            return Ok(());
        }
        let command = Command::SetNodePortProblems {
            node_id: node.to_string(),
            problems: req.problems,
        };
        self.write(command)
            .await
            .map(|_| ())
            .map_err(|e| DispatcherError::Unavailable(format!("storing the port report: {e}")))
    }

    /// `POST /v1/dispatcher/heartbeats`: a follower passes on heartbeats.
    pub fn forwarded(
        &self,
        caller: &Caller,
        req: ForwardedHeartbeats,
    ) -> Result<(), DispatcherError> {
        if caller.role != NodeRole::Manager {
            return Err(DispatcherError::NotManager);
        }
        self.known(caller)?;
        self.liveness.heard(&caller.node_id);
        for n in &req.nodes {
            self.liveness.heard(n);
        }
        Ok(())
    }

    /// Sends the heartbeats queued on this follower to the leader.
    async fn forward_once(&self) {
        let Some(fw) = &self.forwarding else { return };
        if self.raft.is_leader() {
            let mut f = lock(&self.forward);
            f.pending.clear();
            f.failing_since = None;
            return;
        }
        let nodes: Vec<String> = {
            let mut f = lock(&self.forward);
            f.pending.drain().collect()
        };
        if nodes.is_empty() {
            return;
        }
        let result = match (fw.leader_addr)() {
            None => Err("no raft leader is known".to_string()),
            Some(addr) => {
                let body = ForwardedHeartbeats {
                    nodes: nodes.clone(),
                };
                let call = call::post::<_, serde_json::Value>(
                    &*fw.call,
                    &addr,
                    "/v1/dispatcher/heartbeats",
                    &body,
                );
                match tokio::time::timeout(self.cfg.heartbeat_period(), call).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("{addr} did not answer in time")),
                }
            }
        };
        let mut f = lock(&self.forward);
        match result {
            Ok(()) => f.failing_since = None,
            Err(e) => {
                if f.failing_since.is_none() {
                    tracing::warn!("cannot pass heartbeats on to the leader: {e}");
                    f.failing_since = Some(Instant::now());
                }
                // Kept for the next try.
                f.pending.extend(nodes);
            }
        }
    }
}

/// On every manager: the leader's half marks nodes `Down`/`Ready`, a
/// follower's half passes heartbeats on to the leader. Runs until `shutdown`.
pub async fn run(d: Arc<Dispatcher>, mut shutdown: watch::Receiver<bool>) {
    let mut leadership = d.raft.leadership();
    let mut was_leader = false;
    let mut last_tick = Instant::now();
    let mut last_forward = Instant::now();
    loop {
        let now = Instant::now();
        let is_leader = d.raft.is_leader();
        // A new leader knows no heartbeat times; and if this process was
        // stalled (its own ticks stopped), silence says nothing about the
        // others either. Both give every node a fresh grace period.
        if is_leader
            && (!was_leader
                || now.duration_since(last_tick)
                    > 2 * d.cfg.check_every() + d.cfg.node_down_after / 2)
        {
            d.liveness.fresh_grace(now);
        }
        was_leader = is_leader;
        last_tick = now;
        if is_leader {
            let changes = {
                let state = d.store.read();
                d.liveness.retain(|n| state.nodes.contains_key(n));
                lock(&d.sent).retain(|n, _| state.nodes.contains_key(n));
                liveness::decide(
                    &state.nodes,
                    &d.liveness.snapshot(),
                    &d.node_id,
                    now,
                    d.cfg.node_down_after,
                )
            };
            for (node_id, status) in changes {
                let state = status.state;
                let message = status.message.clone();
                match d
                    .raft
                    .propose(Command::SetNodeStatus {
                        node_id: node_id.clone(),
                        status,
                    })
                    .await
                {
                    Ok(_) => tracing::info!(node = %node_id, %state, "{message}"),
                    // Decided again at the next check.
                    Err(e) => {
                        tracing::debug!(node = %node_id, "marking the node {state} failed: {e}")
                    }
                }
            }
        } else if now.duration_since(last_forward) >= FORWARD_EVERY {
            last_forward = now;
            d.forward_once().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(d.cfg.check_every().min(FORWARD_EVERY)) => {}
            _ = leadership.changed() => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
