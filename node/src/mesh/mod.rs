//! The routing mesh: every published port listens on this node and spreads
//! HTTP requests over the service's running replicas, on this node and on
//! the others.
//!
//! - `table.rs`: the routing table, rebuilt from the local replicas (the
//!   agent), the cluster's routing view (`set_routes`) and this node's ID,
//!   and swapped atomically, so the request path takes no lock.
//! - `serve.rs`: the request paths: a published port's request goes to the
//!   next replica of its service's rotation, in process when local, over
//!   the cluster port when remote (retried elsewhere when it never left);
//!   a forwarded request (`/v1/mesh/...` on the cluster port) is served by
//!   a local replica only.
//! - `forward.rs`: one request to another node over the pooled HTTP/2
//!   mutual-TLS connection; `headers.rs`: `X-Forwarded-For`/`Forwarded`,
//!   the forwarded marker and the mesh path; `health.rs`: a node whose
//!   connection fails leaves rotation for a while; `drain.rs`: requests
//!   inside each local replica, so stopping one waits for them.
//!
//! Architecture invariant: the mesh never waits on the control plane to serve
//! a request; it reads its last-known tables and nothing else.
//! Architecture invariant: a forwarded request is served on the node it
//! reaches or refused there; it is never forwarded again.

mod drain;
mod forward;
mod headers;
mod health;
mod listener;
mod pipe;
mod serve;
mod table;
mod tcp;
#[cfg(test)]
mod tcp_tests;
#[cfg(test)]
mod tests;
mod tunnel;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use swarmlet_proto::dispatcher::Routes;
pub use swarmlet_proto::MeshMode;
use tokio::sync::Semaphore;

use crate::runtime::wasm::{ServiceSettings, WasmApp};
use crate::transport::ClusterPort;
pub use headers::{FORWARDED_BY, MESH_PREFIX, NO_REPLICA};
use table::{Inputs, Local, Remote, Serves, ServiceInput, Table};

/// Requests one service serves at once on this node unless its
/// `--max-concurrent-requests` says otherwise: well under the instance
/// pool's 1000 slots, so one busy service leaves room for the others.
pub const DEFAULT_CONCURRENT_REQUESTS: u32 = 100;

/// Longest stopping a replica waits for the requests inside it.
pub const DRAIN_MAX: Duration = Duration::from_secs(30);

/// Where a request can be sent.
#[derive(Clone)]
pub enum Backend {
    /// A wasm replica on this node: served in-process, no network hop.
    LocalWasm {
        replica: String,
        app: Arc<WasmApp>,
        settings: Arc<ServiceSettings>,
        /// The replica's task (matches the routing view's entries).
        task_id: String,
    },
    /// A replica on this node reached at its own address (a container):
    /// TCP ports connect to it.
    LocalEndpoint {
        replica: String,
        task_id: String,
        addr: std::net::SocketAddr,
        /// Longest its open connections may keep it from stopping (the
        /// service's stop grace period).
        drain_max: Duration,
    },
    /// A replica on another node, reached over its cluster port.
    Remote {
        node_id: String,
        /// The node's cluster port, IP:PORT.
        addr: String,
        replica: String,
        task_id: String,
    },
}

impl Backend {
    /// The replica's name (`hello.2`).
    pub fn replica(&self) -> &str {
        match self {
            Backend::LocalWasm { replica, .. }
            | Backend::LocalEndpoint { replica, .. }
            | Backend::Remote { replica, .. } => replica,
        }
    }
}

/// What the agent tells the mesh about one service on this node.
pub struct ServiceBackends {
    pub name: String,
    /// `--max-concurrent-requests` (or the default).
    pub max_concurrent: u32,
    pub list: Vec<Backend>,
}

/// A published port as the store describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub port: u16,
    pub service_id: String,
    pub service_name: String,
    /// What the port speaks: HTTP (wasm services) or TCP (containers).
    pub mode: MeshMode,
}

pub struct Mesh {
    publish_addr: IpAddr,
    /// Limits of every published port, and the node's connection budget.
    limits: crate::listen::Limits,
    budget: Arc<crate::listen::Budget>,
    /// What the request path reads.
    table: ArcSwap<Table>,
    /// What the table is built from (changed by the agent, rarely).
    inputs: Mutex<Inputs>,
    /// This node in the swarm: its ID (the forwarded marker) and the
    /// cluster port whose pooled client forwards requests.
    cluster: ArcSwapOption<Cluster>,
    listeners: Mutex<HashMap<u16, listener::Listener>>,
    /// Set by `close_all`: the daemon is stopping, no port opens again.
    closed: std::sync::atomic::AtomicBool,
    /// How long a proxied TCP connection may stay silent (milliseconds).
    tcp_idle_ms: std::sync::atomic::AtomicU64,
}

impl Mesh {
    pub fn new(
        publish_addr: IpAddr,
        limits: crate::listen::Limits,
        budget: Arc<crate::listen::Budget>,
    ) -> Arc<Self> {
        Arc::new(Mesh {
            publish_addr,
            limits,
            budget,
            table: ArcSwap::from_pointee(Table::default()),
            inputs: Mutex::new(Inputs::default()),
            cluster: ArcSwapOption::empty(),
            listeners: Mutex::new(HashMap::new()),
            closed: Default::default(),
            tcp_idle_ms: std::sync::atomic::AtomicU64::new(
                u64::try_from(tcp::TCP_IDLE_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
            ),
        })
    }

    pub fn publish_addr(&self) -> IpAddr {
        self.publish_addr
    }

    /// Replaces the local replicas of every service (called by the agent).
    /// A service keeps its concurrency slots (and the requests holding them)
    /// across replacements unless its limit changed.
    pub fn set_backends(&self, by_service: HashMap<String, ServiceBackends>) {
        self.update(|inputs| {
            let mut inflight = inputs.inflight_by_task();
            let mut services = HashMap::new();
            for (id, s) in by_service {
                let slots = inputs
                    .services
                    .get(&id)
                    .filter(|old| old.max_concurrent == s.max_concurrent)
                    .map(|old| old.slots.clone())
                    .unwrap_or_else(|| Arc::new(Semaphore::new(s.max_concurrent as usize)));
                let mut replicas = Vec::new();
                let mut remotes = Vec::new();
                for b in s.list {
                    match b {
                        Backend::LocalWasm {
                            replica,
                            app,
                            settings,
                            task_id,
                        } => {
                            // The same task keeps its count of requests inside.
                            let inflight = inflight.remove(&task_id).unwrap_or_default();
                            replicas.push(Arc::new(Local {
                                task_id,
                                name: replica,
                                serves: Serves::Wasm { app, settings },
                                inflight,
                                drain_max: DRAIN_MAX,
                            }));
                        }
                        Backend::LocalEndpoint {
                            replica,
                            task_id,
                            addr,
                            drain_max,
                        } => {
                            let inflight = inflight.remove(&task_id).unwrap_or_default();
                            replicas.push(Arc::new(Local {
                                task_id,
                                name: replica,
                                serves: Serves::Endpoint(addr),
                                inflight,
                                drain_max,
                            }));
                        }
                        Backend::Remote {
                            node_id,
                            addr,
                            replica,
                            task_id,
                        } => remotes.push(Arc::new(Remote {
                            health: inputs.health(&node_id),
                            name: replica,
                            task_id,
                            node_id,
                            addr,
                        })),
                    }
                }
                let input = ServiceInput {
                    name: s.name,
                    max_concurrent: s.max_concurrent,
                    slots,
                    replicas,
                    remotes,
                };
                services.insert(id, input);
            }
            inputs.services = services;
        });
    }

    /// This node is in a swarm: its ID (which entries of the routing view
    /// are its own, and the forwarded marker) and the cluster port whose
    /// pooled mutual-TLS client reaches the other nodes. Until then (and on
    /// a single node) the mesh serves its local replicas only.
    pub fn set_cluster(&self, node_id: String, port: Arc<ClusterPort>) {
        let marker = match http::HeaderValue::from_str(&node_id) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(%node_id, "node ID is not a header value ({e}); not forwarding");
                return;
            }
        };
        self.cluster.store(Some(Arc::new(Cluster { marker, port })));
        self.update(|inputs| inputs.node_id = Some(node_id));
    }

    /// The cluster's routing view (every running replica and its node):
    /// each service's rotation becomes every replica in it plus the local
    /// ones it does not show yet.
    pub fn set_routes(&self, routes: Routes) {
        self.update(|inputs| inputs.routes = Some(routes));
    }

    /// Takes the local replicas of `task_ids` out of rotation at once (one
    /// table rebuild for all); each returned future (in the same order)
    /// resolves once the requests inside its replica are done (at most
    /// `DRAIN_MAX`). Until then a forwarded request that finds no other
    /// replica of its service here is still served by it. Call it before
    /// `set_backends` drops the replicas.
    pub fn drain(
        self: &Arc<Self>,
        task_ids: &[String],
    ) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        let wanted: std::collections::HashSet<&str> = task_ids.iter().map(String::as_str).collect();
        let mut found: HashMap<String, (String, Arc<Local>)> = HashMap::new();
        self.update(|inputs| {
            for (sid, s) in inputs.services.iter_mut() {
                s.replicas.retain(|l| {
                    if wanted.contains(l.task_id.as_str()) {
                        found.insert(l.task_id.clone(), (sid.clone(), l.clone()));
                        false
                    } else {
                        true
                    }
                });
            }
            inputs.draining.extend(found.values().cloned());
        });
        task_ids
            .iter()
            .map(|id| {
                let mesh = self.clone();
                let found = found.remove(id);
                async move {
                    let Some((sid, local)) = found else {
                        return;
                    };
                    let inside = local.inflight.count();
                    if inside > 0 {
                        tracing::debug!(task = %local.name, inside, "draining: waiting for requests in flight");
                    }
                    let max = local.drain_max;
                    if tokio::time::timeout(max, local.inflight.idle())
                        .await
                        .is_err()
                    {
                        tracing::warn!(
                            task = %local.name,
                            inside = local.inflight.count(),
                            "requests or connections still open after {max:?}; stopping the replica anyway"
                        );
                    }
                    mesh.drained(&sid, &local);
                }
            })
            .collect()
    }

    /// A drained replica leaves the table. The table is rebuilt once the
    /// last draining replica of its service is done (so stopping 10,000
    /// replicas costs one rebuild per service, not one each); until then
    /// the drained ones stay as a last resort for forwarded requests.
    fn drained(&self, service_id: &str, local: &Arc<Local>) {
        let mut inputs = self.inputs.lock().unwrap_or_else(|p| p.into_inner());
        inputs.draining.retain(|(_, l)| !Arc::ptr_eq(l, local));
        if inputs.draining.iter().any(|(sid, _)| sid == service_id) {
            return;
        }
        let table = inputs.build(&self.table.load());
        self.table.store(Arc::new(table));
    }

    /// Changes the inputs and swaps in the table built from them.
    fn update(&self, change: impl FnOnce(&mut Inputs)) {
        let mut inputs = self.inputs.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut inputs);
        let table = inputs.build(&self.table.load());
        self.table.store(Arc::new(table));
    }

    /// Opens listeners for new published ports and closes those no service
    /// publishes any more. Returns the ports that could not be bound, with why.
    pub fn sync_listeners(self: &Arc<Self>, desired: &[Publish]) -> Vec<(u16, std::io::Error)> {
        let mut failed = Vec::new();
        let Ok(mut listeners) = self.listeners.lock() else {
            return failed;
        };
        if self.closed.load(Ordering::SeqCst) {
            return failed;
        }
        listeners.retain(|port, l| {
            let keep = desired
                .iter()
                .any(|p| p.port == *port && p.service_id == l.service_id && p.mode == l.mode);
            if !keep {
                tracing::info!(port, "closing published port");
            }
            keep
        });
        for p in desired {
            if listeners.contains_key(&p.port) {
                continue;
            }
            match listener::Listener::bind(self.clone(), self.publish_addr, p) {
                Ok(l) => {
                    tracing::info!(port = p.port, service = %p.service_name, "published port listening");
                    listeners.insert(p.port, l);
                }
                Err(e) => failed.push((p.port, e)),
            }
        }
        failed
    }

    /// Closes every listener (daemon shutdown): no new connection is
    /// accepted, open ones close after their current request.
    pub fn close_all(&self) {
        if let Ok(mut l) = self.listeners.lock() {
            self.closed.store(true, Ordering::SeqCst);
            l.clear();
        }
    }
}

/// This node in the swarm.
struct Cluster {
    /// Its node ID, as the forwarded marker.
    marker: http::HeaderValue,
    port: Arc<ClusterPort>,
}
