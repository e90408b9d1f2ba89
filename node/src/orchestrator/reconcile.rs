//! Desired services → task changes. A pure function of the store state and
//! the time: the loop in `mod.rs` proposes what it returns.

use std::collections::{BTreeMap, HashMap};

use swarmlet_proto::{Command, DesiredState, NodeState, Service, Task, TaskState};

use super::scheduler;
use crate::identity::random_id;
use crate::store::State;

/// Docker's default restart delay (restart condition `any`).
pub const RESTART_DELAY_MS: u64 = 5_000;
/// Docker's default task history per slot.
pub const TASK_HISTORY: usize = 5;

/// The commands that move the cluster toward its desired state.
pub fn reconcile(state: &State, now_ms: u64) -> Vec<Command> {
    let mut create = Vec::new();
    let mut stop = Vec::new();
    let mut remove = Vec::new();

    let mut load: HashMap<String, usize> = HashMap::new();
    for t in state.tasks.values() {
        if let (Some(n), false) = (&t.node_id, t.state.is_terminal()) {
            *load.entry(n.clone()).or_default() += 1;
        }
    }
    let mut placer = scheduler::Placer::new(state.nodes.values(), &load);

    for service in state.services.values() {
        let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
        for t in state.tasks_of(&service.id) {
            slots.entry(t.slot).or_default().push(t);
        }
        for slot in 1..=service.spec.replicas {
            let tasks = slots.get(&slot).map(Vec::as_slice).unwrap_or(&[]);
            // One task per slot should run. Two can (a CreateTasks whose
            // fate was unknown after a leader change commits after all,
            // beside the new leader's): keep the one furthest along
            // (not ended, then the higher state, then the newest) and stop
            // the others. Found by the control-plane simulation.
            let wanted: Vec<&Task> = tasks
                .iter()
                .copied()
                .filter(|t| t.desired_state == DesiredState::Running)
                .collect();
            let live = wanted
                .iter()
                .copied()
                .max_by_key(|t| (!t.state.is_terminal(), t.state, t.created_at_ms, &t.id));
            if let Some(keep) = live {
                stop.extend(
                    wanted
                        .iter()
                        .filter(|t| t.id != keep.id)
                        .map(|t| t.id.clone()),
                );
            }
            match live {
                Some(t) if !t.state.is_terminal() && node_lost(state, t) => {
                    // Its node is Down (or gone): the slot gets a new task
                    // on another node and the old one is told to stop, which
                    // the node does if it comes back. With nowhere to go the
                    // task stays, so a node that returns just resumes it.
                    if let Some(new) = new_task(service, slot, now_ms, &mut placer) {
                        stop.push(t.id.clone());
                        create.push(new);
                    }
                }
                Some(t) if !t.state.is_terminal() => {}
                Some(t) => {
                    // It ended although it should run: restart it in a new
                    // task after the restart delay, as Swarm does.
                    if now_ms.saturating_sub(t.updated_at_ms) >= RESTART_DELAY_MS {
                        stop.push(t.id.clone());
                        if let Some(new) = new_task(service, slot, now_ms, &mut placer) {
                            create.push(new);
                        }
                    }
                }
                None => {
                    if let Some(new) = new_task(service, slot, now_ms, &mut placer) {
                        create.push(new);
                    }
                }
            }
        }
        // Scale down: slots above the replica count stop.
        for (slot, tasks) in &slots {
            if *slot > service.spec.replicas {
                stop.extend(
                    tasks
                        .iter()
                        .filter(|t| t.desired_state == DesiredState::Running)
                        .map(|t| t.id.clone()),
                );
            }
        }
        // Keep the newest TASK_HISTORY ended tasks per slot.
        for tasks in slots.values() {
            let mut ended: Vec<&&Task> = tasks
                .iter()
                .filter(|t| t.desired_state == DesiredState::Shutdown && t.state.is_terminal())
                .collect();
            if ended.len() > TASK_HISTORY {
                ended.sort_by_key(|t| std::cmp::Reverse(t.created_at_ms));
                remove.extend(ended[TASK_HISTORY..].iter().map(|t| t.id.clone()));
            }
        }
    }
    // Tasks of removed services stop (whatever put them there: removing a
    // service stops its tasks, and the store refuses new ones, but nothing
    // may keep running for a service nobody can see), then go once they have
    // stopped; nothing is left to show them under.
    for t in state.tasks.values() {
        if state.services.contains_key(&t.service_id) {
            continue;
        }
        if t.state.is_terminal() || t.node_id.is_none() || t.state == TaskState::New {
            remove.push(t.id.clone());
        } else if t.desired_state == DesiredState::Running {
            stop.push(t.id.clone());
        }
    }

    let mut out = Vec::new();
    if !stop.is_empty() {
        out.push(Command::SetDesiredState {
            task_ids: stop,
            desired: DesiredState::Shutdown,
        });
    }
    if !create.is_empty() {
        out.push(Command::CreateTasks { tasks: create });
    }
    if !remove.is_empty() {
        out.push(Command::RemoveTasks { task_ids: remove });
    }
    out
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

fn new_task(
    service: &Service,
    slot: u64,
    now_ms: u64,
    placer: &mut scheduler::Placer,
) -> Option<Task> {
    let node_id = placer.place()?;
    Some(Task {
        id: random_id(25),
        service_id: service.id.clone(),
        service_name: service.spec.name.clone(),
        slot,
        service_version: service.version,
        node_id: Some(node_id),
        desired_state: DesiredState::Running,
        state: TaskState::Assigned,
        message: "assigned".into(),
        error: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmlet_proto::{Availability, Envelope, Image, Node, NodeRole, ServiceSpec};

    fn state_with(replicas: u64) -> State {
        let mut st = State::default();
        st.nodes.insert(
            "n1".into(),
            Node {
                id: "n1".into(),
                raft_id: 1,
                hostname: "n1".into(),
                role: NodeRole::Manager,
                availability: Availability::Active,
                addr: String::new(),
                created_at_ms: 0,
                status: swarmlet_proto::NodeStatus::ready(),
                port_problems: Vec::new(),
            },
        );
        st.services.insert(
            "s1".into(),
            Service {
                id: "s1".into(),
                spec: ServiceSpec {
                    name: "web".into(),
                    replicas,
                    image: Image::Wasm {
                        digest: "sha256:0".into(),
                        name: "w.wasm".into(),
                        size: 1,
                    },
                    ports: vec![],
                    limits: Default::default(),
                    allow_outbound: Vec::new(),
                    instance_reuse: 0,
                },
                version: 1,
                created_at_ms: 0,
                updated_at_ms: 0,
            },
        );
        st
    }

    fn apply_all(st: &mut State, cmds: Vec<Command>) {
        let store = crate::store::Store::new();
        store.restore(st.clone());
        for command in cmds {
            store
                .apply(&Envelope {
                    proposal_id: 0,
                    at_ms: 1,
                    command,
                })
                .unwrap();
        }
        *st = store.read().clone();
    }

    fn running_slots(st: &State) -> Vec<u64> {
        let mut v: Vec<u64> = st
            .tasks
            .values()
            .filter(|t| t.desired_state == DesiredState::Running)
            .map(|t| t.slot)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn fills_slots_then_is_quiet() {
        let mut st = state_with(3);
        let cmds = reconcile(&st, 1);
        apply_all(&mut st, cmds);
        assert_eq!(running_slots(&st), vec![1, 2, 3]);
        assert!(
            reconcile(&st, 2).is_empty(),
            "converged state needs no change"
        );
    }

    #[test]
    fn scale_down_stops_the_highest_slots() {
        let mut st = state_with(3);
        let cmds = reconcile(&st, 1);
        apply_all(&mut st, cmds);
        st.services.get_mut("s1").unwrap().spec.replicas = 1;
        let cmds = reconcile(&st, 2);
        apply_all(&mut st, cmds);
        assert_eq!(running_slots(&st), vec![1]);
    }

    #[test]
    fn a_running_task_of_a_removed_service_is_shut_down() {
        let mut st = state_with(2);
        let cmds = reconcile(&st, 1);
        apply_all(&mut st, cmds);
        for t in st.tasks.values_mut() {
            t.state = TaskState::Running;
        }
        // The service is gone but its tasks still say "run" (e.g. written by
        // an older version that did not refuse them).
        st.services.clear();
        let cmds = reconcile(&st, 2);
        let mut stopped: Vec<&String> = cmds
            .iter()
            .flat_map(|c| match c {
                Command::SetDesiredState {
                    task_ids,
                    desired: DesiredState::Shutdown,
                } => task_ids.iter().collect(),
                _ => Vec::new(),
            })
            .collect();
        stopped.sort();
        let mut all: Vec<&String> = st.tasks.keys().collect();
        all.sort();
        assert_eq!(
            stopped, all,
            "every running task of the removed service stops"
        );
        assert!(
            !cmds
                .iter()
                .any(|c| matches!(c, Command::CreateTasks { .. })),
            "nothing new is created for a removed service"
        );
    }

    fn add_node(st: &mut State, id: &str) {
        let mut n = st.nodes["n1"].clone();
        n.id = id.into();
        st.nodes.insert(id.into(), n);
    }

    #[test]
    fn the_tasks_of_a_down_node_move_to_the_others() {
        let mut st = state_with(4);
        add_node(&mut st, "n2");
        let cmds = reconcile(&st, 1);
        apply_all(&mut st, cmds);
        for t in st.tasks.values_mut() {
            t.state = TaskState::Running;
        }
        let on_n2: Vec<(String, u64)> = st
            .tasks
            .values()
            .filter(|t| t.node_id.as_deref() == Some("n2"))
            .map(|t| (t.id.clone(), t.slot))
            .collect();
        assert_eq!(on_n2.len(), 2, "spread over both nodes");
        st.nodes.get_mut("n2").unwrap().status.state = NodeState::Down;
        let cmds = reconcile(&st, 2);
        apply_all(&mut st, cmds);
        for (id, slot) in &on_n2 {
            assert_eq!(
                st.tasks[id].desired_state,
                DesiredState::Shutdown,
                "the Down node's task is told to stop"
            );
            let live: Vec<&Task> = st
                .tasks
                .values()
                .filter(|t| t.slot == *slot && t.desired_state == DesiredState::Running)
                .collect();
            assert_eq!(live.len(), 1, "slot {slot} has one live task");
            assert_eq!(live[0].node_id.as_deref(), Some("n1"));
        }
        assert_eq!(running_slots(&st), vec![1, 2, 3, 4]);
        // Back up: nothing moves back, the old tasks stay stopped.
        st.nodes.get_mut("n2").unwrap().status.state = NodeState::Ready;
        for t in st.tasks.values_mut() {
            if t.state == TaskState::Assigned {
                t.state = TaskState::Running;
            }
        }
        assert!(reconcile(&st, 3).is_empty());
    }

    #[test]
    fn a_down_nodes_task_stays_when_there_is_nowhere_to_go() {
        let mut st = state_with(1);
        let cmds = reconcile(&st, 1);
        apply_all(&mut st, cmds);
        st.nodes.get_mut("n1").unwrap().status.state = NodeState::Down;
        assert!(reconcile(&st, 2).is_empty());
    }

    #[test]
    fn failed_task_is_replaced_after_the_restart_delay() {
        let mut st = state_with(1);
        let cmds = reconcile(&st, 1);
        apply_all(&mut st, cmds);
        for t in st.tasks.values_mut() {
            t.state = TaskState::Failed;
            t.updated_at_ms = 10;
        }
        assert!(reconcile(&st, 10 + RESTART_DELAY_MS - 1).is_empty());
        let cmds = reconcile(&st, 10 + RESTART_DELAY_MS);
        apply_all(&mut st, cmds);
        assert_eq!(st.tasks.len(), 2);
        assert_eq!(running_slots(&st), vec![1]);
    }
}
