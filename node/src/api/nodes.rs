//! `/v1/nodes…`: what `node ls / inspect / update / rm / promote / demote`
//! ask of a manager.

use hyper::body::Incoming;
use swarmlet_proto::api::{NodeAvailabilityRequest, NodeView};
use swarmlet_proto::{Command, Node, NodeRole};

use super::server::{body_json, json, ApiState, Response};
use super::ApiError;
use crate::daemon::Cluster;

/// How `node ls` shows one node to the manager `st`.
fn view(st: &ApiState, cluster: &Cluster, n: &Node) -> NodeView {
    let is_self = n.id == st.identity.node_id;
    let ready = n.status.state == swarmlet_proto::NodeState::Ready;
    NodeView {
        node: n.clone(),
        status: n.status.state.to_string(),
        manager_status: match n.role {
            NodeRole::Manager if cluster.raft.leader() == Some(n.raft_id) => "Leader".into(),
            // Heartbeats reach the leader's dispatcher (a follower passes
            // its own on), so a manager that is Ready is reachable.
            NodeRole::Manager if ready || is_self => "Reachable".into(),
            NodeRole::Manager => "Unreachable".into(),
            NodeRole::Worker => String::new(),
        },
        is_self,
    }
}

pub fn list(st: &ApiState) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let state = cluster.store.read();
    let views: Vec<NodeView> = state.nodes.values().map(|n| view(st, cluster, n)).collect();
    Ok(json(200, &views))
}

fn find(cluster: &Cluster, key: &str) -> Result<Node, ApiError> {
    cluster.store.read().find_node(key).cloned().ok_or_else(|| {
        ApiError::not_found(format!(
            "node {key} not found; \"swarmlet node ls\" lists the nodes"
        ))
    })
}

pub fn inspect(st: &ApiState, key: &str) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let n = find(cluster, key)?;
    Ok(json(200, &view(st, cluster, &n)))
}

pub async fn set_availability(
    st: &ApiState,
    key: &str,
    body: Incoming,
) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let req: NodeAvailabilityRequest = body_json(body).await?;
    let n = find(cluster, key)?;
    cluster
        .propose_once(Command::SetNodeAvailability {
            node_id: n.id.clone(),
            availability: req.availability,
        })
        .await?;
    Ok(json(200, &serde_json::json!({ "id": n.id })))
}
