//! Node-to-node transport on the cluster port: mutual TLS (TLS 1.3, ALPN
//! `h2` + `http/1.1`) with certificates of the cluster CA.
//!
//! - `ClusterPort` is the server side's switchable state: the TLS config
//!   (installed at `init`/`join`/restart; before, the port answers plain 403),
//!   the cluster ID a peer certificate must name, and the set of removed
//!   node IDs refused on every request.
//! - `Peer` is who called, put in each request's extensions; `authorize`
//!   is the per-route rule (anonymous: CA + join; worker: dispatcher +
//!   blobs; manager: everything; client: the client API).
//! - `client::Pool` is the outgoing side: one multiplexed HTTP/2 connection
//!   per peer address over mTLS with the node's certificate.
//!
//! Architecture invariant: a client certificate that does not chain to the
//! cluster CA fails the TLS handshake; a request's `Peer` comes only from a
//! verified certificate.

pub mod client;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

pub use crate::pki::CertRole;
use crate::pki::{cert_identity, CertKind, NodeCerts, PkiError};
pub use client::{Pool, Target, TransportError};
pub use tls::{ca_fetch_config, client_config, server_config, TlsError};

/// Who is calling, from its verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate.
    Anonymous,
    Node {
        node_id: String,
        role: CertRole,
    },
    /// A client bundle (`swarm ca --client-bundle`): the operator's CLI.
    Client,
}

/// The cluster port's state, shared by the listener and whoever installs
/// certificates (init, join, restart) or removes nodes (the lead's store
/// watcher).
#[derive(Default)]
pub struct ClusterPort {
    tls: crate::listen::TlsSwitch,
    cluster_id: ArcSwapOption<String>,
    revoked: ArcSwap<HashSet<String>>,
    /// The outgoing side with the same certificates (set with them).
    client: ArcSwapOption<Pool>,
}

impl ClusterPort {
    pub fn new() -> Arc<ClusterPort> {
        Arc::new(ClusterPort::default())
    }

    /// The switch the listener reads for each new connection.
    pub fn tls_switch(&self) -> crate::listen::TlsSwitch {
        self.tls.clone()
    }

    /// Serve mutual TLS with these certificates from the next connection on.
    pub fn install(&self, certs: &NodeCerts) -> Result<(), TlsError> {
        let config = server_config(certs)?;
        let id = cert_identity(crate::pki::cert_der(&certs.cert_pem)?.as_ref())?;
        self.cluster_id.store(Some(Arc::new(id.cluster_id)));
        let pool = Pool::for_node(certs, client::PoolOptions::default())?;
        self.client.store(Some(Arc::new(pool)));
        self.tls.store(Some(config));
        Ok(())
    }

    /// The pooled mTLS client presenting this node's certificate, once the
    /// node has one.
    pub fn client(&self) -> Option<Pool> {
        self.client.load().as_deref().cloned()
    }

    /// Whether the port serves TLS (the node has certificates).
    pub fn is_secure(&self) -> bool {
        self.tls.load().is_some()
    }

    /// Replaces the set of node IDs whose certificates are refused (removed
    /// nodes). The lead feeds it from the store.
    pub fn set_revoked(&self, node_ids: HashSet<String>) {
        self.revoked.store(Arc::new(node_ids));
    }

    /// Whether `peer` is a node the swarm removed (its 403s then carry
    /// `REMOVED_HEADER`, so the node itself can tell it was removed).
    pub fn is_removed_peer(&self, peer: &Peer) -> bool {
        matches!(peer, Peer::Node { node_id, .. } if self.is_revoked(node_id))
    }

    pub fn is_revoked(&self, node_id: &str) -> bool {
        self.revoked.load().contains(node_id)
    }

    /// Makes a `Peer` of a chain-verified client certificate (the handshake
    /// already checked it chains to the cluster CA). A certificate of
    /// another cluster (a CA with the same key would be needed) or with an
    /// unknown role is refused.
    pub fn identify(
        &self,
        cert: Option<&rustls::pki_types::CertificateDer<'_>>,
    ) -> Result<Peer, String> {
        let Some(cert) = cert else {
            return Ok(Peer::Anonymous);
        };
        let id = cert_identity(cert.as_ref()).map_err(|e| e.to_string())?;
        if let Some(ours) = self.cluster_id.load_full() {
            if *ours != id.cluster_id {
                return Err(format!(
                    "the certificate is for cluster {}, this is cluster {ours}",
                    id.cluster_id
                ));
            }
        }
        Ok(match id.kind {
            CertKind::Node { node_id, role } => Peer::Node { node_id, role },
            CertKind::Client => Peer::Client,
        })
    }

    /// The per-request check: the route rule (`authorize`) and the revoked set.
    pub fn check(&self, peer: &Peer, method: &http::Method, path: &str) -> Result<(), Forbidden> {
        if let Peer::Node { node_id, .. } = peer {
            if self.is_revoked(node_id) {
                return Err(Forbidden(format!(
                    "node {node_id} was removed from the swarm; its certificate is no longer accepted. \
                     Run \"swarmlet leave --force\" on it and join again with a token"
                )));
            }
        }
        authorize(peer, method, path)
    }
}

/// Set (to "true") on the 403 a removed node's requests get: a manager that
/// was removed while it was down learns from it that it is out of the swarm.
pub const REMOVED_HEADER: &str = "swarmlet-node-removed";

/// A refused request: the message says who may call it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

/// Which kind of route a path is, for `authorize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// `GET /v1/cluster/ca`, `POST /v1/cluster/join`.
    Join,
    /// `/v1/dispatcher/...`, `GET /v1/blobs/<digest>` and the mesh's
    /// forwarded requests, `/v1/mesh/...`.
    NodeRpc,
    /// `/v1/raft/...` and other `/v1/cluster/...` internals.
    ManagerRpc,
    /// Minting credentials: `/v1/swarm/client-bundle`.
    Credentials,
    /// Everything else under `/v1/`: the client API.
    ClientApi,
}

pub fn classify(method: &http::Method, path: &str) -> RouteClass {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        (&http::Method::GET, ["v1", "cluster", "ca"])
        | (&http::Method::POST, ["v1", "cluster", "join"]) => RouteClass::Join,
        (_, ["v1", "dispatcher", ..]) | (&http::Method::GET, ["v1", "blobs", _]) => {
            RouteClass::NodeRpc
        }
        (_, ["v1", "mesh", ..]) => RouteClass::NodeRpc,
        (_, ["v1", "raft", ..]) | (_, ["v1", "cluster", ..]) => RouteClass::ManagerRpc,
        (_, ["v1", "swarm", "client-bundle"]) => RouteClass::Credentials,
        _ => RouteClass::ClientApi,
    }
}

/// The route rule of the cluster port: anonymous callers reach only the CA
/// and join; workers the dispatcher and blob fetches; clients the client
/// API; managers everything.
pub fn authorize(peer: &Peer, method: &http::Method, path: &str) -> Result<(), Forbidden> {
    let class = classify(method, path);
    let ok = matches!(
        (peer, class),
        (_, RouteClass::Join)
            | (
                Peer::Node {
                    role: CertRole::Manager,
                    ..
                },
                _
            )
            | (
                Peer::Node {
                    role: CertRole::Worker,
                    ..
                },
                RouteClass::NodeRpc
            )
            | (Peer::Client, RouteClass::ClientApi)
    );
    if ok {
        return Ok(());
    }
    let who = match peer {
        Peer::Anonymous => "a caller without a client certificate".to_string(),
        Peer::Node {
            node_id,
            role: CertRole::Worker,
        } => format!("worker {node_id}"),
        Peer::Node {
            node_id,
            role: CertRole::Manager,
        } => format!("manager {node_id}"),
        Peer::Client => "a client certificate".to_string(),
    };
    let need = match class {
        RouteClass::Join => "anyone",
        RouteClass::NodeRpc => "swarm nodes (a node certificate)",
        RouteClass::ManagerRpc => "managers only",
        RouteClass::Credentials => "managers only (run it on a manager, over its unix socket)",
        RouteClass::ClientApi => {
            "a client certificate (swarmlet -H MANAGER:2377 --tls DIR, with a bundle from \"swarmlet swarm ca --client-bundle DIR\" on a manager)"
        }
    };
    Err(Forbidden(format!(
        "{method} {path} is not allowed for {who}: it is for {need}"
    )))
}

impl From<PkiError> for TlsError {
    fn from(e: PkiError) -> Self {
        TlsError::Pki(e)
    }
}

#[cfg(test)]
mod authz_tests {
    use super::*;
    use http::Method;

    #[test]
    fn each_peer_reaches_only_its_routes() {
        let worker = Peer::Node {
            node_id: "w".into(),
            role: CertRole::Worker,
        };
        let manager = Peer::Node {
            node_id: "m".into(),
            role: CertRole::Manager,
        };
        let cases: &[(&Peer, Method, &str, bool)] = &[
            (&Peer::Anonymous, Method::GET, "/v1/cluster/ca", true),
            (&Peer::Anonymous, Method::POST, "/v1/cluster/join", true),
            (&Peer::Anonymous, Method::GET, "/v1/services", false),
            (&Peer::Anonymous, Method::GET, "/v1/blobs/sha256:00", false),
            (&worker, Method::GET, "/v1/blobs/sha256:00", true),
            (&worker, Method::POST, "/v1/dispatcher/status", true),
            (&worker, Method::POST, "/v1/mesh/svc/upload?x=1", true),
            (&manager, Method::GET, "/v1/mesh/svc/", true),
            (&Peer::Client, Method::GET, "/v1/mesh/svc/", false),
            (&Peer::Anonymous, Method::GET, "/v1/mesh/svc/", false),
            // TCP tunnels: node certificates only.
            (&worker, Method::POST, "/v1/mesh/tcp/svc/task", true),
            (&manager, Method::POST, "/v1/mesh/tcp/svc/task", true),
            (&Peer::Client, Method::POST, "/v1/mesh/tcp/svc/task", false),
            (
                &Peer::Anonymous,
                Method::POST,
                "/v1/mesh/tcp/svc/task",
                false,
            ),
            (&worker, Method::POST, "/v1/raft/messages", false),
            (&worker, Method::GET, "/v1/services", false),
            (&worker, Method::GET, "/v1/nodes", false),
            (&manager, Method::POST, "/v1/raft/messages", true),
            (&manager, Method::GET, "/v1/services", true),
            (&Peer::Client, Method::GET, "/v1/services", true),
            (&Peer::Client, Method::POST, "/v1/raft/messages", false),
            (&Peer::Client, Method::POST, "/v1/dispatcher/status", false),
            (
                &Peer::Client,
                Method::POST,
                "/v1/swarm/client-bundle",
                false,
            ),
        ];
        for (peer, m, path, allowed) in cases {
            assert_eq!(
                authorize(peer, m, path).is_ok(),
                *allowed,
                "{peer:?} {m} {path}"
            );
        }
        let port = ClusterPort::default();
        port.set_revoked(["w".to_string()].into());
        let e = port
            .check(&worker, &Method::GET, "/v1/blobs/x")
            .unwrap_err();
        assert!(e.0.contains("removed"), "{e}");
    }
}
