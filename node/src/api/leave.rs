//! `POST /v1/swarm/leave[?force=true]` (unix socket): this node leaves the
//! swarm. A worker forgets its swarm state (certificates, `swarm.json`,
//! `managers.json`, its identity) and restarts out of any swarm, its tasks
//! stopped with the old process; the managers then see it `Down` and
//! `node rm` removes it. A manager refuses without `--force`, as Docker does:
//! demote it first so the others keep their quorum.

use super::server::{json, ApiState, Response};
use super::ApiError;
use swarmlet_proto::NodeRole;

pub fn leave(st: &ApiState, query: &str) -> Result<Response, ApiError> {
    let force = query
        .split('&')
        .any(|kv| kv == "force=true" || kv == "force=1" || kv == "force");
    let in_swarm = st.cluster.get().is_some() || st.cluster_port.is_secure();
    if !in_swarm {
        return Err(ApiError::conflict(
            "this node is not part of a swarm; nothing to leave",
        ));
    }
    if let Some(cluster) = st.cluster.get() {
        if !force {
            let s = cluster.store.read();
            let managers = s
                .nodes
                .values()
                .filter(|n| n.role == NodeRole::Manager)
                .count();
            let reachable = s
                .nodes
                .values()
                .filter(|n| {
                    n.role == NodeRole::Manager
                        && n.id != st.identity.node_id
                        && n.status.state == swarmlet_proto::NodeState::Ready
                })
                .count();
            let msg = if managers <= 1 {
                "You are attempting to leave the swarm on a node that is participating as a manager. \
                 Removing the last manager erases all current state of the swarm. \
                 Use --force to ignore this message."
                    .to_string()
            } else if reachable * 2 < managers {
                format!(
                    "You are attempting to leave the swarm on a node that is participating as a manager. \
                     Removing this node leaves {reachable} reachable managers out of {}: the swarm would lose quorum \
                     and could no longer change. Use --force to ignore this message.",
                    managers - 1
                )
            } else {
                "You are attempting to leave the swarm on a node that is participating as a manager. \
                 Demote it first (\"swarmlet node demote NODE\" on another manager) so the others \
                 keep a clean quorum, or use --force to leave anyway."
                    .to_string()
            };
            return Err(ApiError::conflict(msg));
        }
    }
    crate::roles::forget_swarm(&st.data_dir).map_err(|e| {
        ApiError::new(
            500,
            format!("leaving the swarm: {e}; the node keeps running in the swarm until restarted"),
        )
    })?;
    crate::roles::restart_soon(
        "this node left the swarm".into(),
        std::time::Duration::from_millis(300),
    );
    Ok(json(200, &serde_json::json!({ "left": true })))
}
