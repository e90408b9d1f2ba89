//! Gossip membership in the daemon: which key, address, seeds and node info
//! `membership::Membership` starts with on a node that is in a swarm, and
//! keeping what the node gossips about itself in line with the store.
//!
//! Where each input comes from:
//! - the **key** and **cluster ID**: the raft store on a manager (`init`
//!   puts the key there), else `DATA_DIR/swarm.json` (the join answer);
//! - this node's **role, cluster address and availability**: its node entry
//!   in the store on a manager, else the join record (a worker);
//! - the **seeds**: every manager's cluster IP with port 7946 (the store's
//!   managers on a manager; on a worker the managers it last heard of, else
//!   the join answer's);
//! - the **gossip address**: `--gossip-addr`, else the cluster listen IP
//!   with port 7946; listening on 0.0.0.0 it binds 0.0.0.0 and advertises
//!   the node's cluster (advertise) IP.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::api::join::Joined;
use crate::api::ApiState;
use crate::membership::{
    default_gossip_addr, GossipKey, Membership, MembershipConfig, MembershipError, NodeInfo,
    Tuning, DEFAULT_GOSSIP_PORT,
};
use crate::store::Store;
use swarmlet_proto::{Availability, NodeRole};

/// Why membership did not start.
#[derive(Debug, thiserror::Error)]
pub enum GossipStartError {
    #[error(
        "this swarm has no gossip key (it was created by an older swarmlet); gossip stays off"
    )]
    NoKey,
    #[error("this node is not in a swarm")]
    NotInSwarm,
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

/// What this node gossips and with whom, gathered from the store or the
/// join record.
struct Plan {
    key: GossipKey,
    cluster_id: String,
    role: NodeRole,
    addr: SocketAddr,
    availability: Availability,
    seeds: Vec<SocketAddr>,
}

/// The gossip address of each cluster address that is `IP:PORT` (a
/// hostname cannot be turned into a UDP seed without a lookup; chitchat
/// would resolve it, but managers always advertise IPs).
fn seeds_of<'a>(addrs: impl IntoIterator<Item = &'a String>) -> Vec<SocketAddr> {
    let mut seeds: Vec<SocketAddr> = addrs
        .into_iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .map(default_gossip_addr)
        .collect();
    seeds.sort();
    seeds.dedup();
    seeds
}

fn plan(st: &ApiState) -> Result<Plan, GossipStartError> {
    let joined: Option<Joined> = st
        .joined
        .get()
        .cloned()
        .or_else(|| crate::api::join::load_joined(&st.data_dir).ok().flatten());
    let from_store = st.cluster.get().map(|c| {
        let s = c.store.read();
        let managers: Vec<String> = s
            .nodes
            .values()
            .filter(|n| n.role == NodeRole::Manager)
            .map(|n| n.addr.clone())
            .collect();
        (
            s.gossip_key.clone(),
            s.cluster_id.clone(),
            s.nodes.get(&st.identity.node_id).cloned(),
            managers,
        )
    });
    if from_store.is_none() && joined.is_none() {
        return Err(GossipStartError::NotInSwarm);
    }
    let (store_key, store_cluster, me, store_managers) =
        from_store.unwrap_or((None, None, None, Vec::new()));
    let key_hex = store_key
        .or_else(|| joined.as_ref().map(|j| j.gossip_key.clone()))
        .filter(|k| !k.is_empty())
        .ok_or(GossipStartError::NoKey)?;
    let key = GossipKey::from_hex(&key_hex)?;
    let cluster_id = store_cluster
        .or_else(|| joined.as_ref().map(|j| j.cluster_id.clone()))
        .ok_or(GossipStartError::NotInSwarm)?;
    let fallback_addr = || {
        crate::api::advertise_addr(st)
            .map_err(|e| GossipStartError::Membership(MembershipError::Config(e)))
    };
    let (role, addr, availability) = match (&me, &joined) {
        (Some(n), _) => (
            n.role,
            n.addr.parse().or_else(|_| fallback_addr())?,
            n.availability,
        ),
        (None, Some(j)) => (
            j.role,
            j.addr.parse().or_else(|_| fallback_addr())?,
            Availability::Active,
        ),
        (None, None) => return Err(GossipStartError::NotInSwarm),
    };
    let mut seeds = seeds_of(&store_managers);
    if seeds.is_empty() {
        let known =
            crate::agent::remote::RemoteSource::load_managers(&st.data_dir.join("managers.json"));
        seeds = seeds_of(
            known
                .iter()
                .chain(joined.iter().flat_map(|j| j.managers.iter())),
        );
    }
    Ok(Plan {
        key,
        cluster_id,
        role,
        addr,
        availability,
        seeds,
    })
}

/// Where to bind gossip and what to advertise: `flag` is `--gossip-addr`,
/// `listen` the cluster listen address, `addr` the node's advertised
/// cluster address.
fn addresses(
    flag: Option<SocketAddr>,
    listen: SocketAddr,
    addr: SocketAddr,
) -> (SocketAddr, Option<SocketAddr>) {
    match flag {
        Some(g) if g.ip().is_unspecified() => (g, Some(SocketAddr::new(addr.ip(), g.port()))),
        Some(g) => (g, None),
        None if listen.ip().is_unspecified() => (
            SocketAddr::new(listen.ip(), DEFAULT_GOSSIP_PORT),
            Some(default_gossip_addr(addr)),
        ),
        None => (default_gossip_addr(listen), None),
    }
}

/// Starts membership if the node is in a swarm and it does not run yet.
/// On failure the reason is kept for `swarmlet info` and returned.
pub async fn start(st: &ApiState) -> Result<(), GossipStartError> {
    let result = st
        .membership
        .get_or_try_init(|| async {
            let plan = plan(st)?;
            let (bind_addr, advertise_addr) = addresses(st.gossip_addr, st.api_addr, plan.addr);
            let mut info = NodeInfo::new(plan.role, plan.addr.to_string());
            info.availability = plan.availability;
            let m = Membership::start(MembershipConfig {
                node_id: st.identity.node_id.clone(),
                info,
                bind_addr,
                advertise_addr,
                seeds: plan.seeds,
                key: plan.key,
                cluster_id: plan.cluster_id,
                tuning: Tuning::default(),
            })
            .await?;
            Ok::<_, GossipStartError>(Arc::new(m))
        })
        .await;
    let mut error = st.gossip_error.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(m) => {
            *error = None;
            if let Some(cluster) = st.cluster.get() {
                tokio::spawn(follow_self(
                    m.clone(),
                    cluster.store.clone(),
                    st.identity.node_id.clone(),
                    st.shutdown.clone(),
                ));
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!("gossip membership did not start: {e}");
            *error = Some(e.to_string());
            Err(e)
        }
    }
}

/// On a manager: gossips this node's role, address and availability anew
/// whenever the store changes them (`node update`, `promote`, `demote`).
async fn follow_self(
    m: Arc<Membership>,
    store: Arc<Store>,
    node_id: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = store.changes();
    let mut last = None;
    loop {
        let now = store
            .read()
            .nodes
            .get(&node_id)
            .map(|n| (n.role, n.addr.clone(), n.availability));
        if now.is_some() && now != last {
            if let Some((role, addr, availability)) = now.clone() {
                m.update_self(|info| {
                    info.role = role;
                    info.addr = addr;
                    info.availability = availability;
                })
                .await;
            }
            last = now;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn gossip_binds_beside_the_cluster_port_unless_told_otherwise() {
        let me = sa("10.0.0.5:2377");
        // Default: the listen IP, port 7946, advertised as bound.
        assert_eq!(
            addresses(None, sa("10.0.0.5:2377"), me),
            (sa("10.0.0.5:7946"), None)
        );
        // Listening everywhere: bind everywhere, advertise the node's IP.
        assert_eq!(
            addresses(None, sa("0.0.0.0:2377"), me),
            (sa("0.0.0.0:7946"), Some(sa("10.0.0.5:7946")))
        );
        // --gossip-addr wins; a wildcard one is advertised on the node's IP.
        assert_eq!(
            addresses(Some(sa("10.0.0.5:8000")), sa("0.0.0.0:2377"), me),
            (sa("10.0.0.5:8000"), None)
        );
        assert_eq!(
            addresses(Some(sa("0.0.0.0:8000")), sa("10.0.0.5:2377"), me),
            (sa("0.0.0.0:8000"), Some(sa("10.0.0.5:8000")))
        );
    }

    #[test]
    fn seeds_are_the_managers_ips_on_the_gossip_port() {
        let addrs = vec![
            "127.0.0.2:2377".to_string(),
            "127.0.0.3:4000".to_string(),
            "manager-1:2377".to_string(),
            "127.0.0.2:2377".to_string(),
        ];
        assert_eq!(
            seeds_of(&addrs),
            vec![
                "127.0.0.2:7946".parse::<SocketAddr>().unwrap(),
                "127.0.0.3:7946".parse().unwrap()
            ]
        );
    }
}
