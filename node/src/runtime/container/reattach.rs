//! After the node restarts: its containers' shims outlived it. Each bundle
//! on disk is either adopted (its shim still runs the container) or cleaned
//! up; a task ID is never run twice.

use std::net::Ipv4Addr;
use std::sync::Arc;

use containerd_shim_protos::api;

use super::shim::{self, ShimClient};
use super::{
    lock, read_record, ContainerError, ContainerRuntime, ExitStatus, Reattached, Record, Task,
};

impl ContainerRuntime {
    /// After a node restart: adopts the container of `id` if it still runs
    /// (its shim outlived the node), else removes everything of it.
    pub async fn reattach(&self, id: &str) -> Result<Reattached, ContainerError> {
        let claim = self.claim(id)?;
        let bundle = self.bundle_dir(id);
        if !bundle.exists() {
            return Err(ContainerError::NotFound { id: id.to_string() });
        }
        // Watch first: an exit between the State call and adoption is then seen.
        let exit = self.exits.watch(id);
        let record = read_record(&bundle);
        let client = match shim::read_address(&bundle) {
            Some(address) => ShimClient::connect(&address, &self.cfg.namespace, id)
                .await
                .ok(),
            None => None,
        };
        let running = match (&client, &record) {
            (
                Some(c),
                Some(Record {
                    attachment: Some(_),
                    ..
                }),
            ) => match c.state().await {
                Ok(s)
                    if s.status.enum_value() == Ok(api::Status::RUNNING)
                        && exit.borrow().is_none() =>
                {
                    Some(s.pid)
                }
                Ok(s) if s.status.enum_value() == Ok(api::Status::STOPPED) => {
                    self.exits.record(id, ExitStatus(s.exit_status));
                    None
                }
                _ => None,
            },
            _ => None,
        };
        match (running, client, record) {
            (Some(pid), Some(client), Some(record)) => {
                let shim_log = shim::follow_shim_log(&bundle)?;
                let ip = record
                    .attachment
                    .as_ref()
                    .map(|a| a.ip)
                    .unwrap_or(Ipv4Addr::UNSPECIFIED);
                lock(&self.ips).insert(ip);
                lock(&self.tasks).insert(
                    id.to_string(),
                    Arc::new(Task {
                        bundle,
                        record,
                        client,
                        exit,
                        shim_log,
                    }),
                );
                drop(claim);
                tracing::info!(%id, pid, %ip, "adopted a running container");
                Ok(Reattached::Running { pid, ip })
            }
            (_, client, _) => {
                let status = *exit.borrow();
                self.cleanup(id, client.as_ref()).await;
                drop(claim);
                Ok(Reattached::CleanedUp { exit: status })
            }
        }
    }

    /// `reattach` for every bundle on disk not held yet.
    pub async fn reattach_all(&self) -> Vec<(String, Result<Reattached, ContainerError>)> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.cfg.root.join("tasks")) else {
            return out;
        };
        let ids: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| !lock(&self.tasks).contains_key(id))
            .collect();
        for id in ids {
            let r = self.reattach(&id).await;
            out.push((id, r));
        }
        out
    }
}
