//! The routing mesh: every published port listens on this node and spreads
//! HTTP requests over the service's running replicas.
//!
//! Each published port's listener serves one service, fixed when it opens
//! (listeners open and close with the store's services); which replicas each
//! service has (from the agent) is one table swapped atomically, so the
//! request path takes no lock. Today every backend is a
//! local wasm replica, called in-process; remote nodes and L4 container
//! backends plug in as further `Backend` kinds.
//!
//! Architecture invariant: the mesh never waits on the control plane to serve
//! a request; it reads its last-known tables and nothing else.

mod listener;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hyper::body::Incoming;

use tokio::sync::Semaphore;

use crate::body::{text_response, Body};
use crate::runtime::wasm::{ServiceSettings, WasmApp, QUEUE_WAIT};

/// Requests one service serves at once on this node unless its
/// `--max-concurrent-requests` says otherwise: well under the instance
/// pool's 1000 slots, so one busy service leaves room for the others.
pub const DEFAULT_CONCURRENT_REQUESTS: u32 = 100;

/// Where a request can be sent.
#[derive(Clone)]
pub enum Backend {
    /// A wasm replica on this node: served in-process, no network hop.
    LocalWasm {
        replica: String,
        app: Arc<WasmApp>,
        settings: Arc<ServiceSettings>,
    },
}

/// What the agent tells the mesh about one service on this node.
pub struct ServiceBackends {
    pub name: String,
    /// `--max-concurrent-requests` (or the default).
    pub max_concurrent: u32,
    pub list: Vec<Backend>,
}

/// The replicas of one service, with a round-robin cursor and the
/// service's concurrency slots (shared by its replicas on this node).
pub struct Backends {
    service: String,
    list: Vec<Backend>,
    next: AtomicUsize,
    max_concurrent: u32,
    slots: Arc<Semaphore>,
}

impl Backends {
    fn pick(&self) -> Option<&Backend> {
        if self.list.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.list.get(i % self.list.len())
    }
}

/// A published port as the store describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub port: u16,
    pub service_id: String,
    pub service_name: String,
}

pub struct Mesh {
    publish_addr: IpAddr,
    /// Limits of every published port, and the node's connection budget.
    limits: crate::listen::Limits,
    budget: Arc<crate::listen::Budget>,
    backends: ArcSwap<HashMap<String, Arc<Backends>>>,
    listeners: Mutex<HashMap<u16, listener::Listener>>,
    /// Set by `close_all`: the daemon is stopping, no port opens again.
    closed: std::sync::atomic::AtomicBool,
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
            backends: ArcSwap::from_pointee(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            closed: Default::default(),
        })
    }

    pub fn publish_addr(&self) -> IpAddr {
        self.publish_addr
    }

    /// Replaces the replica set of every service (called by the agent). A
    /// service keeps its concurrency slots (and the requests holding them)
    /// across replacements unless its limit changed.
    pub fn set_backends(&self, by_service: HashMap<String, ServiceBackends>) {
        let old = self.backends.load();
        let table = by_service
            .into_iter()
            .map(|(id, s)| {
                let slots = old
                    .get(&id)
                    .filter(|b| b.max_concurrent == s.max_concurrent)
                    .map(|b| b.slots.clone())
                    .unwrap_or_else(|| Arc::new(Semaphore::new(s.max_concurrent as usize)));
                let backends = Backends {
                    service: s.name,
                    list: s.list,
                    next: AtomicUsize::new(0),
                    max_concurrent: s.max_concurrent,
                    slots,
                };
                (id, Arc::new(backends))
            })
            .collect();
        self.backends.store(Arc::new(table));
    }

    /// The cluster's routing view (lead's stub: the mesh helper's version
    /// merges remote replicas into the rotation).
    pub fn set_routes(&self, routes: swarmlet_proto::dispatcher::Routes) {
        let _ = routes;
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
                .any(|p| p.port == *port && p.service_id == l.service_id);
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

    async fn route(
        &self,
        service_id: &str,
        service_name: &str,
        req: hyper::Request<Incoming>,
    ) -> hyper::Response<Body> {
        let table = self.backends.load_full();
        let Some(backends) = table.get(service_id) else {
            return text_response(
                503,
                format!("service {service_name} has no running replica\n"),
            );
        };
        let Some(backend) = backends.pick() else {
            let name = &backends.service;
            return text_response(503, format!("service {name} has no running replica\n"));
        };
        // Each service has its own slots: a busy one waits and then answers
        // 503 itself, while the others keep the rest of the node.
        let permit = match tokio::time::timeout(QUEUE_WAIT, backends.slots.clone().acquire_owned())
            .await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                tracing::warn!(service = %backends.service, limit = backends.max_concurrent, "service at its concurrency limit: answering 503");
                return text_response(
                    503,
                    format!(
                        "service {} is serving its limit of {} concurrent requests; try again later\n",
                        backends.service, backends.max_concurrent
                    ),
                );
            }
        };
        match backend {
            Backend::LocalWasm {
                replica,
                app,
                settings,
            } => app.handle(replica, settings, permit, req).await,
        }
    }
}
