//! OCI containers through containerd's shim v2 API, without containerd:
//! per task an OCI bundle over an overlayfs rootfs, its own network
//! namespace on a node-local bridge, and a `containerd-shim-runc-v2`
//! driven over ttrpc, whose exit events are pushed to us.
//!
//! `bundle.rs` writes `config.json`, `rootfs.rs` mounts the image's layers
//! (given as directories by the image store) under a writable upper
//! directory, `network.rs` makes the namespace and veth, `shim.rs` launches
//! and talks to the shim and serves the events sink, `logs.rs` reads the
//! per-task log the shim writes. `ContainerRuntime` (this file) puts them
//! together: prepare → start → wait_exit / stop → remove; `cleanup.rs`
//! takes a task's things away, `reattach.rs` adopts or cleans up what a
//! previous node process left running.
//!
//! On disk, per task: `ROOT/tasks/<id>/` = the bundle (`config.json`,
//! `rootfs/` (the mount), `upper/`, `work/`, the shim's `log` fifo and
//! `shim.log`, its `address`, and `swarmlet.json`: what this node made for
//! the task, so a restarted node can adopt or remove it).
//!
//! Architecture invariant: everything a task gets (shim, mount, network
//! namespace, veth, cgroup, bundle) is recorded in its bundle before it is
//! made, and `remove` (or `reattach` of a dead task) takes all of it away
//! whichever step failed; only the task's log file stays, for the caller.
//! Architecture invariant: the shims outlive the node process; a container
//! is never started twice for one task ID on a node.

mod bundle;
mod cleanup;
mod error;
mod logs;
mod network;
mod reattach;
mod rootfs;
mod shim;
#[doc(hidden)]
pub mod sweep;
mod task;

pub use bundle::DOCKER_DEFAULT_CAPS;
pub use cleanup::cgroup_dirs;
pub use error::{ContainerError, ExitStatus};
pub use logs::tail as log_tail;
pub use network::{link_exists, netns_path, remove_bridge, Attachment, NetworkConfig};
pub use rootfs::is_mountpoint;
pub use shim::{process_alive, SHIM_BINARY};
pub use task::{merge_env, one_line_tail, pull_reference, ContainerTasks};

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim_protos::api;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use rootfs::Rootfs;
use shim::{Exits, Launch, ShimClient};

/// Where the node keeps a task's container log: `DATA_DIR/containers/logs/<task_id>.log`
/// (the daemon's `RuntimeConfig` is `RuntimeConfig::new(DATA_DIR/containers)`).
pub fn container_log_path(data_dir: &Path, task_id: &str) -> PathBuf {
    data_dir
        .join("containers")
        .join("logs")
        .join(format!("{task_id}.log"))
}

/// This node's container runtime, or why it has none.
#[derive(Clone)]
pub enum Containers {
    Ready(Arc<ContainerTasks>),
    /// Container tasks are rejected with this (e.g. what to install).
    Unavailable(String),
}

impl Containers {
    /// The runtime the agent drives container tasks through.
    pub fn runtime(&self) -> Arc<dyn crate::runtime::Runtime> {
        match self {
            Containers::Ready(t) => Arc::new(t.clone()),
            Containers::Unavailable(why) => Arc::new(crate::runtime::Unavailable(why.clone())),
        }
    }

    pub fn tasks(&self) -> Option<&Arc<ContainerTasks>> {
        match self {
            Containers::Ready(t) => Some(t),
            Containers::Unavailable(_) => None,
        }
    }
}

/// Lines of a container's log quoted in errors.
const LOG_TAIL_LINES: usize = 20;
/// How long a container may take to die after SIGKILL before stop gives up
/// (it is in uninterruptible sleep, or its shim is wedged).
const KILL_WAIT: Duration = Duration::from_secs(30);
/// How long a shim may take to exit after Shutdown.
const SHIM_EXIT_WAIT: Duration = Duration::from_secs(30);

/// Where and how this node runs containers.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Bundles live in `root/tasks/<id>`; the events socket is `root/events.sock`.
    pub root: PathBuf,
    /// Per-task logs: `log_dir/<id>.log`.
    pub log_dir: PathBuf,
    /// The containerd namespace the shims put their containers in.
    pub namespace: String,
    /// Containers' cgroups are `/<cgroup_parent>/<id>` in every hierarchy.
    pub cgroup_parent: String,
    pub network: NetworkConfig,
    /// `containerd-shim-runc-v2`, or a path to it.
    pub shim_binary: PathBuf,
}

impl RuntimeConfig {
    /// Defaults under `root` (the node's container state directory).
    pub fn new(root: impl Into<PathBuf>) -> RuntimeConfig {
        let root = root.into();
        RuntimeConfig {
            log_dir: root.join("logs"),
            root,
            namespace: "swarmlet".to_string(),
            cgroup_parent: "swarmlet".to_string(),
            network: NetworkConfig::default(),
            shim_binary: PathBuf::from(SHIM_BINARY),
        }
    }
}

/// What to run for one task (the image side resolves entrypoint, cmd, env
/// and workdir from the image config plus the service's settings).
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// The task ID: container ID, hostname, and part of every name.
    pub id: String,
    /// The image's unpacked layers, bottom first.
    pub layers: Vec<PathBuf>,
    /// Entrypoint followed by cmd.
    pub args: Vec<String>,
    /// `KEY=value`, the image's then the service's.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// The image's `USER` (name or uid, optionally `:group`).
    pub user: Option<String>,
    pub memory_bytes: Option<u64>,
    /// CPUs (`--limit-cpu 0.5`).
    pub cpus: Option<f64>,
}

/// A prepared container: created by runc, not yet started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The container's address: the node reaches its ports there.
    pub ip: Ipv4Addr,
    pub log: PathBuf,
}

/// How a container ended.
#[derive(Debug, Clone)]
pub struct Exit {
    pub status: ExitStatus,
    /// The last lines of its log.
    pub log_tail: String,
}

/// What `reattach` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reattached {
    /// The container runs: adopted, as if this runtime had started it.
    Running { pid: u32, ip: Ipv4Addr },
    /// It had stopped (or its shim was gone): everything of it was removed.
    CleanedUp { exit: Option<ExitStatus> },
}

/// Facts about a running task (for the caller's status and for tests).
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub ip: Ipv4Addr,
    pub netns: String,
    pub veth: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
    pub shim_pid: u32,
    /// `/<cgroup_parent>/<id>`
    pub cgroups_path: String,
}

/// What this node made for a task, kept in the bundle as `swarmlet.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    attachment: Option<Attachment>,
    log: PathBuf,
}

struct Task {
    bundle: PathBuf,
    record: Record,
    client: ShimClient,
    exit: watch::Receiver<Option<ExitStatus>>,
    shim_log: tokio::task::JoinHandle<()>,
}

/// Runs containers for one node.
pub struct ContainerRuntime {
    cfg: RuntimeConfig,
    exits: Arc<Exits>,
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    /// IDs being prepared or removed, and the addresses they hold.
    busy: Mutex<HashSet<String>>,
    ips: Mutex<HashSet<Ipv4Addr>>,
    bridge_ready: tokio::sync::Mutex<bool>,
    /// Dropping (or sending on) it stops the events server.
    events_stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Task IDs become file, namespace and cgroup names: keep them plain.
fn validate_id(id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::InvalidId { id: id.to_string() })
    }
}

/// Finds `program` on the PATH (or checks the path given).
fn find_tool(program: &Path) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

impl ContainerRuntime {
    /// Checks the tools, creates the directories and serves the events
    /// socket. Call `reattach_all` next when the node restarts.
    pub async fn new(cfg: RuntimeConfig) -> Result<ContainerRuntime, ContainerError> {
        cfg.network.validate()?;
        let install = "install Debian's containerd and runc packages (scripts/setup.sh does)";
        for tool in [cfg.shim_binary.as_path(), Path::new("runc")] {
            if !find_tool(tool) {
                return Err(ContainerError::ToolMissing {
                    tool: tool.display().to_string(),
                    hint: install.to_string(),
                });
            }
        }
        for tool in ["ip", "iptables"] {
            if !find_tool(Path::new(tool)) {
                return Err(ContainerError::ToolMissing {
                    tool: tool.to_string(),
                    hint: "install iproute2 and iptables (scripts/setup.sh does)".to_string(),
                });
            }
        }
        for dir in [cfg.root.join("tasks"), cfg.log_dir.clone()] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| ContainerError::io("creating", dir.clone(), e))?;
        }
        let exits = Arc::new(Exits::default());
        let mut events =
            shim::serve_events(&cfg.root.join("events.sock"), &cfg.namespace, exits.clone())
                .await?;
        let (events_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = stopped.await;
            if let Err(e) = events.shutdown().await {
                tracing::debug!("events socket shutdown: {e}");
            }
        });
        Ok(ContainerRuntime {
            cfg,
            exits,
            tasks: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            ips: Mutex::new(HashSet::new()),
            bridge_ready: tokio::sync::Mutex::new(false),
            events_stop: Mutex::new(Some(events_stop)),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    fn bundle_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("tasks").join(id)
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.cfg.log_dir.join(format!("{id}.log"))
    }

    pub fn cgroups_path(&self, id: &str) -> String {
        format!("/{}/{}", self.cfg.cgroup_parent.trim_matches('/'), id)
    }

    fn launch<'a>(
        &'a self,
        bundle: &'a Path,
        id: &'a str,
        address: &'a Path,
        events: &'a Path,
    ) -> Launch<'a> {
        Launch {
            binary: &self.cfg.shim_binary,
            bundle,
            id,
            namespace: &self.cfg.namespace,
            address,
            ttrpc_address: events,
        }
    }

    /// Marks `id` busy for the guard's lifetime; refuses a known or busy ID.
    fn claim(&self, id: &str) -> Result<Claim<'_>, ContainerError> {
        validate_id(id)?;
        let tasks = lock(&self.tasks);
        let mut busy = lock(&self.busy);
        if tasks.contains_key(id) || !busy.insert(id.to_string()) {
            return Err(ContainerError::AlreadyExists { id: id.to_string() });
        }
        Ok(Claim {
            rt: self,
            id: id.to_string(),
        })
    }

    fn allocate_ip(&self) -> Result<Ipv4Addr, ContainerError> {
        let mut ips = lock(&self.ips);
        let ip = self
            .cfg
            .network
            .hosts()
            .find(|ip| !ips.contains(ip))
            .ok_or_else(|| {
                ContainerError::Network(format!(
                    "no free address left in {}",
                    self.cfg.network.cidr()
                ))
            })?;
        ips.insert(ip);
        Ok(ip)
    }

    async fn ensure_bridge(&self) -> Result<(), ContainerError> {
        let mut ready = self.bridge_ready.lock().await;
        if !*ready {
            network::ensure_bridge(&self.cfg.network).await?;
            *ready = true;
        }
        Ok(())
    }

    /// Creates the container: rootfs, network, bundle, shim, runc create.
    /// On failure nothing of it is left.
    pub async fn prepare(&self, spec: &ContainerSpec) -> Result<Prepared, ContainerError> {
        let claim = self.claim(&spec.id)?;
        let id = spec.id.as_str();
        let bundle = self.bundle_dir(id);
        if bundle.exists() {
            // Left by a node that died before it could record or remove it.
            tracing::warn!(%id, "removing a stale bundle before preparing the task again");
            self.cleanup(id, None).await;
        }
        let record = Record {
            id: id.to_string(),
            attachment: None,
            log: self.log_path(id),
        };
        match self.create(spec, &bundle, record).await {
            Ok(task) => {
                let prepared = Prepared {
                    ip: task
                        .record
                        .attachment
                        .as_ref()
                        .map(|a| a.ip)
                        .unwrap_or(Ipv4Addr::UNSPECIFIED),
                    log: task.record.log.clone(),
                };
                lock(&self.tasks).insert(id.to_string(), Arc::new(task));
                drop(claim);
                Ok(prepared)
            }
            Err((e, client)) => {
                tracing::info!(%id, "preparing the container failed, removing what was made: {e}");
                self.cleanup(id, client.as_ref()).await;
                Err(e)
            }
        }
    }

    async fn create(
        &self,
        spec: &ContainerSpec,
        bundle: &Path,
        mut record: Record,
    ) -> Result<Task, (ContainerError, Option<ShimClient>)> {
        let id = spec.id.as_str();
        std::fs::create_dir_all(bundle)
            .map_err(|e| (ContainerError::io("creating", bundle, e), None))?;
        write_record(bundle, &record).map_err(|e| (e, None))?;
        let rootfs = Rootfs::in_bundle(bundle);
        rootfs.mount(id, &spec.layers).map_err(|e| (e, None))?;
        let cwd = spec.cwd.as_deref().filter(|c| !c.is_empty()).unwrap_or("/");
        rootfs::check_command(&rootfs.merged, &spec.args, &spec.env, cwd).map_err(|e| (e, None))?;
        let user =
            rootfs::resolve_user(&rootfs.merged, spec.user.as_deref()).map_err(|e| (e, None))?;

        self.ensure_bridge().await.map_err(|e| (e, None))?;
        let ip = self.allocate_ip().map_err(|e| (e, None))?;
        // Recorded before it exists, so a crash in between still cleans it up.
        record.attachment = Some(Attachment {
            netns: self.cfg.network.netns_name(id),
            veth: self.cfg.network.veth_name(id),
            ip,
        });
        write_record(bundle, &record).map_err(|e| (e, None))?;
        let att = network::attach(&self.cfg.network, id, ip)
            .await
            .map_err(|e| (e, None))?;

        let cgroups_path = self.cgroups_path(id);
        let netns = netns_path(&att.netns);
        let oci = bundle::build_spec(&bundle::BundleConfig {
            hostname: id,
            args: &spec.args,
            env: &spec.env,
            cwd,
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids,
            netns_path: &netns,
            cgroups_path: &cgroups_path,
            memory_bytes: spec.memory_bytes,
            cpus: spec.cpus,
        })
        .map_err(|e| (e, None))?;
        bundle::write_spec(bundle, &oci).map_err(|e| (e, None))?;

        let shim_log = shim::follow_shim_log(bundle).map_err(|e| (e, None))?;
        let address_file = self.cfg.root.join("containerd.sock");
        let events = self.cfg.root.join("events.sock");
        let launch = self.launch(bundle, id, &address_file, &events);
        let exit = self.exits.watch(id);
        let connected = async {
            let address = shim::launch(&launch).await?;
            ShimClient::connect(&address, &self.cfg.namespace, id).await
        }
        .await;
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                shim_log.abort();
                return Err((e, None));
            }
        };
        if let Err(e) = client.create(bundle, &record.log).await {
            shim_log.abort();
            let message = e.message().to_string();
            let err = command_error(&spec.args, &message).unwrap_or(ContainerError::CreateFailed {
                id: id.to_string(),
                message,
            });
            return Err((err, Some(client)));
        }
        tracing::info!(%id, %ip, shim_pid = client.shim_pid, "container created");
        Ok(Task {
            bundle: bundle.to_path_buf(),
            record,
            client,
            exit,
            shim_log,
        })
    }

    fn task(&self, id: &str) -> Result<Arc<Task>, ContainerError> {
        lock(&self.tasks)
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound { id: id.to_string() })
    }

    /// Starts a prepared container; returns its main process ID. A container
    /// that is already gone when start returns gives `Exited` with its log.
    pub async fn start(&self, id: &str) -> Result<u32, ContainerError> {
        let task = self.task(id)?;
        let pid = task.client.start().await?;
        let state = task.client.state().await?;
        if state.status.enum_value() == Ok(api::Status::STOPPED) {
            return Err(self.exited(id, &task, ExitStatus(state.exit_status)).await);
        }
        tracing::info!(%id, pid, "container started");
        Ok(pid)
    }

    async fn exited(&self, id: &str, task: &Task, status: ExitStatus) -> ContainerError {
        ContainerError::Exited {
            id: id.to_string(),
            status,
            log_tail: logs::settled_tail(&task.record.log, task.client.shim_pid, LOG_TAIL_LINES)
                .await,
        }
    }

    /// Waits until the container's main process exits (the shim pushes the
    /// exit event); the container stays until `remove`.
    pub async fn wait_exit(&self, id: &str) -> Result<Exit, ContainerError> {
        let task = self.task(id)?;
        let mut rx = task.exit.clone();
        let status = wait_status(&mut rx)
            .await
            .ok_or_else(|| ContainerError::NotFound { id: id.to_string() })?;
        Ok(Exit {
            status,
            log_tail: logs::settled_tail(&task.record.log, task.client.shim_pid, LOG_TAIL_LINES)
                .await,
        })
    }

    /// The exit status, if the container has exited.
    pub fn exit_status(&self, id: &str) -> Option<ExitStatus> {
        let task = lock(&self.tasks).get(id).cloned()?;
        let status = *task.exit.borrow();
        status
    }

    /// Stops the container: SIGTERM, then SIGKILL (to every process in it)
    /// if it is still running after `grace`. Returns how it exited.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<ExitStatus, ContainerError> {
        let task = self.task(id)?;
        let mut rx = task.exit.clone();
        if let Some(status) = *rx.borrow() {
            return Ok(status);
        }
        if let Err(e) = task.client.kill(libc::SIGTERM, false).await {
            // Already gone between the check and the kill: its exit is on its way.
            tracing::debug!(%id, "SIGTERM: {e}");
        }
        if let Ok(Some(status)) = tokio::time::timeout(grace, wait_status(&mut rx)).await {
            return Ok(status);
        }
        tracing::info!(%id, "still running after {grace:?}: SIGKILL");
        if let Err(e) = task.client.kill(libc::SIGKILL, true).await {
            tracing::debug!(%id, "SIGKILL: {e}");
        }
        match tokio::time::timeout(KILL_WAIT, wait_status(&mut rx)).await {
            Ok(Some(status)) => Ok(status),
            _ => Err(ContainerError::Shim {
                id: id.to_string(),
                message: format!("the container did not exit within {KILL_WAIT:?} of SIGKILL"),
            }),
        }
    }

    /// Removes the container and everything made for it (kills it first if
    /// it still runs). The log file stays.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let task = lock(&self.tasks).remove(id);
        let Some(task) = task else {
            if self.bundle_dir(id).exists() {
                self.cleanup(id, None).await;
                return Ok(());
            }
            return Err(ContainerError::NotFound { id: id.to_string() });
        };
        lock(&self.busy).insert(id.to_string());
        task.shim_log.abort();
        self.cleanup(id, Some(&task.client)).await;
        lock(&self.busy).remove(id);
        let left = self.leftovers(id);
        if left.is_empty() {
            Ok(())
        } else {
            Err(ContainerError::Shim {
                id: id.to_string(),
                message: format!("could not remove: {}", left.join(", ")),
            })
        }
    }

    /// Facts about a task this runtime holds.
    pub fn info(&self, id: &str) -> Option<ContainerInfo> {
        let task = lock(&self.tasks).get(id).cloned()?;
        let att = task.record.attachment.clone()?;
        Some(ContainerInfo {
            ip: att.ip,
            netns: att.netns,
            veth: att.veth,
            bundle: task.bundle.clone(),
            log: task.record.log.clone(),
            shim_pid: task.client.shim_pid,
            cgroups_path: self.cgroups_path(id),
        })
    }

    /// The main process ID of a running container (from the shim).
    pub async fn pid(&self, id: &str) -> Result<u32, ContainerError> {
        Ok(self.task(id)?.client.state().await?.pid)
    }

    /// IDs of the containers this runtime holds.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.tasks).keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// Dropping the runtime (the node stopping) leaves containers and shims
/// running for the next `reattach`: it only stops listening to them.
impl Drop for ContainerRuntime {
    fn drop(&mut self) {
        for task in lock(&self.tasks).values() {
            task.shim_log.abort();
        }
        drop(lock(&self.events_stop).take());
    }
}

/// Releases a claimed ID.
struct Claim<'a> {
    rt: &'a ContainerRuntime,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(&self.rt.busy).remove(&self.id);
    }
}

fn write_record(bundle: &Path, record: &Record) -> Result<(), ContainerError> {
    let path = bundle.join("swarmlet.json");
    let tmp = bundle.join("swarmlet.json.tmp");
    let json =
        serde_json::to_vec_pretty(record).map_err(|e| ContainerError::Spec(e.to_string()))?;
    std::fs::write(&tmp, json).map_err(|e| ContainerError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| ContainerError::io("writing", &path, e))
}

fn read_record(bundle: &Path) -> Option<Record> {
    let bytes = std::fs::read(bundle.join("swarmlet.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// runc's words for a command that cannot be executed, as a typed error.
fn command_error(args: &[String], message: &str) -> Option<ContainerError> {
    let lower = message.to_ascii_lowercase();
    let exec_failed = lower.contains("exec: \"")
        || lower.contains("executable file not found")
        || lower.contains("exec format error");
    exec_failed.then(|| ContainerError::CommandNotFound {
        command: args.first().cloned().unwrap_or_default(),
        why: message.to_string(),
    })
}

/// The exit status once there is one; `None` if the task was forgotten.
async fn wait_status(rx: &mut watch::Receiver<Option<ExitStatus>>) -> Option<ExitStatus> {
    let seen = rx.wait_for(|s| s.is_some()).await.ok().and_then(|s| *s);
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_names() {
        assert!(validate_id("abc-1.2_x").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn runc_exec_errors_become_command_not_found() {
        let args = vec!["/nope".to_string()];
        let msg = "OCI runtime create failed: runc create failed: unable to start container process: exec: \"/nope\": stat /nope: no such file or directory: unknown";
        assert!(matches!(
            command_error(&args, msg),
            Some(ContainerError::CommandNotFound { .. })
        ));
        assert!(command_error(&args, "cgroup: permission denied").is_none());
    }
}
