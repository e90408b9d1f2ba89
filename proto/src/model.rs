//! The cluster's objects as the store keeps them and the API shows them.

use serde::{Deserialize, Serialize};

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Stable node ID (hex), kept in the node's data dir.
    pub id: String,
    /// The raft peer ID of this node (managers only vote, but every node has one).
    pub raft_id: u64,
    pub hostname: String,
    pub role: NodeRole,
    pub availability: Availability,
    /// Address other nodes and clients reach this node's API at (IP:PORT).
    pub addr: String,
    pub created_at_ms: u64,
    /// Whether the node is alive, as the leader's dispatcher decides from
    /// its heartbeats (`Command::SetNodeStatus`). Older entries have none:
    /// `Unknown` until the node's next heartbeat.
    #[serde(default)]
    pub status: NodeStatus,
    /// Published ports this node cannot listen on (another process holds
    /// them), as the node last reported; the other nodes still serve them.
    #[serde(default)]
    pub port_problems: Vec<PortProblem>,
}

/// A published port a node could not open, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortProblem {
    pub port: u16,
    pub service_name: String,
    pub error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Manager,
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

impl std::fmt::Display for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Availability::Active => "Active",
            Availability::Pause => "Pause",
            Availability::Drain => "Drain",
        })
    }
}

/// What a service runs: a wasm component, or an OCI image (run by a
/// container runtime; a node without one rejects such tasks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Image {
    /// A `wasi:http/proxy` component, kept content-addressed by the cluster.
    Wasm {
        /// `sha256:<hex>` of the component's bytes.
        digest: String,
        /// The file name the user deployed, for display.
        name: String,
        size: u64,
    },
    /// An OCI image, e.g. `nginx:1.27`, pinned to its manifest digest once
    /// a manager resolved it.
    Oci {
        /// What the user asked for (`nginx:1.27`, `registry:5000/web@sha256:…`).
        reference: String,
        /// `sha256:<hex>` of the manifest the reference resolved to.
        #[serde(default)]
        digest: Option<String>,
    },
}

impl Image {
    /// The content address (`sha256:<hex>`) of what the service runs; an
    /// OCI image not resolved to a digest has none (empty).
    pub fn digest(&self) -> &str {
        match self {
            Image::Wasm { digest, .. } => digest,
            Image::Oci { digest, .. } => digest.as_deref().unwrap_or(""),
        }
    }

    /// What `service ls` shows in the IMAGE column.
    pub fn display_name(&self) -> &str {
        match self {
            Image::Wasm { name, .. } => name,
            Image::Oci { reference, .. } => reference,
        }
    }
}

/// A published port: `-p PUBLISHED:TARGET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    pub published: u16,
    pub target: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
}

impl std::fmt::Display for PortConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "*:{}->{}/tcp", self.published, self.target)
    }
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub replicas: u64,
    pub image: Image,
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    #[serde(default)]
    pub limits: Limits,
    /// Where a replica's outgoing `wasi:http` requests may go
    /// (`--allow-outbound`, patterns as Spin's `allowed_outbound_hosts`);
    /// empty: nowhere.
    #[serde(default)]
    pub allow_outbound: Vec<String>,
    /// `--instance-reuse N`: one instance serves up to N requests, one
    /// after another. 0 or 1: a fresh instance per request (the default).
    #[serde(default)]
    pub instance_reuse: u32,
    /// `--instance-concurrency N` (WASIp3 components): one instance serves
    /// up to N requests at the same time. 0 or 1: one at a time (the default).
    #[serde(default)]
    pub instance_concurrency: u32,
    /// `--env KEY=VALUE` (containers): added after the image's own `Env`,
    /// a later key replacing an earlier one.
    #[serde(default)]
    pub env: Vec<String>,
    /// `--stop-grace-period`: how long a stopping replica gets between
    /// SIGTERM and SIGKILL (containers) or to finish its requests (wasm).
    /// `None`: 10 s, as Docker.
    #[serde(default)]
    pub stop_grace_period_ms: Option<u64>,
}

impl ServiceSpec {
    /// Docker's default `--stop-grace-period`.
    pub const DEFAULT_STOP_GRACE_MS: u64 = 10_000;

    /// The grace period a stopping replica gets.
    pub fn stop_grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.stop_grace_period_ms
                .unwrap_or(Self::DEFAULT_STOP_GRACE_MS),
        )
    }

    /// What a published port speaks: HTTP for wasm components (served in
    /// process), TCP for containers (forwarded byte for byte).
    pub fn mesh_mode(&self) -> MeshMode {
        match self.image {
            Image::Wasm { .. } => MeshMode::Http,
            Image::Oci { .. } => MeshMode::Tcp,
        }
    }
}

/// What the mesh speaks on a service's published ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeshMode {
    /// Requests are parsed and balanced one by one (wasm services).
    #[default]
    Http,
    /// Connections are balanced and their bytes copied (container services).
    Tcp,
}

/// Resource limits of every replica (`--limit-memory`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most linear memory one wasm instance may grow to, in bytes.
    pub memory_bytes: Option<u64>,
    /// Most requests this service serves at once on one node
    /// (`--max-concurrent-requests`); `None`: the node's default.
    #[serde(default)]
    pub concurrent_requests: Option<u32>,
    /// `--limit-cpu 0.5` as Docker's NanoCPUs (10^9 = one CPU); containers.
    #[serde(default)]
    pub nano_cpus: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub spec: ServiceSpec,
    /// Bumped on every change of the spec (raft-applied, so identical everywhere).
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// Task states, in Docker Swarm's order. A task only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Assigned,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
}

impl TaskState {
    /// A task in a terminal state never runs again; its slot gets a new task.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Assigned => "assigned",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.as_str();
        let mut c = s.chars();
        match c.next() {
            Some(first) => write!(f, "{}{}", first.to_ascii_uppercase(), c.as_str()),
            None => Ok(()),
        }
    }
}

/// The state a task should be in; only `Running` and `Shutdown` are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    Shutdown,
}

impl std::fmt::Display for DesiredState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DesiredState::Running => "Running",
            DesiredState::Shutdown => "Shutdown",
        })
    }
}

/// One replica of a service, in one slot, on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service_id: String,
    pub service_name: String,
    /// 1-based replica slot; `service ps` names tasks `NAME.SLOT`.
    pub slot: u64,
    /// The service version this task was created for.
    pub service_version: u64,
    pub node_id: Option<String>,
    pub desired_state: DesiredState,
    pub state: TaskState,
    /// Human-readable detail of the current state.
    pub message: String,
    /// Why the task failed, if it did.
    pub error: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Where the replica listens, as its node reported when it started
    /// (containers: the task's own address); `None` for wasm replicas,
    /// which the mesh serves in-process.
    #[serde(default)]
    pub endpoint: Option<TaskEndpoint>,
}

/// A running task's network address, as the mesh forwards to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEndpoint {
    /// The IP address the node reaches the task at.
    pub addr: String,
    /// The port the task listens on there (the service's target port).
    pub port: u16,
}

impl Task {
    /// `hello.2`, as `service ps` shows it and as the replica sees itself.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.service_name, self.slot)
    }
}

/// A node's liveness as the leader last decided it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub state: NodeState,
    /// Why, for `node inspect`-style display (e.g. "heartbeat failure").
    #[serde(default)]
    pub message: String,
}

impl NodeStatus {
    pub fn ready() -> NodeStatus {
        NodeStatus {
            state: NodeState::Ready,
            message: String::new(),
        }
    }
}

/// Swarm's node states: `Ready` (heartbeats arrive), `Down` (they stopped
/// for longer than `--node-down-after`), `Unknown` (not heard from since
/// it joined).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Unknown,
    Ready,
    Down,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Unknown => "Unknown",
            NodeState::Ready => "Ready",
            NodeState::Down => "Down",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_wasm_images_and_tasks_still_read_and_oci_images_round_trip() {
        // As entries written before the OCI variant and endpoints existed.
        let wasm: Image = serde_json::from_str(
            r#"{"kind":"wasm","digest":"sha256:00","name":"hello.wasm","size":3}"#,
        )
        .unwrap();
        assert_eq!(wasm.digest(), "sha256:00");
        let oci: Image =
            serde_json::from_str(r#"{"kind":"oci","reference":"nginx:1.27"}"#).unwrap();
        assert_eq!(
            oci,
            Image::Oci {
                reference: "nginx:1.27".into(),
                digest: None
            }
        );
        assert_eq!((oci.digest(), oci.display_name()), ("", "nginx:1.27"));
        let pinned = Image::Oci {
            reference: "nginx:1.27".into(),
            digest: Some("sha256:ab".into()),
        };
        let back: Image = serde_json::from_str(&serde_json::to_string(&pinned).unwrap()).unwrap();
        assert_eq!((back.digest(), &back), ("sha256:ab", &pinned));

        let task: Task = serde_json::from_str(
            r#"{"id":"t","service_id":"s","service_name":"web","slot":1,"service_version":1,
               "node_id":"n","desired_state":"running","state":"running","message":"running",
               "error":null,"created_at_ms":0,"updated_at_ms":0}"#,
        )
        .unwrap();
        assert_eq!(task.endpoint, None);
    }

    #[test]
    fn a_spec_stored_before_instance_concurrency_still_reads() {
        let spec: ServiceSpec = serde_json::from_str(
            r#"{"name":"web","replicas":1,"instance_reuse":5,
               "image":{"kind":"wasm","digest":"sha256:00","name":"w.wasm","size":3}}"#,
        )
        .unwrap();
        assert_eq!((spec.instance_reuse, spec.instance_concurrency), (5, 0));
    }
}
