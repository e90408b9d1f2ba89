//! Placement. Architecture invariant: a pure function from a state snapshot
//! to an assignment; it does no IO and reads no clock.

use std::collections::HashMap;

use swarmlet_proto::{Availability, Node};

/// Picks the node for one new task: among active nodes, the one running the
/// fewest tasks (spread), ties broken by node ID so every run agrees.
/// `load` counts live tasks per node and is updated by the caller.
pub fn place<'a>(
    nodes: impl Iterator<Item = &'a Node>,
    load: &HashMap<String, usize>,
) -> Option<&'a Node> {
    nodes
        .filter(|n| n.availability == Availability::Active)
        .min_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id.clone()))
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
        assert_eq!(place(nodes.iter(), &load).map(|n| n.id.as_str()), Some("b"));
        load.insert("b".to_string(), 3);
        assert_eq!(place(nodes.iter(), &load).map(|n| n.id.as_str()), Some("a"));
        assert!(place(nodes[2..].iter(), &load).is_none());
    }
}
