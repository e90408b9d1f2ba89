//! One supervisor per task: a tokio task that walks the task's controller
//! through its life and tells the agent what happened, so one task's slow
//! `prepare` (a pull, a compile) never delays another's.
//!
//! The agent holds a `Supervisor` handle per task and asks it to stop with
//! `stop(grace, before)`: `before` is awaited first (the agent passes the
//! mesh's drain, so a replica leaves rotation and finishes the requests
//! inside it before its runtime stops it), then the controller's `stop` and
//! `remove` run, then `Event::Stopped` is sent.
//!
//! Architecture invariant: every supervisor ends with exactly one of
//! `Failed`, `Exited` or `Stopped`, after its controller's `remove`; a task
//! that was `Started` gets its `stop` before `remove` when asked to stop.
//! The one exception is a handle dropped without `stop` (the daemon shuts
//! down): the supervisor then leaves its task alone and sends nothing.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::task::{Controller, Exit, RuntimeError, Serving};

/// What a supervisor tells the agent.
pub enum Event {
    /// The task runs and is reached through `serving`.
    Started { task_id: String, serving: Serving },
    /// Preparing or starting failed; the task never ran.
    Failed {
        task_id: String,
        error: RuntimeError,
    },
    /// The task ended on its own (a container's process exited).
    Exited { task_id: String, exit: Exit },
    /// The task was stopped and removed as asked.
    Stopped { task_id: String },
}

impl Event {
    pub fn task_id(&self) -> &str {
        match self {
            Event::Started { task_id, .. }
            | Event::Failed { task_id, .. }
            | Event::Exited { task_id, .. }
            | Event::Stopped { task_id } => task_id,
        }
    }
}

struct Stop {
    grace: Duration,
    before: BoxFuture<'static, ()>,
}

/// The agent's handle on one task's supervisor.
pub struct Supervisor {
    stop: oneshot::Sender<Stop>,
}

impl Supervisor {
    /// Starts supervising `controller` (prepare, then start) at once.
    pub fn spawn(
        task_id: String,
        controller: Box<dyn Controller>,
        events: mpsc::UnboundedSender<Event>,
    ) -> Supervisor {
        let (stop, stop_rx) = oneshot::channel();
        tokio::spawn(run(task_id, controller, events, stop_rx));
        Supervisor { stop }
    }

    /// Stops the task: `before` first, then the controller's `stop` (with
    /// `grace`) and `remove`; `Event::Stopped` follows. A supervisor that
    /// already ended (its task failed or exited; that event was sent)
    /// ignores it.
    pub fn stop(self, grace: Duration, before: BoxFuture<'static, ()>) {
        let _ = self.stop.send(Stop { grace, before });
    }
}

async fn remove(task_id: &str, controller: &mut Box<dyn Controller>) {
    if let Err(e) = controller.remove().await {
        tracing::warn!(task = %task_id, "removing the task left something behind: {e}");
    }
}

async fn run(
    task_id: String,
    mut controller: Box<dyn Controller>,
    events: mpsc::UnboundedSender<Event>,
    mut stop_rx: oneshot::Receiver<Stop>,
) {
    let send = |e: Event| {
        let _ = events.send(e);
    };
    let starting = async {
        controller.prepare().await?;
        controller.start().await
    };
    // A handle dropped without `stop` means the agent is gone (the daemon
    // shuts down): the task is left as it is, for the next agent to find
    // (a container outlives the daemon), and nothing is sent.
    let started = tokio::select! {
        r = starting => Ok(r),
        s = &mut stop_rx => match s {
            Ok(stop) => Err(stop),
            Err(_) => return,
        },
    };
    let stop = match started {
        Ok(Ok(serving)) => {
            send(Event::Started {
                task_id: task_id.clone(),
                serving,
            });
            let ended = tokio::select! {
                exit = controller.wait() => Ok(exit),
                s = &mut stop_rx => match s {
                    Ok(stop) => Err(stop),
                    Err(_) => return,
                },
            };
            match ended {
                Ok(exit) => {
                    tracing::info!(task = %task_id, "task exited: {}", exit.message);
                    remove(&task_id, &mut controller).await;
                    send(Event::Exited { task_id, exit });
                    return;
                }
                Err(stop) => {
                    stop.before.await;
                    if let Err(e) = controller.stop(stop.grace).await {
                        tracing::warn!(task = %task_id, "stopping the task: {e}");
                    }
                    None
                }
            }
        }
        Ok(Err(error)) => {
            remove(&task_id, &mut controller).await;
            send(Event::Failed { task_id, error });
            return;
        }
        // Asked to stop while preparing or starting: nothing runs yet.
        Err(stop) => Some(stop),
    };
    if let Some(stop) = stop {
        stop.before.await;
    }
    remove(&task_id, &mut controller).await;
    send(Event::Stopped { task_id });
}
