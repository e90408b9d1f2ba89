//! On every node: runs the tasks assigned to it and reports their state.
//!
//! The agent depends only on an `AssignmentSource` (`source.rs`): the
//! dispatcher's long poll tells it the node's tasks (with each service's
//! spec), and its reports go back in batches that double as heartbeats. On a
//! manager the source is the local dispatcher in process; on a worker it is a
//! manager's dispatcher over the cluster port (`remote.rs`), with failover to
//! the other managers. The agent compares its tasks with what runs locally
//! (`plan.rs`), starts and stops tasks through the node's runtimes
//! (`crate::runtime`: the one chosen by the service's image), and tells the
//! mesh which local replicas exist. A component this node does not hold is
//! fetched from a manager by digest and checked before it is stored
//! (`fetch.rs`, `components.rs`).
//!
//! Each task has its own supervisor (`runtime::supervisor`), which prepares
//! and starts it in its own tokio task and sends back `Started`, `Failed`,
//! `Exited` or `Stopped`; so one task's slow start (a first compile, an
//! image pull) never holds up another's. Tasks of one component share one
//! load. Reports go through `report::Reporter`, which sends whatever has
//! queued as one batch: 10,000 replicas cost a handful of raft commits, not
//! 10,000, and the agent never waits on one. A task whose image no runtime
//! of this node runs (an OCI image while there is no container runtime) is
//! reported `rejected` with the reason.
//!
//! Architecture invariant: a task starts only after its assignment is
//! committed (the dispatcher answers from the applied store only), and a
//! replica is in the mesh before its task is reported `running`. A stopped
//! replica leaves the mesh's rotation first, finishes the requests inside
//! it (`Mesh::drain`), then its runtime stops and removes it, and only then
//! is its task reported `shutdown`.

mod components;
mod fetch;
mod plan;
mod ports;
pub mod remote;
mod report;
pub mod source;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use swarmlet_proto::dispatcher::{AssignedTask, Assignments, Routes, Since};
use swarmlet_proto::{DesiredState, Service, TaskEndpoint, TaskState, TaskStatus};
use tokio::sync::{mpsc, watch};

use crate::blobs::Blobs;
use crate::mesh::{Backend, Mesh, ServiceBackends, DEFAULT_CONCURRENT_REQUESTS};
use crate::runtime::wasm::{ServiceSettings, WasmRuntime, WasmTasks};
use crate::runtime::{Event, Runtime, Runtimes, Serving, Supervisor};
use report::Reporter;
pub use source::{AssignmentSource, InProcess, SourceError};

/// The node's tasks as the dispatcher last told them.
#[derive(Default)]
struct View {
    tasks: HashMap<String, AssignedTask>,
    services: HashMap<String, Service>,
    /// The cluster's routing view; `None` until the first answer.
    routes: Option<Routes>,
    /// The routing view changed since the mesh was last told.
    routes_changed: bool,
}

impl View {
    fn apply(&mut self, a: Assignments) {
        if let Some(r) = a.routes {
            self.routes_changed |= self.routes.as_ref() != Some(&r);
            self.routes = Some(r);
        }
        if a.full {
            self.tasks.clear();
            self.services.clear();
        }
        for t in a.tasks {
            self.tasks.insert(t.id.clone(), t);
        }
        for id in &a.removed_tasks {
            self.tasks.remove(id);
        }
        for s in a.services {
            self.services.insert(s.id.clone(), s);
        }
        for id in &a.removed_services {
            self.services.remove(id);
        }
    }
}

/// Keeps asking the source for assignments and hands each answer to the
/// agent in order (an answer's `seq` is acknowledged by the next request).
async fn poll(
    source: Arc<dyn AssignmentSource>,
    tx: mpsc::UnboundedSender<Assignments>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut since: Option<Since> = None;
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    loop {
        tokio::select! {
            r = source.assignments(since.clone()) => match r {
                Ok(a) => {
                    if failing {
                        tracing::info!("assignments arrive again");
                    }
                    failing = false;
                    backoff = Duration::from_millis(100);
                    since = Some(Since { session_id: a.session_id.clone(), seq: a.seq });
                    if tx.send(a).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("getting this node's assignments failed, retrying: {e}");
                    }
                    failing = true;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// A task this node runs, or is preparing/starting.
struct Replica {
    service_id: String,
    service_name: String,
    name: String,
    memory_limit: Option<usize>,
    /// The service's `--stop-grace-period` when the task started (used if
    /// the service is gone when the task stops).
    stop_grace: Duration,
    supervisor: Supervisor,
    /// How the mesh reaches it; `None` until its supervisor says it started.
    serving: Option<Serving>,
}

pub struct Agent {
    pub node_id: String,
    pub source: Arc<dyn AssignmentSource>,
    pub runtime: Arc<WasmRuntime>,
    pub blobs: Arc<Blobs>,
    pub mesh: Arc<Mesh>,
    /// Runs OCI tasks (`runtime::container::Containers::runtime`); `None`:
    /// they are rejected with `runtime::task::NO_CONTAINERS`.
    pub containers: Option<Arc<dyn Runtime>>,
}

fn status(task_id: &str, state: TaskState, message: &str, error: Option<String>) -> TaskStatus {
    TaskStatus {
        task_id: task_id.to_string(),
        state,
        message: message.to_string(),
        error,
        endpoint: None,
    }
}

fn running(task_id: &str, endpoint: Option<TaskEndpoint>) -> TaskStatus {
    TaskStatus {
        endpoint,
        ..status(task_id, TaskState::Running, "running", None)
    }
}

impl Agent {
    /// This node's runtimes: wasm, and containers when the node has them.
    pub fn runtimes(&self) -> Runtimes {
        let components = components::NodeComponents {
            blobs: self.blobs.clone(),
            source: self.source.clone(),
        };
        Runtimes {
            wasm: Arc::new(WasmTasks::new(self.runtime.clone(), Arc::new(components))),
            containers: self.containers.clone(),
        }
    }

    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let runtimes = self.runtimes();
        self.run_with(runtimes, shutdown).await
    }

    /// Runs the agent with the given runtimes (`run` uses `runtimes()`).
    pub async fn run_with(self, runtimes: Runtimes, mut shutdown: watch::Receiver<bool>) {
        let reporter = Reporter::spawn(self.source.clone(), shutdown.clone());
        crate::daemon::spawn_critical(
            "heartbeats",
            report::heartbeats(self.source.clone(), shutdown.clone()),
        );
        let (assigned_tx, mut assigned_rx) = mpsc::unbounded_channel::<Assignments>();
        crate::daemon::spawn_critical(
            "assignments",
            poll(self.source.clone(), assigned_tx, shutdown.clone()),
        );
        let mut view = View::default();
        let (port_problems, port_rx) = watch::channel(Vec::new());
        crate::daemon::spawn_critical(
            "port reports",
            ports::report(self.source.clone(), port_rx, shutdown.clone()),
        );
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<Event>();
        // Tasks with a supervisor that was not asked to stop.
        let mut replicas: HashMap<String, Replica> = HashMap::new();
        // The last state this process reported per task, so that a report
        // still on its way is not queued again at every store change.
        let mut reported: HashMap<String, TaskState> = HashMap::new();
        // Until the first assignments are in, what a previous node process
        // left running (containers) waits to be claimed by its task.
        let mut first_assignments = false;
        let mut adoption_open = true;
        loop {
            let plan = plan::plan(&view, &replicas, &mut reported);
            let report = |reported: &mut HashMap<String, TaskState>, s: TaskStatus| {
                reported.insert(s.task_id.clone(), s.state);
                reporter.send(s);
            };
            for id in plan.start {
                let Some(task) = view.tasks.get(&id) else {
                    continue;
                };
                let Some(service) = view.services.get(&task.service_id) else {
                    continue;
                };
                match runtimes.controller(task, service) {
                    Ok(controller) => {
                        if task.state < TaskState::Starting {
                            report(
                                &mut reported,
                                status(&id, TaskState::Starting, "starting", None),
                            );
                        }
                        let supervisor =
                            Supervisor::spawn(id.clone(), controller, events_tx.clone());
                        replicas.insert(id, replica(task, service, supervisor));
                    }
                    Err(e) => {
                        tracing::warn!(task = %task.display_name(), "task rejected: {e}");
                        report(
                            &mut reported,
                            status(&id, e.state(), "rejected", Some(e.to_string())),
                        );
                    }
                }
            }
            // Every task still assigned here has its controller now (and
            // took over its container, if one ran): the rest go.
            if adoption_open && first_assignments {
                adoption_open = false;
                runtimes.assignments_known();
            }
            if !plan.stop.is_empty() {
                // Drain before stop: the replicas leave the mesh's rotation
                // now (one table rebuild for the batch); each one's runtime
                // stops it once the requests inside it are done, and then
                // its task is reported shut down (`Event::Stopped`).
                let drains = self.mesh.drain(&plan.stop);
                for (id, drained) in plan.stop.into_iter().zip(drains) {
                    reported.insert(id.clone(), TaskState::Shutdown);
                    match replicas.remove(&id) {
                        Some(r) => {
                            if r.serving.is_some() {
                                tracing::info!(task = %r.name, "replica stopped");
                            }
                            let grace = view
                                .services
                                .get(&r.service_id)
                                .map(|s| s.spec.stop_grace())
                                .unwrap_or(r.stop_grace);
                            r.supervisor.stop(grace, drained.boxed());
                        }
                        // Nothing runs here (a task assigned while this
                        // node was down, or already failed).
                        None => {
                            let reporter = reporter.clone();
                            tokio::spawn(async move {
                                drained.await;
                                reporter.send(status(&id, TaskState::Shutdown, "shutdown", None));
                            });
                        }
                    }
                }
                self.publish(&view, &replicas);
            }
            for id in plan.report_running {
                let endpoint = replicas
                    .get(&id)
                    .and_then(|r| r.serving.as_ref())
                    .and_then(Serving::endpoint);
                report(&mut reported, running(&id, endpoint));
            }
            if let Some(routes) = &view.routes {
                if std::mem::take(&mut view.routes_changed) {
                    self.mesh.set_routes(routes.clone());
                }
                // Every pass, so a port another process held is retried.
                let problems = ports::sync(&self.mesh, routes);
                port_problems.send_if_modified(|p| {
                    let changed = *p != problems;
                    *p = problems;
                    changed
                });
            }
            tokio::select! {
                Some(first) = assigned_rx.recv() => {
                    first_assignments = true;
                    view.apply(first);
                    while let Ok(more) = assigned_rx.try_recv() {
                        view.apply(more);
                    }
                }
                Some(first) = events_rx.recv() => {
                    // Let the other supervisors of a shared load send
                    // theirs too: one mesh update for all of them.
                    tokio::task::yield_now().await;
                    let mut events = vec![first];
                    while let Ok(more) = events_rx.try_recv() {
                        events.push(more);
                    }
                    for s in self.handle(&view, events, &mut replicas) {
                        report(&mut reported, s);
                    }
                }
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = shutdown.changed() => {
                    self.mesh.close_all();
                    return;
                }
            }
        }
    }

    /// Takes in what supervisors said: started tasks that should still run
    /// join the mesh, failed and exited ones leave it; the reports are
    /// returned (after the mesh has them, so a task reported running serves).
    fn handle(
        &self,
        view: &View,
        events: Vec<Event>,
        replicas: &mut HashMap<String, Replica>,
    ) -> Vec<TaskStatus> {
        let mut statuses = Vec::new();
        let mut started: HashMap<String, usize> = HashMap::new();
        let mut changed = false;
        for event in events {
            match event {
                Event::Started { task_id, serving } => {
                    // Not there: asked to stop meanwhile (its supervisor
                    // stops it and says `Stopped`).
                    let Some(r) = replicas.get_mut(&task_id) else {
                        continue;
                    };
                    // Stopped or removed while it started: not in the mesh
                    // nor reported running; the next plan stops it.
                    let wanted = view
                        .tasks
                        .get(&task_id)
                        .is_some_and(|t| t.desired_state == DesiredState::Running);
                    if !wanted {
                        continue;
                    }
                    tracing::debug!(task = %r.name, "replica running");
                    *started.entry(r.service_name.clone()).or_default() += 1;
                    statuses.push(running(&task_id, serving.endpoint()));
                    r.serving = Some(serving);
                    changed = true;
                }
                Event::Failed { task_id, error } => {
                    let name = match replicas.remove(&task_id) {
                        Some(r) => r.name,
                        None => task_id.clone(),
                    };
                    tracing::warn!(task = %name, "task failed to start: {error}");
                    statuses.push(status(
                        &task_id,
                        error.state(),
                        "starting failed",
                        Some(error.to_string()),
                    ));
                }
                Event::Exited { task_id, exit } => {
                    if let Some(r) = replicas.remove(&task_id) {
                        tracing::warn!(task = %r.name, "task exited: {}", exit.message);
                        changed |= r.serving.is_some();
                    }
                    let error = (exit.state() == TaskState::Failed).then(|| exit.message.clone());
                    statuses.push(status(&task_id, exit.state(), &exit.message, error));
                }
                Event::Stopped { task_id } => {
                    statuses.push(status(&task_id, TaskState::Shutdown, "shutdown", None));
                }
            }
        }
        for (service, n) in started {
            tracing::info!(%service, replicas = n, "replicas running");
        }
        if changed {
            self.publish(view, replicas);
        }
        statuses
    }

    fn publish(&self, view: &View, replicas: &HashMap<String, Replica>) {
        // Per-service settings (limits, egress, reuse) come from the spec.
        let mut by_service: HashMap<String, ServiceBackends> = HashMap::new();
        for (task_id, l) in replicas {
            let spec = view.services.get(&l.service_id).map(|s| &s.spec);
            let app = match &l.serving {
                Some(Serving::InProcess(app)) => app,
                // A container: TCP ports connect to its address.
                Some(Serving::Endpoint(e)) => {
                    let Some(addr) = endpoint_addr(e) else {
                        continue;
                    };
                    by_service
                        .entry(l.service_id.clone())
                        .or_insert_with(|| ServiceBackends {
                            name: l.service_name.clone(),
                            max_concurrent: DEFAULT_CONCURRENT_REQUESTS,
                            list: Vec::new(),
                        })
                        .list
                        .push(Backend::LocalEndpoint {
                            replica: l.name.clone(),
                            task_id: task_id.clone(),
                            addr,
                            drain_max: spec.map_or(crate::mesh::DRAIN_MAX, |s| s.stop_grace()),
                        });
                    continue;
                }
                None => continue,
            };
            let entry = by_service
                .entry(l.service_id.clone())
                .or_insert_with(|| ServiceBackends {
                    name: l.service_name.clone(),
                    max_concurrent: spec
                        .and_then(|s| s.limits.concurrent_requests)
                        .unwrap_or(DEFAULT_CONCURRENT_REQUESTS),
                    list: Vec::new(),
                });
            let settings = match spec {
                Some(spec) => ServiceSettings::from_spec(spec),
                // The service is being removed: serve as before until its
                // replicas stop, with nothing allowed out.
                None => ServiceSettings {
                    service: l.service_name.as_str().into(),
                    memory_limit: l.memory_limit,
                    egress: Default::default(),
                    instance_reuse: 0,
                    instance_concurrency: 0,
                    log: crate::runtime::wasm::LogBudget::of_service(&l.service_name),
                },
            };
            entry.list.push(Backend::LocalWasm {
                replica: l.name.clone(),
                app: app.clone(),
                settings: Arc::new(settings),
                task_id: task_id.clone(),
            });
        }
        for s in by_service.values_mut() {
            s.list.sort_by(|a, b| a.replica().cmp(b.replica()));
        }
        self.mesh.set_backends(by_service);
    }
}

/// A container's address as the mesh connects to it (`None`: it listens
/// on no port, or the runtime reported an address that is not an IP).
fn endpoint_addr(e: &TaskEndpoint) -> Option<std::net::SocketAddr> {
    if e.port == 0 {
        return None;
    }
    let ip: std::net::IpAddr = e.addr.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, e.port))
}

fn replica(task: &AssignedTask, service: &Service, supervisor: Supervisor) -> Replica {
    Replica {
        service_id: task.service_id.clone(),
        service_name: task.service_name.clone(),
        name: task.display_name(),
        memory_limit: service.spec.limits.memory_bytes.map(|b| b as usize),
        stop_grace: service.spec.stop_grace(),
        supervisor,
        serving: None,
    }
}

#[cfg(test)]
mod tests;
