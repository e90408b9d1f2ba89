//! `/v1/nodes…`: what `node ls / inspect / update / rm / promote / demote`
//! ask of a manager.

use std::collections::HashMap;

use hyper::body::Incoming;
use swarmlet_proto::api::{NodeAvailabilityRequest, NodeGossip, NodeRoleRequest, NodeView};
use swarmlet_proto::{Command, Node, NodeRole};

use crate::store::Lookup;

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
    match cluster.store.read().lookup_node(key) {
        Ok(n) => Ok(n.clone()),
        Err(Lookup::NotFound) => Err(ApiError::not_found(format!(
            "node {key} not found; \"swarmlet node ls\" lists the nodes"
        ))),
        Err(Lookup::Ambiguous { matches }) => Err(ApiError::bad_request(format!(
            "node {key} is ambiguous ({matches} matches found); use the node's ID (\"swarmlet node ls\" lists them)"
        ))),
    }
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

/// Whether the managers left after `leaving` goes can still form a quorum
/// (Docker's rule): counting only reachable ones (`Ready`, or the node
/// answering), they must be a majority of the new manager count. `Err`
/// says why not and what to do.
fn quorum_after(
    st: &ApiState,
    nodes: &[&Node],
    leaving: &Node,
    what: &str,
) -> Result<(), ApiError> {
    let managers: Vec<&&Node> = nodes
        .iter()
        .filter(|n| n.role == NodeRole::Manager)
        .collect();
    if managers.len() <= 1 {
        return Err(ApiError::conflict(format!(
            "node {} is the last manager of the swarm: it cannot be {what}; \
             removing the last manager erases all current state of the swarm. \
             Promote another node first (\"swarmlet node promote NODE\")",
            leaving.hostname
        )));
    }
    let left = managers.len() - 1;
    let reachable = managers
        .iter()
        .filter(|n| n.id != leaving.id)
        .filter(|n| {
            n.status.state == swarmlet_proto::NodeState::Ready || n.id == st.identity.node_id
        })
        .count();
    if reachable * 2 <= left {
        return Err(ApiError::conflict(format!(
            "node {} cannot be {what}: only {reachable} of the {left} managers left would be \
             reachable, fewer than a quorum ({} needed), and the swarm could no longer change. \
             Bring the Down managers back first, or repeat with --force to do it anyway",
            leaving.hostname,
            left / 2 + 1
        )));
    }
    Ok(())
}

/// `POST /v1/nodes/{id}/role` `{role, force}`: promote or demote.
pub async fn set_role(st: &ApiState, key: &str, body: Incoming) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let req: NodeRoleRequest = body_json(body).await?;
    let n = find(cluster, key)?;
    if n.role == req.role {
        // Docker answers the same: nothing to do is not an error.
        return Ok(json(
            200,
            &serde_json::json!({ "id": n.id, "changed": false }),
        ));
    }
    if req.role == NodeRole::Worker {
        let state = cluster.store.read();
        let nodes: Vec<&Node> = state.nodes.values().collect();
        let managers = nodes.iter().filter(|n| n.role == NodeRole::Manager).count();
        if managers <= 1 {
            // Never forced: a swarm without managers cannot be managed.
            return Err(ApiError::conflict(format!(
                "node {} is the last manager of the swarm and cannot be demoted; \
                 promote another node first (\"swarmlet node promote NODE\")",
                n.hostname
            )));
        }
        if !req.force {
            quorum_after(st, &nodes, &n, "demoted")?;
        }
    }
    cluster
        .propose_once(Command::SetNodeRole {
            node_id: n.id.clone(),
            role: req.role,
        })
        .await?;
    tracing::info!(node = %n.id, role = ?req.role, "node role changed");
    Ok(json(
        200,
        &serde_json::json!({ "id": n.id, "changed": true }),
    ))
}

/// `DELETE /v1/nodes/{id}[?force=true]`.
pub async fn remove(st: &ApiState, key: &str, query: &str) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let force = query
        .split('&')
        .any(|kv| kv == "force=true" || kv == "force=1" || kv == "force");
    let n = find(cluster, key)?;
    if n.id == st.identity.node_id {
        return Err(ApiError::conflict(format!(
            "node {} is the node answering this request; run \"swarmlet leave\" on it \
             (demote it first if it is a manager), or \"node rm\" it from another manager",
            n.hostname
        )));
    }
    {
        let state = cluster.store.read();
        let nodes: Vec<&Node> = state.nodes.values().collect();
        if n.role == NodeRole::Manager
            && nodes.iter().filter(|n| n.role == NodeRole::Manager).count() <= 1
        {
            return Err(ApiError::conflict(format!(
                "node {} is the last manager of the swarm and cannot be removed",
                n.hostname
            )));
        }
        if !force {
            if n.status.state == swarmlet_proto::NodeState::Ready {
                return Err(ApiError::conflict(format!(
                    "node {} is not down and can't be removed: run \"swarmlet leave\" on it \
                     first, or repeat with --force",
                    n.hostname
                )));
            }
            if n.role == NodeRole::Manager {
                quorum_after(st, &nodes, &n, "removed")?;
            }
        }
    }
    cluster
        .propose_once(Command::RemoveNode {
            node_id: n.id.clone(),
        })
        .await?;
    tracing::info!(node = %n.id, "node removed from the swarm");
    Ok(json(200, &serde_json::json!({ "id": n.id })))
}

/// `POST /v1/dispatcher/role` (a node about itself): the role the store
/// gives the caller, and with a CSR a certificate for that role.
pub fn node_role(
    st: &ApiState,
    caller_node_id: &str,
    req: swarmlet_proto::cluster::RoleRequest,
) -> Result<Response, ApiError> {
    let cluster = st.cluster()?;
    let (me, ca, cluster_id, managers) = {
        let s = cluster.store.read();
        let managers: Vec<Node> = s
            .nodes
            .values()
            .filter(|n| n.role == NodeRole::Manager)
            .cloned()
            .collect();
        (
            s.nodes.get(caller_node_id).cloned(),
            s.cluster_ca.clone(),
            s.cluster_id.clone(),
            managers,
        )
    };
    let me = me.ok_or_else(|| {
        ApiError::not_found(format!(
            "node {caller_node_id} is not in this swarm; run \"swarmlet leave\" on it and join again"
        ))
    })?;
    let (Some(ca), Some(cluster_id)) = (ca, cluster_id) else {
        return Err(ApiError::new(503, "this swarm has no cluster CA"));
    };
    let cert_pem = match req.csr_pem {
        Some(csr) => {
            let ca = crate::pki::Ca::load(&ca).map_err(|e| ApiError::new(500, e.to_string()))?;
            let role = match me.role {
                NodeRole::Manager => crate::pki::CertRole::Manager,
                NodeRole::Worker => crate::pki::CertRole::Worker,
            };
            let cert = ca
                .sign_node(&csr, &me.id, role, &cluster_id)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            tracing::info!(node = %me.id, ?role, "issued a certificate for a node's new role");
            Some(cert)
        }
        None => None,
    };
    Ok(json(
        200,
        &swarmlet_proto::cluster::RoleAnswer {
            role: me.role,
            cert_pem,
            cluster_id,
            managers: managers.iter().map(|n| n.addr.clone()).collect(),
            peers: managers
                .iter()
                .map(|n| swarmlet_proto::cluster::ManagerPeer {
                    raft_id: n.raft_id,
                    addr: n.addr.clone(),
                })
                .collect(),
        },
    ))
}
