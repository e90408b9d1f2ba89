//! `swarmlet daemon`: the one long-running process of a node. It owns the
//! data dir, serves the API, and — once the node is in a swarm — runs raft,
//! the orchestrator, the agent and the mesh.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::sync::watch;

use crate::agent::Agent;
use crate::api::{self, ApiState};
use crate::blobs::Blobs;
use crate::dispatcher::{ClusterCall, Dispatcher, DispatcherConfig, Forwarding};
use crate::identity::Identity;
use crate::link::{AddressBook, PoolCall, RaftLink, WriteError, Writer};
use crate::mesh::Mesh;
use crate::raft::{self, DiskStorage, RaftConfig, RaftHandle};
use crate::runtime::wasm::WasmRuntime;
use crate::store::Store;

pub struct DaemonConfig {
    pub data_dir: PathBuf,
    pub listen_addr: SocketAddr,
    pub advertise_addr: Option<String>,
    pub publish_addr: IpAddr,
    pub node_name: Option<String>,
    pub wasm_timeout: Duration,
    /// How long SIGTERM waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Open connections per listener (default: derived from RLIMIT_NOFILE).
    pub max_connections: Option<usize>,
    /// Largest `.wasm` upload accepted (`--max-upload-size`).
    pub max_upload_size: u64,
    pub wasm_isolation: crate::runtime::wasm::Isolation,
    /// `--instance-memory-budget`, in bytes; `None`: half of MemTotal.
    pub instance_memory_budget: Option<u64>,
    /// `--node-down-after` (dispatcher::DEFAULT_NODE_DOWN_AFTER).
    pub node_down_after: Duration,
    /// `--gossip-addr`; `None`: the listen IP with port 7946.
    pub gossip_addr: Option<SocketAddr>,
    /// `--insecure-registry HOST[:PORT]` (repeatable).
    pub insecure_registries: Vec<String>,
    /// `--bridge NAME`: the containers' bridge.
    pub bridge: String,
    /// `--bridge-cidr`: the containers' subnet (network address, prefix).
    pub bridge_cidr: (std::net::Ipv4Addr, u8),
}

/// The parts that exist once the node is in a swarm.
pub struct Cluster {
    pub raft: RaftHandle,
    pub store: Arc<Store>,
    /// What nodes' agents talk to (mounted on the cluster port's
    /// `/v1/dispatcher/…` routes; this node's agent calls it in process).
    pub dispatcher: Arc<Dispatcher>,
    /// Proposes through whichever manager leads.
    pub writer: Arc<Writer>,
    /// raft ID → cluster address of the managers.
    pub book: Arc<AddressBook>,
}

impl Cluster {
    /// Proposes through the leader (see `link::writer`).
    pub async fn propose(&self, command: swarmlet_proto::Command) -> Result<u64, WriteError> {
        self.writer.propose(command).await
    }

    /// A client's write, applied at most once (see `link::writer`).
    pub async fn propose_once(&self, command: swarmlet_proto::Command) -> Result<u64, WriteError> {
        self.writer.propose_once(command).await
    }

    /// Waits until this node leads (a single voter elects itself at once).
    pub async fn wait_leader(&self) {
        let mut l = self.raft.leadership();
        let _ = l.wait_for(|is| *is).await;
    }
}

fn raft_path(data_dir: &Path) -> PathBuf {
    data_dir.join("raft.redb")
}

/// Starts raft on the data dir's log and everything that follows it.
/// `bootstrap`: found a new swarm whose first state this is. Otherwise resume
/// the one the log holds, or return `None` if the node never joined one.
/// Returns once the store has replayed every entry committed before this
/// start, so the API never answers from a store that is still catching up.
pub async fn start_cluster(
    st: &ApiState,
    bootstrap: Option<crate::store::State>,
) -> anyhow::Result<Option<Cluster>> {
    start_manager(st, bootstrap, &[]).await
}

/// A manager removed from the swarm while it was down (`node rm` on a Down
/// node) comes back with a raft log that still lists it, and would run the
/// replicas it had (already replaced elsewhere). Its peers refuse it with
/// `REMOVED_HEADER`; it then does what `leave --force` does: forgets the
/// swarm and restarts out of it, stopping those replicas, as Docker's
/// removed nodes do.
async fn leave_when_removed(removed: Arc<tokio::sync::Notify>, data_dir: std::path::PathBuf) {
    removed.notified().await;
    match crate::roles::forget_swarm(&data_dir) {
        Ok(()) => crate::roles::restart_daemon(
            "this node was removed from the swarm (\"swarmlet node rm\" while it was away); \
             it leaves the swarm: join again with a token to take part",
        ),
        Err(e) => tracing::error!(
            "this node was removed from the swarm but cannot forget it ({e}); \
             run \"swarmlet leave --force\" and join again"
        ),
    }
}

/// `start_cluster`, also for a manager that joined and has no log yet
/// (`peers`: the managers its join answer named; it then waits for the
/// leader to send it the log).
pub async fn start_manager(
    st: &ApiState,
    bootstrap: Option<crate::store::State>,
    peers: &[swarmlet_proto::cluster::ManagerPeer],
) -> anyhow::Result<Option<Cluster>> {
    let storage = DiskStorage::open(&raft_path(&st.data_dir))?;
    let joined_manager = st
        .joined
        .get()
        .is_some_and(|j| j.role == swarmlet_proto::NodeRole::Manager);
    match (bootstrap.is_some(), storage.is_initialized()) {
        (true, true) => bail!("the data dir already holds a swarm's raft log"),
        (false, false) if !joined_manager => return Ok(None),
        _ => {}
    }
    let store = Arc::new(Store::new());
    let book = Arc::new(AddressBook::default());
    for p in peers {
        book.set(p.raft_id, p.addr.clone());
    }
    let removed = Arc::new(tokio::sync::Notify::new());
    let link = RaftLink::new(st.cluster_port.clone(), book.clone(), removed.clone());
    tokio::spawn(leave_when_removed(removed, st.data_dir.clone()));
    let (handle, raft_task) = raft::start(
        RaftConfig {
            id: st.identity.raft_id,
        },
        storage,
        store.clone(),
        bootstrap,
        link,
        st.shutdown.clone(),
    )?;
    spawn_critical(
        "address book",
        keep_addresses(store.clone(), book.clone(), st.shutdown.clone()),
    );
    spawn_critical(
        "revoked certificates",
        keep_revoked(store.clone(), st.cluster_port.clone(), st.shutdown.clone()),
    );
    tokio::spawn(async move {
        let why = match raft_task.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the raft task panicked: {e}"),
        };
        // Without raft the node must not go on acknowledging; systemd
        // restarts it.
        tracing::error!("raft stopped: {why}; exiting");
        std::process::exit(1);
    });
    handle
        .wait_replayed()
        .await
        .context("raft stopped while replaying its log")?;
    spawn_critical(
        "orchestrator",
        crate::orchestrator::run(store.clone(), handle.clone(), st.shutdown.clone()),
    );
    spawn_critical(
        "manager set",
        crate::orchestrator::managers::run(store.clone(), handle.clone(), st.shutdown.clone()),
    );
    spawn_critical(
        "demotion watch",
        crate::roles::watch_demotion(
            crate::roles::ManagerSide {
                node_id: st.identity.node_id.clone(),
                data_dir: st.data_dir.clone(),
                store: store.clone(),
                raft: handle.clone(),
            },
            st.shutdown.clone(),
        ),
    );
    let writer = Arc::new(Writer {
        raft: handle.clone(),
        book: book.clone(),
        port: st.cluster_port.clone(),
    });
    let call: Arc<dyn ClusterCall> = Arc::new(PoolCall(st.cluster_port.clone()));
    let dispatcher = Dispatcher::new(
        st.identity.node_id.clone(),
        store.clone(),
        handle.clone(),
        DispatcherConfig {
            node_down_after: st.node_down_after,
        },
        Some(Forwarding {
            call: call.clone(),
            leader_addr: {
                let (raft, book) = (handle.clone(), book.clone());
                Arc::new(move || raft.leader().and_then(|id| book.get(id)))
            },
            writer: writer.clone(),
        }),
    );
    spawn_critical(
        "dispatcher",
        crate::dispatcher::run(dispatcher.clone(), st.shutdown.clone()),
    );
    let agent = Agent {
        node_id: st.identity.node_id.clone(),
        source: Arc::new(crate::agent::InProcess::new(
            st.identity.node_id.clone(),
            dispatcher.clone(),
            st.blobs.clone(),
            Some(call.clone()),
        )),
        runtime: st.runtime.clone(),
        blobs: st.blobs.clone(),
        mesh: st.mesh.clone(),
        containers: Some(st.containers.runtime()),
    };
    spawn_critical("agent", agent.run(st.shutdown.clone()));
    tokio::spawn(collect_blobs(
        store.clone(),
        st.blobs.clone(),
        st.runtime.clone(),
        st.shutdown.clone(),
    ));
    Ok(Some(Cluster {
        raft: handle,
        store,
        dispatcher,
        writer,
        book,
    }))
}

/// Keeps the address book in line with the store's managers.
async fn keep_addresses(
    store: Arc<Store>,
    book: Arc<AddressBook>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = store.changes();
    loop {
        for n in store.read().nodes.values() {
            if n.role == swarmlet_proto::NodeRole::Manager {
                book.set(n.raft_id, n.addr.clone());
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// Keeps the cluster port's refused certificates in line with the store's
/// removed nodes, on every manager.
async fn keep_revoked(
    store: Arc<Store>,
    port: Arc<crate::transport::ClusterPort>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = store.changes();
    loop {
        let removed = store.read().removed_nodes.iter().cloned().collect();
        port.set_revoked(removed);
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// A worker's parts: its agent on the dispatcher of whichever manager
/// answers (the join answer's managers, later the ones it is told about).
async fn start_worker(st: &ApiState, joined: &crate::api::join::Joined) -> anyhow::Result<()> {
    let call: Arc<dyn ClusterCall> = Arc::new(PoolCall(st.cluster_port.clone()));
    let managers_file = st.data_dir.join("managers.json");
    let mut managers = crate::agent::remote::RemoteSource::load_managers(&managers_file);
    if managers.is_empty() {
        managers = joined.managers.clone();
    }
    let source = crate::agent::remote::RemoteSource::new(
        call,
        st.blobs.clone(),
        managers,
        Some(managers_file),
    );
    if let Err(e) = source.connect().await {
        // Not fatal: the agent keeps trying every manager it knows.
        tracing::warn!("no manager answered yet: {e}; retrying");
    }
    let agent = Agent {
        node_id: st.identity.node_id.clone(),
        source: Arc::new(source),
        runtime: st.runtime.clone(),
        blobs: st.blobs.clone(),
        mesh: st.mesh.clone(),
        containers: Some(st.containers.runtime()),
    };
    spawn_critical("agent", agent.run(st.shutdown.clone()));
    spawn_critical(
        "promotion watch",
        crate::roles::watch_promotion(
            st.identity.node_id.clone(),
            st.data_dir.clone(),
            st.cluster_port.clone(),
            joined.clone(),
            st.shutdown.clone(),
        ),
    );
    Ok(())
}

/// The container runtime under `DATA_DIR/containers`, reattached to the
/// containers a previous daemon left (before any agent runs). Missing tools
/// leave the node without containers (their tasks are rejected saying what
/// to install); a bad `--bridge`/`--bridge-cidr` stops the daemon.
async fn containers(
    cfg: &DaemonConfig,
    images: Arc<crate::image::Puller>,
) -> anyhow::Result<crate::runtime::container::Containers> {
    use crate::runtime::container::{
        ContainerError, ContainerRuntime, ContainerTasks, Containers, NetworkConfig, RuntimeConfig,
    };
    let mut rc = RuntimeConfig::new(cfg.data_dir.join("containers"));
    rc.network = NetworkConfig {
        bridge: cfg.bridge.clone(),
        subnet: cfg.bridge_cidr.0,
        prefix_len: cfg.bridge_cidr.1,
        ..NetworkConfig::default()
    };
    rc.network
        .validate()
        .with_context(|| "check --bridge and --bridge-cidr")?;
    match ContainerRuntime::new(rc).await {
        Ok(rt) => {
            let tasks = ContainerTasks::start(Arc::new(rt), images).await;
            tracing::info!(
                bridge = %cfg.bridge,
                subnet = %format!("{}/{}", cfg.bridge_cidr.0, cfg.bridge_cidr.1),
                adopted = tasks.adopted().len(),
                "container runtime ready"
            );
            Ok(Containers::Ready(tasks))
        }
        Err(e @ ContainerError::ToolMissing { .. }) => {
            tracing::warn!("container services cannot run on this node: {e}");
            Ok(Containers::Unavailable(format!(
                "this node cannot run containers: {e}"
            )))
        }
        Err(e) => {
            tracing::warn!("container services cannot run on this node: {e}");
            Ok(Containers::Unavailable(format!(
                "this node's container runtime did not start: {e}"
            )))
        }
    }
}

/// Spawns a task the node cannot work without: if it panics, the process
/// exits non-zero (systemd restarts it) instead of living on half-alive.
pub(crate) fn spawn_critical(
    name: &'static str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let handle = tokio::spawn(task);
    tokio::spawn(async move {
        if let Err(e) = handle.await {
            if e.is_panic() {
                tracing::error!("the {name} task panicked: {e}; exiting");
                std::process::exit(1);
            }
        }
    });
}

/// How old an unreferenced blob must be before it is deleted: an upload
/// becomes referenced only when its `service create` commits.
const BLOB_GRACE: Duration = Duration::from_secs(600);

/// Deletes components (and their compiled artifacts) that no service uses,
/// so a small SD card does not fill up with old versions and failed creates.
async fn collect_blobs(
    store: Arc<Store>,
    blobs: Arc<Blobs>,
    runtime: Arc<WasmRuntime>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(BLOB_GRACE / 2) => {}
            _ = shutdown.changed() => return,
        }
        let referenced = store
            .read()
            .services
            .values()
            .map(|s| s.spec.image.digest().to_string())
            .collect();
        for digest in blobs.gc(&referenced, BLOB_GRACE) {
            runtime.forget_artifact(&digest);
            tracing::info!(%digest, "deleted a component no service uses");
        }
    }
}

/// Holds an exclusive lock on the data dir for the daemon's lifetime.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("swarmlet.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another swarmlet daemon is using the data dir {}; stop it or choose another --data-dir",
            data_dir.display()
        );
    }
    Ok(f)
}

/// Creates the data dir private to the daemon's user (0700, and files
/// 0600 through the umask) whatever umask the daemon was started with: it
/// holds the native code the daemon loads (the compile cache).
fn private_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    // SAFETY: umask(2) has no preconditions; it only narrows new files' modes.
    unsafe { libc::umask(0o077) };
    // With a `swarmlet` group, its members may traverse the dir (0710) to
    // reach the API socket (0660) inside; every other file stays 0600.
    let group = crate::listen::socket_group();
    let mode = if group.is_some() { 0o710 } else { 0o700 };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .and_then(|_| {
            if let Some(gid) = group {
                std::os::unix::fs::chown(data_dir, None, Some(gid))?;
            }
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(mode))
        })
        .with_context(|| {
            format!(
                "creating the data dir {} (mode {mode:o})",
                data_dir.display()
            )
        })
}

pub async fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    private_data_dir(&cfg.data_dir)?;
    let _lock = lock_data_dir(&cfg.data_dir)?;
    let raft_log = raft_path(&cfg.data_dir);
    let identity = Identity::load_or_create(&cfg.data_dir, cfg.node_name.as_deref(), || {
        raft_log.exists()
            && DiskStorage::open(&raft_log)
                .map(|s| s.is_initialized())
                .unwrap_or(true)
    })?;
    let runtime = WasmRuntime::new(
        cfg.data_dir.join("wasm-cache"),
        cfg.wasm_timeout,
        cfg.wasm_isolation,
    )?;
    if let Some(bytes) = cfg.instance_memory_budget {
        runtime.memory_budget().set_limit(bytes as usize);
    }
    tracing::info!(
        "wasm instance memory budget: {} MiB",
        runtime.memory_budget().limit() >> 20
    );
    let blobs = Arc::new(Blobs::open(&cfg.data_dir, cfg.max_upload_size)?);
    let image_store = Arc::new(
        crate::image::ImageStore::open(&cfg.data_dir)
            .context("opening the image store under the data dir")?,
    );
    let images = Arc::new(
        crate::image::Puller::new(
            image_store,
            crate::image::RegistryOptions {
                insecure_registries: cfg.insecure_registries.clone(),
                ..Default::default()
            },
        )
        .context("setting up the registry client")?,
    );
    let containers = containers(&cfg, images.clone()).await?;
    let fd_limit = crate::listen::raise_fd_limit().unwrap_or_else(|e| {
        tracing::warn!("cannot read or raise RLIMIT_NOFILE ({e}); assuming 1024 file descriptors");
        1024
    });
    let budget = crate::listen::Budget::new(fd_limit);
    let limits = crate::listen::Limits::new(&budget, cfg.max_connections);
    tracing::info!(
        fd_limit,
        connections = budget.connections(),
        per_listener = limits.max_connections,
        "connection limits"
    );
    let mesh = Mesh::new(cfg.publish_addr, limits.clone(), budget.clone());

    let tcp = tokio::net::TcpListener::bind(cfg.listen_addr).await.with_context(|| {
        format!("cannot listen on {} for the cluster API; is another daemon running? choose --listen-addr IP:PORT", cfg.listen_addr)
    })?;
    let api_addr = tcp.local_addr()?;
    let sock = cfg.data_dir.join("swarmlet.sock");
    let unix = crate::listen::bind_socket(&sock)?; // replaces a killed daemon's; we hold the lock

    let (shutdown_tx, shutdown) = watch::channel(false);
    let state = Arc::new(ApiState {
        identity,
        data_dir: cfg.data_dir.clone(),
        api_addr,
        advertise_addr: cfg.advertise_addr.clone(),
        blobs,
        runtime,
        images,
        containers,
        mesh: mesh.clone(),
        cluster: tokio::sync::OnceCell::new(),
        init_lock: tokio::sync::Mutex::new(()),
        shutdown: shutdown.clone(),
        cluster_port: crate::transport::ClusterPort::new(),
        joined: tokio::sync::OnceCell::new(),
        node_down_after: cfg.node_down_after,
        gossip_addr: cfg.gossip_addr,
        membership: tokio::sync::OnceCell::new(),
        gossip_error: std::sync::Mutex::new(None),
    });
    // The mesh forwards with the cluster port's client, which exists once
    // the node has certificates (init, join, restart); until routes arrive
    // it serves its local replicas only.
    state
        .mesh
        .set_cluster(state.identity.node_id.clone(), state.cluster_port.clone());
    if let Some(cluster) = start_cluster(&state, None).await? {
        let _ = state.cluster.set(cluster);
        tracing::info!(node = %state.identity.node_id, "rejoined the swarm from the data dir");
    }
    // Certificates on disk (or, for a manager, from the store's CA): the
    // cluster port serves mutual TLS; none: it stays plain and refuses.
    crate::api::join::install_node_certs(&state)
        .map_err(|e| anyhow::anyhow!("installing this node's certificates: {}", e.message))?;
    if let Some(joined) = crate::api::join::load_joined(&cfg.data_dir)? {
        if state.cluster.get().is_none() {
            after_join(&state, &joined).await?;
        }
    }
    // A node in a swarm gossips; a gossip port that cannot be bound is a
    // configuration error the operator must see now, not a silent hint gap.
    match crate::gossip::start(&state).await {
        Ok(()) | Err(crate::gossip::GossipStartError::NotInSwarm) => {}
        Err(
            e @ crate::gossip::GossipStartError::Membership(
                crate::membership::MembershipError::Bind { .. },
            ),
        ) => return Err(e.into()),
        Err(e) => tracing::warn!("running without gossip: {e}"),
    }
    tracing::info!(
        node = %state.identity.node_id,
        name = %state.identity.hostname,
        api = %api_addr,
        socket = %sock.display(),
        "swarmlet daemon ready"
    );
    tokio::spawn(crate::heap::trim_when_quiet());
    let (closing_tx, closing) = watch::channel(false);
    let listeners = api::Listeners { unix, tcp };
    let server = tokio::spawn(api::serve(
        state.clone(),
        listeners,
        limits,
        budget.clone(),
        closing,
    ));

    wait_for_signal().await;
    // Stop accepting everywhere, let requests in flight finish (connections
    // close after their current request), then stop the rest.
    let grace = cfg.shutdown_grace;
    tracing::info!(
        open = budget.open(),
        "shutting down: waiting up to {grace:?} for requests in flight"
    );
    let _ = closing_tx.send(true);
    mesh.close_all();
    let _ = server.await;
    let _ = std::fs::remove_file(&sock);
    if tokio::time::timeout(grace, budget.drained()).await.is_err() {
        tracing::warn!(
            open = budget.open(),
            "grace period over; closing connections still busy"
        );
    }
    let _ = shutdown_tx.send(true);
    if let Some(m) = state.membership.get() {
        if let Err(e) = m.stop().await {
            tracing::warn!("stopping gossip: {e}");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Called once this node has joined a swarm (`swarmlet join`), and at
/// start-up of a node that joined before and has no raft log of its own:
/// its certificates are on disk and the cluster port already serves mutual
/// TLS with them. This is the hook where the cluster parts start: raft as a
/// learner on a manager, the agent on the dispatcher interface everywhere
/// (wired by the lead; today it only records the state).
pub async fn after_join(st: &ApiState, joined: &crate::api::join::Joined) -> anyhow::Result<()> {
    let _ = st.joined.set(joined.clone());
    tracing::info!(
        role = ?joined.role,
        cluster = %joined.cluster_id,
        managers = ?joined.managers,
        "in the swarm as a joined node"
    );
    match joined.role {
        swarmlet_proto::NodeRole::Manager => {
            if let Some(cluster) = start_manager(st, None, &joined.peers).await? {
                let _ = st.cluster.set(cluster);
            }
        }
        swarmlet_proto::NodeRole::Worker => start_worker(st, joined).await?,
    }
    // Not fatal here: the node joined; `swarmlet info` tells why gossip is off.
    let _ = crate::gossip::start(st).await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
