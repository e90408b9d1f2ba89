//! Request and response bodies of the HTTP/JSON API.

use serde::{Deserialize, Serialize};

use crate::model::{Node, Service, Task};

/// Every non-2xx response carries this body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitRequest {
    /// Address other nodes reach this one at; defaults to the listen address.
    pub advertise_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitResponse {
    pub node_id: String,
    pub cluster_id: String,
    pub manager_addr: String,
}

/// `GET /v1/info`: who answered, and whether it is part of a swarm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InfoResponse {
    pub node_id: String,
    pub hostname: String,
    /// In a swarm: a manager, or a worker that joined one.
    pub swarm_active: bool,
    #[serde(default)]
    pub is_manager: bool,
    pub is_leader: bool,
    pub cluster_id: Option<String>,
    pub api_addr: String,
    /// The wasm engine's isolation and instance allocator.
    #[serde(default)]
    pub engine: Option<EngineInfo>,
    /// The node's gossip membership, once it is in a swarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<GossipInfo>,
}

/// `swarmlet info`'s view of the node's gossip (chitchat over UDP).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GossipInfo {
    /// Whether membership runs on this node.
    pub running: bool,
    /// Where peers gossip with this node (IP:PORT, UDP); empty when off.
    #[serde(default)]
    pub addr: String,
    /// Nodes gossip knows (this one included).
    #[serde(default)]
    pub members: usize,
    /// Of those, the ones its failure detector calls live.
    #[serde(default)]
    pub live: usize,
    /// Datagrams dropped because their MAC did not verify (forged,
    /// corrupted or keyed for another swarm).
    #[serde(default)]
    pub rejected_datagrams: u64,
    /// Why gossip does not run, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a node's wasm engine isolates guests and allocates their instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineInfo {
    /// `guard-pages` (the default) or `no-guard-pages` (trusted guests).
    pub isolation: String,
    pub signals_based_traps: bool,
    pub spectre_mitigations: bool,
    /// Guard region around each linear memory (0: explicit bounds checks).
    pub memory_guard_bytes: u64,
    /// Address space reserved for each linear memory.
    pub memory_reservation_bytes: u64,
    /// `pooling` or `on-demand`.
    pub allocator: String,
    /// Instances the pool holds (pooling only).
    pub pool_slots: Option<u32>,
    /// Address space the pool reserved at start-up (0 for on-demand).
    pub pool_reservation_bytes: u64,
    /// What the machine allows the process (ulimit -v, virtual address bits), if known.
    pub address_space_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub node: Node,
    /// `Ready` or `Down`, as `node ls` shows it.
    pub status: String,
    /// `Leader`, `Reachable` or empty for workers.
    pub manager_status: String,
    /// The node that answered the request (docker marks it with `*`).
    pub is_self: bool,
    /// What the node gossips about itself, as the answering node last
    /// heard it (a hint, not the store's word); absent when gossip does
    /// not know the node or does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<NodeGossip>,
}

/// One node as the answering node's gossip sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeGossip {
    /// Where the node gossips (UDP).
    pub addr: String,
    /// The failure detector's verdict: `live` or `dead`.
    pub liveness: String,
    /// `linux`, `macos`, ... (Rust's `std::env::consts::OS`).
    pub os: String,
    /// `x86_64`, `aarch64`, ... (Rust's `std::env::consts::ARCH`).
    pub arch: String,
    /// CPUs the node's process may use.
    pub cpus: u32,
    /// The machine's memory in bytes (0 when unknown).
    pub memory_bytes: u64,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `POST /v1/blobs` answer: the blob's content address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobResponse {
    pub digest: String,
    pub size: u64,
}

/// `POST /v1/services`. `published = None` asks for a port from 30000–32767.
/// A wasm service names an uploaded blob (`wasm_digest`, `wasm_name`); a
/// container service an image reference (`image`), and not both.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateServiceRequest {
    pub name: String,
    pub replicas: u64,
    /// `sha256:<hex>` of a blob uploaded before (wasm services).
    #[serde(default)]
    pub wasm_digest: String,
    #[serde(default)]
    pub wasm_name: String,
    /// An OCI image reference (`nginx:1.27`, `127.0.0.1:5000/web@sha256:…`):
    /// a container service. The manager resolves it to a digest and pins it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `--no-resolve-image`: keep the reference as given, no digest pinned.
    #[serde(default)]
    pub no_resolve_image: bool,
    /// `--env KEY=VALUE`, repeatable (containers).
    #[serde(default)]
    pub env: Vec<String>,
    /// `--limit-cpu 0.5` in billionths of a CPU (containers).
    #[serde(default)]
    pub limit_nano_cpus: Option<u64>,
    /// `--stop-grace-period`, in milliseconds.
    #[serde(default)]
    pub stop_grace_period_ms: Option<u64>,
    pub ports: Vec<PortRequest>,
    /// `--limit-memory`, in bytes.
    #[serde(default)]
    pub limit_memory: Option<u64>,
    /// `--allow-outbound`, repeatable.
    #[serde(default)]
    pub allow_outbound: Vec<String>,
    /// `--instance-reuse N`.
    #[serde(default)]
    pub instance_reuse: Option<u32>,
    /// `--instance-concurrency N` (WASIp3 components only).
    #[serde(default)]
    pub instance_concurrency: Option<u32>,
    /// `--max-concurrent-requests N`.
    #[serde(default)]
    pub max_concurrent_requests: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PortRequest {
    pub published: Option<u16>,
    pub target: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub replicas: u64,
}

/// A service with its replica counts, as `service ls` and `inspect` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub service: Service,
    pub running: u64,
    pub desired: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    pub task: Task,
    /// The hostname of the task's node, for `service ps`.
    pub node_name: String,
    pub image: String,
}

/// `GET /v1/services/{id}/status[?wait=VERSION]`: a service and its tasks at
/// one store version (what `service create` follows until convergence).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub version: u64,
    pub service: ServiceView,
    pub tasks: Vec<TaskView>,
}

/// `POST /v1/nodes/{id}/role`: `node promote` / `node demote`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRoleRequest {
    pub role: crate::NodeRole,
    /// Demote even if the managers left could not form a quorum.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/nodes/{id}/availability`: `node update --availability`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeAvailabilityRequest {
    pub availability: crate::Availability,
}

/// One image of a node's image store, as `swarmlet image ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSummary {
    /// The image ID: `sha256:` of its config.
    pub id: String,
    /// `registry/repository:tag` names it is known by.
    #[serde(default)]
    pub names: Vec<String>,
    /// `registry/repository@sha256:…` it was pulled by.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// The platform's image manifest digest (none for a `docker save` archive).
    #[serde(default)]
    pub manifest_digest: Option<String>,
    /// `linux/amd64`.
    pub platform: String,
    /// Unpacked bytes over all layers.
    pub size: u64,
    #[serde(default)]
    pub created: Option<String>,
}

/// `POST /v1/images/pull`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullImageRequest {
    pub reference: String,
}

/// `POST /v1/images/remove`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveImageRequest {
    /// A name (`nginx:1.27`), `name@sha256:…`, or an image ID (prefix).
    pub reference: String,
}

/// What `image rm` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveImageResponse {
    pub untagged: Vec<String>,
    pub deleted: Option<String>,
    pub layers_deleted: usize,
}

/// One line of `image pull`'s progress stream (`application/x-ndjson`):
/// a layer's progress, then the pulled image, or an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullEvent {
    Layer {
        /// The layer's blob digest.
        layer: String,
        index: usize,
        count: usize,
        /// `exists`, `downloading` or `complete`.
        state: String,
        #[serde(default)]
        done: u64,
        #[serde(default)]
        total: Option<u64>,
    },
    Done {
        image: ImageSummary,
    },
    Error {
        message: String,
    },
}
