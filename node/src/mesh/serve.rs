//! The mesh's request paths.
//!
//! A published port's request (`route`): the node the client connected to
//! adds the client's address (`headers::add_client`), then sends the request
//! to the next replica of the service's rotation: in process when it is
//! local, over the cluster port when it is on another node. A forward that
//! never left this node (no connection, a refused stream) or that the peer
//! refused for want of a replica (`swarmlet-no-replica`) goes to a replica
//! on another node, when the request can be sent again: its body is empty,
//! or it never left this node. A node whose connection failed leaves
//! rotation for `health::PENALTY`.
//!
//! A forwarded request (`serve_forwarded`, `/v1/mesh/{id}/…` on the cluster
//! port): served by a local replica (a draining one if no other is left) or
//! refused with 503 + `swarmlet-no-replica`; never forwarded again.

use std::sync::Arc;

use http::HeaderValue;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};

use super::drain::Tracked;
use super::forward::{self, Failure, Head};
use super::headers::{self, NO_REPLICA};
use super::health::now_ms;
use super::table::{Local, LocalService, Remote, Replica, Rotation, Serves};
use super::Mesh;
use crate::body::{text_response, Body};
use crate::runtime::wasm::QUEUE_WAIT;
use crate::transport::client::OutBody;

/// Most replicas one request is offered to (each on another node).
const MAX_ATTEMPTS: usize = 8;

/// The client's request while the mesh looks for a replica.
enum Pending {
    /// Not sent anywhere yet (or its empty body never was).
    Here(hyper::Request<Incoming>),
    /// Given back whole by a connection that never sent it; only another
    /// node can take it now.
    Back(hyper::Request<OutBody>),
    /// Sent: it cannot be offered to another replica.
    Gone,
}

/// Why the replicas tried did not serve a request.
#[derive(Default)]
struct Tried {
    nodes: Vec<String>,
    local: bool,
    why: Vec<String>,
}

impl Tried {
    fn skip(&self) -> Vec<Option<&str>> {
        let mut s: Vec<Option<&str>> = self.nodes.iter().map(|n| Some(n.as_str())).collect();
        if self.local {
            s.push(None);
        }
        s
    }
}

impl Mesh {
    /// Serves a request that arrived on a published port of `service_id`.
    pub(super) async fn route(
        &self,
        service_id: &str,
        service_name: &str,
        mut req: hyper::Request<Incoming>,
    ) -> hyper::Response<Body> {
        let table = self.table.load_full();
        let Some(rotation) = table.rotations.get(service_id) else {
            return no_replica(service_name);
        };
        let client = req
            .extensions()
            .get::<crate::listen::ClientAddr>()
            .map(|a| a.0.ip());
        headers::add_client(req.headers_mut(), client);
        // An empty body can be sent again as often as needed (its head is
        // copied at the first forward; a local replica needs no copy).
        let empty = req.body().is_end_stream();
        let mut head: Option<Head> = None;
        let mut pending = Pending::Here(req);
        let mut tried = Tried::default();
        for _ in 0..MAX_ATTEMPTS {
            let skip = tried.skip();
            let Some(replica) = rotation.pick(&skip, now_ms()).cloned() else {
                break;
            };
            drop(skip);
            match replica {
                Replica::Local(l) => {
                    let req = match std::mem::replace(&mut pending, Pending::Gone) {
                        Pending::Here(r) => r,
                        other => {
                            // Only a remote node can take a body given back.
                            pending = other;
                            tried.local = true;
                            continue;
                        }
                    };
                    let Some(service) = &rotation.local else {
                        return text_response(500, "local replica without its service's slots\n");
                    };
                    return serve_local(service, &l, req).await;
                }
                Replica::Remote(r) => {
                    match self
                        .forward(service_id, &r, &mut pending, empty, &mut head)
                        .await
                    {
                        Ok(resp) => return resp,
                        Err(why) => {
                            tried.nodes.push(r.node_id.clone());
                            tried.why.push(why);
                            if matches!(pending, Pending::Gone) && !empty {
                                break;
                            }
                        }
                    }
                }
            }
        }
        if tried.why.is_empty() {
            return no_replica(&rotation.name);
        }
        unreachable_replicas(rotation, &tried)
    }

    /// Sends the request to `remote`. `Err` is why it did not serve it, when
    /// the request may still go to another replica (`pending` says whether
    /// the request itself is still at hand); an answer that must go back to
    /// the client is `Ok`.
    async fn forward(
        &self,
        service_id: &str,
        remote: &Remote,
        pending: &mut Pending,
        empty: bool,
        head: &mut Option<Head>,
    ) -> Result<hyper::Response<Body>, String> {
        let Some((pool, marker)) = self
            .cluster
            .load()
            .as_ref()
            .and_then(|c| c.port.client().map(|pool| (pool, c.marker.clone())))
        else {
            return Err(format!(
                "node {}: this node has no cluster certificate to reach it",
                remote.node_id
            ));
        };
        let conn = match forward::connect(&pool, remote).await {
            Ok(c) => c,
            Err(e) => {
                self.node_failed(remote, &e);
                return Err(format!("node {}: {e}", remote.node_id));
            }
        };
        let empty_body = || http_body_util::Empty::new().map_err(|n| match n {}).boxed();
        let req = match (std::mem::replace(pending, Pending::Gone), empty) {
            (Pending::Here(r), true) => {
                // An empty body: the original stays here for a retry.
                let h = head.get_or_insert_with(|| Head::of(&r));
                *pending = Pending::Here(r);
                forward::request(remote, service_id, &marker, h, empty_body())
            }
            (Pending::Here(r), false) => {
                let h = Head::of(&r);
                let body = r.into_body().map_err(|e| e.into()).boxed();
                forward::request(remote, service_id, &marker, &h, body)
            }
            (Pending::Back(r), _) => {
                let (parts, body) = r.into_parts();
                let h = Head {
                    method: parts.method,
                    uri: original_uri(&parts.uri, service_id),
                    headers: parts.headers,
                };
                forward::request(remote, service_id, &marker, &h, body)
            }
            (Pending::Gone, _) => {
                return Err("the request's body was sent already".to_string());
            }
        };
        match forward::send(conn, req).await {
            Ok(resp) => {
                if remote.health.worked() {
                    tracing::info!(node = %remote.node_id, "node answers again: back in rotation");
                }
                if resp.headers().contains_key(NO_REPLICA) && empty {
                    return Err(format!(
                        "node {}: no replica there any more",
                        remote.node_id
                    ));
                }
                let mut resp = resp.map(|b| b.map_err(|e| e.into()).boxed_unsync());
                // Between nodes only: the client sees a plain 503.
                resp.headers_mut().remove(NO_REPLICA);
                Ok(resp)
            }
            Err(Failure::NotSent {
                reason,
                conn,
                request,
            }) => {
                if conn {
                    self.node_failed(remote, &reason);
                }
                if let Some(r) = request {
                    if !empty {
                        *pending = Pending::Back(*r);
                    }
                }
                Err(format!("node {}: {reason}", remote.node_id))
            }
            Err(Failure::Failed { reason }) => {
                tracing::warn!(node = %remote.node_id, replica = %remote.name, "forwarded request failed: {reason}");
                Ok(text_response(
                    502,
                    format!(
                        "the request to replica {} on node {} failed: {reason}\n",
                        remote.name, remote.node_id
                    ),
                ))
            }
        }
    }

    pub(super) fn node_failed(&self, remote: &Remote, why: &str) {
        if remote.health.failed(now_ms()) {
            tracing::warn!(
                node = %remote.node_id,
                addr = %remote.addr,
                "cannot reach node: out of rotation for {:?}: {why}",
                super::health::PENALTY
            );
        }
        if let Some(pool) = self.cluster.load().as_ref().and_then(|c| c.port.client()) {
            pool.drop_connection(
                &remote.addr,
                &crate::transport::Target::Node(remote.node_id.clone()),
            );
        }
    }

    /// Serves a request another node forwarded (`/v1/mesh/{service_id}/…`
    /// on the cluster port) with a replica on this node, or answers 503 with
    /// `swarmlet-no-replica` so the sender may try elsewhere.
    pub async fn serve_forwarded(
        &self,
        mut req: hyper::Request<Incoming>,
    ) -> hyper::Response<Body> {
        if req.uri().path().starts_with(super::tunnel::TUNNEL_PREFIX) {
            return self.serve_tunnel(req).await;
        }
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let Some((service_id, original)) = headers::split_mesh_path(pq) else {
            return text_response(404, "not a mesh path: /v1/mesh/SERVICE_ID/PATH\n");
        };
        let service_id = service_id.to_string();
        // The guest sees the request as the client sent it.
        match original.parse::<http::Uri>() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return text_response(400, format!("bad forwarded path {original:?}: {e}\n")),
        }
        let table = self.table.load_full();
        let picked = table
            .local
            .get(&service_id)
            .and_then(|s| s.pick().cloned().map(|l| (s, l)));
        let Some((service, local)) = picked else {
            let mut resp = text_response(
                503,
                format!("no replica of service {service_id} on this node\n"),
            );
            resp.headers_mut()
                .insert(NO_REPLICA, HeaderValue::from_static("1"));
            return resp;
        };
        let mut resp = serve_local(service, &local, req).await;
        // Only the node says it has no replica; a guest cannot.
        resp.headers_mut().remove(NO_REPLICA);
        resp
    }
}

/// Serves `req` with the local replica `l` of `service`: a concurrency slot
/// (503 after `QUEUE_WAIT` without one), then the guest, counted inside the
/// replica until its response body is done.
async fn serve_local(
    service: &LocalService,
    l: &Arc<Local>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Body> {
    let inside = l.inflight.enter();
    // Each service has its own slots: a busy one waits and then answers
    // 503 itself, while the others keep the rest of the node.
    let permit = match tokio::time::timeout(QUEUE_WAIT, service.slots.clone().acquire_owned()).await
    {
        Ok(Ok(permit)) => permit,
        _ => {
            tracing::warn!(service = %service.name, limit = service.max_concurrent, "service at its concurrency limit: answering 503");
            return text_response(
                503,
                format!(
                    "service {} is serving its limit of {} concurrent requests; try again later\n",
                    service.name, service.max_concurrent
                ),
            );
        }
    };
    let Serves::Wasm { app, settings } = &l.serves else {
        return text_response(
            502,
            format!(
                "replica {} is a container: it is reached on TCP ports only\n",
                l.name
            ),
        );
    };
    let resp = app.handle(&l.name, settings, permit, req).await;
    Tracked::wrap(resp, inside)
}

fn no_replica(service: &str) -> hyper::Response<Body> {
    text_response(503, format!("service {service} has no running replica\n"))
}

/// Every replica offered the request failed before serving it.
fn unreachable_replicas(rotation: &Rotation, tried: &Tried) -> hyper::Response<Body> {
    text_response(
        503,
        format!(
            "no replica of service {} could take the request ({}); try again\n",
            rotation.name,
            tried.why.join("; ")
        ),
    )
}

/// The client's URI of a request built by `forward::request` (given back
/// unsent): the mesh path without its prefix.
fn original_uri(uri: &http::Uri, service_id: &str) -> http::Uri {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    headers::split_mesh_path(pq)
        .filter(|(sid, _)| *sid == service_id)
        .and_then(|(_, o)| o.parse().ok())
        .unwrap_or_else(|| http::Uri::from_static("/"))
}
