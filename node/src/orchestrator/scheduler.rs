//! Placement. Architecture invariant: a pure function from a state snapshot
//! to assignments; it does no IO and reads no clock.
//!
//! Spread per service, as Swarm's default strategy: the next task of service
//! S goes to the available node with the fewest live (non-terminal) tasks of
//! S, then the fewest live tasks overall, then the smallest node ID, so every
//! manager that decides on the same state decides the same.

use std::collections::{BTreeSet, HashMap};

use swarmlet_proto::{Availability, Node, NodeState, Task};

/// Whether new tasks may go to `node`: it is `Active` (not `Pause` or
/// `Drain`) and its heartbeats arrive (`Ready`; a `Down` or not yet heard
/// from node gets nothing).
pub fn available(node: &Node) -> bool {
    node.availability == Availability::Active && node.status.state == NodeState::Ready
}

/// Places tasks one after another, counting each placement, so the tasks of
/// one reconcile round spread as if placed one by one.
pub struct Placer {
    /// Live tasks on each available node.
    total: HashMap<String, usize>,
    /// Live tasks of each service on each node: service ID → node ID → count.
    of_service: HashMap<String, HashMap<String, usize>>,
}

impl Placer {
    /// `tasks`: every task of the state (terminal ones and unassigned ones
    /// are not counted).
    pub fn new<'a>(
        nodes: impl Iterator<Item = &'a Node>,
        tasks: impl Iterator<Item = &'a Task>,
    ) -> Self {
        let mut total: HashMap<String, usize> = nodes
            .filter(|n| available(n))
            .map(|n| (n.id.clone(), 0))
            .collect();
        let mut of_service: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for t in tasks {
            let Some(node) = &t.node_id else { continue };
            if t.state.is_terminal() {
                continue;
            }
            if let Some(c) = total.get_mut(node) {
                *c += 1;
            }
            *of_service
                .entry(t.service_id.clone())
                .or_default()
                .entry(node.clone())
                .or_default() += 1;
        }
        Placer { total, of_service }
    }

    /// A placer for the tasks of one service. Its order of nodes is built on
    /// its first placement (O(nodes log nodes)); each placement is then
    /// O(log nodes), so placing many tasks on many nodes stays cheap.
    pub fn for_service<'a>(&'a mut self, service_id: &'a str) -> ServicePlacer<'a> {
        ServicePlacer {
            placer: self,
            service_id,
            order: None,
        }
    }
}

/// Places the tasks of one service (see `Placer::for_service`).
pub struct ServicePlacer<'a> {
    placer: &'a mut Placer,
    service_id: &'a str,
    /// (tasks of the service, tasks overall, node ID) of every available node.
    order: Option<BTreeSet<(usize, usize, String)>>,
}

impl ServicePlacer<'_> {
    /// The node for the next task, counted as one more task on it; `None`
    /// when no node is available.
    pub fn place(&mut self) -> Option<String> {
        let placer = &mut *self.placer;
        let service_id = self.service_id;
        let order = self.order.get_or_insert_with(|| {
            let mine = placer.of_service.get(service_id);
            placer
                .total
                .iter()
                .map(|(id, total)| {
                    let own = mine.and_then(|m| m.get(id)).copied().unwrap_or(0);
                    (own, *total, id.clone())
                })
                .collect()
        });
        let (own, total, id) = order.pop_first()?;
        order.insert((own + 1, total + 1, id.clone()));
        if let Some(c) = placer.total.get_mut(&id) {
            *c += 1;
        }
        *placer
            .of_service
            .entry(service_id.to_string())
            .or_default()
            .entry(id.clone())
            .or_default() += 1;
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmlet_proto::{DesiredState, NodeRole, TaskState};

    fn node(id: &str, availability: Availability) -> Node {
        Node {
            id: id.into(),
            raft_id: 1,
            hostname: id.into(),
            role: NodeRole::Manager,
            availability,
            addr: String::new(),
            created_at_ms: 0,
            status: swarmlet_proto::NodeStatus::ready(),
            port_problems: Vec::new(),
        }
    }

    fn task(service: &str, node: &str, state: TaskState) -> Task {
        Task {
            id: format!("{service}-{node}-{state}"),
            service_id: service.into(),
            service_name: service.into(),
            slot: 1,
            service_version: 1,
            node_id: Some(node.into()),
            desired_state: DesiredState::Running,
            state,
            message: String::new(),
            error: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            endpoint: None,
        }
    }

    fn place(p: &mut Placer, service: &str, n: usize) -> Vec<String> {
        let mut s = p.for_service(service);
        (0..n).map(|_| s.place().unwrap()).collect()
    }

    #[test]
    fn spreads_and_skips_paused_and_drained_nodes() {
        let nodes = [
            node("a", Availability::Active),
            node("b", Availability::Active),
            node("c", Availability::Drain),
            node("d", Availability::Pause),
        ];
        let tasks = [
            task("x", "a", TaskState::Running),
            task("y", "a", TaskState::Running),
        ];
        let mut p = Placer::new(nodes.iter(), tasks.iter());
        assert_eq!(
            place(&mut p, "z", 4),
            ["b", "a", "b", "a"],
            "a new service alternates: its own count comes before the overall one"
        );
        let mut none = Placer::new(nodes[2..].iter(), tasks.iter());
        assert!(none.for_service("z").place().is_none());
    }

    #[test]
    fn each_service_spreads_on_its_own() {
        // a runs many tasks of x, b and c none: the overall-least-loaded
        // rule alone would put every task of y on b and c.
        let nodes = [
            node("a", Availability::Active),
            node("b", Availability::Active),
            node("c", Availability::Active),
        ];
        let mut tasks: Vec<Task> = (0..6)
            .map(|i| {
                let mut t = task("x", "a", TaskState::Running);
                t.id = format!("x{i}");
                t
            })
            .collect();
        tasks.push(task("y", "b", TaskState::Running));
        tasks.push(task("y", "c", TaskState::Running));
        let mut p = Placer::new(nodes.iter(), tasks.iter());
        assert_eq!(
            place(&mut p, "y", 4),
            ["a", "b", "c", "a"],
            "y's next task goes where y has fewest, even on the busiest node"
        );
        // Placements count: x now sees a with 8 tasks, b and c with 2 each.
        assert_eq!(place(&mut p, "x", 2), ["b", "c"]);
    }

    #[test]
    fn ended_tasks_do_not_count() {
        let nodes = [
            node("a", Availability::Active),
            node("b", Availability::Active),
        ];
        let tasks = [
            task("x", "a", TaskState::Failed),
            task("x", "a", TaskState::Shutdown),
            task("x", "b", TaskState::Starting),
        ];
        let mut p = Placer::new(nodes.iter(), tasks.iter());
        assert_eq!(place(&mut p, "x", 1), ["a"]);
    }

    #[test]
    fn skips_down_and_unknown_nodes() {
        let mut down = node("a", Availability::Active);
        down.status.state = NodeState::Down;
        let mut unknown = node("b", Availability::Active);
        unknown.status.state = NodeState::Unknown;
        let nodes = [down, unknown, node("c", Availability::Active)];
        let mut p = Placer::new(nodes.iter(), [].iter());
        assert_eq!(
            place(&mut p, "x", 3),
            ["c", "c", "c"],
            "only the Ready node gets tasks"
        );
        let mut none = Placer::new(nodes[..2].iter(), [].iter());
        assert!(none.for_service("x").place().is_none());
    }
}
