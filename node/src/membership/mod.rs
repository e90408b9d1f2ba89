//! Cluster membership by gossip (chitchat, UDP, default port 7946).
//!
//! Every node publishes a [`NodeInfo`] (role, cluster address, availability,
//! labels, platform, resources) under its node ID, and learns everyone
//! else's by chitchat's scuttlebutt anti-entropy: each gossip round a node
//! exchanges digests with up to three random live peers (plus, now and then,
//! a dead node and a seed) and the newer side sends what the other lacks.
//! chitchat's phi-accrual failure detector turns the rhythm of each peer's
//! heartbeat counter into a live/dead verdict.
//!
//! **Gossip is not the authority.** The dispatcher's heartbeats decide
//! whether a node is `Ready` or `Down`, and the raft store holds the node
//! list; gossip spreads addresses and liveness *hints* fast (a node learns a
//! new peer's address within a few rounds, and notices a silent one in
//! seconds), so nothing here is ever written to the store on gossip's word.
//!
//! ## Protection from forged messages
//!
//! Every datagram carries an HMAC-SHA256 tag keyed by the cluster's 32-byte
//! gossip key, which a manager hands out at join inside the mutually
//! authenticated TLS exchange ([`transport`] has the wire format). A
//! datagram whose tag does not verify is dropped before chitchat parses it,
//! and counted ([`Membership::rejected_datagrams`]). That is enough because:
//! - only nodes that joined with a valid token ever learn the key, so
//!   without it no one can add a member, change a node's fields or keep a
//!   dead node looking alive (HMAC-SHA256 is unforgeable without the key);
//! - a replayed datagram can only repeat what a member already said:
//!   chitchat versions every key and heartbeat and ignores anything not newer
//!   than what it holds, so old state cannot roll a node back or revive it;
//! - nothing gossip says is authoritative, so a member that turns hostile
//!   (it holds the key) can at worst mislead hints, not the store; removing
//!   a node from the swarm should rotate the key (the lead's join flow).
//!
//! What it does **not** give: confidentiality. Gossip travels in clear, so
//! anyone on the path can read node IDs, roles, addresses, labels and
//! resources. Those are not secrets (the cluster port's TLS protects
//! everything that is). Nor does it stop a replayed SYN from making a node
//! answer a spoofed source address (a small reflection, no state change).
//!
//! ## Failure detection, tuned (see [`Tuning`])
//!
//! chitchat's phi for a peer is "time since its last heartbeat ÷ the mean of
//! its recent heartbeat intervals"; the peer is dead when phi exceeds the
//! threshold. A node bumps its heartbeat every gossip round, and in a small
//! cluster every peer hears it (directly or inside a third node's digest)
//! about once per round, so the mean interval is about the gossip interval:
//! - **gossip interval 300 ms**, **phi threshold 8** (chitchat's) → a
//!   silent peer is called dead after at most ~8 × 0.3 = **~2.4 s**
//!   (measured on 127.14.0.x, 3 nodes: 1.8 s after 30 s of gossip, since
//!   a peer's heartbeat also arrives in third nodes' digests; 3.3–3.6 s
//!   one second after start, while the prior below still weighs). That is well
//!   before the dispatcher's `--node-down-after` (5 s), which is the point of
//!   a hint, and 8 missed rounds in a row is still rare on a loaded machine
//!   (a false "dead" corrects itself on the next heartbeat and changes no
//!   state anyway). The cost: each node sends ~3 digests per round; with a
//!   few dozen nodes that is a few KB per round.
//! - **prior interval 600 ms** (chitchat's default is 5 s): chitchat smooths
//!   the mean with 5 virtual samples of this value, so a node just met is
//!   judged on ~2 rounds per heartbeat until real samples outweigh the prior
//!   (first verdict after ~5 s instead of 40 s with the default).
//! - **window 100 samples** (~30 s of history): the mean follows a peer's
//!   current rhythm; **max interval 5 s**: a gap longer than that (a pause or
//!   partition that ends) is not taken as a sample, so one outage does not
//!   teach the detector to wait longer next time.
//! - **dead-node grace 10 min**: a dead node stays listed (as dead) that
//!   long, so a partition that heals within minutes resumes without
//!   re-sending state; then its entry is dropped (after half of it, it is no
//!   longer gossiped). A restarted node comes back under a new generation.

mod member;
pub mod transport;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
};
use tokio::sync::{watch, Mutex};

pub use member::{Liveness, Member, NodeInfo, Platform, Resources};
pub use transport::GossipStats;

use member::INFO_KEY;
use transport::MacUdpTransport;

/// The gossip port when none is given, as Docker Swarm's (7946/udp).
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;

/// The gossip address that goes with a node's cluster address: same IP,
/// port 7946.
pub fn default_gossip_addr(cluster_addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(cluster_addr.ip(), DEFAULT_GOSSIP_PORT)
}

/// The cluster's shared gossip secret: 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct GossipKey([u8; 32]);

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

impl GossipKey {
    /// A new random key from the OS's generator (for `init`).
    pub fn generate() -> GossipKey {
        use rand::RngCore;
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        GossipKey(k)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> GossipKey {
        GossipKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as 64 lowercase hex characters (how the join response and
    /// the store can carry it).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<GossipKey, MembershipError> {
        let bytes = hex::decode(s.trim()).map_err(|e| MembershipError::BadKey(e.to_string()))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            MembershipError::BadKey(format!("{} bytes instead of 32", b.len()))
        })?;
        Ok(GossipKey(arr))
    }
}

/// Failure-detection and gossip timing; the module doc says why these
/// numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    /// The prior mean heartbeat interval for a node just met.
    pub initial_interval: Duration,
    /// Heartbeat intervals longer than this are not sampled.
    pub max_interval: Duration,
    pub sampling_window: usize,
    /// How long a dead node stays listed before it is forgotten.
    pub dead_node_grace: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            gossip_interval: Duration::from_millis(300),
            phi_threshold: 8.0,
            initial_interval: Duration::from_millis(600),
            max_interval: Duration::from_secs(5),
            sampling_window: 100,
            dead_node_grace: Duration::from_secs(10 * 60),
        }
    }
}

impl Tuning {
    /// Roughly how long a silent peer takes to be called dead once its
    /// rhythm is learnt (phi threshold × gossip interval).
    pub fn detection_time(&self) -> Duration {
        self.gossip_interval.mul_f64(self.phi_threshold)
    }
}

/// What [`Membership::start`] needs.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// This node's 25-hex node ID.
    pub node_id: String,
    /// What this node gossips about itself.
    pub info: NodeInfo,
    /// Where to bind the gossip UDP socket (`--gossip-addr`).
    pub bind_addr: SocketAddr,
    /// Where peers reach this node's gossip; `None` means `bind_addr`,
    /// which then must name a concrete IP (not 0.0.0.0).
    pub advertise_addr: Option<SocketAddr>,
    /// Gossip addresses of nodes to contact first (e.g. the managers').
    pub seeds: Vec<SocketAddr>,
    pub key: GossipKey,
    /// The cluster ID; chitchat refuses gossip for another cluster.
    pub cluster_id: String,
    pub tuning: Tuning,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot gossip on {addr}/udp: {reason}; is another process (or another swarmlet) using that port? pick another with --gossip-addr")]
    Bind { addr: SocketAddr, reason: String },
    #[error("gossip binds to {bind}, which names no address peers can reach; give the node an advertise address (--advertise-addr) or bind gossip to a concrete IP with --gossip-addr")]
    NoAdvertiseAddr { bind: SocketAddr },
    #[error("the gossip key is malformed ({0}); it must be 64 hex characters (32 bytes) as the manager handed it out at join")]
    BadKey(String),
    #[error("invalid membership configuration: {0}")]
    Config(String),
    #[error("gossip stopped with an error: {0}")]
    Stopped(String),
}

/// A running membership: gossip in the background, a view in the foreground.
pub struct Membership {
    /// Taken by [`Membership::stop`].
    handle: std::sync::Mutex<Option<ChitchatHandle>>,
    chitchat: Arc<Mutex<Chitchat>>,
    self_id: ChitchatId,
    info: std::sync::Mutex<NodeInfo>,
    members_tx: Arc<watch::Sender<Vec<Member>>>,
    refresher: tokio::task::JoinHandle<()>,
    stats: Arc<GossipStats>,
    gossip_addr: SocketAddr,
}

impl Membership {
    /// Binds the gossip socket and starts gossiping with the seeds.
    pub async fn start(config: MembershipConfig) -> Result<Membership, MembershipError> {
        let advertise = config.advertise_addr.unwrap_or(config.bind_addr);
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(MembershipError::NoAdvertiseAddr {
                bind: config.bind_addr,
            });
        }
        if config.node_id.is_empty() {
            return Err(MembershipError::Config("the node ID is empty".into()));
        }
        if config.cluster_id.is_empty() {
            return Err(MembershipError::Config("the cluster ID is empty".into()));
        }
        let t = &config.tuning;
        if t.gossip_interval.is_zero() || t.phi_threshold <= 0.0 || t.sampling_window == 0 {
            return Err(MembershipError::Config(format!(
                "gossip interval, phi threshold and sampling window must be positive (got {t:?})"
            )));
        }
        // A new generation per start, so peers tell a restarted node from
        // the previous run of it (chitchat's convention: start time).
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let self_id = ChitchatId::new(config.node_id.clone(), generation, advertise);
        let chitchat_config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: t.gossip_interval,
            listen_addr: config.bind_addr,
            seed_nodes: config
                .seeds
                .iter()
                .filter(|s| **s != advertise)
                .map(|s| s.to_string())
                .collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: t.phi_threshold,
                sampling_window_size: t.sampling_window,
                max_interval: t.max_interval,
                initial_interval: t.initial_interval,
                dead_node_grace_period: t.dead_node_grace,
            },
            // We never delete keys (the one info key is overwritten), so
            // tombstones are rare; an hour is chitchat's usual order.
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let stats = Arc::new(GossipStats::default());
        let transport = MacUdpTransport::new(config.key.clone(), stats.clone());
        let initial = vec![(INFO_KEY.to_string(), config.info.encode())];
        let handle = spawn_chitchat(chitchat_config, initial, &transport)
            .await
            .map_err(|e| MembershipError::Bind {
                addr: config.bind_addr,
                reason: format!("{e:#}"),
            })?;
        let chitchat = handle.chitchat();
        let first = snapshot(&*chitchat.lock().await);
        let (members_tx, _) = watch::channel(first);
        let members_tx = Arc::new(members_tx);
        let refresher = tokio::spawn(refresh(
            chitchat.clone(),
            members_tx.clone(),
            config.tuning.gossip_interval,
        ));
        tracing::info!(node = %config.node_id, gossip = %advertise, seeds = ?config.seeds,
            "gossip membership started");
        Ok(Membership {
            handle: std::sync::Mutex::new(Some(handle)),
            chitchat,
            self_id,
            info: std::sync::Mutex::new(config.info),
            members_tx,
            refresher,
            stats,
            gossip_addr: advertise,
        })
    }

    /// Every node this node's gossip knows a [`NodeInfo`] for (itself
    /// included), one entry per node ID (its newest generation), ordered by
    /// node ID. Refreshed on every change chitchat reports and every gossip
    /// round.
    pub fn members(&self) -> Vec<Member> {
        self.members_tx.borrow().clone()
    }

    /// The member list, notified whenever it changes (a node appears, dies,
    /// comes back or changes a field).
    pub fn watch(&self) -> watch::Receiver<Vec<Member>> {
        self.members_tx.subscribe()
    }

    /// Changes what this node gossips (e.g. its availability); peers see it
    /// within a few gossip rounds.
    pub async fn update_self(&self, change: impl FnOnce(&mut NodeInfo)) {
        let encoded = {
            let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
            change(&mut info);
            info.encode()
        };
        let mut chitchat = self.chitchat.lock().await;
        chitchat.self_node_state().set(INFO_KEY, encoded);
        let members = snapshot(&chitchat);
        drop(chitchat);
        publish(&self.members_tx, members);
    }

    /// The address peers gossip with this node at.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// This node's chitchat identity (node ID, generation, gossip address).
    pub fn self_id(&self) -> &ChitchatId {
        &self.self_id
    }

    /// Datagrams dropped because their MAC did not verify.
    pub fn rejected_datagrams(&self) -> u64 {
        self.stats.rejected()
    }

    /// All gossip socket counters.
    pub fn stats(&self) -> &GossipStats {
        &self.stats
    }

    /// Stops gossiping and releases the UDP port. Peers notice through
    /// their failure detectors (chitchat has no "leave" message).
    pub async fn shutdown(self) -> Result<(), MembershipError> {
        self.stop().await
    }

    /// [`Membership::shutdown`] through a shared reference (the daemon
    /// keeps the membership in its API state); later calls do nothing.
    pub async fn stop(&self) -> Result<(), MembershipError> {
        self.refresher.abort();
        let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take();
        match handle {
            Some(handle) => handle
                .shutdown()
                .await
                .map_err(|e| MembershipError::Stopped(format!("{e:#}"))),
            None => Ok(()),
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.refresher.abort();
        // Dropping the handle closes chitchat's command channel, which ends
        // its server loop and closes the socket.
    }
}

fn publish(tx: &watch::Sender<Vec<Member>>, members: Vec<Member>) {
    tx.send_if_modified(|cur| {
        if *cur == members {
            false
        } else {
            *cur = members;
            true
        }
    });
}

async fn refresh(
    chitchat: Arc<Mutex<Chitchat>>,
    tx: Arc<watch::Sender<Vec<Member>>>,
    every: Duration,
) {
    let mut live = chitchat.lock().await.live_nodes_watcher();
    loop {
        tokio::select! {
            changed = live.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(every) => {}
        }
        let members = snapshot(&*chitchat.lock().await);
        publish(&tx, members);
    }
}

/// The member list from chitchat's state.
fn snapshot(chitchat: &Chitchat) -> Vec<Member> {
    let self_id = chitchat.self_chitchat_id();
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let mut by_node: BTreeMap<String, Member> = BTreeMap::new();
    for (id, state) in chitchat.node_states() {
        // A node known only from a digest has no info yet: not listed
        // until its state arrives (a round or two later).
        let Some(json) = state.get(INFO_KEY) else {
            continue;
        };
        let info = match NodeInfo::decode(json) {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(node = %id.node_id, error = %e, "ignoring a gossiped node info this version cannot read");
                continue;
            }
        };
        let member = Member {
            node_id: id.node_id.clone(),
            generation: id.generation_id,
            gossip_addr: id.gossip_advertise_addr,
            liveness: if live.contains(id) {
                Liveness::Live
            } else {
                Liveness::Dead
            },
            is_self: id == self_id,
            info,
        };
        match by_node.get(&id.node_id) {
            Some(known) if known.generation >= member.generation => {}
            _ => {
                by_node.insert(id.node_id.clone(), member);
            }
        }
    }
    by_node.into_values().collect()
}

#[cfg(test)]
mod tests;
