//! The mesh's routing table, rebuilt whenever one of its inputs changes and
//! swapped in whole (the request path only reads it):
//!
//! - the local replicas, from the agent (`set_backends`), and the ones
//!   draining (`drain`);
//! - the cluster's routing view (`set_routes`): every running replica and
//!   its node;
//! - this node's ID (`set_cluster`), to tell local entries of the view from
//!   remote ones.
//!
//! A service's rotation is every replica of the view (a local one as the
//! local replica with that task, a remote one as its node's address) plus
//! local replicas the view does not show yet (just started), in the view's
//! order (task ID), each once: equal weight per replica.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use swarmlet_proto::dispatcher::Routes;
use tokio::sync::Semaphore;

use super::drain::InFlight;
use super::health::Health;
use crate::runtime::wasm::{ServiceSettings, WasmApp};

/// A replica on this node.
pub struct Local {
    pub task_id: String,
    /// `hello.2`: the guest sees it as `SWARMLET_TASK_NAME`.
    pub name: String,
    pub serves: Serves,
    /// Requests (HTTP) or connections (TCP) inside it.
    pub inflight: Arc<InFlight>,
    /// Longest stopping it waits for what is inside.
    pub drain_max: std::time::Duration,
}

/// How a local replica is reached.
pub enum Serves {
    /// A wasm component, called in process (HTTP ports).
    Wasm {
        app: Arc<WasmApp>,
        settings: Arc<ServiceSettings>,
    },
    /// A container at its own address: the mesh connects to it (TCP ports).
    Endpoint(std::net::SocketAddr),
}

/// A replica on another node, reached over the cluster port.
#[derive(Debug)]
pub struct Remote {
    pub name: String,
    /// The replica's task (a TCP tunnel asks the node for it).
    pub task_id: String,
    pub node_id: String,
    /// The node's cluster port, IP:PORT.
    pub addr: String,
    pub health: Arc<Health>,
}

#[derive(Clone)]
pub enum Replica {
    Local(Arc<Local>),
    Remote(Arc<Remote>),
}

impl Replica {
    /// The node it runs on (`None`: this one).
    pub fn node(&self) -> Option<&str> {
        match self {
            Replica::Local(_) => None,
            Replica::Remote(r) => Some(&r.node_id),
        }
    }

    #[cfg(test)]
    pub fn name(&self) -> &str {
        match self {
            Replica::Local(l) => &l.name,
            Replica::Remote(r) => &r.name,
        }
    }

    fn is_out(&self, now: u64) -> bool {
        match self {
            Replica::Local(_) => false,
            Replica::Remote(r) => r.health.is_out(now),
        }
    }
}

/// A service's replicas on this node: what serves its requests here,
/// whether they came to a published port or were forwarded by another node.
pub struct LocalService {
    pub name: String,
    /// `--max-concurrent-requests` (or the default).
    pub max_concurrent: u32,
    /// The service's concurrency slots on this node, shared by its replicas.
    pub slots: Arc<Semaphore>,
    pub replicas: Vec<Arc<Local>>,
    /// Replicas being stopped: out of rotation, but a forwarded request
    /// that finds no other replica here is still served by one.
    pub draining: Vec<Arc<Local>>,
    next: AtomicUsize,
}

impl LocalService {
    /// The next local replica, round robin; a draining one only when no
    /// other is left.
    pub fn pick(&self) -> Option<&Arc<Local>> {
        let list = if self.replicas.is_empty() {
            &self.draining
        } else {
            &self.replicas
        };
        if list.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        list.get(i % list.len())
    }
}

/// Where one service's requests go, cluster-wide.
pub struct Rotation {
    pub name: String,
    pub list: Vec<Replica>,
    next: AtomicUsize,
    /// The local part (concurrency slots), when the service has replicas here.
    pub local: Option<Arc<LocalService>>,
}

impl Rotation {
    /// The next replica, round robin, skipping those on nodes `skip` names
    /// (tried already by this request) and, while others remain, those on
    /// nodes whose connection failed lately.
    pub fn pick(&self, skip: &[Option<&str>], now: u64) -> Option<&Replica> {
        self.pick_where(now, |r| skip.contains(&r.node()))
    }

    /// `pick` with the replicas to skip (tried already) chosen by `skip`.
    pub fn pick_where(&self, now: u64, skip: impl Fn(&Replica) -> bool) -> Option<&Replica> {
        let n = self.list.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for k in 0..n {
            let r = &self.list[(start + k) % n];
            if skip(r) {
                continue;
            }
            if r.is_out(now) {
                fallback.get_or_insert(r);
                continue;
            }
            return Some(r);
        }
        fallback
    }
}

/// The table the request path reads.
#[derive(Default)]
pub struct Table {
    /// By service ID: every replica, cluster-wide (published ports).
    pub rotations: HashMap<String, Arc<Rotation>>,
    /// By service ID: the replicas on this node (forwarded requests).
    pub local: HashMap<String, Arc<LocalService>>,
}

/// What the agent said about one service's local replicas.
pub struct ServiceInput {
    pub name: String,
    pub max_concurrent: u32,
    pub slots: Arc<Semaphore>,
    pub replicas: Vec<Arc<Local>>,
    /// Remote replicas given directly (`Backend::Remote` in `set_backends`).
    pub remotes: Vec<Arc<Remote>>,
}

/// Everything the table is built from.
#[derive(Default)]
pub struct Inputs {
    pub node_id: Option<String>,
    pub services: HashMap<String, ServiceInput>,
    /// Replicas being drained, with their service ID.
    pub draining: Vec<(String, Arc<Local>)>,
    pub routes: Option<Routes>,
    /// Per peer node, kept across rebuilds while the node has replicas.
    pub health: HashMap<String, Arc<Health>>,
}

impl Inputs {
    /// The health of `node_id` (shared by all its replicas).
    pub fn health(&mut self, node_id: &str) -> Arc<Health> {
        self.health.entry(node_id.to_string()).or_default().clone()
    }

    /// The in-flight counts of the known local replicas by task (kept
    /// across `set_backends` calls, which rebuild the replicas).
    pub fn inflight_by_task(&self) -> HashMap<String, Arc<InFlight>> {
        self.services
            .values()
            .flat_map(|s| s.replicas.iter())
            .chain(self.draining.iter().map(|(_, l)| l))
            .map(|l| (l.task_id.clone(), l.inflight.clone()))
            .collect()
    }

    /// Builds the table; round-robin cursors continue from `old`.
    pub fn build(&mut self, old: &Table) -> Table {
        let mut local: HashMap<String, Arc<LocalService>> = HashMap::new();
        let mut draining: HashMap<&str, Vec<Arc<Local>>> = HashMap::new();
        for (sid, l) in &self.draining {
            draining.entry(sid).or_default().push(l.clone());
        }
        for (sid, s) in &self.services {
            let cursor = old
                .local
                .get(sid)
                .map(|o| o.next.load(Ordering::Relaxed))
                .unwrap_or(0);
            local.insert(
                sid.clone(),
                Arc::new(LocalService {
                    name: s.name.clone(),
                    max_concurrent: s.max_concurrent,
                    slots: s.slots.clone(),
                    replicas: s.replicas.clone(),
                    draining: draining.remove(sid.as_str()).unwrap_or_default(),
                    next: AtomicUsize::new(cursor),
                }),
            );
        }
        // A service all of whose local replicas are draining.
        for (sid, list) in draining {
            let name = list
                .first()
                .map(|l| match &l.serves {
                    Serves::Wasm { settings, .. } => settings.service.to_string(),
                    Serves::Endpoint(_) => l
                        .name
                        .rsplit_once('.')
                        .map_or(l.name.clone(), |(n, _)| n.to_string()),
                })
                .unwrap_or_default();
            let max = crate::mesh::DEFAULT_CONCURRENT_REQUESTS;
            let slots = old
                .local
                .get(sid)
                .map(|o| (o.max_concurrent, o.slots.clone()))
                .unwrap_or_else(|| (max, Arc::new(Semaphore::new(max as usize))));
            local.insert(
                sid.to_string(),
                Arc::new(LocalService {
                    name,
                    max_concurrent: slots.0,
                    slots: slots.1,
                    replicas: Vec::new(),
                    draining: list,
                    next: AtomicUsize::new(0),
                }),
            );
        }

        // The view counts only once this node knows which entries are its own.
        let routes = match (&self.node_id, self.routes.take()) {
            (Some(_), r) => r,
            (None, r) => {
                self.routes = r;
                None
            }
        };
        let me = self.node_id.clone().unwrap_or_default();
        let locals: HashMap<&str, &Arc<Local>> = self
            .services
            .values()
            .flat_map(|s| s.replicas.iter())
            .map(|l| (l.task_id.as_str(), l))
            .collect();
        let mut lists: HashMap<String, (String, Vec<Replica>)> = HashMap::new();
        let mut shown: HashSet<&str> = HashSet::new();
        if let Some(routes) = &routes {
            let names: HashMap<&str, &str> = routes
                .ports
                .iter()
                .map(|p| (p.service_id.as_str(), p.service_name.as_str()))
                .collect();
            for r in &routes.replicas {
                let entry = lists.entry(r.service_id.clone()).or_insert_with(|| {
                    let name = names
                        .get(r.service_id.as_str())
                        .map(|n| n.to_string())
                        .or_else(|| r.name.rsplit_once('.').map(|(n, _)| n.to_string()))
                        .unwrap_or_else(|| r.service_id.clone());
                    (name, Vec::new())
                });
                if r.node_id == me {
                    // Ours: served only while the agent still runs it (a
                    // replica stopping here left rotation already).
                    if let Some(l) = locals.get(r.task_id.as_str()) {
                        entry.1.push(Replica::Local((*l).clone()));
                        shown.insert(r.task_id.as_str());
                    }
                } else {
                    let health = self.health.entry(r.node_id.clone()).or_default().clone();
                    entry.1.push(Replica::Remote(Arc::new(Remote {
                        name: r.name.clone(),
                        task_id: r.task_id.clone(),
                        node_id: r.node_id.clone(),
                        addr: r.node_addr.clone(),
                        health,
                    })));
                }
            }
        }
        for (sid, s) in &self.services {
            let entry = lists
                .entry(sid.clone())
                .or_insert_with(|| (s.name.clone(), Vec::new()));
            let mut new: Vec<&Arc<Local>> = s
                .replicas
                .iter()
                .filter(|l| !shown.contains(l.task_id.as_str()))
                .collect();
            new.sort_by(|a, b| a.task_id.cmp(&b.task_id));
            entry
                .1
                .extend(new.into_iter().map(|l| Replica::Local(l.clone())));
            entry
                .1
                .extend(s.remotes.iter().map(|r| Replica::Remote(r.clone())));
        }
        // Nodes no replica is on any more are forgotten.
        let nodes: HashSet<&str> = lists
            .values()
            .flat_map(|(_, l)| l.iter().filter_map(Replica::node))
            .collect();
        self.health.retain(|n, _| nodes.contains(n.as_str()));

        let rotations = lists
            .into_iter()
            .map(|(sid, (name, list))| {
                let cursor = old
                    .rotations
                    .get(&sid)
                    .map(|o| o.next.load(Ordering::Relaxed))
                    .unwrap_or(0);
                let rotation = Rotation {
                    name,
                    list,
                    next: AtomicUsize::new(cursor),
                    local: local.get(&sid).cloned(),
                };
                (sid, Arc::new(rotation))
            })
            .collect();
        drop(shown);
        self.routes = routes;
        Table { rotations, local }
    }
}
