//! Placement. Architecture invariant: a pure function from a state snapshot
//! to assignments; it does no IO and reads no clock.

use std::collections::{BTreeSet, HashMap};

use swarmlet_proto::{Availability, Node, NodeState};

/// Whether new tasks may go to `node`: it is `Active` and its heartbeats
/// arrive (`Ready`; a `Down` or not yet heard from node gets nothing).
pub fn available(node: &Node) -> bool {
    node.availability == Availability::Active && node.status.state == NodeState::Ready
}

/// Places tasks one after another on the available node running the fewest
/// tasks (spread), ties broken by node ID so every run agrees. Each placement
/// is O(log nodes), so placing many tasks on many nodes stays cheap.
pub struct Placer {
    by_load: BTreeSet<(usize, String)>,
}

impl Placer {
    /// `load` counts the live tasks per node ID.
    pub fn new<'a>(nodes: impl Iterator<Item = &'a Node>, load: &HashMap<String, usize>) -> Self {
        let by_load = nodes
            .filter(|n| available(n))
            .map(|n| (load.get(&n.id).copied().unwrap_or(0), n.id.clone()))
            .collect();
        Placer { by_load }
    }

    /// The node for the next task, counted as one more task on it; `None`
    /// when no node is available.
    pub fn place(&mut self) -> Option<String> {
        let (load, id) = self.by_load.pop_first()?;
        self.by_load.insert((load + 1, id.clone()));
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmlet_proto::NodeRole;

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

    #[test]
    fn spreads_and_skips_drained_nodes() {
        let nodes = [
            node("a", Availability::Active),
            node("b", Availability::Active),
            node("c", Availability::Drain),
        ];
        let mut load = HashMap::new();
        load.insert("a".to_string(), 2);
        let mut p = Placer::new(nodes.iter(), &load);
        let placed: Vec<String> = (0..4).map(|_| p.place().unwrap()).collect();
        assert_eq!(
            placed,
            ["b", "b", "a", "b"],
            "b catches up with a, then they alternate"
        );
        assert!(Placer::new(nodes[2..].iter(), &load).place().is_none());
    }

    #[test]
    fn skips_down_and_unknown_nodes() {
        let mut down = node("a", Availability::Active);
        down.status.state = NodeState::Down;
        let mut unknown = node("b", Availability::Active);
        unknown.status.state = NodeState::Unknown;
        let nodes = [down, unknown, node("c", Availability::Active)];
        let mut p = Placer::new(nodes.iter(), &HashMap::new());
        let placed: Vec<String> = (0..3).map(|_| p.place().unwrap()).collect();
        assert_eq!(placed, ["c", "c", "c"], "only the Ready node gets tasks");
        assert!(Placer::new(nodes[..2].iter(), &HashMap::new())
            .place()
            .is_none());
    }
}
