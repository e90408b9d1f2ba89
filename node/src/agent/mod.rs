//! On every node: runs the tasks assigned to it and reports their state.
//!
//! The agent depends only on an `AssignmentSource` (`source.rs`): the
//! dispatcher's long poll tells it the node's tasks (with each service's
//! spec), and its reports go back in batches that double as heartbeats. On a
//! manager the source is the local dispatcher in process; on a worker it is a
//! manager's dispatcher over the cluster port (`remote.rs`), with failover to
//! the other managers. The agent compares its tasks with what runs locally,
//! starts and stops replicas through the runtime, and tells the mesh which
//! local replicas exist. A component this node does not hold is fetched from
//! a manager by digest and checked before it is stored (`fetch.rs`).
//!
//! Starting is asynchronous: the tasks to start are grouped by component and
//! each group loads in its own tokio task (compiling runs in
//! `spawn_blocking`), so one service's first compile never holds up another
//! service's replicas. Reports go through `report::Reporter`, which sends
//! whatever has queued as one batch: 10,000 replicas cost a handful of raft
//! commits, not 10,000, and the agent never waits on one.
//!
//! Architecture invariant: a task starts only after its assignment is
//! committed (the dispatcher answers from the applied store only), and a
//! replica is in the mesh before its task is reported `running`.

mod fetch;
mod ports;
pub mod remote;
mod report;
pub mod source;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use swarmlet_proto::dispatcher::{AssignedTask, Assignments, Routes, Since};
use swarmlet_proto::{DesiredState, Service, TaskState, TaskStatus};
use tokio::sync::{mpsc, watch};

use crate::blobs::{BlobError, Blobs};
use crate::mesh::{Backend, Mesh, ServiceBackends, DEFAULT_CONCURRENT_REQUESTS};
use crate::runtime::wasm::{ServiceSettings, WasmApp, WasmRuntime};
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

struct Local {
    service_id: String,
    service_name: String,
    name: String,
    digest: String,
    app: Arc<WasmApp>,
    memory_limit: Option<usize>,
}

pub struct Agent {
    pub node_id: String,
    pub source: Arc<dyn AssignmentSource>,
    pub runtime: Arc<WasmRuntime>,
    pub blobs: Arc<Blobs>,
    pub mesh: Arc<Mesh>,
}

/// A task to start, with its component's digest and memory limit.
struct Start {
    task: AssignedTask,
    digest: String,
    memory_limit: Option<usize>,
}

/// What a plan asks for.
#[derive(Default)]
struct Plan {
    start: Vec<Start>,
    stop: Vec<String>,
    /// Tasks running here whose `running` report the store does not show
    /// and that were not reported by this process yet.
    report_running: Vec<String>,
}

/// The outcome of loading one component for a group of tasks.
struct Loaded {
    starts: Vec<Start>,
    result: Result<Arc<WasmApp>, String>,
}

fn status(task_id: &str, state: TaskState, message: &str, error: Option<String>) -> TaskStatus {
    TaskStatus {
        task_id: task_id.to_string(),
        state,
        message: message.to_string(),
        error,
    }
}

impl Agent {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
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
        let (loaded_tx, mut loaded_rx) = mpsc::unbounded_channel::<Loaded>();
        let mut local: HashMap<String, Local> = HashMap::new();
        // Tasks whose component is loading now.
        let mut starting: HashSet<String> = HashSet::new();
        // The last state this process reported per task, so that a report
        // still on its way is not queued again at every store change.
        let mut reported: HashMap<String, TaskState> = HashMap::new();
        loop {
            let plan = self.plan(&view, &local, &starting, &mut reported);
            let report = |reported: &mut HashMap<String, TaskState>, s: TaskStatus| {
                reported.insert(s.task_id.clone(), s.state);
                reporter.send(s);
            };
            let mut groups: HashMap<String, Vec<Start>> = HashMap::new();
            for start in plan.start {
                starting.insert(start.task.id.clone());
                if start.task.state < TaskState::Starting {
                    report(
                        &mut reported,
                        status(&start.task.id, TaskState::Starting, "starting", None),
                    );
                }
                groups.entry(start.digest.clone()).or_default().push(start);
            }
            for (digest, starts) in groups {
                let (blobs, runtime, source, tx) = (
                    self.blobs.clone(),
                    self.runtime.clone(),
                    self.source.clone(),
                    loaded_tx.clone(),
                );
                tokio::spawn(async move {
                    let result = load(blobs, runtime, source, digest).await;
                    let _ = tx.send(Loaded { starts, result });
                });
            }
            if !plan.stop.is_empty() {
                // Drain before stop: the replicas leave the mesh's rotation
                // now; each task is reported shut down once the requests
                // inside its replica are done.
                let drains = self.mesh.drain(&plan.stop);
                for (id, drained) in plan.stop.into_iter().zip(drains) {
                    if let Some(l) = local.remove(&id) {
                        tracing::info!(task = %l.name, "replica stopped");
                        if !local.values().any(|o| o.digest == l.digest) {
                            self.runtime.unload(&l.digest);
                        }
                    }
                    reported.insert(id.clone(), TaskState::Shutdown);
                    let reporter = reporter.clone();
                    tokio::spawn(async move {
                        drained.await;
                        reporter.send(status(&id, TaskState::Shutdown, "shutdown", None));
                    });
                }
                self.publish(&view, &local);
            }
            for id in plan.report_running {
                report(
                    &mut reported,
                    status(&id, TaskState::Running, "running", None),
                );
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
                    view.apply(first);
                    while let Ok(more) = assigned_rx.try_recv() {
                        view.apply(more);
                    }
                }
                Some(first) = loaded_rx.recv() => {
                    let mut done = vec![first];
                    while let Ok(more) = loaded_rx.try_recv() {
                        done.push(more);
                    }
                    let statuses = self.started(&view, done, &mut local, &mut starting);
                    for s in statuses {
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

    /// Takes in loaded components: the tasks that still should run join
    /// `local` and the mesh, and their reports are returned (after the mesh
    /// has them, so a task reported running serves).
    fn started(
        &self,
        view: &View,
        done: Vec<Loaded>,
        local: &mut HashMap<String, Local>,
        starting: &mut HashSet<String>,
    ) -> Vec<TaskStatus> {
        let mut statuses = Vec::new();
        {
            for Loaded { starts, result } in done {
                let mut running = 0;
                let service = starts
                    .first()
                    .map(|s| s.task.service_name.clone())
                    .unwrap_or_default();
                for Start {
                    task,
                    digest,
                    memory_limit,
                } in starts
                {
                    starting.remove(&task.id);
                    // Stopped or removed while its component loaded.
                    let wanted = view
                        .tasks
                        .get(&task.id)
                        .is_some_and(|t| t.desired_state == DesiredState::Running);
                    if !wanted {
                        continue;
                    }
                    match &result {
                        Ok(app) => {
                            local.insert(
                                task.id.clone(),
                                Local {
                                    service_id: task.service_id.clone(),
                                    service_name: task.service_name.clone(),
                                    name: task.display_name(),
                                    digest,
                                    app: app.clone(),
                                    memory_limit,
                                },
                            );
                            running += 1;
                            tracing::debug!(task = %task.display_name(), "replica running");
                            statuses.push(status(&task.id, TaskState::Running, "running", None));
                        }
                        Err(e) => {
                            tracing::warn!(task = %task.display_name(), "task failed to start: {e}");
                            statuses.push(status(
                                &task.id,
                                TaskState::Failed,
                                "starting failed",
                                Some(e.clone()),
                            ));
                        }
                    }
                }
                if running > 0 {
                    tracing::info!(%service, replicas = running, "replicas running");
                }
            }
        }
        self.publish(view, local);
        statuses
    }

    /// What to do to make local replicas match this node's tasks.
    fn plan(
        &self,
        view: &View,
        local: &HashMap<String, Local>,
        starting: &HashSet<String>,
        reported: &mut HashMap<String, TaskState>,
    ) -> Plan {
        let mut plan = Plan::default();
        let sent = |reported: &HashMap<String, TaskState>, id: &str, s: TaskState| {
            reported.get(id).is_some_and(|r| *r >= s)
        };
        for t in view.tasks.values() {
            let here = local.contains_key(&t.id);
            match t.desired_state {
                DesiredState::Running
                    if !t.state.is_terminal() && !here && !starting.contains(&t.id) =>
                {
                    let Some(service) = view.services.get(&t.service_id) else {
                        continue;
                    };
                    plan.start.push(Start {
                        task: t.clone(),
                        digest: service.spec.image.digest().to_string(),
                        memory_limit: service.spec.limits.memory_bytes.map(|b| b as usize),
                    });
                }
                DesiredState::Running
                    if here
                        && t.state < TaskState::Running
                        && !sent(reported, &t.id, TaskState::Running) =>
                {
                    plan.report_running.push(t.id.clone());
                }
                DesiredState::Shutdown
                    if here
                        || (!t.state.is_terminal()
                            && !starting.contains(&t.id)
                            && !sent(reported, &t.id, TaskState::Shutdown)) =>
                {
                    plan.stop.push(t.id.clone());
                }
                _ => {}
            }
        }
        // Local replicas whose task is no longer assigned here (removed,
        // or moved away while this node was down).
        for id in local.keys() {
            if !view.tasks.contains_key(id) {
                plan.stop.push(id.clone());
            }
        }
        reported.retain(|id, _| view.tasks.contains_key(id));
        plan
    }

    fn publish(&self, view: &View, local: &HashMap<String, Local>) {
        // Per-service settings (limits, egress, reuse) come from the spec.
        let mut by_service: HashMap<String, ServiceBackends> = HashMap::new();
        for (task_id, l) in local {
            let spec = view.services.get(&l.service_id).map(|s| &s.spec);
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
                },
            };
            entry.list.push(Backend::LocalWasm {
                replica: l.name.clone(),
                app: l.app.clone(),
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

/// Loads (compiling the first time) the component `digest`, fetching it
/// from a manager first if this node does not hold it (or its copy is
/// damaged).
async fn load(
    blobs: Arc<Blobs>,
    runtime: Arc<WasmRuntime>,
    source: Arc<dyn AssignmentSource>,
    digest: String,
) -> Result<Arc<WasmApp>, String> {
    let blob = match blobs.verified(&digest) {
        Ok(p) => p,
        Err(e @ (BlobError::NotFound(_) | BlobError::Corrupt { .. })) => {
            match source.fetch_component(&digest).await {
                Ok(()) => blobs.verified(&digest).map_err(|e| e.to_string())?,
                Err(SourceError::NoSource) => return Err(e.to_string()),
                Err(f) => return Err(format!("{e}; {f}")),
            }
        }
        Err(e) => return Err(e.to_string()),
    };
    // Compiling can take a while the first time: keep it off the reactor.
    tokio::task::spawn_blocking(move || runtime.load(&digest, &blob))
        .await
        .map_err(|e| format!("loading the component panicked: {e}"))?
        .map_err(|e| e.to_string())
}
