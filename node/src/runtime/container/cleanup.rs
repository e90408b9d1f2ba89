//! Taking a task's things away, whichever step failed or whoever made them
//! (this runtime, or the node process before a restart): runc's container
//! and the shim, the mount, the network, a leftover cgroup, the bundle.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::api;

use super::network::{self, link_exists, netns_path, Attachment};
use super::rootfs::{self, Rootfs};
use super::shim::{self, ShimClient};
use super::{lock, read_record, ContainerError, ContainerRuntime, KILL_WAIT, SHIM_EXIT_WAIT};

impl ContainerRuntime {
    /// Takes away everything a task may have: runc's container and the shim
    /// (through `client`, the shim's socket, or the shim binary's `delete`),
    /// the mount, the network, a leftover cgroup, the bundle. Idempotent;
    /// each failure is logged and the next step still runs.
    pub(super) async fn cleanup(&self, id: &str, client: Option<&ShimClient>) {
        let bundle = self.bundle_dir(id);
        let record = read_record(&bundle);
        let connected;
        let client = match client {
            Some(c) => Some(c),
            None => {
                connected = match shim::read_address(&bundle) {
                    Some(address) => ShimClient::connect(&address, &self.cfg.namespace, id)
                        .await
                        .ok(),
                    None => None,
                };
                connected.as_ref()
            }
        };
        let mut deleted = false;
        if let Some(c) = client {
            // A container still running (or created and never started) is
            // killed first: runc deletes only stopped containers.
            if let Err(e) = force_stop(c).await {
                tracing::warn!(%id, "{e}");
            }
            match c.delete().await {
                Ok(_) => deleted = true,
                Err(e) => tracing::debug!(%id, "shim Delete: {e}"),
            }
            if let Err(e) = c.shutdown().await {
                tracing::debug!(%id, "shim Shutdown: {e}");
            }
            wait_gone(c.shim_pid).await;
        }
        if !deleted && bundle.join("config.json").exists() {
            let address = self.cfg.root.join("containerd.sock");
            let events = self.cfg.root.join("events.sock");
            if let Err(e) =
                shim::delete_with_binary(&self.launch(&bundle, id, &address, &events)).await
            {
                tracing::debug!(%id, "shim delete: {e}");
            }
        }
        if let Some(address) = shim::read_address(&bundle) {
            let _ = std::fs::remove_file(shim::socket_path(&address));
        }
        if let Err(e) = Rootfs::in_bundle(&bundle).unmount() {
            tracing::warn!(%id, "{e}");
        }
        let attachment = record
            .as_ref()
            .and_then(|r| r.attachment.clone())
            .unwrap_or_else(|| Attachment {
                netns: self.cfg.network.netns_name(id),
                veth: self.cfg.network.veth_name(id),
                ip: Ipv4Addr::UNSPECIFIED,
            });
        network::detach(&attachment).await;
        lock(&self.ips).remove(&attachment.ip);
        for dir in cgroup_dirs(&self.cgroups_path(id)) {
            if let Err(e) = std::fs::remove_dir(&dir) {
                tracing::warn!(%id, "removing cgroup {}: {e}", dir.display());
            }
        }
        if bundle.exists() && !rootfs::is_mountpoint(&bundle.join("rootfs")) {
            if let Err(e) = std::fs::remove_dir_all(&bundle) {
                tracing::warn!(%id, "removing bundle {}: {e}", bundle.display());
            }
        }
        self.exits.forget(id);
        tracing::info!(%id, "container removed");
    }

    /// What of the task is still on the machine (empty once removed).
    pub fn leftovers(&self, id: &str) -> Vec<String> {
        let mut left = Vec::new();
        let bundle = self.bundle_dir(id);
        if rootfs::is_mountpoint(&bundle.join("rootfs")) {
            left.push(format!("mount {}", bundle.join("rootfs").display()));
        }
        if bundle.exists() {
            left.push(format!("bundle {}", bundle.display()));
        }
        let netns = self.cfg.network.netns_name(id);
        if netns_path(&netns).exists() {
            left.push(format!("network namespace {netns}"));
        }
        let veth = self.cfg.network.veth_name(id);
        if link_exists(&veth) {
            left.push(format!("veth {veth}"));
        }
        for dir in cgroup_dirs(&self.cgroups_path(id)) {
            left.push(format!("cgroup {}", dir.display()));
        }
        left
    }
}

/// The cgroup directories at `path` that exist: one per v1 hierarchy, or
/// the one of the unified (v2) hierarchy.
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let rel = path.trim_start_matches('/');
    if root.join("cgroup.controllers").exists() {
        let dir = root.join(rel);
        return if dir.is_dir() { vec![dir] } else { vec![] };
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return vec![];
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        // Skip the comma-joined hierarchies' symlinks (cpu -> cpu,cpuacct).
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().join(rel))
        .filter(|d| d.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// SIGKILL to every process of the container unless it has stopped, then
/// waits (bounded) until the shim reports it stopped. Asks the shim's State
/// rather than waiting for the exit event: a container that was created
/// but never started, or one whose event went to a node that is gone,
/// is covered too.
async fn force_stop(client: &ShimClient) -> Result<(), ContainerError> {
    let stopped = |s: &api::StateResponse| s.status.enum_value() == Ok(api::Status::STOPPED);
    if stopped(&client.state().await?) {
        return Ok(());
    }
    client.kill(libc::SIGKILL, true).await?;
    let deadline = tokio::time::Instant::now() + KILL_WAIT;
    loop {
        if stopped(&client.state().await?) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ContainerError::Shim {
                id: String::new(),
                message: format!("the container did not stop within {KILL_WAIT:?} of SIGKILL"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) for a shim process to exit after Shutdown.
async fn wait_gone(pid: u32) {
    if pid == 0 {
        return;
    }
    let deadline = tokio::time::Instant::now() + SHIM_EXIT_WAIT;
    while shim::process_alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                pid,
                "the shim did not exit within {SHIM_EXIT_WAIT:?} of Shutdown"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
