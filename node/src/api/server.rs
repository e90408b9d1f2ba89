//! The API's listeners and router. The client API is served on the unix
//! socket only; the TCP cluster port answers every HTTP request with 403
//! until node-to-node traffic (mutual TLS) arrives there. Both go through
//! `listen::serve`, so both have the node's listener limits.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use swarmlet_proto::api::ErrorBody;
use tokio::sync::watch;

use super::ApiError;
use super::{handlers, nodes};
use crate::blobs::Blobs;
use crate::daemon::Cluster;
use crate::identity::Identity;
use crate::mesh::Mesh;
use crate::runtime::wasm::WasmRuntime;

/// The largest JSON request body: a service spec is a few hundred bytes.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// Longest a client may take to send a JSON body once its head is in.
const JSON_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What handlers need. `cluster` is empty until `init` (or a restart of an
/// initialized node) starts raft and the parts that hang off it.
pub struct ApiState {
    pub identity: Identity,
    pub data_dir: PathBuf,
    pub api_addr: SocketAddr,
    /// `--advertise-addr` of the daemon, the default for `init`.
    pub advertise_addr: Option<String>,
    pub blobs: Arc<Blobs>,
    pub runtime: Arc<WasmRuntime>,
    /// This node's image store and registry client (`crate::image`): the
    /// manager resolves references with it, the container runtime pulls.
    pub images: Arc<crate::image::Puller>,
    /// This node's container runtime, or why it has none (the agent runs
    /// container tasks through it; `image rm` asks what they use).
    pub containers: crate::runtime::container::Containers,
    pub mesh: Arc<Mesh>,
    pub cluster: tokio::sync::OnceCell<Cluster>,
    pub init_lock: tokio::sync::Mutex<()>,
    pub shutdown: watch::Receiver<bool>,
    /// The cluster port's TLS switch, cluster ID and revoked node IDs.
    pub cluster_port: Arc<crate::transport::ClusterPort>,
    /// Set once this node has joined a swarm through `swarmlet join` (or
    /// restarted after one): its role, the cluster and the managers.
    pub joined: tokio::sync::OnceCell<super::join::Joined>,
    /// `--node-down-after`: how long the leader waits for a node's
    /// heartbeat before it marks the node `Down`.
    pub node_down_after: std::time::Duration,
    /// `--gossip-addr`; `None`: the cluster listen IP, port 7946.
    pub gossip_addr: Option<SocketAddr>,
    /// Gossip membership, once the node is in a swarm (`crate::gossip`).
    pub membership: tokio::sync::OnceCell<Arc<crate::membership::Membership>>,
    /// Why membership did not start, for `swarmlet info`.
    pub gossip_error: std::sync::Mutex<Option<String>>,
}

impl ApiState {
    pub fn publish_ip(&self) -> IpAddr {
        self.mesh.publish_addr()
    }
    pub fn cluster(&self) -> Result<&Cluster, ApiError> {
        self.cluster.get().ok_or_else(|| {
            if self.joined.get().is_some() {
                ApiError::new(
                    503,
                    "this node is a swarm worker: workers cannot be used to view or modify cluster state; run the command on a manager (or promote this node with \"swarmlet node promote\" on one)",
                )
            } else {
                ApiError::not_in_swarm()
            }
        })
    }
}

pub type Response = hyper::Response<Full<Bytes>>;

pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: ApiError) -> Response {
    json(e.status, &ErrorBody { message: e.message })
}

/// Reads a JSON body of at most `MAX_JSON_BODY` bytes (413 beyond; 408 if
/// it does not arrive in time) and parses it. Routes that take something
/// else (the `.wasm` upload) read `Incoming` with their own limit.
pub async fn body_json<T: serde::de::DeserializeOwned>(body: Incoming) -> Result<T, ApiError> {
    let read = Limited::new(body, MAX_JSON_BODY).collect();
    let bytes = match tokio::time::timeout(JSON_BODY_TIMEOUT, read).await {
        Err(_) => {
            return Err(ApiError {
                status: 408,
                message: format!(
                    "the request body did not arrive within {JSON_BODY_TIMEOUT:?}; send it whole and retry"
                ),
            })
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError {
                status: 413,
                message: format!(
                    "the request body is larger than {} KiB, the most a JSON API request may carry",
                    MAX_JSON_BODY >> 10
                ),
            })
        }
        Ok(Err(e)) => return Err(ApiError::bad_request(format!("reading the request body: {e}"))),
        Ok(Ok(c)) => c.to_bytes(),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed request body: {e}")))
}

async fn route(state: Arc<ApiState>, req: hyper::Request<Incoming>) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // A key names one request: the same key on another route is another
    // key (a create's key reused for a delete must not answer "done").
    let key = match client_key(&req) {
        Ok(k) => k.map(|k| format!("{k} {method} {path}")),
        Err(e) => return error_response(e),
    };
    let body = req.into_body();
    let work = async {
        match (&method, segs.as_slice()) {
            (&Method::GET, ["v1", "info"]) => handlers::info(&state).await,
            (&Method::POST, ["v1", "swarm", "init"]) => handlers::init(&state, body).await,
            (&Method::GET, ["v1", "nodes"]) => nodes::list(&state),
            (&Method::GET, ["v1", "nodes", key]) => nodes::inspect(&state, key),
            (&Method::POST, ["v1", "nodes", key, "availability"]) => {
                nodes::set_availability(&state, key, body).await
            }
            (&Method::POST, ["v1", "nodes", key, "role"]) => {
                nodes::set_role(&state, key, body).await
            }
            (&Method::DELETE, ["v1", "nodes", key]) => nodes::remove(&state, key, &query).await,
            (&Method::POST, ["v1", "swarm", "leave"]) => super::leave::leave(&state, &query),
            (&Method::POST, ["v1", "blobs"]) => handlers::put_blob(&state, body).await,
            (&Method::GET, ["v1", "blobs", digest]) => handlers::get_blob(&state, digest),
            (&Method::GET, ["v1", "services"]) => handlers::services(&state),
            (&Method::POST, ["v1", "services"]) => handlers::create_service(&state, body).await,
            (&Method::GET, ["v1", "services", key]) => handlers::service(&state, key),
            (&Method::DELETE, ["v1", "services", key]) => {
                handlers::remove_service(&state, key).await
            }
            (&Method::POST, ["v1", "services", key, "scale"]) => {
                handlers::scale_service(&state, key, body).await
            }
            (&Method::GET, ["v1", "services", key, "status"]) => {
                handlers::service_status(&state, key, &query).await
            }
            (&Method::GET, ["v1", "services", key, "tasks"]) => {
                handlers::service_tasks(&state, key, &query)
            }
            (&Method::GET, ["v1", "images"]) => super::images::list(&state).await,
            (&Method::POST, ["v1", "images", "remove"]) => {
                super::images::remove(&state, body).await
            }
            (&Method::POST, ["v1", "images", "import"]) => {
                super::images::import(&state, body).await
            }
            (&Method::POST, ["v1", "swarm", "join"]) => super::join::join(&state, body).await,
            (&Method::GET, ["v1", "swarm", "join-token", role]) => {
                super::join::join_token(&state, role, false).await
            }
            (&Method::POST, ["v1", "swarm", "join-token", role, "rotate"]) => {
                super::join::join_token(&state, role, true).await
            }
            (&Method::POST, ["v1", "swarm", "client-bundle"]) => super::join::client_bundle(&state),
            _ => Err(ApiError::not_found(format!(
                "no such API endpoint: {method} {path}"
            ))),
        }
    };
    let result = match key {
        Some(k) => crate::link::writer::CLIENT_KEY.scope(k, work).await,
        None => work.await,
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %path, status = e.status, "api error: {}", e.message);
            error_response(e)
        }
    }
}

/// The client API routes whose answer streams (`service logs`, `image
/// pull`'s progress); any other request is handed back.
async fn route_stream(
    state: &Arc<ApiState>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<crate::body::Body>, hyper::Request<Incoming>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match (req.method(), segs.as_slice()) {
        (&Method::GET, ["v1", "services", key, "logs"]) => {
            super::logs::service_logs(state, key, &query)
        }
        (&Method::POST, ["v1", "images", "pull"]) => {
            super::images::pull(state.clone(), req.into_body()).await
        }
        _ => return Err(req),
    };
    Ok(result.unwrap_or_else(|e| {
        tracing::debug!(%path, status = e.status, "api error: {}", e.message);
        boxed(error_response(e))
    }))
}

fn boxed(r: Response) -> hyper::Response<crate::body::Body> {
    r.map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// The unix socket's router: the streaming routes, then `route`.
async fn route_socket(
    state: Arc<ApiState>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<crate::body::Body> {
    match route_stream(&state, req).await {
        Ok(r) => r,
        Err(req) => boxed(route(state, req).await),
    }
}

/// The request's `Idempotency-Key` header: a client that retries a write
/// with the same key gets it applied once.
fn client_key(req: &hyper::Request<Incoming>) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_string()))
        }
        _ => Err(ApiError::bad_request(
            "Idempotency-Key must be 1-128 printable ASCII characters (e.g. a random hex string per request)",
        )),
    }
}

/// What the cluster port answers to any plain HTTP request (before the node
/// is in a swarm it has no certificates, so it serves no TLS at all).
pub const REMOTE_REFUSED: &str =
    "remote control of a swarmlet node needs a TLS client certificate, \
and this node is not in a swarm yet, so it has none; run the command on the node itself (it talks to the \
unix socket DATA_DIR/swarmlet.sock), e.g. `ssh NODE swarmlet service ls`";

/// The router of the cluster port once it serves TLS: the caller's `Peer`
/// (from its verified certificate, put in the extensions by the listener)
/// is checked against the route and the revoked set, then the cluster
/// routes (CA, join) or the client API answer. Other areas' node-to-node
/// routes (raft, dispatcher) are added here.
pub async fn route_cluster(state: Arc<ApiState>, req: hyper::Request<Incoming>) -> Response {
    use crate::transport::Peer;
    let peer = req
        .extensions()
        .get::<Peer>()
        .cloned()
        .unwrap_or(Peer::Anonymous);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if let Err(f) = state.cluster_port.check(&peer, &method, &path) {
        tracing::debug!(%method, %path, ?peer, "cluster port: forbidden");
        let mut r = json(403, &ErrorBody { message: f.0 });
        if state.cluster_port.is_removed_peer(&peer) {
            r.headers_mut().insert(
                crate::transport::REMOVED_HEADER,
                http::HeaderValue::from_static("true"),
            );
        }
        return r;
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match (&method, segs.as_slice()) {
        (&Method::GET, ["v1", "cluster", "ca"]) => super::join::ca(&state),
        (&Method::POST, ["v1", "cluster", "join"]) => {
            super::join::accept_join(&state, req.into_body()).await
        }
        (&Method::POST, ["v1", "raft", "messages"]) => {
            super::peers::raft_messages(&state, req.into_body()).await
        }
        (&Method::POST, ["v1", "raft", "propose"]) => {
            super::peers::raft_propose(&state, req.into_body()).await
        }
        (&Method::POST, ["v1", "dispatcher", what]) => {
            let what = what.to_string();
            super::peers::dispatcher(&state, &peer, &what, req.into_body()).await
        }
        _ => return route(state, req).await,
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %path, status = e.status, "cluster api error: {}", e.message);
            error_response(e)
        }
    }
}

/// The cluster port's router: a request another node's mesh forwarded
/// (`/v1/mesh/{service_id}/…`, any node certificate, streamed both ways) is
/// served by this node's mesh with a local replica; everything else goes to
/// `route_cluster`.
pub async fn route_cluster_port(
    state: Arc<ApiState>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<crate::body::Body> {
    if req.uri().path().starts_with(crate::mesh::MESH_PREFIX) {
        let peer = req
            .extensions()
            .get::<crate::transport::Peer>()
            .cloned()
            .unwrap_or(crate::transport::Peer::Anonymous);
        let path = req.uri().path();
        if let Err(f) = state.cluster_port.check(&peer, req.method(), path) {
            tracing::debug!(method = %req.method(), %path, ?peer, "cluster port: forbidden");
            return json(403, &ErrorBody { message: f.0 })
                .map(|b| b.map_err(|never| match never {}).boxed_unsync());
        }
        return state.mesh.serve_forwarded(req).await;
    }
    // Streaming answers: a task's log for a manager, and the client API's
    // streaming routes for a client bundle; checked as every route is.
    let segs: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let streams = matches!(
        (
            req.method(),
            segs.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
        ),
        (&Method::GET, ["v1", "cluster", "logs", _])
            | (&Method::GET, ["v1", "services", _, "logs"])
            | (&Method::POST, ["v1", "images", "pull"])
    );
    if streams {
        let peer = req
            .extensions()
            .get::<crate::transport::Peer>()
            .cloned()
            .unwrap_or(crate::transport::Peer::Anonymous);
        if let Err(f) = state
            .cluster_port
            .check(&peer, req.method(), req.uri().path())
        {
            tracing::debug!(method = %req.method(), path = %req.uri().path(), ?peer, "cluster port: forbidden");
            return boxed(json(403, &ErrorBody { message: f.0 }));
        }
        if segs[1] == "cluster" {
            let query = req.uri().query().unwrap_or("");
            return super::logs::node_log(&state, &segs[3], query)
                .unwrap_or_else(|e| boxed(error_response(e)));
        }
        return match route_stream(&state, req).await {
            Ok(r) => r,
            Err(req) => boxed(route_cluster(state, req).await),
        };
    }
    boxed(route_cluster(state, req).await)
}

/// The listeners of the API.
pub struct Listeners {
    pub unix: tokio::net::UnixListener,
    pub tcp: tokio::net::TcpListener,
}

/// Serves the API on the unix socket and the refusal on the cluster port
/// until `closing`; returns once both accept loops have stopped.
pub async fn serve(
    state: Arc<ApiState>,
    listeners: Listeners,
    limits: crate::listen::Limits,
    budget: Arc<crate::listen::Budget>,
    closing: watch::Receiver<bool>,
) {
    let cluster_state = state.clone();
    let port = state.cluster_port.clone();
    let api = crate::listen::serve(
        "api socket".to_string(),
        listeners.unix,
        limits.clone(),
        budget.clone(),
        move |req| route_socket(state.clone(), req),
        closing.clone(),
    );
    let handshake_timeout = limits.header_read_timeout;
    let cluster = crate::listen::serve_tls(
        "cluster port".to_string(),
        listeners.tcp,
        limits,
        budget,
        port.tls_switch(),
        handshake_timeout,
        move |cert: Option<&rustls::pki_types::CertificateDer<'_>>| port.identify(cert),
        |req: hyper::Request<Incoming>| async move {
            // debug, not info: anyone on the network can send these, and
            // each would otherwise add a line to the node's log.
            tracing::debug!(method = %req.method(), path = %req.uri().path(), "refused an API request on the cluster port");
            json(
                403,
                &ErrorBody {
                    message: REMOTE_REFUSED.to_string(),
                },
            )
        },
        move |req| route_cluster_port(cluster_state.clone(), req),
        closing,
    );
    tokio::join!(api, cluster);
}
