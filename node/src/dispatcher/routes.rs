//! The dispatcher's routes on the cluster port, as plain functions of the
//! parsed body and the authenticated caller. The transport mounts them:
//!
//! | route | body → answer | callers |
//! |---|---|---|
//! | `POST /v1/dispatcher/session` | `SessionRequest` → `Session` | nodes |
//! | `POST /v1/dispatcher/assignments` | `AssignmentsRequest` → `Assignments` (long poll) | nodes |
//! | `POST /v1/dispatcher/status` | `StatusReport` → `StatusAck` | nodes |
//! | `POST /v1/dispatcher/heartbeats` | `ForwardedHeartbeats` → `{}` | managers |
//! | `POST /v1/dispatcher/ports` | `PortReport` → `{}` | nodes |
//! | `GET /v1/blobs/<digest>` | → component bytes (`application/octet-stream`) | nodes |
//!
//! An error answers `DispatcherError::status_code()` with the API's
//! `ErrorBody { message }`.

use swarmlet_proto::dispatcher::{
    Assignments, AssignmentsRequest, ForwardedHeartbeats, PortReport, Session, SessionRequest,
    StatusAck, StatusReport,
};

use super::{Caller, Dispatcher, DispatcherError};
use crate::blobs::{BlobError, Blobs};

pub const SESSION: &str = "/v1/dispatcher/session";
pub const ASSIGNMENTS: &str = "/v1/dispatcher/assignments";
pub const STATUS: &str = "/v1/dispatcher/status";
pub const HEARTBEATS: &str = "/v1/dispatcher/heartbeats";
pub const PORTS: &str = "/v1/dispatcher/ports";
/// Followed by the digest (`sha256:<hex>`).
pub const BLOBS: &str = "/v1/blobs/";

pub async fn session(
    d: &Dispatcher,
    caller: &Caller,
    _body: SessionRequest,
) -> Result<Session, DispatcherError> {
    d.session(caller)
}

pub async fn assignments(
    d: &Dispatcher,
    caller: &Caller,
    body: AssignmentsRequest,
) -> Result<Assignments, DispatcherError> {
    d.assignments(caller, body).await
}

pub async fn status(
    d: &Dispatcher,
    caller: &Caller,
    body: StatusReport,
) -> Result<StatusAck, DispatcherError> {
    d.status(caller, body).await
}

pub async fn heartbeats(
    d: &Dispatcher,
    caller: &Caller,
    body: ForwardedHeartbeats,
) -> Result<serde_json::Value, DispatcherError> {
    d.forwarded(caller, body)?;
    Ok(serde_json::json!({}))
}

pub async fn ports(
    d: &Dispatcher,
    caller: &Caller,
    body: PortReport,
) -> Result<serde_json::Value, DispatcherError> {
    d.ports(caller, body).await?;
    Ok(serde_json::json!({}))
}

/// `GET /v1/blobs/<digest>`: a component this manager holds, checked
/// against its digest first (a damaged copy is not handed out).
pub async fn blob(blobs: &Blobs, digest: &str) -> Result<Vec<u8>, DispatcherError> {
    let path = blobs.verified(digest).map_err(|e| match e {
        BlobError::BadDigest(e) => DispatcherError::BadRequest(e.to_string()),
        BlobError::NotFound(d) => {
            DispatcherError::NotFound(format!("this manager does not hold component {d}"))
        }
        e => DispatcherError::Internal(e.to_string()),
    })?;
    tokio::fs::read(&path)
        .await
        .map_err(|e| DispatcherError::Internal(format!("reading {}: {e}", path.display())))
}
