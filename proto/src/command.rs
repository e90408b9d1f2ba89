//! Raft log entries: every change of desired or reported state is one of
//! these, proposed by a manager and applied by every manager's store.

use serde::{Deserialize, Serialize};

use crate::model::{
    Availability, DesiredState, Node, NodeRole, NodeStatus, Service, Task, TaskState,
};

/// What is written to the raft log. `at_ms` is the proposer's wall clock,
/// so that applying an entry is deterministic on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Matches a committed entry back to the waiting proposer (0 = nobody waits).
    pub proposal_id: u64,
    pub at_ms: u64,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// The first entry of a cluster.
    InitCluster {
        cluster_id: String,
        node: Node,
    },
    CreateService {
        service: Service,
    },
    ScaleService {
        service_id: String,
        replicas: u64,
    },
    RemoveService {
        service_id: String,
    },
    /// Orchestrator: new tasks for empty slots.
    CreateTasks {
        tasks: Vec<Task>,
    },
    /// Orchestrator: tasks that should stop (scale down, service removed).
    SetDesiredState {
        task_ids: Vec<String>,
        desired: DesiredState,
    },
    /// Orchestrator: forget terminal tasks beyond the history limit.
    RemoveTasks {
        task_ids: Vec<String>,
    },
    /// Agent: what a task is doing now. Older agents wrote one entry per
    /// task; kept so that existing raft logs stay readable.
    UpdateTaskStatus {
        task_id: String,
        state: TaskState,
        message: String,
        error: Option<String>,
    },
    /// Agent: what many tasks are doing now, in one entry (one raft commit
    /// for a whole batch of reports, not one per task).
    UpdateTaskStatuses {
        updates: Vec<TaskStatus>,
    },
    /// A client write carrying an idempotency key: applied once; a retry
    /// with the same key (after a leader change left its fate unknown) is
    /// refused as a duplicate and changes nothing.
    Idempotent {
        key: String,
        command: Box<Command>,
    },
    /// `node rm`: the node leaves the store (a manager's raft membership is
    /// removed by a configuration change first).
    RemoveNode {
        node_id: String,
    },
    /// `node promote` / `node demote`.
    SetNodeRole {
        node_id: String,
        role: NodeRole,
    },
    /// `node update --availability`.
    SetNodeAvailability {
        node_id: String,
        availability: Availability,
    },
    /// A node joined with a valid token (its certificate is signed after this
    /// commits). Refused if the node ID or raft ID is already in the swarm.
    AddNode {
        node: Node,
    },
    /// `swarm join-token --rotate`: `secret` becomes the role's token secret;
    /// the old one is kept as retired.
    RotateJoinToken {
        role: crate::model::NodeRole,
        secret: String,
    },
    /// Leader's dispatcher: a node became `Ready` (heartbeats arrive) or
    /// `Down` (they stopped).
    SetNodeStatus {
        node_id: String,
        status: NodeStatus,
    },
    /// Dispatcher: task states reported by the node `node_id` (the caller
    /// the dispatcher authenticated). The store refuses the entry if any
    /// report is about a task of another node.
    ReportTaskStatuses {
        node_id: String,
        updates: Vec<TaskStatus>,
    },
    /// Dispatcher: the published ports node `node_id` cannot listen on
    /// (the whole set, replacing the last one).
    SetNodePortProblems {
        node_id: String,
        problems: Vec<crate::model::PortProblem>,
    },
}

/// One task's reported state, as carried by `Command::UpdateTaskStatuses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: String,
    pub state: TaskState,
    pub message: String,
    pub error: Option<String>,
    /// Where the task listens, reported with `running` by runtimes whose
    /// replicas the mesh reaches over the network (containers).
    #[serde(default)]
    pub endpoint: Option<crate::TaskEndpoint>,
}
