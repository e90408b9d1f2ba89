//! Fetching a component this node does not hold from a manager
//! (`GET /v1/blobs/<digest>`), checked against its digest before it is
//! stored: a manager cannot hand a node anything but the bytes the service
//! names.

use std::sync::Arc;
use std::time::Duration;

use swarmlet_proto::Digest;

use super::source::SourceError;
use crate::blobs::{digest_of, Blobs};
use crate::dispatcher::ClusterCall;

/// Longest one fetch may take (64 MiB over a slow link).
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Tries `addrs` in order until one hands over bytes that match `digest`.
pub async fn fetch(
    call: &dyn ClusterCall,
    addrs: &[String],
    digest: &str,
    blobs: &Arc<Blobs>,
) -> Result<(), SourceError> {
    let want = Digest::parse(digest).map_err(|e| SourceError::Refused(e.to_string()))?;
    if addrs.is_empty() {
        return Err(SourceError::NoSource);
    }
    let path = format!("{}{want}", crate::dispatcher::routes::BLOBS);
    let mut errors = Vec::new();
    for addr in addrs {
        let bytes = match tokio::time::timeout(FETCH_TIMEOUT, call.get_bytes(addr, &path)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                errors.push(e.to_string());
                continue;
            }
            Err(_) => {
                errors.push(format!("{addr} did not send it within {FETCH_TIMEOUT:?}"));
                continue;
            }
        };
        if bytes.len() as u64 > blobs.max_upload() {
            errors.push(format!(
                "{addr} sent {} bytes, more than this node's --max-upload-size",
                bytes.len()
            ));
            continue;
        }
        let got = digest_of(&bytes);
        if got != want {
            tracing::warn!(%addr, %want, %got, "a manager sent a component that does not match its digest; ignored");
            errors.push(format!("{addr} sent bytes whose digest is {got}"));
            continue;
        }
        let blobs = blobs.clone();
        let stored = tokio::task::spawn_blocking(move || blobs.put(&bytes))
            .await
            .map_err(|e| {
                SourceError::Unavailable(format!("storing the component panicked: {e}"))
            })?;
        return match stored {
            Ok(_) => {
                tracing::info!(digest = %want, from = %addr, "fetched a component");
                Ok(())
            }
            Err(e) => Err(SourceError::Unavailable(format!(
                "storing the fetched component: {e}"
            ))),
        };
    }
    Err(SourceError::Unavailable(format!(
        "fetching component {want} failed: {}",
        errors.join("; ")
    )))
}
