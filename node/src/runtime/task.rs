//! The runtime interface: what the agent needs from anything that runs
//! tasks. A `Runtime` makes one `Controller` per task; the controller's
//! steps are called in order by the task's supervisor, never concurrently:
//! `prepare` → `start` → `wait` (until the task exits on its own) or
//! `stop` → `remove`. A stop that arrives during `prepare`/`start` drops
//! that step's future and goes straight to `remove`, so `remove` must clean
//! up after a step that did not finish.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use swarmlet_proto::dispatcher::AssignedTask;
use swarmlet_proto::{Image, Service, TaskEndpoint, TaskState};

use super::wasm::WasmApp;

/// Why a task could not be prepared or started.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    /// This node cannot run the task at all (no runtime for its image):
    /// the task is `rejected`.
    #[error("{0}")]
    Unsupported(String),
    /// Preparing or starting failed (a component that does not load, a
    /// pull that failed, a command that does not exist): the task `failed`.
    #[error("{0}")]
    Failed(String),
}

impl RuntimeError {
    /// The state the task is reported in.
    pub fn state(&self) -> TaskState {
        match self {
            RuntimeError::Unsupported(_) => TaskState::Rejected,
            RuntimeError::Failed(_) => TaskState::Failed,
        }
    }
}

/// How the mesh reaches a started task.
#[derive(Clone)]
pub enum Serving {
    /// In-process: the mesh calls the wasm component directly.
    InProcess(Arc<WasmApp>),
    /// Over the network, at the task's own address (containers).
    Endpoint(TaskEndpoint),
}

impl Serving {
    /// What the agent reports with `running` (`None` for in-process tasks).
    pub fn endpoint(&self) -> Option<TaskEndpoint> {
        match self {
            Serving::InProcess(_) => None,
            Serving::Endpoint(e) => Some(e.clone()),
        }
    }
}

/// How a task ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The process's exit code, when there was one.
    pub code: Option<i32>,
    /// What happened, for `service ps` (e.g. "exited with code 1").
    pub message: String,
}

impl Exit {
    /// Swarm's rule: exit code 0 completes the task, anything else fails it.
    pub fn state(&self) -> TaskState {
        if self.code == Some(0) {
            TaskState::Complete
        } else {
            TaskState::Failed
        }
    }
}

/// The life of one task in one runtime (swarmkit's `exec.Controller`).
pub trait Controller: Send + 'static {
    /// Gets everything the task needs (fetches and compiles a component,
    /// pulls an image, creates a bundle). May take long; cancellable.
    fn prepare(&mut self) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Starts the prepared task; once this returns the task serves.
    fn start(&mut self) -> BoxFuture<'_, Result<Serving, RuntimeError>>;
    /// Resolves when the started task exits on its own. Never resolving is
    /// fine (a wasm replica exits only when stopped).
    fn wait(&mut self) -> BoxFuture<'_, Exit>;
    /// Stops the started task: asks it to end, and forces it after `grace`.
    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Releases everything the task held, whatever step it reached.
    fn remove(&mut self) -> BoxFuture<'_, Result<(), RuntimeError>>;
}

/// Something that runs tasks of one kind of image.
pub trait Runtime: Send + Sync + 'static {
    /// A controller for `task` of `service`; refuses images it cannot run.
    fn controller(
        &self,
        task: &AssignedTask,
        service: &Service,
    ) -> Result<Box<dyn Controller>, RuntimeError>;

    /// Called once, after the agent made controllers for the tasks of its
    /// first assignments: what a previous node process left running and no
    /// controller took over is no longer assigned here (containers: stopped
    /// and removed).
    fn assignments_known(&self) {}
}

/// A runtime this node could not set up (a container tool is missing):
/// every task is rejected, saying why and what to install.
pub struct Unavailable(pub String);

impl Runtime for Unavailable {
    fn controller(
        &self,
        _task: &AssignedTask,
        _service: &Service,
    ) -> Result<Box<dyn Controller>, RuntimeError> {
        Err(RuntimeError::Unsupported(self.0.clone()))
    }
}

/// What a node refuses container tasks with while it has no container runtime.
pub const NO_CONTAINERS: &str = "this node runs no container runtime";

/// The runtimes of this node, chosen by the service's image.
#[derive(Clone)]
pub struct Runtimes {
    pub wasm: Arc<dyn Runtime>,
    /// OCI images; `None`: such tasks are rejected with `NO_CONTAINERS`.
    pub containers: Option<Arc<dyn Runtime>>,
}

impl Runtimes {
    pub fn controller(
        &self,
        task: &AssignedTask,
        service: &Service,
    ) -> Result<Box<dyn Controller>, RuntimeError> {
        match &service.spec.image {
            Image::Wasm { .. } => self.wasm.controller(task, service),
            Image::Oci { .. } => match &self.containers {
                Some(r) => r.controller(task, service),
                None => Err(RuntimeError::Unsupported(NO_CONTAINERS.into())),
            },
        }
    }

    /// See `Runtime::assignments_known`.
    pub fn assignments_known(&self) {
        self.wasm.assignments_known();
        if let Some(c) = &self.containers {
            c.assignments_known();
        }
    }
}

#[cfg(test)]
mod tests {
    use swarmlet_proto::{DesiredState, ServiceSpec};

    use super::*;

    fn oci_service() -> Service {
        Service {
            id: "s".into(),
            spec: ServiceSpec {
                name: "web".into(),
                replicas: 1,
                image: Image::Oci {
                    reference: "nginx:1.27".into(),
                    digest: None,
                },
                ports: vec![],
                limits: Default::default(),
                allow_outbound: vec![],
                instance_reuse: 0,
                instance_concurrency: 0,
                env: vec![],
                stop_grace_period_ms: None,
            },
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn a_node_without_container_tools_rejects_container_tasks_saying_why() {
        let why = "this node cannot run containers: `runc` is not installed: install runc";
        let runtimes = Runtimes {
            wasm: Arc::new(Unavailable("no wasm here".into())),
            containers: Some(Arc::new(Unavailable(why.into()))),
        };
        let task = AssignedTask {
            id: "t".into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot: 1,
            service_version: 1,
            desired_state: DesiredState::Running,
            state: TaskState::Assigned,
        };
        let err = runtimes
            .controller(&task, &oci_service())
            .err()
            .expect("rejected");
        assert_eq!(err, RuntimeError::Unsupported(why.into()));
        assert_eq!(err.state(), TaskState::Rejected);
        let none = Runtimes {
            containers: None,
            ..runtimes
        };
        let err = none
            .controller(&task, &oci_service())
            .err()
            .expect("rejected");
        assert_eq!(err.to_string(), NO_CONTAINERS);
    }
}
