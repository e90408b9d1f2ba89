//! The node-to-node routes of the cluster port (mutual TLS only; the
//! caller's role was checked by `transport::authorize` before):
//! raft messages and forwarded proposals between managers, and the
//! dispatcher's routes for every node's agent.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use swarmlet_proto::NodeRole;

use super::server::{body_json, json, ApiState, Response};
use super::ApiError;
use crate::dispatcher::{routes, Caller, DispatcherError};
use crate::pki::CertRole;
use crate::transport::Peer;

fn caller(peer: &Peer) -> Result<Caller, ApiError> {
    match peer {
        Peer::Node { node_id, role } => Ok(Caller {
            node_id: node_id.clone(),
            role: match role {
                CertRole::Manager => NodeRole::Manager,
                CertRole::Worker => NodeRole::Worker,
            },
        }),
        _ => Err(ApiError::new(403, "this route is for swarm nodes")),
    }
}

fn dispatcher_error(e: DispatcherError) -> ApiError {
    ApiError::new(e.status_code(), e.to_string())
}

/// `POST /v1/raft/messages`: raft messages from another manager.
pub async fn raft_messages(st: &ApiState, body: Incoming) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let bytes = Limited::new(body, crate::link::raft::MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading raft messages: {e}")))?
        .to_bytes();
    let msgs =
        crate::link::raft::decode(bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    for m in msgs {
        cluster.raft.step(m);
    }
    Ok(json(200, &serde_json::json!({})))
}

/// `POST /v1/raft/propose`: a proposal a follower hands to the leader.
pub async fn raft_propose(st: &ApiState, body: Incoming) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let req: crate::link::writer::ProposeRequest = body_json(body).await?;
    Ok(json(
        200,
        &crate::link::writer::serve(&cluster.raft, req).await,
    ))
}

/// `POST /v1/dispatcher/{session,assignments,status,heartbeats,role}`.
pub async fn dispatcher(
    st: &ApiState,
    peer: &Peer,
    what: &str,
    body: Incoming,
) -> Result<Response, ApiError> {
    let caller = caller(peer)?;
    let d = &st.cluster()?.dispatcher;
    match what {
        "session" => answer(routes::session(d, &caller, body_json(body).await?).await),
        "assignments" => answer(routes::assignments(d, &caller, body_json(body).await?).await),
        "status" => answer(routes::status(d, &caller, body_json(body).await?).await),
        "heartbeats" => answer(routes::heartbeats(d, &caller, body_json(body).await?).await),
        "ports" => answer(routes::ports(d, &caller, body_json(body).await?).await),
        // A node about its own role (promotion), with a CSR its new certificate.
        "role" => super::nodes::node_role(st, &caller.node_id, body_json(body).await?),
        other => Err(ApiError::not_found(format!(
            "no dispatcher route {other:?}"
        ))),
    }
}

fn answer<T: serde::Serialize>(r: Result<T, DispatcherError>) -> Result<Response, ApiError> {
    r.map(|v| json(200, &v)).map_err(dispatcher_error)
}
