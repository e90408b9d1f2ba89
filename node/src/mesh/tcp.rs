//! Published ports of container services (`MeshMode::Tcp`): a TCP load
//! balancer. Each accepted connection goes to the next replica of the
//! service's rotation: a local one by connecting to its endpoint and
//! copying both ways (`pipe::sockets`), a remote one through a tunnel over
//! the cluster port (`tunnel.rs`). A replica that cannot be connected to
//! (refused, timed out, a node without a replica any more) is skipped and
//! the next one tried — no byte of the client's was sent yet; a node whose
//! connection failed leaves rotation for `health::PENALTY`, as for HTTP.
//!
//! Limits: each connection takes two places of the node's fd budget (its
//! own and the one to the replica) before it is accepted, and at most
//! `Limits::max_connections` are open per port; beyond, new connections
//! wait in the kernel's backlog until one ends (HAProxy's `maxconn`). A
//! connection with no byte either way for `TCP_IDLE_TIMEOUT` is closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::health::now_ms;
use super::pipe;
use super::table::{Replica, Rotation};
use super::tunnel::{self, OpenFailure};
use super::Mesh;

/// Longest a proxied connection may stay silent both ways (as IPVS, which
/// Docker's routing mesh uses, keeps an idle TCP connection 900 s).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(900);

/// Most replicas one connection is offered to.
const MAX_ATTEMPTS: usize = 8;

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections on a TCP-mode published port until aborted (the
/// `Listener` is dropped). Open connections live on until they end.
pub(super) async fn accept_loop(
    mesh: Arc<Mesh>,
    listener: TcpListener,
    port: u16,
    service_id: Arc<str>,
) {
    let places = Arc::new(Semaphore::new(mesh.limits.max_connections));
    let mut backoff = Duration::ZERO;
    loop {
        // Both the node's fd budget and this port's cap, before accepting:
        // when either is spent, new connections wait in the backlog.
        let Some(fds) = mesh.budget.reserve(2).await else {
            return;
        };
        let Ok(place) = places.clone().acquire_owned().await else {
            return;
        };
        let client = match listener.accept().await {
            Ok((s, _)) => {
                backoff = Duration::ZERO;
                s
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                tracing::warn!(port, "accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let open = mesh.budget.opened(fds);
        let mesh = mesh.clone();
        let sid = service_id.clone();
        tokio::spawn(async move {
            mesh.serve_tcp(&sid, client).await;
            drop((place, open));
        });
    }
}

impl Mesh {
    /// One client connection of a TCP port: to a replica, retried on the
    /// next while connecting fails.
    async fn serve_tcp(&self, service_id: &str, client: TcpStream) {
        let table = self.table.load_full();
        let Some(rotation) = table.rotations.get(service_id) else {
            tracing::debug!(service = %service_id, "TCP connection closed: the service has no running replica");
            return;
        };
        let mut tried_tasks: Vec<String> = Vec::new();
        let mut tried_nodes: Vec<String> = Vec::new();
        let mut why: Vec<String> = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            let picked = rotation
                .pick_where(now_ms(), |r| match r {
                    Replica::Local(l) => tried_tasks.contains(&l.task_id),
                    Replica::Remote(r) => tried_nodes.contains(&r.node_id),
                })
                .cloned();
            let Some(replica) = picked else {
                break;
            };
            match replica {
                Replica::Local(l) => match tunnel::connect_local(&l).await {
                    Ok(upstream) => {
                        let _inside = l.inflight.enter();
                        let end = pipe::sockets(client, upstream, self.tcp_idle()).await;
                        tracing::trace!(replica = %l.name, "TCP connection ended: {end:?}");
                        return;
                    }
                    Err(e) => {
                        why.push(format!("{}: {e}", l.name));
                        tried_tasks.push(l.task_id.clone());
                    }
                },
                Replica::Remote(r) => {
                    let Some((pool, marker)) = self
                        .cluster
                        .load()
                        .as_ref()
                        .and_then(|c| c.port.client().map(|pool| (pool, c.marker.clone())))
                    else {
                        why.push(format!("{}: this node has no cluster certificate", r.name));
                        tried_nodes.push(r.node_id.clone());
                        continue;
                    };
                    match tunnel::open(&pool, &r, service_id, &marker).await {
                        Ok(t) => {
                            if r.health.worked() {
                                tracing::info!(node = %r.node_id, "node answers again: back in rotation");
                            }
                            let (read, write) = client.into_split();
                            if t.start.send(read).is_err() {
                                // The stream is gone already (reset).
                                return;
                            }
                            let end =
                                pipe::drive(t.down, write, t.up_gone, &t.activity, self.tcp_idle())
                                    .await;
                            tracing::trace!(replica = %r.name, node = %r.node_id, "tunnelled connection ended: {end:?}");
                            return;
                        }
                        Err(OpenFailure::Node(e)) => {
                            self.node_failed(&r, &e);
                            why.push(format!("{} on node {}: {e}", r.name, r.node_id));
                            tried_nodes.push(r.node_id.clone());
                        }
                        Err(OpenFailure::NoReplica(e)) => {
                            why.push(format!("{} on node {}: {e}", r.name, r.node_id));
                            tried_nodes.push(r.node_id.clone());
                        }
                    }
                }
            }
        }
        refused(rotation, &why);
    }

    #[cfg(test)]
    pub(super) fn set_tcp_idle(&self, idle: Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        self.tcp_idle_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long a proxied TCP connection may stay silent.
    pub(super) fn tcp_idle(&self) -> Duration {
        Duration::from_millis(self.tcp_idle_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// No replica took the connection: it is closed (TCP has no way to say
/// why; the log does).
fn refused(rotation: &Rotation, why: &[String]) {
    if why.is_empty() {
        tracing::debug!(service = %rotation.name, "TCP connection closed: no running replica");
    } else {
        tracing::warn!(
            service = %rotation.name,
            "TCP connection closed: no replica could be connected to ({})",
            why.join("; ")
        );
    }
}
