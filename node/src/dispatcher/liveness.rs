//! Which nodes are alive: the last heartbeat per node (in memory), and the
//! leader's decision to mark a node `Down` or `Ready` again through raft.
//!
//! A new leader knows no heartbeat times, so, as swarmkit does, it gives
//! every node a fresh grace period (`fresh_grace`) instead of marking
//! everyone down at once. The leader's own node is always `Ready`: its agent
//! runs in the same process, which exits if the agent dies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use swarmlet_proto::{Node, NodeState, NodeStatus};

pub struct Liveness {
    inner: Mutex<Inner>,
}

struct Inner {
    seen: HashMap<String, Instant>,
    grace_from: Instant,
}

/// What the liveness table holds at one moment.
pub struct Seen {
    pub seen: HashMap<String, Instant>,
    pub grace_from: Instant,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                grace_from: Instant::now(),
            }),
        }
    }
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A heartbeat from `node` (or a call that counts as one).
    pub fn heard(&self, node: &str) {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.seen.get_mut(node) {
            Some(t) => *t = now,
            None => {
                inner.seen.insert(node.to_string(), now);
            }
        }
    }

    /// Every node gets `down_after` from `now` before it can be marked down.
    pub fn fresh_grace(&self, now: Instant) {
        self.lock().grace_from = now;
    }

    pub fn snapshot(&self) -> Seen {
        let inner = self.lock();
        Seen {
            seen: inner.seen.clone(),
            grace_from: inner.grace_from,
        }
    }

    /// Forgets nodes no longer in the cluster.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().seen.retain(|n, _| keep(n));
    }
}

/// The status changes the leader should propose at `now`: `Down` for a node
/// not heard from for longer than `down_after` (counting from the grace
/// start at the earliest), `Ready` for one heard from since the grace start
/// that is not `Ready`. Nodes already in the right state are left alone, so
/// raft sees one entry per transition, not one per heartbeat.
pub fn decide(
    nodes: &BTreeMap<String, Node>,
    seen: &Seen,
    leader_node: &str,
    now: Instant,
    down_after: Duration,
) -> Vec<(String, NodeStatus)> {
    let mut out = Vec::new();
    for n in nodes.values() {
        if n.id == leader_node {
            if n.status.state != NodeState::Ready {
                out.push((n.id.clone(), NodeStatus::ready()));
            }
            continue;
        }
        let heard = seen
            .seen
            .get(&n.id)
            .copied()
            .filter(|t| *t >= seen.grace_from);
        let quiet = now.saturating_duration_since(heard.unwrap_or(seen.grace_from));
        if quiet > down_after {
            if n.status.state != NodeState::Down {
                out.push((
                    n.id.clone(),
                    NodeStatus {
                        state: NodeState::Down,
                        message: format!(
                            "heartbeat failure: no heartbeat for {:.1}s (--node-down-after {})",
                            quiet.as_secs_f64(),
                            humantime::format_duration(down_after)
                        ),
                    },
                ));
            }
        } else if heard.is_some() && n.status.state != NodeState::Ready {
            out.push((n.id.clone(), NodeStatus::ready()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmlet_proto::{Availability, NodeRole};

    fn node(id: &str, state: NodeState) -> Node {
        Node {
            id: id.into(),
            raft_id: 1,
            hostname: id.into(),
            role: NodeRole::Worker,
            availability: Availability::Active,
            addr: String::new(),
            created_at_ms: 0,
            status: NodeStatus {
                state,
                message: String::new(),
            },
            port_problems: Vec::new(),
        }
    }

    fn nodes(list: &[(&str, NodeState)]) -> BTreeMap<String, Node> {
        list.iter()
            .map(|(id, s)| (id.to_string(), node(id, *s)))
            .collect()
    }

    const DOWN_AFTER: Duration = Duration::from_secs(3);

    #[test]
    fn silent_nodes_go_down_after_the_grace_and_come_back_ready() {
        let t0 = Instant::now();
        let ns = nodes(&[
            ("leader", NodeState::Unknown),
            ("a", NodeState::Ready),
            ("b", NodeState::Ready),
        ]);
        let mut seen = Seen {
            seen: HashMap::new(),
            grace_from: t0,
        };
        seen.seen.insert("a".into(), t0 + Duration::from_secs(2));
        // Within the grace nobody is down; the leader is Ready at once.
        let d = decide(&ns, &seen, "leader", t0 + DOWN_AFTER, DOWN_AFTER);
        assert_eq!(d, vec![("leader".to_string(), NodeStatus::ready())]);
        // b never sent anything since the grace began: Down; a is fine.
        let d = decide(
            &ns,
            &seen,
            "leader",
            t0 + DOWN_AFTER + Duration::from_millis(1),
            DOWN_AFTER,
        );
        let ids: Vec<(&str, NodeState)> = d.iter().map(|(n, s)| (n.as_str(), s.state)).collect();
        assert_eq!(ids, [("b", NodeState::Down), ("leader", NodeState::Ready)]);
        assert!(d[0].1.message.contains("heartbeat failure"), "{:?}", d[0]);
        // b is Down and heartbeats again: Ready.
        let ns = nodes(&[
            ("leader", NodeState::Ready),
            ("a", NodeState::Ready),
            ("b", NodeState::Down),
        ]);
        let now = t0 + Duration::from_secs(10);
        seen.seen.insert("a".into(), now);
        seen.seen.insert("b".into(), now);
        let d = decide(&ns, &seen, "leader", now, DOWN_AFTER);
        assert_eq!(d, vec![("b".to_string(), NodeStatus::ready())]);
    }

    #[test]
    fn a_heartbeat_from_before_the_grace_does_not_count() {
        let t0 = Instant::now();
        let ns = nodes(&[("leader", NodeState::Ready), ("a", NodeState::Unknown)]);
        let mut seen = Seen {
            seen: HashMap::new(),
            grace_from: t0 + Duration::from_secs(5),
        };
        seen.seen.insert("a".into(), t0);
        // Heard by this node before it led: not Ready yet, not Down yet.
        assert!(decide(
            &ns,
            &seen,
            "leader",
            t0 + Duration::from_secs(6),
            DOWN_AFTER
        )
        .is_empty());
        assert_eq!(
            decide(
                &ns,
                &seen,
                "leader",
                t0 + Duration::from_secs(9),
                DOWN_AFTER
            )[0]
            .1
            .state,
            NodeState::Down
        );
    }
}
