//! The cluster's PKI material and join tokens as the raft store keeps them,
//! and the bodies of the join protocol on the cluster port.

use serde::{Deserialize, Serialize};

use crate::model::NodeRole;

/// The cluster's root CA: its certificate and private key (PEM). Kept in the
/// raft store (as Swarm keeps its root CA in raft) so every manager can sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The secrets of the join tokens (the token is `SWMTKN-1-<CA digest>-<secret>`;
/// the digest is derived from the CA certificate, so only secrets are kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokens {
    pub worker: String,
    pub manager: String,
    /// Secrets replaced by `join-token --rotate`, kept so that a refusal can
    /// say "rotated" instead of "wrong".
    #[serde(default)]
    pub retired: Vec<RetiredSecret>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredSecret {
    pub role: NodeRole,
    pub secret: String,
    pub rotated_at_ms: u64,
}

impl JoinTokens {
    pub fn current(&self, role: NodeRole) -> &str {
        match role {
            NodeRole::Manager => &self.manager,
            NodeRole::Worker => &self.worker,
        }
    }
}

/// `POST /v1/cluster/join` (cluster port, anonymous).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    /// PKCS#10 request for the node's key (generated on the joining node; the
    /// key never leaves it).
    pub csr_pem: String,
    pub node_id: String,
    pub raft_id: u64,
    pub hostname: String,
    /// Where the others reach the joining node's cluster port (IP:PORT).
    pub addr: String,
    #[serde(default)]
    pub platform: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cert_pem: String,
    pub ca_pem: String,
    pub role: NodeRole,
    pub cluster_id: String,
    /// Cluster-port addresses of the managers.
    pub managers: Vec<String>,
    /// Key for authenticating gossip (empty until membership hands one out).
    #[serde(default)]
    pub gossip_key: String,
    /// The managers' raft IDs and addresses: a joining manager answers the
    /// leader's raft messages before it holds the store that names them.
    #[serde(default)]
    pub peers: Vec<ManagerPeer>,
}

/// A manager as raft addresses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerPeer {
    pub raft_id: u64,
    pub addr: String,
}

/// `POST /v1/swarm/join` (unix socket): the CLI asks its local daemon to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmJoinRequest {
    pub token: String,
    /// Manager's cluster port, IP[:PORT] (2377 when no port is given).
    pub remote_addr: String,
    #[serde(default)]
    pub advertise_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmJoinResponse {
    pub node_id: String,
    pub role: NodeRole,
    pub cluster_id: String,
    pub manager_addr: String,
}

/// `GET /v1/swarm/join-token/{worker|manager}[?rotate=true]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenResponse {
    pub role: NodeRole,
    pub token: String,
    /// A manager's cluster-port address to join at.
    pub manager_addr: String,
}

/// `POST /v1/swarm/client-bundle`: a client certificate for an operator's CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientBundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// `POST /v1/dispatcher/role` (cluster port, node certificates): a node asks
/// which role the store gives it, and with `csr_pem` a certificate for that
/// role (a promoted worker needs a manager certificate).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoleRequest {
    #[serde(default)]
    pub csr_pem: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleAnswer {
    pub role: NodeRole,
    /// Signed for `role` when the request carried a CSR.
    #[serde(default)]
    pub cert_pem: Option<String>,
    pub cluster_id: String,
    /// Cluster-port addresses of the managers.
    pub managers: Vec<String>,
    /// The managers' raft IDs and addresses.
    pub peers: Vec<ManagerPeer>,
}
