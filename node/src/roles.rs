//! A node whose role changes, or that leaves the swarm, restarts into its
//! new self: it rewrites its swarm state on disk (certificates, `swarm.json`,
//! the raft log) and re-executes the daemon binary with the same arguments
//! (same PID, same data dir, same flags). Starting the cluster parts again
//! from disk is the path every restart already takes, so a role change needs
//! no second way of tearing down raft, the dispatcher or the agent in place.
//!
//! - Demoted manager (`watch_demotion`, on every manager): once its store
//!   says it is a worker, it waits until the leader has removed it from
//!   raft's configuration (bounded), signs itself a worker certificate from
//!   the store's CA, writes `swarm.json` as a worker, deletes its raft log
//!   and restarts as a worker.
//! - Promoted worker (`watch_promotion`, on every worker): it asks a manager
//!   which role the store gives it (`POST /v1/dispatcher/role`); once it is
//!   a manager, it sends a CSR on the same route, gets a manager
//!   certificate, writes `swarm.json` as a manager (with the managers' raft
//!   IDs) and restarts; raft then starts empty and the leader adds it as a
//!   learner, then a voter.
//! - `leave`: deletes certificates, `swarm.json`, `managers.json`, the raft
//!   log and `node.json` (a node that joins again is a new node, as in
//!   Docker), then restarts out of any swarm.
//!
//! Architecture invariant: a node's role on disk (`swarm.json` + which
//! certificate it holds + whether a raft log exists) changes only here and
//! at join/init, always before the restart that acts on it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use swarmlet_proto::cluster::{ManagerPeer, RoleAnswer, RoleRequest};
use swarmlet_proto::NodeRole;
use tokio::sync::watch;

use crate::api::join::Joined;
use crate::pki::{self, Ca, CertKind, CertRole, NodeCerts};
use crate::raft::RaftHandle;
use crate::store::Store;
use crate::transport::{ClusterPort, Target};

/// How long a demoted manager waits for the leader to take it out of raft's
/// configuration before it restarts as a worker anyway.
const REMOVAL_WAIT: Duration = Duration::from_secs(20);

/// How often a worker asks whether it was promoted.
const ROLE_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("{0}")]
    Pki(#[from] pki::PkiError),
    #[error("{0}")]
    Write(#[from] crate::fsutil::WriteError),
    #[error("removing {path}: {source}")]
    Remove {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// Files that make a node part of a swarm.
fn swarm_files(data_dir: &Path) -> Vec<PathBuf> {
    vec![
        data_dir.join("swarm.json"),
        data_dir.join("managers.json"),
        data_dir.join("raft.redb"),
    ]
}

fn remove_file(path: &Path) -> Result<(), RoleError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RoleError::Remove {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn save_joined(data_dir: &Path, joined: &Joined) -> Result<(), RoleError> {
    let bytes = serde_json::to_vec_pretty(joined).map_err(|e| RoleError::Other(e.to_string()))?;
    crate::fsutil::write_atomic(&data_dir.join("swarm.json"), &bytes)?;
    Ok(())
}

/// Replaces this process with a fresh start of the same binary and
/// arguments. File descriptors are close-on-exec (Rust opens them so), so
/// the data-dir lock and the listeners are released for the new image.
pub fn restart_daemon(why: &str) -> ! {
    use std::os::unix::process::CommandExt as _;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "swarmlet".into());
    tracing::warn!("{why}: restarting the daemon");
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .exec();
    // exec only returns on failure; a supervisor (systemd) restarts us.
    tracing::error!("{why}, but re-executing the daemon failed ({err}); exiting");
    std::process::exit(1);
}

/// Restarts after `delay` (lets the answer that caused it leave first).
pub fn restart_soon(why: String, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        restart_daemon(&why);
    });
}

fn managers_of(store: &Store) -> (Vec<String>, Vec<ManagerPeer>) {
    let s = store.read();
    let m: Vec<&swarmlet_proto::Node> = s
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager)
        .collect();
    (
        m.iter().map(|n| n.addr.clone()).collect(),
        m.iter()
            .map(|n| ManagerPeer {
                raft_id: n.raft_id,
                addr: n.addr.clone(),
            })
            .collect(),
    )
}

/// The parts of a manager `watch_demotion` needs.
pub struct ManagerSide {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub store: Arc<Store>,
    pub raft: RaftHandle,
}

/// On a manager: restarts as a worker once the store says this node is one.
pub async fn watch_demotion(m: ManagerSide, mut shutdown: watch::Receiver<bool>) {
    let mut changes = m.store.changes();
    loop {
        let role = m.store.read().nodes.get(&m.node_id).map(|n| n.role);
        if role == Some(NodeRole::Worker) {
            break;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
    tracing::info!(
        "this node was demoted to a worker; waiting for the leader to take it out of raft"
    );
    let deadline = tokio::time::Instant::now() + REMOVAL_WAIT;
    loop {
        let in_raft = match m.raft.peers_status().await {
            Ok(p) => p.iter().any(|p| p.raft_id == m.raft.id()),
            Err(_) => false,
        };
        if !in_raft {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            tracing::warn!(
                "still in raft's configuration after {REMOVAL_WAIT:?}; restarting as a worker anyway"
            );
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.changed() => return,
        }
    }
    match become_worker(&m) {
        Ok(()) => restart_daemon("this manager was demoted to a worker"),
        Err(e) => tracing::error!(
            "this node was demoted but cannot switch to a worker ({e}); it keeps its manager certificate until restarted"
        ),
    }
}

fn become_worker(m: &ManagerSide) -> Result<(), RoleError> {
    let (ca, cluster_id, gossip_key, addr) = {
        let s = m.store.read();
        (
            s.cluster_ca.clone(),
            s.cluster_id.clone(),
            s.gossip_key.clone().unwrap_or_default(),
            s.nodes
                .get(&m.node_id)
                .map(|n| n.addr.clone())
                .unwrap_or_default(),
        )
    };
    let (Some(ca), Some(cluster_id)) = (ca, cluster_id) else {
        return Err(RoleError::Other("the store holds no cluster CA".into()));
    };
    let ca = Ca::load(&ca)?;
    let key = pki::new_csr(&m.node_id)?;
    let cert_pem = ca.sign_node(&key.csr_pem, &m.node_id, CertRole::Worker, &cluster_id)?;
    let (managers, peers) = managers_of(&m.store);
    let joined = Joined {
        role: NodeRole::Worker,
        cluster_id,
        joined_via: managers.first().cloned().unwrap_or_default(),
        managers,
        gossip_key,
        peers,
        addr,
    };
    pki::save_node_certs(
        &m.data_dir,
        &NodeCerts {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem,
            key_pem: key.key_pem,
        },
    )?;
    save_joined(&m.data_dir, &joined)?;
    remove_file(&m.data_dir.join("managers.json"))?;
    // Last: without the log the node can no longer start as a manager.
    remove_file(&m.data_dir.join("raft.redb"))?;
    Ok(())
}

/// On a worker: restarts as a manager once a manager says it is one.
pub async fn watch_promotion(
    node_id: String,
    data_dir: PathBuf,
    port: Arc<ClusterPort>,
    joined: Joined,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ROLE_POLL) => {}
            _ = shutdown.changed() => return,
        }
        let Some(pool) = port.client() else { continue };
        let mut managers =
            crate::agent::remote::RemoteSource::load_managers(&data_dir.join("managers.json"));
        managers.extend(joined.managers.iter().cloned());
        let mut seen = BTreeSet::new();
        managers.retain(|m| seen.insert(m.clone()));
        for addr in &managers {
            let answer: RoleAnswer = match pool
                .post_json(
                    addr,
                    &Target::Manager,
                    "/v1/dispatcher/role",
                    &RoleRequest::default(),
                )
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(manager = %addr, "asking for this node's role: {e}");
                    continue;
                }
            };
            if answer.role == NodeRole::Manager {
                match become_manager(&node_id, &data_dir, &pool, addr, &joined).await {
                    Ok(()) => restart_daemon("this worker was promoted to a manager"),
                    Err(e) => {
                        tracing::warn!("promoted, but switching to a manager failed: {e}; retrying")
                    }
                }
            }
            break;
        }
    }
}

async fn become_manager(
    node_id: &str,
    data_dir: &Path,
    pool: &crate::transport::Pool,
    addr: &str,
    joined: &Joined,
) -> Result<(), RoleError> {
    let key = pki::new_csr(node_id)?;
    let answer: RoleAnswer = pool
        .post_json(
            addr,
            &Target::Manager,
            "/v1/dispatcher/role",
            &RoleRequest {
                csr_pem: Some(key.csr_pem),
            },
        )
        .await
        .map_err(|e| RoleError::Other(format!("asking {addr} for a manager certificate: {e}")))?;
    let Some(cert_pem) = answer.cert_pem.filter(|_| answer.role == NodeRole::Manager) else {
        return Err(RoleError::Other(format!(
            "{addr} answered role {:?} without a manager certificate",
            answer.role
        )));
    };
    let id = pki::cert_identity(pki::cert_der(&cert_pem)?.as_ref())?;
    if !matches!(&id.kind, CertKind::Node { node_id: n, role: CertRole::Manager } if n == node_id) {
        return Err(RoleError::Other(format!(
            "{addr} sent a certificate for {:?}, not a manager certificate for this node",
            id.kind
        )));
    }
    let ca_pem = pki::load_node_certs(data_dir)?
        .map(|c| c.ca_pem)
        .ok_or_else(|| RoleError::Other("this node's certificates are missing".into()))?;
    pki::save_node_certs(
        data_dir,
        &NodeCerts {
            ca_pem,
            cert_pem,
            key_pem: key.key_pem,
        },
    )?;
    save_joined(
        data_dir,
        &Joined {
            role: NodeRole::Manager,
            cluster_id: answer.cluster_id,
            managers: answer.managers,
            joined_via: addr.to_string(),
            gossip_key: joined.gossip_key.clone(),
            peers: answer.peers,
            addr: joined.addr.clone(),
        },
    )?;
    Ok(())
}

/// `leave`: forgets the swarm on disk (the restart that follows comes up
/// out of any swarm, as a new node).
pub fn forget_swarm(data_dir: &Path) -> Result<(), RoleError> {
    for f in swarm_files(data_dir) {
        remove_file(&f)?;
    }
    let certs = pki::certs_dir(data_dir);
    match std::fs::remove_dir_all(&certs) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RoleError::Remove {
                path: certs.display().to_string(),
                source,
            })
        }
    }
    // Last: the identity is needed as long as a raft log exists.
    remove_file(&data_dir.join("node.json"))
}
