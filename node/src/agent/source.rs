//! Where the agent's assignments come from and where its reports go: the
//! one interface the agent depends on, so it runs the same on a manager
//! (`InProcess`: the local dispatcher, the local store and raft handle)
//! and on a worker (`remote::RemoteSource`: a manager's dispatcher routes).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use swarmlet_proto::dispatcher::{
    Assignments, AssignmentsRequest, PortReport, Since, StatusReport,
};
use swarmlet_proto::{NodeRole, TaskStatus};

use super::fetch;
use crate::blobs::Blobs;
use crate::dispatcher::{Caller, ClusterCall, Dispatcher, DispatcherError};

/// How long one assignments long poll may wait on the dispatcher.
pub const POLL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    /// Try again later (the source may have switched managers meanwhile).
    #[error("{0}")]
    Unavailable(String),
    /// The dispatcher refused the request; retrying the same will not help.
    #[error("{0}")]
    Refused(String),
    /// No manager to fetch a component from.
    #[error("no other manager to fetch it from")]
    NoSource,
}

impl From<DispatcherError> for SourceError {
    fn from(e: DispatcherError) -> Self {
        match e {
            DispatcherError::Unavailable(m) => SourceError::Unavailable(m),
            e => SourceError::Refused(e.to_string()),
        }
    }
}

pub trait AssignmentSource: Send + Sync + 'static {
    /// The node's tasks: everything when `since` is `None` or unknown to
    /// the dispatcher, else what changed since, waiting up to `POLL_WAIT`
    /// for a change.
    fn assignments(&self, since: Option<Since>) -> BoxFuture<'_, Result<Assignments, SourceError>>;

    /// Reports task states; `Ok` once they are committed. An empty batch is
    /// a heartbeat.
    fn report(&self, updates: Vec<TaskStatus>) -> BoxFuture<'_, Result<(), SourceError>>;

    /// Makes the component `digest` available in this node's blobs,
    /// fetching it from a manager (checked against the digest) if needed.
    fn fetch_component<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<(), SourceError>>;

    /// How often the agent sends a heartbeat when it has nothing to report.
    fn heartbeat_period(&self) -> Duration;

    /// Reports the published ports this node cannot listen on (the whole
    /// set); `Ok` once stored.
    fn report_ports(&self, report: PortReport) -> BoxFuture<'_, Result<(), SourceError>>;
}

/// On a manager: the local dispatcher, called in process.
pub struct InProcess {
    caller: Caller,
    dispatcher: Arc<Dispatcher>,
    blobs: Arc<Blobs>,
    /// To fetch a component uploaded to another manager (none on a single node).
    call: Option<Arc<dyn ClusterCall>>,
}

impl InProcess {
    pub fn new(
        node_id: String,
        dispatcher: Arc<Dispatcher>,
        blobs: Arc<Blobs>,
        call: Option<Arc<dyn ClusterCall>>,
    ) -> InProcess {
        InProcess {
            caller: Caller {
                node_id,
                role: NodeRole::Manager,
            },
            dispatcher,
            blobs,
            call,
        }
    }
}

impl AssignmentSource for InProcess {
    fn assignments(&self, since: Option<Since>) -> BoxFuture<'_, Result<Assignments, SourceError>> {
        async move {
            let req = AssignmentsRequest {
                since,
                wait_ms: POLL_WAIT.as_millis() as u64,
            };
            Ok(self.dispatcher.assignments(&self.caller, req).await?)
        }
        .boxed()
    }

    fn report(&self, updates: Vec<TaskStatus>) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            self.dispatcher
                .status(&self.caller, StatusReport { updates })
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn fetch_component<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<(), SourceError>> {
        async move {
            let Some(call) = &self.call else {
                return Err(SourceError::NoSource);
            };
            let own = self.dispatcher.own_addr();
            let others: Vec<String> = self
                .dispatcher
                .managers()
                .into_iter()
                .filter(|a| Some(a) != own.as_ref())
                .collect();
            fetch::fetch(&**call, &others, digest, &self.blobs).await
        }
        .boxed()
    }

    fn heartbeat_period(&self) -> Duration {
        self.dispatcher.config().heartbeat_period()
    }

    fn report_ports(&self, report: PortReport) -> BoxFuture<'_, Result<(), SourceError>> {
        async move { Ok(self.dispatcher.ports(&self.caller, report).await?) }.boxed()
    }
}
