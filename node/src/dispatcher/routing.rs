//! The cluster's routing view (`Routes`): every published port and every
//! replica requests may reach, with its node's cluster address. Every node
//! gets it with its assignments, so the mesh on a worker (which holds no
//! store) knows the whole cluster's services as a manager does.
//!
//! A pure function of the store's state, as `assignments.rs`.

use swarmlet_proto::dispatcher::{RoutePort, RouteReplica, Routes};
use swarmlet_proto::{DesiredState, NodeState, TaskState};

use crate::store::State;

/// Ports of every service; replicas that are desired and reported running
/// on a node that is not `Down` (a `Down` node's replicas leave every
/// node's rotation as soon as the store says so). Sorted, so two views of
/// the same state compare equal.
pub fn routes_of(state: &State) -> Routes {
    let mut ports: Vec<RoutePort> = state
        .services
        .values()
        .flat_map(|s| {
            s.spec.ports.iter().map(|p| RoutePort {
                port: p.published,
                service_id: s.id.clone(),
                service_name: s.spec.name.clone(),
                mode: s.spec.mesh_mode(),
                target: p.target,
            })
        })
        .collect();
    ports.sort_by_key(|p| p.port);
    let mut replicas: Vec<RouteReplica> = state
        .tasks
        .values()
        .filter(|t| t.desired_state == DesiredState::Running && t.state == TaskState::Running)
        .filter(|t| state.services.contains_key(&t.service_id))
        .filter_map(|t| {
            let node = state.nodes.get(t.node_id.as_deref()?)?;
            if node.status.state == NodeState::Down || node.addr.is_empty() {
                return None;
            }
            Some(RouteReplica {
                task_id: t.id.clone(),
                service_id: t.service_id.clone(),
                name: format!("{}.{}", t.service_name, t.slot),
                node_id: node.id.clone(),
                node_addr: node.addr.clone(),
                endpoint: t.endpoint.clone(),
            })
        })
        .collect();
    replicas.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    Routes { ports, replicas }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dispatcher::tests::{service, task};
    use swarmlet_proto::{Node, NodeRole, PortConfig, Protocol};

    pub(crate) fn node(id: &str, state: NodeState) -> Node {
        Node {
            id: id.into(),
            raft_id: 1,
            hostname: id.into(),
            role: NodeRole::Worker,
            availability: swarmlet_proto::Availability::Active,
            addr: format!("{id}:2377"),
            created_at_ms: 0,
            status: swarmlet_proto::NodeStatus {
                state,
                message: String::new(),
            },
            port_problems: Vec::new(),
        }
    }

    #[test]
    fn running_replicas_on_live_nodes_with_every_port() {
        let mut st = State::default();
        let port = PortConfig {
            published: 8080,
            target: 80,
            protocol: Protocol::Tcp,
        };
        st.services
            .insert("s".into(), service("s", "web", 3, vec![port]));
        st.nodes.insert("a".into(), node("a", NodeState::Ready));
        st.nodes.insert("b".into(), node("b", NodeState::Down));
        for (id, n, slot, state) in [
            ("t1", "a", 1, TaskState::Running),
            ("t2", "b", 2, TaskState::Running),
            ("t3", "a", 3, TaskState::Starting),
        ] {
            let mut t = task(id, n, slot);
            t.state = state;
            st.tasks.insert(id.into(), t);
        }
        let r = routes_of(&st);
        assert_eq!(r.ports.len(), 1);
        assert_eq!(
            (r.ports[0].port, r.ports[0].service_name.as_str()),
            (8080, "web")
        );
        let names: Vec<&str> = r.replicas.iter().map(|x| x.task_id.as_str()).collect();
        assert_eq!(names, ["t1"], "not the Down node's, not the starting one");
        assert_eq!(r.replicas[0].node_addr, "a:2377");
        // Told to stop: out of rotation at once.
        st.tasks.get_mut("t1").unwrap().desired_state = DesiredState::Shutdown;
        assert!(routes_of(&st).replicas.is_empty());
    }
}
