//! What a node is assigned, and what changed since the last answer: pure
//! functions of the store's state, so the long poll in `mod.rs` only waits
//! and compares.

use std::collections::BTreeMap;

use swarmlet_proto::dispatcher::{AssignedTask, Routes};
use swarmlet_proto::{Service, TaskState};

use crate::store::State;

/// Everything a node should know: its non-terminal tasks and their services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub tasks: BTreeMap<String, AssignedTask>,
    pub services: BTreeMap<String, Service>,
    /// The cluster's routing view (the same for every node).
    pub routes: Routes,
}

/// The node's view of the state: tasks assigned to `node_id` that have not
/// ended (desired running, or to be stopped), and the services they belong
/// to (a task of a removed service comes without one). A `New` task is
/// placed but still waits out its restart back-off: the orchestrator
/// assigns it when it may start (`orchestrator/backoff.rs`).
pub fn view_of(state: &State, node_id: &str) -> NodeView {
    let mut view = NodeView {
        routes: super::routing::routes_of(state),
        ..NodeView::default()
    };
    for t in state.tasks.values() {
        if t.node_id.as_deref() != Some(node_id)
            || t.state.is_terminal()
            || t.state == TaskState::New
        {
            continue;
        }
        view.tasks.insert(
            t.id.clone(),
            AssignedTask {
                id: t.id.clone(),
                service_id: t.service_id.clone(),
                service_name: t.service_name.clone(),
                slot: t.slot,
                service_version: t.service_version,
                desired_state: t.desired_state,
                state: t.state,
            },
        );
        if !view.services.contains_key(&t.service_id) {
            if let Some(s) = state.services.get(&t.service_id) {
                view.services.insert(s.id.clone(), s.clone());
            }
        }
    }
    view
}

/// The changes that turn `old` into `new`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub tasks: Vec<AssignedTask>,
    pub removed_tasks: Vec<String>,
    pub services: Vec<Service>,
    pub removed_services: Vec<String>,
    /// The new routing view, when it changed.
    pub routes: Option<Routes>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.removed_tasks.is_empty()
            && self.services.is_empty()
            && self.removed_services.is_empty()
            && self.routes.is_none()
    }
}

pub fn diff(old: &NodeView, new: &NodeView) -> Diff {
    fn changes<V: PartialEq + Clone>(
        old: &BTreeMap<String, V>,
        new: &BTreeMap<String, V>,
    ) -> (Vec<V>, Vec<String>) {
        let changed = new
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(v))
            .map(|(_, v)| v.clone())
            .collect();
        let removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        (changed, removed)
    }
    let (tasks, removed_tasks) = changes(&old.tasks, &new.tasks);
    let (services, removed_services) = changes(&old.services, &new.services);
    Diff {
        tasks,
        removed_tasks,
        services,
        removed_services,
        routes: (old.routes != new.routes).then(|| new.routes.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmlet_proto::{DesiredState, TaskState};

    fn state() -> State {
        let mut st = State::default();
        st.services.insert(
            "s".into(),
            crate::dispatcher::tests::service("s", "web", 3, vec![]),
        );
        for (id, node, slot) in [("t1", "a", 1), ("t2", "b", 2), ("t3", "a", 3)] {
            st.tasks
                .insert(id.into(), crate::dispatcher::tests::task(id, node, slot));
        }
        st
    }

    #[test]
    fn a_node_sees_only_its_unfinished_tasks_and_their_services() {
        let mut st = state();
        let v = view_of(&st, "a");
        assert_eq!(v.tasks.keys().collect::<Vec<_>>(), ["t1", "t3"]);
        assert_eq!(v.services.keys().collect::<Vec<_>>(), ["s"]);
        st.tasks.get_mut("t1").unwrap().state = TaskState::Shutdown;
        assert_eq!(view_of(&st, "a").tasks.keys().collect::<Vec<_>>(), ["t3"]);
        assert!(view_of(&st, "c").tasks.is_empty());
        // Waiting out its restart back-off: not the node's to start yet.
        st.tasks.get_mut("t3").unwrap().state = TaskState::New;
        assert!(view_of(&st, "a").tasks.is_empty());
    }

    #[test]
    fn diff_names_what_changed_and_what_left() {
        let mut st = state();
        for n in ["a", "b"] {
            let node = crate::dispatcher::routing::tests::node(n, swarmlet_proto::NodeState::Ready);
            st.nodes.insert(n.into(), node);
        }
        let before = view_of(&st, "a");
        assert!(diff(&before, &view_of(&st, "a")).is_empty());
        // Another node's task changing is nothing to node a's tasks, but
        // its replica running is news to every node's mesh.
        st.tasks.get_mut("t2").unwrap().state = TaskState::Running;
        let d = diff(&before, &view_of(&st, "a"));
        assert!(d.tasks.is_empty() && d.removed_tasks.is_empty());
        assert!(d.routes.is_some(), "the routing view changed");
        let before = view_of(&st, "a");
        st.tasks.get_mut("t1").unwrap().desired_state = DesiredState::Shutdown;
        st.tasks.remove("t3");
        let d = diff(&before, &view_of(&st, "a"));
        assert_eq!(d.tasks.len(), 1);
        assert_eq!(d.tasks[0].id, "t1");
        assert_eq!(d.tasks[0].desired_state, DesiredState::Shutdown);
        assert_eq!(d.removed_tasks, ["t3"]);
        assert!(d.services.is_empty() && d.removed_services.is_empty());
        // The last task ends: its service leaves the view too.
        st.tasks.get_mut("t1").unwrap().state = TaskState::Shutdown;
        let d = diff(&before, &view_of(&st, "a"));
        assert_eq!(d.removed_services, ["s"]);
        // A spec change reaches the node.
        let mut st = state();
        st.services.get_mut("s").unwrap().version = 2;
        let d = diff(&before, &view_of(&st, "a"));
        assert_eq!(d.services.len(), 1);
        assert!(d.tasks.is_empty());
    }
}
