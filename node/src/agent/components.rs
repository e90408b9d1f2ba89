//! Where the wasm runtime gets components on this node: the node's blobs,
//! or (when this node does not hold one, or its copy is damaged) a manager,
//! through the assignment source.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt as _;

use super::source::{AssignmentSource, SourceError};
use crate::blobs::{BlobError, Blobs};
use crate::runtime::wasm::Components;

pub struct NodeComponents {
    pub blobs: Arc<Blobs>,
    pub source: Arc<dyn AssignmentSource>,
}

impl Components for NodeComponents {
    fn component(&self, digest: String) -> BoxFuture<'static, Result<PathBuf, String>> {
        let (blobs, source) = (self.blobs.clone(), self.source.clone());
        async move {
            match blobs.verified(&digest) {
                Ok(p) => Ok(p),
                Err(e @ (BlobError::NotFound(_) | BlobError::Corrupt { .. })) => {
                    match source.fetch_component(&digest).await {
                        Ok(()) => blobs.verified(&digest).map_err(|e| e.to_string()),
                        Err(SourceError::NoSource) => Err(e.to_string()),
                        Err(f) => Err(format!("{e}; {f}")),
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    }
}
