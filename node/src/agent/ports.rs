//! Published ports on this node: every port of the cluster's routing view
//! listens here (a node without a replica of the service forwards), and
//! the ports that cannot be opened (another process holds them) are
//! reported to the dispatcher, so `node inspect` says why this node does
//! not serve them while the others keep serving.

use std::sync::Arc;
use std::time::Duration;

use swarmlet_proto::dispatcher::{PortReport, Routes};
use swarmlet_proto::PortProblem;
use tokio::sync::watch;

use super::source::AssignmentSource;
use crate::mesh::{Mesh, Publish};

/// Opens and closes listeners to match `routes.ports`; returns the ports
/// that could not be opened, sorted.
pub fn sync(mesh: &Arc<Mesh>, routes: &Routes) -> Vec<PortProblem> {
    let desired: Vec<Publish> = routes
        .ports
        .iter()
        .map(|p| Publish {
            port: p.port,
            service_id: p.service_id.clone(),
            service_name: p.service_name.clone(),
            mode: p.mode,
        })
        .collect();
    let mut problems: Vec<PortProblem> = mesh
        .sync_listeners(&desired)
        .into_iter()
        .map(|(port, e)| PortProblem {
            port,
            service_name: routes
                .ports
                .iter()
                .find(|p| p.port == port)
                .map(|p| p.service_name.clone())
                .unwrap_or_default(),
            error: e.to_string(),
        })
        .collect();
    problems.sort_by_key(|p| p.port);
    problems
}

/// Sends the latest set of port problems to the dispatcher whenever it
/// changes, retrying until one is stored.
pub async fn report(
    source: Arc<dyn AssignmentSource>,
    mut latest: watch::Receiver<Vec<PortProblem>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut stored: Option<Vec<PortProblem>> = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        let now = latest.borrow_and_update().clone();
        if stored.as_ref() != Some(&now) {
            for p in &now {
                if !stored.as_ref().is_some_and(|s| s.contains(p)) {
                    tracing::error!(
                        port = p.port,
                        service = %p.service_name,
                        "cannot listen on published port: {}; the other nodes still serve it, retrying",
                        p.error
                    );
                }
            }
            match source
                .report_ports(PortReport {
                    problems: now.clone(),
                })
                .await
            {
                Ok(()) => {
                    stored = Some(now);
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    tracing::debug!("reporting port problems failed, retrying: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        tokio::select! {
            r = latest.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
