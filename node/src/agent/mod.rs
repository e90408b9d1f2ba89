//! On every node: runs the tasks assigned to it and reports their state.
//!
//! The agent compares the store's tasks for this node with what runs locally,
//! starts and stops replicas through the runtime, tells the mesh which local
//! replicas exist, and reports every state change through raft.
//!
//! Architecture invariant: a task starts only after its assignment is
//! committed (the agent reads assignments from the applied store only), and
//! a replica is in the mesh before its task is reported `running`.

use std::collections::HashMap;
use std::sync::Arc;

use swarmlet_proto::{Command, DesiredState, Task, TaskState};
use tokio::sync::watch;

use crate::blobs::Blobs;
use crate::mesh::{Backend, Mesh, ServiceBackends, DEFAULT_CONCURRENT_REQUESTS};
use crate::raft::RaftHandle;
use crate::runtime::wasm::{ServiceSettings, WasmApp, WasmRuntime};
use crate::store::Store;

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

enum Action {
    /// Start the task: its component's digest and the memory limit.
    Start(Task, String, Option<usize>),
    Stop(String),
    Report(String, TaskState, String, Option<String>),
}

impl Agent {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.store.changes();
        let mut local: HashMap<String, Local> = HashMap::new();
        loop {
            let actions = self.plan(&local);
            let mut reports = Vec::new();
            let mut mesh_dirty = false;
            for action in actions {
                match action {
                    Action::Start(task, digest, memory_limit) => {
                        mesh_dirty = true;
                        match self.start(&task, &digest).await {
                            Ok(app) => {
                                local.insert(
                                    task.id.clone(),
                                    Local {
                                        service_id: task.service_id.clone(),
                                        service_name: task.service_name.clone(),
                                        name: task.display_name(),
                                        digest,
                                        app,
                                        memory_limit,
                                    },
                                );
                                reports.push((
                                    task.id.clone(),
                                    TaskState::Running,
                                    "running".to_string(),
                                    None,
                                ));
                            }
                            Err(e) => {
                                tracing::warn!(task = %task.display_name(), "task failed to start: {e}");
                                reports.push((
                                    task.id.clone(),
                                    TaskState::Failed,
                                    "starting failed".into(),
                                    Some(e),
                                ));
                            }
                        }
                    }
                    Action::Stop(id) => {
                        mesh_dirty = true;
                        if let Some(l) = local.remove(&id) {
                            tracing::info!(task = %l.name, "replica stopped");
                            if !local.values().any(|o| o.digest == l.digest) {
                                self.runtime.unload(&l.digest);
                            }
                        }
                        reports.push((id, TaskState::Shutdown, "shutdown".into(), None));
                    }
                    Action::Report(id, state, msg, err) => reports.push((id, state, msg, err)),
                }
            }
            if mesh_dirty {
                self.publish(&local);
            }
            // Proposed together, so raft commits them in one batch.
            let proposals = reports.into_iter().map(|(task_id, state, message, error)| {
                self.raft.propose(Command::UpdateTaskStatus {
                    task_id,
                    state,
                    message,
                    error,
                })
            });
            for r in futures::future::join_all(proposals).await {
                if let Err(e) = r {
                    tracing::warn!("reporting task state failed: {e}");
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// What to do to make local replicas match this node's tasks.
    fn plan(&self, local: &HashMap<String, Local>) -> Vec<Action> {
        let state = self.store.read();
        let mut actions = Vec::new();
        for t in state
            .tasks
            .values()
            .filter(|t| t.node_id.as_deref() == Some(self.node_id.as_str()))
        {
            let here = local.contains_key(&t.id);
            match t.desired_state {
                DesiredState::Running if !t.state.is_terminal() && !here => {
                    let Some(service) = state.services.get(&t.service_id) else {
                        continue;
                    };
                    let digest = service.spec.image.digest().to_string();
                    let limit = service.spec.limits.memory_bytes.map(|b| b as usize);
                    actions.push(Action::Start(t.clone(), digest, limit));
                }
                DesiredState::Running if here && t.state < TaskState::Running => {
                    // Started before a restart of the report path; say so again.
                    actions.push(Action::Report(
                        t.id.clone(),
                        TaskState::Running,
                        "running".into(),
                        None,
                    ));
                }
                DesiredState::Shutdown if here || !t.state.is_terminal() => {
                    actions.push(Action::Stop(t.id.clone()));
                }
                _ => {}
            }
        }
        // Local replicas whose task is gone from the store.
        for id in local.keys() {
            if !state.tasks.contains_key(id) {
                actions.push(Action::Stop(id.clone()));
            }
        }
        actions
    }

    async fn start(&self, task: &Task, digest: &str) -> Result<Arc<WasmApp>, String> {
        if task.state < TaskState::Starting {
            let _ = self
                .raft
                .propose(Command::UpdateTaskStatus {
                    task_id: task.id.clone(),
                    state: TaskState::Starting,
                    message: "starting".into(),
                    error: None,
                })
                .await;
        }
        let blob = self.blobs.existing(digest).map_err(|e| e.to_string())?;
        let runtime = self.runtime.clone();
        let digest = digest.to_string();
        // Compiling can take a while the first time: keep it off the reactor.
        let app = tokio::task::spawn_blocking(move || runtime.load(&digest, &blob))
            .await
            .map_err(|e| format!("loading the component panicked: {e}"))?
            .map_err(|e| e.to_string())?;
        tracing::info!(task = %task.display_name(), "replica running");
        Ok(app)
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
