//! What one replica slot of a service needs this round: a task placed, a
//! task replaced, or nothing. Part of `reconcile`, a pure function of the
//! state and the time.
//!
//! Drain (`node update --availability drain`): a live task on a draining
//! node is *leaving*. Its slot gets a new task on another node first; the
//! leaving one is told to stop only once the new one is `Running`, so the
//! slot never stops serving. With no node to take it, it stops at once (as
//! in Swarm: a drained node runs nothing). A replacement that fails does not
//! stop it; the failed one is restarted as any failed task is, and while a
//! replacement is on its way no second one is made.
//!
//! A task that ended although it should run is replaced at once; the new
//! one starts after the slot's restart back-off (`backoff`): until then it
//! is `New`, placed but not handed to its node (the dispatcher leaves `New`
//! tasks out), and this assigns it once the time has come.
//!
//! Architecture invariant: a slot has at most one live task that is not
//! leaving; a second one (a `CreateTasks` whose fate was unknown after a
//! leader change committed after all, beside the new leader's) is stopped.

use swarmlet_proto::{Availability, DesiredState, NodeState, Service, Task, TaskState};

use super::backoff;
use super::scheduler::ServicePlacer;
use crate::identity::random_id;
use crate::store::State;

/// The changes of one round, proposed together by `reconcile`.
#[derive(Default)]
pub struct Changes {
    pub create: Vec<Task>,
    pub stop: Vec<String>,
    pub remove: Vec<String>,
    /// `New` tasks whose restart back-off is over: now `Assigned`.
    pub assign: Vec<String>,
}

/// Decides slot `slot` of `service`; `tasks` are all the slot's tasks.
pub fn decide(
    state: &State,
    service: &Service,
    slot: u64,
    tasks: &[&Task],
    now_ms: u64,
    placer: &mut ServicePlacer,
    out: &mut Changes,
) {
    let (leaving, staying): (Vec<&Task>, Vec<&Task>) = tasks
        .iter()
        .copied()
        .filter(|t| t.desired_state == DesiredState::Running)
        .partition(|t| leaving(state, t));
    let keep = keep_one(state, &staying, out);
    let old = keep_one(state, &leaving, out);
    match keep {
        Some(t) if !t.state.is_terminal() && node_lost(state, t) => {
            // Its node is Down (or gone): the slot gets a new task on
            // another node and the old one is told to stop, which the node
            // does if it comes back. With nowhere to go the task stays, so a
            // node that returns just resumes it.
            if let Some(new) = new_task(service, slot, now_ms, 0, placer) {
                out.stop.push(t.id.clone());
                out.create.push(new);
            }
        }
        Some(t) if t.state == TaskState::New => {
            // Waiting out its restart back-off: its node gets it when the
            // time has come.
            if now_ms >= t.created_at_ms {
                out.assign.push(t.id.clone());
            }
        }
        Some(t) if !t.state.is_terminal() => {
            // The replacement of a leaving task runs: the old one may go.
            if let (TaskState::Running, Some(old)) = (t.state, old) {
                out.stop.push(old.id.clone());
            }
        }
        Some(t) => {
            // It ended although it should run: a new task replaces it now,
            // starting after the slot's back-off.
            let previous = tasks
                .iter()
                .filter(|p| p.id != t.id && p.created_at_ms <= t.created_at_ms)
                .max_by_key(|p| (p.created_at_ms, &p.id));
            let delay = backoff::delay_after(t, previous.copied(), service.version);
            if let Some(new) = new_task(service, slot, now_ms, delay, placer) {
                out.stop.push(t.id.clone());
                out.create.push(new);
            }
        }
        None => match (new_task(service, slot, now_ms, 0, placer), old) {
            (Some(new), _) => out.create.push(new),
            // Draining with nowhere to go: it stops now.
            (None, Some(old)) => out.stop.push(old.id.clone()),
            (None, None) => {}
        },
    }
}

/// Of `tasks` (one slot's, all desired `Running`), the one to keep; the
/// others are stopped. Kept is the one furthest along: not ended, on a node
/// that is not lost, then the higher state, then the newest.
fn keep_one<'a>(state: &State, tasks: &[&'a Task], out: &mut Changes) -> Option<&'a Task> {
    let keep = tasks.iter().copied().max_by_key(|t| {
        (
            !t.state.is_terminal(),
            !node_lost(state, t),
            t.state,
            t.created_at_ms,
            &t.id,
        )
    })?;
    out.stop.extend(
        tasks
            .iter()
            .filter(|t| t.id != keep.id)
            .map(|t| t.id.clone()),
    );
    Some(keep)
}

/// Whether `t` is live on a node being drained (and still up: a `Down`
/// node's tasks are replaced at once).
fn leaving(state: &State, t: &Task) -> bool {
    !t.state.is_terminal()
        && t.node_id
            .as_ref()
            .and_then(|n| state.nodes.get(n))
            .is_some_and(|n| {
                n.availability == Availability::Drain && n.status.state != NodeState::Down
            })
}

/// Whether `t`'s node is `Down` or no longer in the cluster.
fn node_lost(state: &State, t: &Task) -> bool {
    match &t.node_id {
        Some(n) => state
            .nodes
            .get(n)
            .is_none_or(|n| n.status.state == NodeState::Down),
        None => false,
    }
}

/// A task for `slot`, placed now. With a `delay` it is `New` until then
/// (its `created_at_ms` is when it may start, which `backoff` reads back).
fn new_task(
    service: &Service,
    slot: u64,
    now_ms: u64,
    delay: u64,
    placer: &mut ServicePlacer,
) -> Option<Task> {
    let node_id = placer.place()?;
    let (state, message) = if delay == 0 {
        (TaskState::Assigned, "assigned".to_string())
    } else {
        (TaskState::New, backoff::waiting_message(delay))
    };
    Some(Task {
        id: random_id(25),
        service_id: service.id.clone(),
        service_name: service.spec.name.clone(),
        slot,
        service_version: service.version,
        node_id: Some(node_id),
        desired_state: DesiredState::Running,
        state,
        message,
        error: None,
        created_at_ms: now_ms + delay,
        updated_at_ms: now_ms,
        endpoint: None,
    })
}
