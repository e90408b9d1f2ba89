//! On every node: runs the tasks assigned to it and reports their state.
//!
//! The agent compares the store's tasks for this node with what runs locally,
//! starts and stops replicas through the runtime, tells the mesh which local
//! replicas exist, and reports every state change through raft.
//!
//! Starting is asynchronous: the tasks to start are grouped by component and
//! each group loads in its own tokio task (compiling runs in
//! `spawn_blocking`), so one service's first compile never holds up another
//! service's replicas. Reports go through `report::Reporter`, which proposes
//! whatever has queued as one entry: 10,000 replicas cost a handful of raft
//! commits, not 10,000, and the agent never waits on one.
//!
//! Architecture invariant: a task starts only after its assignment is
//! committed (the agent reads assignments from the applied store only), and
//! a replica is in the mesh before its task is reported `running`.

mod report;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use swarmlet_proto::{DesiredState, Task, TaskState, TaskStatus};
use tokio::sync::{mpsc, watch};

use crate::blobs::Blobs;
use crate::mesh::{Backend, Mesh, ServiceBackends, DEFAULT_CONCURRENT_REQUESTS};
use crate::raft::RaftHandle;
use crate::runtime::wasm::{ServiceSettings, WasmApp, WasmRuntime};
use crate::store::Store;
use report::Reporter;

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
    pub store: Arc<Store>,
    pub raft: RaftHandle,
    pub runtime: Arc<WasmRuntime>,
    pub blobs: Arc<Blobs>,
    pub mesh: Arc<Mesh>,
}

/// A task to start, with its component's digest and memory limit.
struct Start {
    task: Task,
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
        let reporter = Reporter::spawn(self.raft.clone(), shutdown.clone());
        let (loaded_tx, mut loaded_rx) = mpsc::unbounded_channel::<Loaded>();
        let mut changes = self.store.changes();
        let mut local: HashMap<String, Local> = HashMap::new();
        // Tasks whose component is loading now.
        let mut starting: HashSet<String> = HashSet::new();
        // The last state this process reported per task, so that a report
        // still on its way is not queued again at every store change.
        let mut reported: HashMap<String, TaskState> = HashMap::new();
        loop {
            let plan = self.plan(&local, &starting, &mut reported);
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
                let (blobs, runtime, tx) =
                    (self.blobs.clone(), self.runtime.clone(), loaded_tx.clone());
                tokio::spawn(async move {
                    let result = load(blobs, runtime, digest).await;
                    let _ = tx.send(Loaded { starts, result });
                });
            }
            if !plan.stop.is_empty() {
                for id in plan.stop {
                    if let Some(l) = local.remove(&id) {
                        tracing::info!(task = %l.name, "replica stopped");
                        if !local.values().any(|o| o.digest == l.digest) {
                            self.runtime.unload(&l.digest);
                        }
                    }
                    report(
                        &mut reported,
                        status(&id, TaskState::Shutdown, "shutdown", None),
                    );
                }
                self.publish(&local);
            }
            for id in plan.report_running {
                report(
                    &mut reported,
                    status(&id, TaskState::Running, "running", None),
                );
            }
            tokio::select! {
                _ = changes.changed() => {}
                Some(first) = loaded_rx.recv() => {
                    let mut done = vec![first];
                    while let Ok(more) = loaded_rx.try_recv() {
                        done.push(more);
                    }
                    let statuses = self.started(done, &mut local, &mut starting);
                    for s in statuses {
                        report(&mut reported, s);
                    }
                }
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Takes in loaded components: the tasks that still should run join
    /// `local` and the mesh, and their reports are returned (after the mesh
    /// has them, so a task reported running serves).
    fn started(
        &self,
        done: Vec<Loaded>,
        local: &mut HashMap<String, Local>,
        starting: &mut HashSet<String>,
    ) -> Vec<TaskStatus> {
        let mut statuses = Vec::new();
        {
            let state = self.store.read();
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
                    let wanted = state
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
        self.publish(local);
        statuses
    }

    /// What to do to make local replicas match this node's tasks.
    fn plan(
        &self,
        local: &HashMap<String, Local>,
        starting: &HashSet<String>,
        reported: &mut HashMap<String, TaskState>,
    ) -> Plan {
        let state = self.store.read();
        let mut plan = Plan::default();
        let sent = |reported: &HashMap<String, TaskState>, id: &str, s: TaskState| {
            reported.get(id).is_some_and(|r| *r >= s)
        };
        for t in state
            .tasks
            .values()
            .filter(|t| t.node_id.as_deref() == Some(self.node_id.as_str()))
        {
            let here = local.contains_key(&t.id);
            match t.desired_state {
                DesiredState::Running
                    if !t.state.is_terminal() && !here && !starting.contains(&t.id) =>
                {
                    let Some(service) = state.services.get(&t.service_id) else {
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
        // Local replicas whose task is gone from the store.
        for id in local.keys() {
            if !state.tasks.contains_key(id) {
                plan.stop.push(id.clone());
            }
        }
        reported.retain(|id, _| state.tasks.contains_key(id));
        plan
    }

    fn publish(&self, local: &HashMap<String, Local>) {
        // Per-service settings (limits, egress, reuse) come from the spec.
        let state = self.store.read();
        let mut by_service: HashMap<String, ServiceBackends> = HashMap::new();
        for l in local.values() {
            let spec = state.services.get(&l.service_id).map(|s| &s.spec);
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
            });
        }
        drop(state);
        for s in by_service.values_mut() {
            s.list.sort_by(|a, b| match (a, b) {
                (Backend::LocalWasm { replica: x, .. }, Backend::LocalWasm { replica: y, .. }) => {
                    x.cmp(y)
                }
            });
        }
        self.mesh.set_backends(by_service);
    }
}

/// Loads (compiling the first time) the component `digest`.
async fn load(
    blobs: Arc<Blobs>,
    runtime: Arc<WasmRuntime>,
    digest: String,
) -> Result<Arc<WasmApp>, String> {
    let blob = blobs.verified(&digest).map_err(|e| e.to_string())?;
    // Compiling can take a while the first time: keep it off the reactor.
    tokio::task::spawn_blocking(move || runtime.load(&digest, &blob))
        .await
        .map_err(|e| format!("loading the component panicked: {e}"))?
        .map_err(|e| e.to_string())
}
