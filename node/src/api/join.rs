//! Joining a swarm, both sides, and the credentials a manager hands out:
//!
//! - the joining node (`POST /v1/swarm/join` on its unix socket, from
//!   `swarmlet join`): fetch the CA from the manager's cluster port without
//!   sending anything secret, check its digest against the token, generate a
//!   key + CSR locally, send CSR + token, check and save the certificate,
//!   switch the cluster port to mutual TLS, then `daemon::after_join`;
//! - the manager (`GET /v1/cluster/ca`, `POST /v1/cluster/join` on the
//!   cluster port, anonymous): verify the token against the store, sign the
//!   CSR, add the node through raft (`Command::AddNode`), answer;
//! - `GET /v1/swarm/join-token/ROLE`, `POST .../rotate`, and
//!   `POST /v1/swarm/client-bundle` for the CLI.
//!
//! Nothing is added to the store unless the token is right and the CSR is
//! valid (the certificate is signed before the node is proposed).

use std::net::SocketAddr;
use std::path::Path;

use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use swarmlet_proto::cluster::{
    ClientBundle, JoinRequest, JoinResponse, JoinTokenResponse, SwarmJoinRequest, SwarmJoinResponse,
};
use swarmlet_proto::{Availability, Command, Node, NodeRole};

use super::server::{body_json, json, ApiState, Response};
use super::ApiError;
use crate::pki::{self, Ca, CertKind, NodeCerts, Token};
use crate::transport::{self, client::PoolOptions, Pool, Target, TransportError};

/// What a node that joined knows (kept in `DATA_DIR/swarm.json`, 0600).
/// The lead starts raft (managers) and the agent from this.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    pub role: NodeRole,
    pub cluster_id: String,
    /// Cluster-port addresses of the managers at join time.
    pub managers: Vec<String>,
    /// The manager this node joined through.
    pub joined_via: String,
    /// The cluster's gossip key (64 hex), as the manager handed it out.
    #[serde(default)]
    pub gossip_key: String,
    /// This node's own cluster address as it joined with it.
    #[serde(default)]
    pub addr: String,
    /// The managers' raft IDs and addresses at join time.
    #[serde(default)]
    pub peers: Vec<swarmlet_proto::cluster::ManagerPeer>,
}

fn joined_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("swarm.json")
}

/// The join record of a node that joined (not of an `init` node).
pub fn load_joined(data_dir: &Path) -> anyhow::Result<Option<Joined>> {
    let path = joined_path(data_dir);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}); restore it, or remove it and DATA_DIR/certs and join again",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, e.to_string())
}

/// Loads this node's certificates and switches the cluster port to mutual
/// TLS. A manager of a swarm whose certificates are missing (a crash
/// between `init`'s bootstrap and writing them) issues its own again from
/// the store's CA. Called by `init` and at daemon start.
pub fn install_node_certs(st: &ApiState) -> Result<bool, ApiError> {
    if let Some(certs) = pki::load_node_certs(&st.data_dir).map_err(internal)? {
        st.cluster_port.install(&certs).map_err(internal)?;
        return Ok(true);
    }
    let Some(cluster) = st.cluster.get() else {
        return Ok(false);
    };
    let (ca, cluster_id, me) = {
        let s = cluster.store.read();
        (
            s.cluster_ca.clone(),
            s.cluster_id.clone(),
            s.nodes.get(&st.identity.node_id).cloned(),
        )
    };
    let (Some(ca), Some(cluster_id), Some(me)) = (ca, cluster_id, me) else {
        // A swarm created before the PKI existed: it stays on plain 403.
        tracing::warn!(
            "this swarm has no cluster CA; the cluster port stays closed to other nodes"
        );
        return Ok(false);
    };
    if me.role != NodeRole::Manager {
        return Ok(false);
    }
    let key = pki::new_csr(&me.id).map_err(internal)?;
    let ca = Ca::load(&ca).map_err(internal)?;
    let cert_pem = ca
        .sign_node(&key.csr_pem, &me.id, pki::CertRole::Manager, &cluster_id)
        .map_err(internal)?;
    let certs = NodeCerts {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem,
        key_pem: key.key_pem,
    };
    pki::save_node_certs(&st.data_dir, &certs).map_err(|e| match &e {
        pki::PkiError::Write(w) if w.is_disk_full() => ApiError::new(507, e.to_string()),
        _ => internal(e),
    })?;
    st.cluster_port.install(&certs).map_err(internal)?;
    tracing::info!("wrote this manager's certificate under DATA_DIR/certs");
    Ok(true)
}

/// The bootstrap additions of `init`: the CA and both token secrets.
pub fn bootstrap_pki(state: &mut crate::store::State, cluster_id: &str) -> Result<(), ApiError> {
    state.cluster_ca = Some(pki::create_ca(cluster_id).map_err(internal)?);
    state.join_tokens = Some(swarmlet_proto::cluster::JoinTokens {
        worker: pki::new_secret(),
        manager: pki::new_secret(),
        retired: Vec::new(),
    });
    state.gossip_key = Some(crate::membership::GossipKey::generate().to_hex());
    Ok(())
}

// ---- manager side (cluster port, anonymous) ----

/// `GET /v1/cluster/ca`: the CA certificate (PEM). Public by design.
pub fn ca(st: &ApiState) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let pem = cluster
        .store
        .read()
        .cluster_ca
        .as_ref()
        .map(|c| c.cert_pem.clone())
        .ok_or_else(|| ApiError::new(503, "this swarm has no cluster CA"))?;
    let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(pem)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-pem-file"),
    );
    Ok(r)
}

fn valid_node_id(id: &str) -> bool {
    id.len() == 25
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `POST /v1/cluster/join`.
pub async fn accept_join(st: &ApiState, body: Incoming) -> Result<Response, ApiError> {
    let req: JoinRequest = body_json(body).await?;
    let cluster = st.cluster()?;
    let token = Token::parse(&req.token).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (ca, tokens, cluster_id) = {
        let s = cluster.store.read();
        (
            s.cluster_ca.clone(),
            s.join_tokens.clone(),
            s.cluster_id.clone(),
        )
    };
    let (Some(ca), Some(tokens), Some(cluster_id)) = (ca, tokens, cluster_id) else {
        return Err(ApiError::new(
            503,
            "this swarm has no cluster CA or join tokens; it cannot take new nodes",
        ));
    };
    let gossip_key = cluster.store.read().gossip_key.clone().unwrap_or_default();
    let role = pki::verify_token(&token, &ca.cert_pem, &tokens).map_err(|e| {
        tracing::info!(node = %req.node_id, addr = %req.addr, "refused a join: {e}");
        ApiError::new(403, e.to_string())
    })?;
    if !valid_node_id(&req.node_id) {
        return Err(ApiError::bad_request(format!(
            "node ID {:?} is not 25 lowercase hex characters",
            req.node_id
        )));
    }
    if req.addr.parse::<SocketAddr>().is_err() {
        return Err(ApiError::bad_request(format!(
            "the joining node's address {:?} is not IP:PORT; start its daemon with --advertise-addr IP",
            req.addr
        )));
    }
    if req.raft_id == 0 {
        return Err(ApiError::bad_request("raft ID 0 is not valid"));
    }
    if cluster.store.read().nodes.contains_key(&req.node_id) {
        return Err(ApiError::conflict(format!(
            "node {} is already part of this swarm",
            req.node_id
        )));
    }
    let ca = Ca::load(&ca).map_err(internal)?;
    let cert_pem = ca
        .sign_node(&req.csr_pem, &req.node_id, role.into(), &cluster_id)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let node = Node {
        id: req.node_id.clone(),
        raft_id: req.raft_id,
        hostname: if req.hostname.is_empty() {
            req.node_id.clone()
        } else {
            req.hostname.clone()
        },
        role,
        availability: Availability::Active,
        addr: req.addr.clone(),
        created_at_ms: crate::orchestrator::now_ms(),
        // Ready once its first heartbeat reaches the leader's dispatcher.
        status: swarmlet_proto::NodeStatus::default(),
        port_problems: Vec::new(),
    };
    cluster.propose(Command::AddNode { node }).await?;
    tracing::info!(node = %req.node_id, addr = %req.addr, ?role, "a node joined the swarm");
    let manager_nodes: Vec<Node> = cluster
        .store
        .read()
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager)
        .cloned()
        .collect();
    let managers = manager_nodes.iter().map(|n| n.addr.clone()).collect();
    let peers = manager_nodes
        .iter()
        .map(|n| swarmlet_proto::cluster::ManagerPeer {
            raft_id: n.raft_id,
            addr: n.addr.clone(),
        })
        .collect();
    Ok(json(
        200,
        &JoinResponse {
            cert_pem,
            ca_pem: ca.cert_pem().to_string(),
            role,
            cluster_id,
            managers,
            gossip_key,
            peers,
        },
    ))
}

// ---- joining side (unix socket) ----

/// `IP[:PORT]` / `HOST:PORT` with 2377 as the default port.
fn with_default_port(addr: &str) -> Result<String, ApiError> {
    let a = addr.trim();
    if a.is_empty() {
        return Err(ApiError::bad_request(
            "give the manager's address: swarmlet join --token TOKEN IP[:2377]",
        ));
    }
    if let Ok(ip) = a.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 2377).to_string());
    }
    if a.parse::<SocketAddr>().is_ok()
        || a.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    {
        return Ok(a.to_string());
    }
    if !a.contains(':') && !a.contains('/') {
        return Ok(format!("{a}:2377"));
    }
    Err(ApiError::bad_request(format!(
        "{a:?} is not a manager address; use IP[:PORT], e.g. 192.168.1.10:2377"
    )))
}

fn unreachable(remote: &str, e: TransportError) -> ApiError {
    match e {
        TransportError::Status { status, message } => ApiError::new(status, message),
        other => ApiError::new(
            502,
            format!("cannot reach the manager at {remote}: {other}; check the address and that its cluster port is open"),
        ),
    }
}

/// Fetches the manager's CA certificate without sending anything secret.
async fn fetch_ca(remote: &str) -> Result<String, ApiError> {
    let pool = Pool::new(
        transport::ca_fetch_config().map_err(internal)?,
        PoolOptions::default(),
    );
    let resp = pool
        .stream(
            remote,
            &Target::Manager,
            http::Method::GET,
            "/v1/cluster/ca",
            transport::client::full(bytes::Bytes::new()),
        )
        .await
        .map_err(|e| unreachable(remote, e))?;
    let status = resp.status().as_u16();
    let body =
        http_body_util::BodyExt::collect(http_body_util::Limited::new(resp.into_body(), 64 << 10))
            .await
            .map_err(|e| ApiError::new(502, format!("reading the CA from {remote}: {e}")))?
            .to_bytes();
    if status != 200 {
        let message = serde_json::from_slice::<swarmlet_proto::api::ErrorBody>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(ApiError::new(
            502,
            format!("the manager at {remote} did not hand out its CA: {message}"),
        ));
    }
    String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::new(502, format!("{remote} answered a CA that is not text")))
}

/// `POST /v1/swarm/join`: this node joins the swarm of the manager at
/// `remote_addr` with `token`.
pub async fn join(st: &ApiState, body: Incoming) -> Result<Response, ApiError> {
    let req: SwarmJoinRequest = body_json(body).await?;
    let _guard = st.init_lock.lock().await;
    if st.cluster.get().is_some() || st.cluster_port.is_secure() {
        return Err(ApiError::conflict(
            "this node is already part of a swarm; run \"swarmlet leave\" first to join another",
        ));
    }
    // A malformed token is refused before anything is sent anywhere.
    let token = Token::parse(&req.token).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let remote = with_default_port(&req.remote_addr)?;
    let given = req.advertise_addr.or_else(|| st.advertise_addr.clone());
    let advertise = super::handlers::advertise_for(st, given.as_deref())?;
    let ca_pem = fetch_ca(&remote).await?;
    // The CA is checked against the token BEFORE the secret is sent.
    token
        .check_ca(&ca_pem, &remote)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let node_id = st.identity.node_id.clone();
    let key = pki::new_csr(&node_id).map_err(internal)?;
    let config = transport::client_config(&ca_pem, None, &[b"h2"]).map_err(internal)?;
    let pool = Pool::new(config, PoolOptions::default());
    let resp: JoinResponse = pool
        .post_json(
            &remote,
            &Target::Manager,
            "/v1/cluster/join",
            &JoinRequest {
                token: req.token.trim().to_string(),
                csr_pem: key.csr_pem,
                node_id: node_id.clone(),
                raft_id: st.identity.raft_id,
                hostname: st.identity.hostname.clone(),
                addr: advertise.to_string(),
                platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
            },
        )
        .await
        .map_err(|e| unreachable(&remote, e))?;
    // What came back must be ours: our node ID and the role granted, under the CA we checked.
    let id = pki::cert_identity(pki::cert_der(&resp.cert_pem).map_err(internal)?.as_ref())
        .map_err(|e| ApiError::new(502, format!("the manager sent a bad certificate: {e}")))?;
    match &id.kind {
        CertKind::Node { node_id: n, role }
            if *n == node_id && NodeRole::from(*role) == resp.role => {}
        other => {
            return Err(ApiError::new(
                502,
                format!(
                    "the manager sent a certificate for {other:?}, not for this node ({node_id})"
                ),
            ))
        }
    }
    if resp.ca_pem.trim() != ca_pem.trim() {
        return Err(ApiError::new(
            502,
            "the manager answered with another CA than the one checked against the token",
        ));
    }
    let certs = NodeCerts {
        ca_pem,
        cert_pem: resp.cert_pem,
        key_pem: key.key_pem,
    };
    let joined = Joined {
        role: resp.role,
        cluster_id: resp.cluster_id.clone(),
        managers: resp.managers.clone(),
        joined_via: remote.clone(),
        gossip_key: resp.gossip_key.clone(),
        addr: advertise.to_string(),
        peers: resp.peers.clone(),
    };
    let write = |e: pki::PkiError| {
        match &e {
        pki::PkiError::Write(w) if w.is_disk_full() => ApiError::new(
            507,
            format!("{e}: the node was added to the swarm but could not save its certificate; free space, run \"swarmlet leave\" and join again"),
        ),
        _ => internal(e),
    }
    };
    pki::save_node_certs(&st.data_dir, &certs).map_err(write)?;
    crate::fsutil::write_atomic(
        &joined_path(&st.data_dir),
        &serde_json::to_vec_pretty(&joined).map_err(internal)?,
    )
    .map_err(|e| write(pki::PkiError::Write(e)))?;
    st.cluster_port.install(&certs).map_err(internal)?;
    tracing::info!(cluster = %joined.cluster_id, role = ?joined.role, via = %remote, "joined the swarm");
    crate::daemon::after_join(st, &joined).await.map_err(|e| {
        ApiError::new(
            500,
            format!("joined, but starting the cluster parts failed: {e:#}"),
        )
    })?;
    Ok(json(
        200,
        &SwarmJoinResponse {
            node_id,
            role: resp.role,
            cluster_id: resp.cluster_id,
            manager_addr: remote,
        },
    ))
}

// ---- credentials on a manager ----

fn parse_role(role: &str) -> Result<NodeRole, ApiError> {
    match role {
        "worker" => Ok(NodeRole::Worker),
        "manager" => Ok(NodeRole::Manager),
        other => Err(ApiError::bad_request(format!(
            "unknown role {other:?}: use worker or manager"
        ))),
    }
}

/// `GET /v1/swarm/join-token/ROLE` and (`rotate`) `POST .../rotate`.
pub async fn join_token(st: &ApiState, role: &str, rotate: bool) -> Result<Response, ApiError> {
    let role = parse_role(role)?;
    let cluster = st.cluster()?;
    if rotate {
        cluster
            .propose_once(Command::RotateJoinToken {
                role,
                secret: pki::new_secret(),
            })
            .await?;
        tracing::info!(?role, "rotated the join token");
    }
    let s = cluster.store.read();
    let (Some(ca), Some(tokens)) = (&s.cluster_ca, &s.join_tokens) else {
        return Err(ApiError::new(
            503,
            "this swarm has no join tokens (it was created by an older swarmlet)",
        ));
    };
    let digest = pki::ca_digest(&ca.cert_pem).map_err(internal)?;
    let manager_addr = s
        .nodes
        .get(&st.identity.node_id)
        .map(|n| n.addr.clone())
        .unwrap_or_else(|| st.api_addr.to_string());
    Ok(json(
        200,
        &JoinTokenResponse {
            role,
            token: Token::new(&digest, tokens.current(role)).to_string(),
            manager_addr,
        },
    ))
}

/// `POST /v1/swarm/client-bundle`: a new client certificate + key.
pub fn client_bundle(st: &ApiState) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let (ca, cluster_id) = {
        let s = cluster.store.read();
        (s.cluster_ca.clone(), s.cluster_id.clone())
    };
    let (Some(ca), Some(cluster_id)) = (ca, cluster_id) else {
        return Err(ApiError::new(503, "this swarm has no cluster CA"));
    };
    let ca = Ca::load(&ca).map_err(internal)?;
    let (cert_pem, key_pem) = ca.issue_client(&cluster_id).map_err(internal)?;
    tracing::info!("issued a client bundle");
    Ok(json(
        200,
        &ClientBundle {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem,
            key_pem,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_addresses_get_the_default_port() {
        assert_eq!(with_default_port("10.0.0.5").unwrap(), "10.0.0.5:2377");
        assert_eq!(with_default_port("10.0.0.5:4000").unwrap(), "10.0.0.5:4000");
        assert_eq!(with_default_port("node1").unwrap(), "node1:2377");
        assert!(with_default_port("").is_err());
        assert!(with_default_port("http://x/").is_err());
    }
}
