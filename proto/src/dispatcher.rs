//! Bodies of the dispatcher routes on the cluster port (`/v1/dispatcher/…`):
//! how a node's agent gets its assignments and reports its tasks' states.
//!
//! Every route is `POST` with a JSON body and answers JSON. The caller's
//! node ID is never in a body: it is the CN of the caller's client
//! certificate (the transport hands it to the handler).
//!
//! - `POST /v1/dispatcher/session` `SessionRequest` → `Session`: hello; also
//!   a heartbeat.
//! - `POST /v1/dispatcher/assignments` `AssignmentsRequest` → `Assignments`:
//!   long poll. Answers at once with everything (`full`) when `since` is not
//!   the last answer this dispatcher gave the node, at once with the changes
//!   when there are some, else when something changes or after `wait_ms`.
//! - `POST /v1/dispatcher/status` `StatusReport` → `StatusAck`: batched task
//!   states; an empty batch is a plain heartbeat.
//! - `POST /v1/dispatcher/heartbeats` `ForwardedHeartbeats` → `{}`: a
//!   follower manager passes on the nodes it heard from to the leader
//!   (managers only).
//! - `POST /v1/dispatcher/ports` `PortReport` → `{}`: the published ports
//!   this node cannot listen on (`node inspect` shows them).
//! - `GET /v1/blobs/<digest>` → the component's bytes; the receiver checks
//!   them against the digest before it stores them.

use serde::{Deserialize, Serialize};

use crate::command::TaskStatus;
use crate::model::{DesiredState, Service, TaskState};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random per dispatcher start: a `since` from another session (another
    /// manager, or this one before a restart) gets a full answer.
    pub session_id: String,
    /// The caller, as the dispatcher knows it (its certificate's node ID).
    pub node_id: String,
    /// How often the agent should send a heartbeat.
    pub heartbeat_period_ms: u64,
    /// Cluster addresses of the managers, to fail over to.
    pub managers: Vec<String>,
}

/// The last assignments answer the agent applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    pub session_id: String,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentsRequest {
    /// `None`: send everything.
    #[serde(default)]
    pub since: Option<Since>,
    /// Longest the answer may wait for a change (capped by the dispatcher).
    #[serde(default)]
    pub wait_ms: u64,
}

/// One task the node should run or stop, with what it needs to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedTask {
    pub id: String,
    pub service_id: String,
    pub service_name: String,
    pub slot: u64,
    pub service_version: u64,
    pub desired_state: DesiredState,
    /// The state the store holds for it (what the node reported last).
    pub state: TaskState,
}

impl AssignedTask {
    /// `hello.2`, as `service ps` shows it.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.service_name, self.slot)
    }
}

/// The node's tasks: every non-terminal task assigned to it. With `full`,
/// `tasks`/`services` are the whole set; otherwise they are added or changed
/// entries and `removed*` name the ones that left the set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignments {
    pub session_id: String,
    /// Send back as `since.seq` once applied.
    pub seq: u64,
    pub full: bool,
    pub tasks: Vec<AssignedTask>,
    #[serde(default)]
    pub removed_tasks: Vec<String>,
    /// The services the tasks belong to (spec: component digest, limits,
    /// egress, instance reuse).
    pub services: Vec<Service>,
    #[serde(default)]
    pub removed_services: Vec<String>,
    /// The cluster's routing view, when it changed since the answer `since`
    /// named (always with `full`): the whole new view, not a diff.
    #[serde(default)]
    pub routes: Option<Routes>,
}

/// What every node's mesh needs to send a request anywhere in the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    /// Every published port of the cluster (each belongs to one service).
    pub ports: Vec<RoutePort>,
    /// The replicas requests may go to: tasks desired and reported `running`
    /// on nodes not marked `Down`, sorted by task ID.
    pub replicas: Vec<RouteReplica>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePort {
    pub port: u16,
    pub service_id: String,
    pub service_name: String,
    /// HTTP (wasm) or TCP (containers).
    #[serde(default)]
    pub mode: crate::model::MeshMode,
    /// The port the service's replicas listen on (`-p PUBLISHED:TARGET`).
    #[serde(default)]
    pub target: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteReplica {
    pub task_id: String,
    pub service_id: String,
    /// `hello.2`
    pub name: String,
    pub node_id: String,
    /// The node's cluster port, IP:PORT (TLS server name = node_id).
    pub node_addr: String,
    /// Where the replica listens on its node (containers: its address on
    /// the node's bridge); `None` for in-process (wasm) replicas.
    #[serde(default)]
    pub endpoint: Option<crate::model::TaskEndpoint>,
}

/// `POST /v1/dispatcher/ports`: the published ports this node could not
/// listen on, with why (the whole current set; empty: all listen).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortReport {
    pub problems: Vec<crate::model::PortProblem>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Empty: a plain heartbeat.
    #[serde(default)]
    pub updates: Vec<TaskStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusAck {
    /// Reports stored (committed through raft before this answer).
    pub accepted: usize,
    /// Task IDs refused because they are not this node's tasks.
    #[serde(default)]
    pub refused: Vec<String>,
    pub heartbeat_period_ms: u64,
    /// Cluster addresses of the managers (kept fresh for failover).
    pub managers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedHeartbeats {
    pub nodes: Vec<String>,
}
