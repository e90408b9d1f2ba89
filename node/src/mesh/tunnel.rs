//! TCP connections to a replica on another node, through the cluster port:
//! `POST /v1/mesh/tcp/{service_id}/{task_id}` on the pooled HTTP/2
//! mutual-TLS connection (`transport::Pool`, server name = node ID), the
//! request body carrying the client's bytes and the response body the
//! replica's, both streamed for as long as the connection lives (an HTTP/2
//! stream is full duplex; END_STREAM is the half-close).
//!
//! The receiving node (`Mesh::serve_tunnel`) connects to its local replica
//! — the task asked for, else another local replica of the service — and
//! answers 200 once connected, or 503 with `swarmlet-no-replica` when it
//! cannot; it never forwards again. The sender reads nothing from its
//! client until that 200, so a tunnel that failed to open can be retried on
//! another replica with no byte lost.
//!
//! Chosen over HTTP/2 CONNECT because a CONNECT request has no path, and
//! the cluster port authorizes by path: a tunnel is `/v1/mesh/…`, which
//! only node certificates may open, like forwarded HTTP requests.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::forward;
use super::headers::{FORWARDED_BY, NO_REPLICA};
use super::pipe::{self, Activity, SocketBody};
use super::table::{Local, Remote, Serves};
use super::Mesh;
use crate::body::{text_response, Body};
use crate::transport::Pool;

/// The cluster port's route for tunnels (under `MESH_PREFIX`).
pub const TUNNEL_PREFIX: &str = "/v1/mesh/tcp/";

/// Longest a local replica's connect may take. On a node's bridge a
/// connect is answered in microseconds (or refused at once); one that is
/// not answered within this goes to another replica.
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest the far node may take to answer that it connected (its own
/// local connect is bounded by `LOCAL_CONNECT_TIMEOUT`).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a tunnel did not open. In every case no byte of the client's was
/// sent, so the connection may go to another replica.
#[derive(Debug)]
pub enum OpenFailure {
    /// The node could not be reached: it leaves rotation for a while.
    Node(String),
    /// The node was reached but has no replica it could connect to.
    NoReplica(String),
}

/// An open tunnel: hand it the client's read side to start sending.
pub struct Tunnel {
    pub start: tokio::sync::oneshot::Sender<tokio::net::tcp::OwnedReadHalf>,
    /// The replica's bytes.
    pub down: Incoming,
    /// Resolves once the client's bytes are all sent (or the stream broke).
    pub up_gone: pipe::Gone,
    pub activity: Arc<Activity>,
}

/// Opens a tunnel to `remote`'s replica over the pooled connection.
pub async fn open(
    pool: &Pool,
    remote: &Remote,
    service_id: &str,
    from_node: &HeaderValue,
) -> Result<Tunnel, OpenFailure> {
    let mut conn = forward::connect(pool, remote)
        .await
        .map_err(OpenFailure::Node)?;
    let activity = Activity::new();
    let (start, body, up_gone) = SocketBody::gated(activity.clone());
    let uri = http::Uri::builder()
        .scheme("https")
        .authority(remote.addr.as_str())
        .path_and_query(format!("{TUNNEL_PREFIX}{service_id}/{}", remote.task_id))
        .build()
        .map_err(|e| OpenFailure::NoReplica(format!("bad tunnel path: {e}")))?;
    let mut req = hyper::Request::new(body.boxed());
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    req.headers_mut().insert(FORWARDED_BY, from_node.clone());
    let sent = async {
        conn.ready()
            .await
            .map_err(|e| OpenFailure::Node(format!("the connection closed: {e}")))?;
        conn.send_request(req)
            .await
            .map_err(|e| OpenFailure::Node(format!("the tunnel request failed: {e}")))
    };
    let resp = match tokio::time::timeout(OPEN_TIMEOUT, sent).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(OpenFailure::Node(format!(
                "no answer to the tunnel within {OPEN_TIMEOUT:?}"
            )))
        }
    };
    if resp.status() == http::StatusCode::OK {
        return Ok(Tunnel {
            start,
            down: resp.into_body(),
            up_gone,
            activity,
        });
    }
    let status = resp.status();
    let no_replica = resp.headers().contains_key(NO_REPLICA);
    let text = match tokio::time::timeout(OPEN_TIMEOUT, resp.into_body().collect()).await {
        Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
        _ => String::new(),
    };
    let why = format!("{status}: {text}");
    if no_replica {
        Err(OpenFailure::NoReplica(why))
    } else {
        // Refused otherwise (403: a removed node's certificate; 404: a
        // node that does not know tunnels): nothing to connect to there.
        Err(OpenFailure::NoReplica(why))
    }
}

impl Mesh {
    /// Serves a tunnel another node opened (`/v1/mesh/tcp/{service}/{task}`
    /// on the cluster port, route already authorized): connects to the task
    /// if it runs here, else to another local replica of the service, and
    /// streams both ways; 503 + `swarmlet-no-replica` when none connects.
    pub(super) async fn serve_tunnel(
        &self,
        req: hyper::Request<Incoming>,
    ) -> hyper::Response<Body> {
        let path = req.uri().path();
        let Some((service_id, task_id)) = path
            .strip_prefix(TUNNEL_PREFIX)
            .and_then(|rest| rest.split_once('/'))
        else {
            return text_response(
                404,
                format!("not a tunnel path: {TUNNEL_PREFIX}SERVICE_ID/TASK_ID\n"),
            );
        };
        let table = self.table.load_full();
        let Some(service) = table.local.get(service_id) else {
            return no_replica(format!("no replica of service {service_id} on this node\n"));
        };
        // The task asked for first, then the others (round robin); never a
        // draining one: a stopping replica takes no new connection.
        let asked = service.replicas.iter().find(|l| l.task_id == task_id);
        let mut order: Vec<&Arc<Local>> = asked.into_iter().collect();
        order.extend(service.replicas.iter().filter(|l| l.task_id != task_id));
        let mut why = Vec::new();
        for l in order {
            match connect_local(l).await {
                Ok(stream) => return self.tunnel_up(req, l, stream),
                Err(e) => why.push(format!("{}: {e}", l.name)),
            }
        }
        if why.is_empty() {
            return no_replica(format!("no replica of service {service_id} on this node\n"));
        }
        tracing::warn!(service = %service.name, "tunnel: no local replica connects: {}", why.join("; "));
        no_replica(format!(
            "no replica of service {} on this node accepts connections: {}\n",
            service.name,
            why.join("; ")
        ))
    }

    /// The connected tunnel: the request body goes to the replica (in a
    /// task of its own), the replica's bytes are the response body.
    fn tunnel_up(
        &self,
        req: hyper::Request<Incoming>,
        l: &Arc<Local>,
        stream: tokio::net::TcpStream,
    ) -> hyper::Response<Body> {
        // Counted inside the replica (drain) until both directions ended.
        let inside = l.inflight.enter();
        let activity = Activity::new();
        let (read, write) = stream.into_split();
        let (body, down_gone) = SocketBody::reading(read, activity.clone());
        let idle = self.tcp_idle();
        let name = l.name.clone();
        tokio::spawn(async move {
            let _inside = inside;
            let end = pipe::drive(req.into_body(), write, down_gone, &activity, idle).await;
            tracing::debug!(replica = %name, "tunnel ended: {end:?}");
        });
        hyper::Response::new(body.boxed_unsync())
    }
}

/// Connects to a local replica's endpoint.
pub async fn connect_local(l: &Local) -> Result<tokio::net::TcpStream, String> {
    let Serves::Endpoint(addr) = l.serves else {
        return Err("a wasm replica: it serves HTTP ports only".to_string());
    };
    match tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("connecting to {addr}: {e}")),
        Err(_) => Err(format!(
            "no connection to {addr} within {LOCAL_CONNECT_TIMEOUT:?}"
        )),
    }
}

fn no_replica(text: String) -> hyper::Response<Body> {
    let mut resp = text_response(503, text);
    resp.headers_mut()
        .insert(NO_REPLICA, HeaderValue::from_static("1"));
    resp
}
