//! What to do to make this node's tasks match its assignments.

use std::collections::HashMap;

use swarmlet_proto::{DesiredState, TaskState};

use super::{Replica, View};

/// What a plan asks for (task IDs).
#[derive(Default)]
pub(super) struct Plan {
    pub start: Vec<String>,
    pub stop: Vec<String>,
    /// Tasks running here whose `running` report the store does not show
    /// and that were not reported by this process yet.
    pub report_running: Vec<String>,
}

/// `replicas`: the tasks with a supervisor not asked to stop; `reported`:
/// the last state this process reported per task (forgotten here for
/// tasks no longer assigned).
pub(super) fn plan(
    view: &View,
    replicas: &HashMap<String, Replica>,
    reported: &mut HashMap<String, TaskState>,
) -> Plan {
    let mut plan = Plan::default();
    let sent = |reported: &HashMap<String, TaskState>, id: &str, s: TaskState| {
        reported.get(id).is_some_and(|r| *r >= s)
    };
    for t in view.tasks.values() {
        let replica = replicas.get(&t.id);
        let serving = replica.is_some_and(|r| r.serving.is_some());
        match t.desired_state {
            // Not when this process already reported it ended (failed,
            // rejected): the store will say so.
            DesiredState::Running
                if !t.state.is_terminal()
                    && replica.is_none()
                    && !sent(reported, &t.id, TaskState::Complete)
                    && view.services.contains_key(&t.service_id) =>
            {
                plan.start.push(t.id.clone());
            }
            DesiredState::Running
                if serving
                    && t.state < TaskState::Running
                    && !sent(reported, &t.id, TaskState::Running) =>
            {
                plan.report_running.push(t.id.clone());
            }
            // A task still preparing is stopped too (its prepare is dropped).
            DesiredState::Shutdown
                if replica.is_some()
                    || (!t.state.is_terminal() && !sent(reported, &t.id, TaskState::Shutdown)) =>
            {
                plan.stop.push(t.id.clone());
            }
            _ => {}
        }
    }
    // Local tasks no longer assigned here (removed, or moved away while
    // this node was down).
    for id in replicas.keys() {
        if !view.tasks.contains_key(id) {
            plan.stop.push(id.clone());
        }
    }
    reported.retain(|id, _| view.tasks.contains_key(id));
    plan
}
