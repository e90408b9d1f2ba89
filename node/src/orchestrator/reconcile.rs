//! Desired services → task changes. A pure function of the store state and
//! the time: the loop in `mod.rs` proposes what it returns. Each replica
//! slot is decided in `slot`; placement is `scheduler`'s.

use std::collections::BTreeMap;

use swarmlet_proto::{Command, DesiredState, Task, TaskState, TaskStatus};

use super::scheduler;
use super::slot::{self, Changes};
use crate::store::State;

/// Docker's default task history per slot.
pub const TASK_HISTORY: usize = 5;

/// The commands that move the cluster toward its desired state.
pub fn reconcile(state: &State, now_ms: u64) -> Vec<Command> {
    let mut changes = Changes::default();
    let mut placer = scheduler::Placer::new(state.nodes.values(), state.tasks.values());

    for service in state.services.values() {
        let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
        for t in state.tasks_of(&service.id) {
            slots.entry(t.slot).or_default().push(t);
        }
        let mut placer = placer.for_service(&service.id);
        for slot in 1..=service.spec.replicas {
            let tasks = slots.get(&slot).map(Vec::as_slice).unwrap_or(&[]);
            slot::decide(
                state,
                service,
                slot,
                tasks,
                now_ms,
                &mut placer,
                &mut changes,
            );
        }
        // Scale down: slots above the replica count stop.
        for (slot, tasks) in &slots {
            if *slot > service.spec.replicas {
                changes.stop.extend(
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
                changes
                    .remove
                    .extend(ended[TASK_HISTORY..].iter().map(|t| t.id.clone()));
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
            changes.remove.push(t.id.clone());
        } else if t.desired_state == DesiredState::Running {
            changes.stop.push(t.id.clone());
        }
    }

    // A task told to stop while waiting out its restart back-off never
    // reached a node: nobody else will say it ended.
    let never_started: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| t.state == TaskState::New && t.desired_state == DesiredState::Shutdown)
        .filter(|t| state.services.contains_key(&t.service_id))
        .collect();

    let Changes {
        create,
        stop,
        remove,
        assign,
    } = changes;
    let statuses: Vec<TaskStatus> = assign
        .into_iter()
        .map(|id| status(id, TaskState::Assigned, "assigned"))
        .chain(never_started.iter().map(|t| {
            status(
                t.id.clone(),
                TaskState::Shutdown,
                "stopped before it started",
            )
        }))
        .collect();
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
    if !statuses.is_empty() {
        out.push(Command::UpdateTaskStatuses { updates: statuses });
    }
    out
}

fn status(task_id: String, state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        task_id,
        state,
        message: message.into(),
        error: None,
        endpoint: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmlet_proto::{
        Availability, Envelope, Image, Node, NodeRole, NodeState, Service, ServiceSpec,
    };

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
                    instance_concurrency: 0,
                    env: vec![],
                    stop_grace_period_ms: None,
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

    /// Fails every live task of the state at `at_ms`, as an agent reports.
    fn fail_all(st: &mut State, at_ms: u64) {
        for t in st.tasks.values_mut() {
            if t.desired_state == DesiredState::Running && !t.state.is_terminal() {
                t.state = TaskState::Failed;
                t.updated_at_ms = at_ms;
            }
        }
    }

    /// Applies `cmds` as the store would at `at_ms` (what `updated_at_ms`
    /// the stopped tasks get, which the back-off reads back).
    fn apply_at(st: &mut State, cmds: Vec<Command>, at_ms: u64) {
        let store = crate::store::Store::new();
        store.restore(st.clone());
        for command in cmds {
            store
                .apply(&Envelope {
                    proposal_id: 0,
                    at_ms,
                    command,
                })
                .unwrap();
        }
        *st = store.read().clone();
    }

    fn live(st: &State) -> Vec<&Task> {
        st.tasks
            .values()
            .filter(|t| t.desired_state == DesiredState::Running)
            .collect()
    }

    #[test]
    fn a_failed_task_is_replaced_at_once() {
        let mut st = state_with(1);
        let cmds = reconcile(&st, 1);
        apply_at(&mut st, cmds, 1);
        agents_report(&mut st);
        fail_all(&mut st, 10);
        let cmds = reconcile(&st, 11);
        apply_at(&mut st, cmds, 11);
        assert_eq!(st.tasks.len(), 2);
        assert_eq!(running_slots(&st), vec![1]);
        assert_eq!(live(&st)[0].state, TaskState::Assigned, "it starts now");
    }

    #[test]
    fn a_slot_that_keeps_failing_waits_longer_each_time_and_shows_it() {
        let mut st = state_with(1);
        let mut now = 1;
        let cmds = reconcile(&st, now);
        apply_at(&mut st, cmds, now);
        let mut waits = Vec::new();
        for _ in 0..8 {
            // The live task starts (once its node has it), runs 100 ms and
            // fails; the orchestrator runs every 100 ms.
            loop {
                let t = live(&st)[0].clone();
                if t.state == TaskState::Assigned {
                    break;
                }
                assert_eq!(t.state, TaskState::New);
                assert_eq!(t.node_id.as_deref(), Some("n1"), "placed at once");
                assert!(
                    t.message.contains("restart back-off"),
                    "service ps says why it waits: {}",
                    t.message
                );
                now += 100;
                let cmds = reconcile(&st, now);
                apply_at(&mut st, cmds, now);
            }
            agents_report(&mut st);
            now += 100;
            fail_all(&mut st, now);
            let failed_at = now;
            now += 1;
            let cmds = reconcile(&st, now);
            assert_eq!(created(&cmds).len(), 1, "replaced at once");
            apply_at(&mut st, cmds, now);
            // How long until the replacement is assigned.
            let t = live(&st)[0].clone();
            waits.push(t.created_at_ms.saturating_sub(failed_at) / 1000);
            assert!(st.tasks.len() <= TASK_HISTORY + 2, "history stays trimmed");
        }
        assert_eq!(waits, vec![0, 1, 2, 4, 8, 16, 32, 60]);
    }

    #[test]
    fn a_waiting_task_is_not_started_before_its_time() {
        let mut st = state_with(1);
        let cmds = reconcile(&st, 1);
        apply_at(&mut st, cmds, 1);
        for (fail_at, start_expected) in [(100, 101), (200, 1_201)] {
            agents_report(&mut st);
            fail_all(&mut st, fail_at);
            let cmds = reconcile(&st, fail_at + 1);
            apply_at(&mut st, cmds, fail_at + 1);
            let t = live(&st)[0].clone();
            assert_eq!(t.created_at_ms, start_expected);
            if start_expected > fail_at + 1 {
                assert_eq!(t.state, TaskState::New);
                assert!(
                    reconcile(&st, start_expected - 1).is_empty(),
                    "nothing to do while it waits"
                );
                let cmds = reconcile(&st, start_expected);
                apply_at(&mut st, cmds, start_expected);
                assert_eq!(st.tasks[&t.id].state, TaskState::Assigned);
            }
        }
    }

    #[test]
    fn a_waiting_task_scaled_away_ends_without_its_node() {
        let mut st = state_with(1);
        let cmds = reconcile(&st, 1);
        apply_at(&mut st, cmds, 1);
        for at in [100, 200] {
            agents_report(&mut st);
            fail_all(&mut st, at);
            let cmds = reconcile(&st, at + 1);
            apply_at(&mut st, cmds, at + 1);
        }
        let waiting = live(&st)[0].id.clone();
        assert_eq!(st.tasks[&waiting].state, TaskState::New);
        st.services.get_mut("s1").unwrap().spec.replicas = 0;
        let cmds = reconcile(&st, 300);
        apply_at(&mut st, cmds, 300);
        assert_eq!(st.tasks[&waiting].desired_state, DesiredState::Shutdown);
        let cmds = reconcile(&st, 301);
        apply_at(&mut st, cmds, 301);
        assert_eq!(
            st.tasks[&waiting].state,
            TaskState::Shutdown,
            "no node will ever report it, so the orchestrator does"
        );
        assert!(reconcile(&st, 302).is_empty());
    }

    /// Every task not yet running (and meant to) reports `Running`; every
    /// task told to stop reports `Shutdown`, as the agents do.
    fn agents_report(st: &mut State) {
        for t in st.tasks.values_mut() {
            match t.desired_state {
                DesiredState::Running if !t.state.is_terminal() => t.state = TaskState::Running,
                DesiredState::Shutdown if !t.state.is_terminal() => t.state = TaskState::Shutdown,
                _ => {}
            }
        }
    }

    fn live_on(st: &State, node: &str) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = st
            .tasks
            .values()
            .filter(|t| t.node_id.as_deref() == Some(node))
            .filter(|t| t.desired_state == DesiredState::Running)
            .map(|t| (t.id.clone(), t.slot))
            .collect();
        v.sort();
        v
    }

    fn stopped(cmds: &[Command]) -> Vec<String> {
        cmds.iter()
            .flat_map(|c| match c {
                Command::SetDesiredState {
                    task_ids,
                    desired: DesiredState::Shutdown,
                } => task_ids.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn created(cmds: &[Command]) -> Vec<Task> {
        cmds.iter()
            .flat_map(|c| match c {
                Command::CreateTasks { tasks } => tasks.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn set_availability(st: &mut State, node: &str, a: Availability) {
        st.nodes.get_mut(node).unwrap().availability = a;
    }

    #[test]
    fn drain_starts_each_new_task_before_its_old_one_stops() {
        let mut st = state_with(4);
        add_node(&mut st, "n2");
        let cmds = reconcile(&st, 1);
        apply_all(&mut st, cmds);
        agents_report(&mut st);
        let leaving = live_on(&st, "n2");
        assert_eq!(leaving.len(), 2, "spread over both nodes");

        set_availability(&mut st, "n2", Availability::Drain);
        let cmds = reconcile(&st, 2);
        assert!(
            stopped(&cmds).is_empty(),
            "nothing stops before its replacement runs"
        );
        let mut new_slots: Vec<u64> = created(&cmds)
            .iter()
            .inspect(|t| assert_eq!(t.node_id.as_deref(), Some("n1")))
            .map(|t| t.slot)
            .collect();
        new_slots.sort();
        let mut old_slots: Vec<u64> = leaving.iter().map(|l| l.1).collect();
        old_slots.sort();
        assert_eq!(
            new_slots, old_slots,
            "one new task per slot of the drained node"
        );
        apply_all(&mut st, cmds);

        // While the new tasks start, no second replacement is made and the
        // old ones keep running.
        assert!(reconcile(&st, 3).is_empty());
        // One replacement runs: only its old task stops.
        let (first_id, first_slot) = &leaving[0];
        for t in st.tasks.values_mut() {
            if t.slot == *first_slot && t.node_id.as_deref() == Some("n1") {
                t.state = TaskState::Running;
            }
        }
        let cmds = reconcile(&st, 4);
        assert_eq!(stopped(&cmds), vec![first_id.clone()]);
        assert!(created(&cmds).is_empty());
        apply_all(&mut st, cmds);
        agents_report(&mut st);
        let cmds = reconcile(&st, 5);
        assert_eq!(stopped(&cmds), vec![leaving[1].0.clone()]);
        apply_all(&mut st, cmds);
        agents_report(&mut st);
        assert!(
            live_on(&st, "n2").is_empty(),
            "the drained node runs nothing"
        );
        assert_eq!(running_slots(&st), vec![1, 2, 3, 4]);
        assert!(reconcile(&st, 6).is_empty(), "drained and converged");
    }

    #[test]
    fn a_drained_task_with_nowhere_to_go_stops_at_once() {
        let mut st = state_with(1);
        let cmds = reconcile(&st, 1);
        apply_all(&mut st, cmds);
        agents_report(&mut st);
        let old = live_on(&st, "n1");
        set_availability(&mut st, "n1", Availability::Drain);
        let cmds = reconcile(&st, 2);
        assert_eq!(stopped(&cmds), vec![old[0].0.clone()]);
        assert!(created(&cmds).is_empty());
        apply_all(&mut st, cmds);
        agents_report(&mut st);
        assert!(reconcile(&st, 3).is_empty(), "nothing to place it on");
        // Active again: the slot gets a new task.
        set_availability(&mut st, "n1", Availability::Active);
        let cmds = reconcile(&st, 4);
        assert_eq!(created(&cmds).len(), 1);
    }

    #[test]
    fn a_failed_replacement_does_not_stop_the_old_task() {
        let mut st = state_with(1);
        add_node(&mut st, "n2");
        let cmds = reconcile(&st, 1);
        apply_all(&mut st, cmds);
        agents_report(&mut st);
        let (old_id, _) = live_on(&st, "n1").remove(0);
        set_availability(&mut st, "n1", Availability::Drain);
        let cmds = reconcile(&st, 2);
        apply_all(&mut st, cmds);
        let (new_id, _) = live_on(&st, "n2").remove(0);
        let t = st.tasks.get_mut(&new_id).unwrap();
        t.state = TaskState::Failed;
        t.updated_at_ms = 10;
        let cmds = reconcile(&st, 11);
        assert_eq!(stopped(&cmds), vec![new_id], "only the failed one");
        assert_eq!(created(&cmds).len(), 1, "one new replacement");
        assert_eq!(created(&cmds)[0].node_id.as_deref(), Some("n2"));
        apply_all(&mut st, cmds);
        assert_eq!(st.tasks[&old_id].desired_state, DesiredState::Running);
        agents_report(&mut st);
        let cmds = reconcile(&st, 20);
        assert_eq!(
            stopped(&cmds),
            vec![old_id],
            "the new one runs: now it stops"
        );
    }

    #[test]
    fn a_draining_node_back_to_active_keeps_one_task_per_slot() {
        let mut st = state_with(1);
        add_node(&mut st, "n2");
        let cmds = reconcile(&st, 1);
        apply_all(&mut st, cmds);
        agents_report(&mut st);
        let (old_id, _) = live_on(&st, "n1").remove(0);
        set_availability(&mut st, "n1", Availability::Drain);
        let cmds = reconcile(&st, 2);
        apply_all(&mut st, cmds);
        set_availability(&mut st, "n1", Availability::Active);
        let cmds = reconcile(&st, 3);
        apply_all(&mut st, cmds);
        agents_report(&mut st);
        assert_eq!(running_slots(&st), vec![1]);
        assert_eq!(
            live_on(&st, "n1"),
            vec![(old_id, 1)],
            "the running one stays, the one still starting stops"
        );
    }

    #[test]
    fn pause_keeps_its_tasks_and_takes_no_new_ones() {
        let mut st = state_with(2);
        add_node(&mut st, "n2");
        let cmds = reconcile(&st, 1);
        apply_all(&mut st, cmds);
        agents_report(&mut st);
        let on_n2 = live_on(&st, "n2");
        assert_eq!(on_n2.len(), 1);
        set_availability(&mut st, "n2", Availability::Pause);
        assert!(
            reconcile(&st, 2).is_empty(),
            "a paused node keeps its tasks"
        );
        st.services.get_mut("s1").unwrap().spec.replicas = 5;
        let cmds = reconcile(&st, 3);
        assert!(created(&cmds)
            .iter()
            .all(|t| t.node_id.as_deref() == Some("n1")));
        apply_all(&mut st, cmds);
        assert_eq!(live_on(&st, "n2"), on_n2);
        set_availability(&mut st, "n2", Availability::Active);
        st.services.get_mut("s1").unwrap().spec.replicas = 6;
        let cmds = reconcile(&st, 4);
        assert_eq!(
            created(&cmds)[0].node_id.as_deref(),
            Some("n2"),
            "active again, it takes the next task"
        );
    }

    #[test]
    fn services_spread_independently() {
        let mut st = state_with(4);
        add_node(&mut st, "n2");
        add_node(&mut st, "n3");
        // s1 fills n1 and n2 while n3 is paused.
        set_availability(&mut st, "n3", Availability::Pause);
        let cmds = reconcile(&st, 1);
        apply_all(&mut st, cmds);
        set_availability(&mut st, "n3", Availability::Active);
        let mut s2: Service = st.services["s1"].clone();
        s2.id = "s2".into();
        s2.spec.name = "api".into();
        s2.spec.replicas = 3;
        st.services.insert("s2".into(), s2);
        let cmds = reconcile(&st, 2);
        let mut nodes: Vec<String> = created(&cmds)
            .iter()
            .filter_map(|t| t.node_id.clone())
            .collect();
        nodes.sort();
        assert_eq!(
            nodes,
            ["n1", "n2", "n3"],
            "one task of api per node, though n3 runs the fewest overall"
        );
    }
}
