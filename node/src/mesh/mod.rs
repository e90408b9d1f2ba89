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

use crate::body::{text_response, Body};
use crate::runtime::wasm::WasmApp;

/// Where a request can be sent.
#[derive(Clone)]
pub enum Backend {
    /// A wasm replica on this node: served in-process, no network hop.
    LocalWasm {
        replica: String,
        app: Arc<WasmApp>,
        memory_limit: Option<usize>,
    },
}

/// The replicas of one service, with a round-robin cursor.
pub struct Backends {
    service: String,
    list: Vec<Backend>,
    next: AtomicUsize,
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

    /// Replaces the replica set of every service (called by the agent).
    pub fn set_backends(&self, by_service: HashMap<String, (String, Vec<Backend>)>) {
        let table = by_service
            .into_iter()
            .map(|(id, (service, list))| {
                (
                    id,
                    Arc::new(Backends {
                        service,
                        list,
                        next: AtomicUsize::new(0),
                    }),
                )
            })
            .collect();
        self.backends.store(Arc::new(table));
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
        let table = self.backends.load();
        let Some(backend) = table.get(service_id).and_then(|b| b.pick()) else {
            let name = table
                .get(service_id)
                .map(|b| b.service.as_str())
                .unwrap_or(service_name);
            return text_response(503, format!("service {name} has no running replica\n"));
        };
        match backend {
            Backend::LocalWasm {
                replica,
                app,
                memory_limit,
            } => app.handle(replica, *memory_limit, req).await,
        }
    }
}
