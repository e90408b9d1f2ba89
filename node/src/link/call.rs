//! `ClusterCall` (what the dispatcher and the remote agent need) over the
//! mutual-TLS pool: every such call goes to a manager.

use futures::future::BoxFuture;

use crate::dispatcher::{CallError, ClusterCall};
use std::sync::Arc;

use crate::transport::{ClusterPort, Pool, Target, TransportError};

/// The node's pooled mTLS client (`ClusterPort::client`), speaking to managers.
pub struct PoolCall(pub Arc<ClusterPort>);

impl PoolCall {
    fn pool(&self, addr: &str) -> Result<Pool, CallError> {
        self.0.client().ok_or_else(|| CallError::Unreachable {
            addr: addr.to_string(),
            reason: "this node has no certificate yet".into(),
        })
    }
}

fn call_error(addr: &str, e: TransportError) -> CallError {
    match e {
        TransportError::Status { status, message } => CallError::Status {
            addr: addr.to_string(),
            code: status,
            message,
        },
        TransportError::Decode { reason, .. } => CallError::BadAnswer {
            addr: addr.to_string(),
            reason,
        },
        other => CallError::Unreachable {
            addr: addr.to_string(),
            reason: other.to_string(),
        },
    }
}

impl ClusterCall for PoolCall {
    fn post_json<'a>(
        &'a self,
        addr: &'a str,
        path: &'a str,
        body: serde_json::Value,
    ) -> BoxFuture<'a, Result<serde_json::Value, CallError>> {
        Box::pin(async move {
            self.pool(addr)?
                .post_json(addr, &Target::Manager, path, &body)
                .await
                .map_err(|e| call_error(addr, e))
        })
    }

    fn get_bytes<'a>(
        &'a self,
        addr: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Vec<u8>, CallError>> {
        Box::pin(async move {
            let resp = self
                .pool(addr)?
                .stream(
                    addr,
                    &Target::Manager,
                    http::Method::GET,
                    path,
                    crate::transport::client::full(bytes::Bytes::new()),
                )
                .await
                .map_err(|e| call_error(addr, e))?;
            let status = resp.status().as_u16();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map_err(|e| CallError::Unreachable {
                    addr: addr.to_string(),
                    reason: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            if status / 100 != 2 {
                let message = serde_json::from_slice::<swarmlet_proto::api::ErrorBody>(&body)
                    .map(|e| e.message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
                return Err(CallError::Status {
                    addr: addr.to_string(),
                    code: status,
                    message,
                });
            }
            Ok(body.to_vec())
        })
    }
}
