//! Accept loops (unix socket and TCP) and the router.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use swarmlet_proto::api::ErrorBody;
use tokio::sync::watch;

use super::handlers;
use super::ApiError;
use crate::blobs::Blobs;
use crate::daemon::Cluster;
use crate::identity::Identity;
use crate::mesh::Mesh;
use crate::runtime::wasm::WasmRuntime;

/// The largest request body accepted (a `.wasm` upload).
pub const MAX_BODY: usize = 256 << 20;

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
    pub mesh: Arc<Mesh>,
    pub cluster: tokio::sync::OnceCell<Cluster>,
    pub init_lock: tokio::sync::Mutex<()>,
    pub shutdown: watch::Receiver<bool>,
}

impl ApiState {
    pub fn publish_ip(&self) -> IpAddr {
        self.mesh.publish_addr()
    }
    pub fn cluster(&self) -> Result<&Cluster, ApiError> {
        self.cluster.get().ok_or_else(ApiError::not_in_swarm)
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

/// Reads the whole body, refusing more than `MAX_BODY`.
pub async fn body_bytes(body: Incoming) -> Result<Bytes, ApiError> {
    Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))
}

pub async fn body_json<T: serde::de::DeserializeOwned>(body: Incoming) -> Result<T, ApiError> {
    let bytes = body_bytes(body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed request body: {e}")))
}

async fn route(state: Arc<ApiState>, req: hyper::Request<Incoming>) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let body = req.into_body();
    let result = match (&method, segs.as_slice()) {
        (&Method::GET, ["v1", "info"]) => handlers::info(&state).await,
        (&Method::POST, ["v1", "swarm", "init"]) => handlers::init(&state, body).await,
        (&Method::GET, ["v1", "nodes"]) => handlers::nodes(&state),
        (&Method::POST, ["v1", "blobs"]) => handlers::put_blob(&state, body).await,
        (&Method::GET, ["v1", "blobs", digest]) => handlers::get_blob(&state, digest),
        (&Method::GET, ["v1", "services"]) => handlers::services(&state),
        (&Method::POST, ["v1", "services"]) => handlers::create_service(&state, body).await,
        (&Method::GET, ["v1", "services", key]) => handlers::service(&state, key),
        (&Method::DELETE, ["v1", "services", key]) => handlers::remove_service(&state, key).await,
        (&Method::POST, ["v1", "services", key, "scale"]) => {
            handlers::scale_service(&state, key, body).await
        }
        (&Method::GET, ["v1", "services", key, "status"]) => {
            handlers::service_status(&state, key, &query).await
        }
        (&Method::GET, ["v1", "services", key, "tasks"]) => {
            handlers::service_tasks(&state, key, &query)
        }
        _ => Err(ApiError::not_found(format!(
            "no such API endpoint: {method} {path}"
        ))),
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %path, status = e.status, "api error: {}", e.message);
            error_response(e)
        }
    }
}

async fn serve_conn<S>(state: Arc<ApiState>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(route(state, req).await) }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!("api connection ended: {e}");
    }
}

/// Serves the API on `unix` and `tcp` until shutdown.
pub async fn serve(
    state: Arc<ApiState>,
    unix: tokio::net::UnixListener,
    tcp: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            c = unix.accept() => match c {
                Ok((s, _)) => { tokio::spawn(serve_conn(state.clone(), s)); }
                Err(e) => tracing::warn!("api unix accept: {e}"),
            },
            c = tcp.accept() => match c {
                Ok((s, _)) => { tokio::spawn(serve_conn(state.clone(), s)); }
                Err(e) => tracing::warn!("api tcp accept: {e}"),
            },
            _ = shutdown.changed() => return,
        }
    }
}
