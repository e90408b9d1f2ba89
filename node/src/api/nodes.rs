//! `/v1/nodes…`: what `node ls / inspect / update / rm / promote / demote`
//! ask of a manager.

use std::collections::HashMap;

use hyper::body::Incoming;
use swarmlet_proto::api::{NodeAvailabilityRequest, NodeGossip, NodeView};
use swarmlet_proto::{Command, Node, NodeRole};

use super::server::{body_json, json, ApiState, Response};
use super::ApiError;
use crate::daemon::Cluster;
use crate::membership::Member;

/// What this node's gossip knows, by node ID (empty when gossip is off).
fn gossiped(st: &ApiState) -> HashMap<String, Member> {
    st.membership
        .get()
        .map(|m| {
            m.members()
                .into_iter()
                .map(|m| (m.node_id.clone(), m))
                .collect()
        })
        .unwrap_or_default()
}

/// How `node ls` shows one node to the manager `st`.
fn view(st: &ApiState, cluster: &Cluster, gossip: &HashMap<String, Member>, n: &Node) -> NodeView {
    let is_self = n.id == st.identity.node_id;
    let ready = n.status.state == swarmlet_proto::NodeState::Ready;
    let member = gossip.get(&n.id);
    // Gossip's failure detector notices a silent manager within seconds;
    // a manager gossip does not know (yet, or gossip is off) is judged by
    // its heartbeats, which reach the leader's dispatcher (a follower
    // passes its own on).
    let reachable = is_self || member.map_or(ready, Member::is_live);
    NodeView {
        node: n.clone(),
        status: n.status.state.to_string(),
        manager_status: match n.role {
            NodeRole::Manager if cluster.raft.leader() == Some(n.raft_id) => "Leader".into(),
            NodeRole::Manager if reachable => "Reachable".into(),
            NodeRole::Manager => "Unreachable".into(),
            NodeRole::Worker => String::new(),
        },
        is_self,
        gossip: member.map(|m| NodeGossip {
            addr: m.gossip_addr.to_string(),
            liveness: if m.is_live() { "live" } else { "dead" }.into(),
            os: m.info.platform.os.clone(),
            arch: m.info.platform.arch.clone(),
            cpus: m.info.resources.cpus,
            memory_bytes: m.info.resources.memory_bytes,
            labels: m.info.labels.clone(),
        }),
    }
}

pub fn list(st: &ApiState) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let gossip = gossiped(st);
    let state = cluster.store.read();
    let views: Vec<NodeView> = state
        .nodes
        .values()
        .map(|n| view(st, cluster, &gossip, n))
        .collect();
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
    Ok(json(200, &view(st, cluster, &gossiped(st), &n)))
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
