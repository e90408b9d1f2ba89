//! The container runtime as a `Runtime`: a replica is an OCI container run
//! through containerd's shim (`ContainerRuntime`). `prepare` gets the image
//! (from the node's store, or pulled through the node's `Puller`) and
//! creates the container from the image config plus the service's env and
//! limits; `start` starts it and hands the mesh its address and the
//! service's target port; `wait` resolves when its process exits (with the
//! last lines of its log); `stop` is SIGTERM, then SIGKILL after the
//! service's stop grace period; `remove` takes everything of it away.
//!
//! Pulls are single-flight per image reference: three replicas of one image
//! starting together pull it once (the first task's pull runs in its own
//! tokio task; the others await the same attempt, failure included, and a
//! task stopped while waiting does not cancel it for the others; when the
//! last waiting task is gone and none came back within `PULL_ABANDON_AFTER`,
//! the pull is aborted). An image
//! already in the store (pulled before, or `image import`ed on an offline
//! node) is not pulled again: a pinned digest names exactly one content.
//!
//! The endpoint a started container reports is its address on the node's
//! bridge and the target port of the service's first published port; a
//! service without published ports reports port 0 (nothing to forward to).
//!
//! Restart: `ContainerTasks::start` reattaches to every container a previous
//! node process left (`ContainerRuntime::reattach_all`) before the agent
//! exists. A running one is *adopted*: the first controller made for its
//! task takes it over (prepare and start do nothing but return the same
//! endpoint). Once the agent has the first assignments and made its
//! controllers, `assignments_known` stops and removes the adopted
//! containers no task claimed.
//!
//! Architecture invariant: a task ID gets at most one container on a node:
//! an adopted container is claimed by at most one controller (taken out of
//! the adopted set when the controller is made), and `ContainerRuntime`
//! refuses to prepare an ID it already holds.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::FutureExt as _;
use swarmlet_proto::dispatcher::AssignedTask;
use swarmlet_proto::{Image, Service, TaskEndpoint};

use super::{lock, ContainerError, ContainerRuntime, ContainerSpec, Reattached};
use crate::image::{ImageInfo, ImageRef, LayerState, Progress, Puller};
use crate::runtime::task::{Controller, Exit, Runtime, RuntimeError, Serving};

/// Lines of a container's log quoted in `service ps` when it exits.
const EXIT_LOG_LINES: usize = 5;
/// At most this many characters of them.
const EXIT_LOG_CHARS: usize = 400;

type Pull = Shared<BoxFuture<'static, Result<Arc<ImageInfo>, String>>>;

/// One pull under way and how many tasks wait for it.
struct Pulling {
    /// Tells this pull from a later one of the same reference.
    attempt: u64,
    pull: Pull,
    waiters: usize,
    abort: tokio::task::AbortHandle,
}

/// A task waiting for a pull; the last one to stop waiting (its task was
/// removed) before the pull ends cancels it.
struct PullWaiter {
    tasks: Arc<ContainerTasks>,
    reference: String,
    attempt: u64,
}

impl Drop for PullWaiter {
    fn drop(&mut self) {
        let mut pulling = lock(&self.tasks.pulling);
        let Some(p) = pulling.get_mut(&self.reference) else {
            return; // it ended and removed itself
        };
        if p.attempt != self.attempt {
            return;
        }
        p.waiters -= 1;
        if p.waiters > 0 {
            return;
        }
        // A task replaced by another of the same image (scale 1 → 0 → 1,
        // rm then create) may stop waiting just before the new one starts:
        // give it a moment before abandoning the download.
        let (tasks, reference, attempt) =
            (self.tasks.clone(), self.reference.clone(), self.attempt);
        drop(pulling);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            tokio::time::sleep(PULL_ABANDON_AFTER).await;
            let mut pulling = lock(&tasks.pulling);
            let Some(p) = pulling.get(&reference) else {
                return;
            };
            if p.attempt == attempt && p.waiters == 0 {
                p.abort.abort();
                pulling.remove(&reference);
                tracing::info!(image = %reference, "pull cancelled: no task waits for it any more");
            }
        });
    }
}

/// How long a pull nobody waits for goes on before it is aborted.
const PULL_ABANDON_AFTER: Duration = Duration::from_secs(2);

/// Container tasks of one node: the runtime, the image puller, the pulls
/// under way and the containers adopted after a restart.
pub struct ContainerTasks {
    runtime: Arc<ContainerRuntime>,
    images: Arc<Puller>,
    /// Pulls under way, per reference.
    pulling: Mutex<HashMap<String, Pulling>>,
    attempts: AtomicU64,
    /// Pulls that went to a registry (for logs and tests).
    pulls: AtomicU64,
    /// Running containers found at start, not claimed by a task yet.
    adopted: Mutex<HashMap<String, Ipv4Addr>>,
    /// Image digests per task this node runs (for `image rm`).
    in_use: Mutex<HashMap<String, (String, Vec<String>)>>,
}

impl ContainerTasks {
    /// Takes over what a previous node process left: running containers
    /// are adopted (see the module doc), dead ones cleaned up.
    pub async fn start(runtime: Arc<ContainerRuntime>, images: Arc<Puller>) -> Arc<ContainerTasks> {
        let mut adopted = HashMap::new();
        for (id, r) in runtime.reattach_all().await {
            match r {
                Ok(Reattached::Running { pid, ip }) => {
                    tracing::info!(task = %id, pid, %ip, "container still running after restart");
                    adopted.insert(id, ip);
                }
                Ok(Reattached::CleanedUp { exit }) => {
                    tracing::info!(task = %id, ?exit, "removed a container that ended while the node was down");
                }
                Err(e) => tracing::warn!(task = %id, "reattaching to a container: {e}"),
            }
        }
        Arc::new(ContainerTasks {
            runtime,
            images,
            pulling: Mutex::new(HashMap::new()),
            attempts: AtomicU64::new(0),
            pulls: AtomicU64::new(0),
            adopted: Mutex::new(adopted),
            in_use: Mutex::new(HashMap::new()),
        })
    }

    pub fn runtime(&self) -> &Arc<ContainerRuntime> {
        &self.runtime
    }

    /// How many pulls went to a registry since start.
    pub fn pull_count(&self) -> u64 {
        self.pulls.load(Ordering::Relaxed)
    }

    /// Task IDs of containers adopted at start and not claimed yet.
    pub fn adopted(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.adopted).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Image digests used by this node's container tasks, each with the
    /// service using it (what `image rm` refuses to delete).
    pub fn images_in_use(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for (service, digests) in lock(&self.in_use).values() {
            for d in digests {
                out.insert(d.clone(), service.clone());
            }
        }
        out
    }

    /// The image `reference` (pinned form when there is a digest): from the
    /// store when it holds it, else pulled, one pull per reference at a time
    /// however many tasks want it. The pull runs in its own task and is
    /// cancelled when no task waits for it any more (each was removed or
    /// scaled away): a node does not keep downloading an image nobody will
    /// run. Layers already complete stay in the store for the next try.
    async fn image(self: &Arc<Self>, reference: &str) -> Result<Arc<ImageInfo>, String> {
        let (attempt, pull) = {
            let mut pulling = lock(&self.pulling);
            match pulling.get_mut(reference) {
                Some(p) => {
                    p.waiters += 1;
                    (p.attempt, p.pull.clone())
                }
                None => {
                    let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
                    let (this, r) = (self.clone(), reference.to_string());
                    let handle = tokio::spawn(async move {
                        let result = this.get_or_pull(&r).await;
                        let mut pulling = lock(&this.pulling);
                        if pulling.get(&r).is_some_and(|p| p.attempt == attempt) {
                            pulling.remove(&r);
                        }
                        result
                    });
                    let abort = handle.abort_handle();
                    let pull = async move {
                        handle.await.unwrap_or_else(|e| {
                            Err(format!("pulling the image did not finish: {e}"))
                        })
                    }
                    .boxed()
                    .shared();
                    pulling.insert(
                        reference.to_string(),
                        Pulling {
                            attempt,
                            pull: pull.clone(),
                            waiters: 1,
                            abort,
                        },
                    );
                    (attempt, pull)
                }
            }
        };
        let _waiting = PullWaiter {
            tasks: self.clone(),
            reference: reference.to_string(),
            attempt,
        };
        pull.await
    }

    async fn get_or_pull(&self, reference: &str) -> Result<Arc<ImageInfo>, String> {
        let r = ImageRef::parse(reference).map_err(|e| e.to_string())?;
        if let Ok(info) = self.images.store().get(&r.to_string()) {
            tracing::debug!(image = %r, "image already in the store");
            return Ok(Arc::new(info));
        }
        self.pulls.fetch_add(1, Ordering::Relaxed);
        tracing::info!(image = %r, "pulling");
        let shown = r.to_string();
        let progress: Box<dyn Fn(Progress) + Send + Sync> =
            Box::new(move |p: Progress| log_progress(&shown, &p));
        let info = self
            .images
            .pull(&r, progress.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(image = %r, id = %info.id, layers = info.layers.len(), "pulled");
        Ok(Arc::new(info))
    }

    /// Stops and removes every adopted container no controller claimed:
    /// their tasks are no longer assigned here.
    fn sweep(&self) {
        let orphans: Vec<String> = lock(&self.adopted).drain().map(|(id, _)| id).collect();
        for id in orphans {
            let rt = self.runtime.clone();
            tokio::spawn(async move {
                tracing::info!(task = %id, "stopping a container whose task is no longer assigned to this node");
                if let Err(e) = rt.stop(&id, ORPHAN_GRACE).await {
                    tracing::warn!(task = %id, "stopping an unassigned container: {e}");
                }
                if let Err(e) = rt.remove(&id).await {
                    tracing::warn!(task = %id, "removing an unassigned container: {e}");
                }
            });
        }
    }
}

/// The grace period of containers whose service this node no longer knows.
const ORPHAN_GRACE: Duration =
    Duration::from_millis(swarmlet_proto::ServiceSpec::DEFAULT_STOP_GRACE_MS);

/// Per-layer progress in the node's log: each layer's start and end.
fn log_progress(r: &str, p: &Progress) {
    let layer = p.layer.strip_prefix("sha256:").unwrap_or(&p.layer);
    // The digest comes from the registry's manifest: cut by characters.
    let short: String = layer.chars().take(12).collect();
    let n = p.index + 1;
    match &p.state {
        LayerState::AlreadyExists => {
            tracing::info!(image = %r, "layer {n}/{} {short}: already exists", p.count)
        }
        LayerState::Downloading { done: 0, total } => {
            tracing::info!(image = %r, "layer {n}/{} {short}: downloading ({} bytes)", p.count,
                total.map(|t| t.to_string()).unwrap_or_else(|| "?".into()))
        }
        LayerState::Downloading { .. } => {}
        LayerState::Complete => {
            tracing::info!(image = %r, "layer {n}/{} {short}: pull complete", p.count)
        }
    }
}

/// What to pull for `image`: the reference pinned to the manager's digest,
/// or as given when the service was created with `--no-resolve-image`.
pub fn pull_reference(reference: &str, digest: Option<&str>) -> Result<String, String> {
    let r = ImageRef::parse(reference).map_err(|e| e.to_string())?;
    Ok(match digest {
        Some(d) => r.with_digest(d).to_string(),
        None => r.to_string(),
    })
}

/// `KEY=value` lists: the image's, then the service's; a later key replaces
/// an earlier one in place (Docker's order).
pub fn merge_env(image: &[String], service: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for kv in image.iter().chain(service) {
        let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
        match out
            .iter_mut()
            .find(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e) == key)
        {
            Some(e) => *e = kv.clone(),
            None => out.push(kv.clone()),
        }
    }
    out
}

/// The last lines of a log as one line for `service ps`.
pub fn one_line_tail(tail: &str) -> String {
    let lines: Vec<&str> = tail
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let s = lines[lines.len().saturating_sub(EXIT_LOG_LINES)..].join(" | ");
    if s.chars().count() > EXIT_LOG_CHARS {
        let skip = s.chars().count() - EXIT_LOG_CHARS;
        format!("…{}", s.chars().skip(skip).collect::<String>())
    } else {
        s
    }
}

/// How an exit reads in `service ps`: "exited with code 1: <last lines>";
/// `when` follows the code (" at start").
fn exit_message(status: super::ExitStatus, tail: &str) -> String {
    exit_message_when(status, "", tail)
}

fn exit_message_when(status: super::ExitStatus, when: &str, tail: &str) -> String {
    let tail = one_line_tail(tail);
    let what = match status.signal() {
        Some(sig) => format!("exited with code {} (signal {sig}){when}", status.0),
        None => format!("exited with code {}{when}", status.0),
    };
    if tail.is_empty() {
        what
    } else {
        format!("{what}: {tail}")
    }
}

/// A runtime error as the task's error: one line, saying what to do.
fn failed(e: ContainerError) -> RuntimeError {
    match e {
        ContainerError::Exited {
            status, log_tail, ..
        } => RuntimeError::Failed(format!(
            "container {}",
            exit_message_when(status, " at start", &log_tail)
        )),
        ContainerError::ToolMissing { .. } => RuntimeError::Unsupported(e.to_string()),
        e => RuntimeError::Failed(e.to_string()),
    }
}

impl Runtime for Arc<ContainerTasks> {
    fn controller(
        &self,
        task: &AssignedTask,
        service: &Service,
    ) -> Result<Box<dyn Controller>, RuntimeError> {
        let Image::Oci { reference, digest } = &service.spec.image else {
            return Err(RuntimeError::Unsupported(format!(
                "{} is not an OCI image",
                service.spec.image.display_name()
            )));
        };
        let pull = pull_reference(reference, digest.as_deref()).map_err(RuntimeError::Failed)?;
        let adopted = lock(&self.adopted).remove(&task.id);
        if adopted.is_some() {
            tracing::info!(task = %task.display_name(), id = %task.id, "adopting its running container");
        }
        let spec = &service.spec;
        lock(&self.in_use).insert(
            task.id.clone(),
            (spec.name.clone(), digest.iter().cloned().collect()),
        );
        Ok(Box::new(ContainerTask {
            tasks: self.clone(),
            id: task.id.clone(),
            pull,
            env: spec.env.clone(),
            memory_bytes: spec.limits.memory_bytes,
            cpus: spec.limits.nano_cpus.map(|n| n as f64 / 1e9),
            port: spec.ports.first().map(|p| p.target).unwrap_or(0),
            ip: adopted,
            adopted: adopted.is_some(),
        }))
    }

    fn assignments_known(&self) {
        self.sweep();
    }
}

/// One container replica.
struct ContainerTask {
    tasks: Arc<ContainerTasks>,
    id: String,
    /// The reference pulled (pinned when the manager resolved it).
    pull: String,
    env: Vec<String>,
    memory_bytes: Option<u64>,
    cpus: Option<f64>,
    /// The service's target port (0: no published port).
    port: u16,
    /// The container's address once created (or adopted).
    ip: Option<Ipv4Addr>,
    /// Taken over from the node process before this one: already started.
    adopted: bool,
}

impl ContainerTask {
    async fn create(&mut self) -> Result<(), RuntimeError> {
        let info = self
            .tasks
            .image(&self.pull)
            .await
            .map_err(RuntimeError::Failed)?;
        if let Some((_, digests)) = lock(&self.tasks.in_use).get_mut(&self.id) {
            digests.extend(info.digests().map(String::from));
        }
        let layers = self
            .tasks
            .images
            .store()
            .rootfs_layers(&info)
            .map_err(|e| RuntimeError::Failed(e.to_string()))?;
        let c = &info.config;
        let spec = ContainerSpec {
            id: self.id.clone(),
            layers,
            args: c.entrypoint.iter().chain(&c.cmd).cloned().collect(),
            env: merge_env(&c.env, &self.env),
            cwd: c.workdir.clone(),
            user: c.user.clone().filter(|u| !u.is_empty()),
            memory_bytes: self.memory_bytes,
            cpus: self.cpus,
        };
        if spec.args.is_empty() {
            return Err(failed(ContainerError::NoCommand));
        }
        let prepared = self.tasks.runtime.prepare(&spec).await.map_err(failed)?;
        self.ip = Some(prepared.ip);
        Ok(())
    }
}

impl Controller for ContainerTask {
    fn prepare(&mut self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        async move {
            if self.ip.is_none() {
                self.create().await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn start(&mut self) -> BoxFuture<'_, Result<Serving, RuntimeError>> {
        async move {
            let ip = self
                .ip
                .ok_or_else(|| RuntimeError::Failed("started before it was prepared".into()))?;
            // An adopted container runs already (started by the node
            // process before this one); if it exited since, `wait` says so.
            if !self.adopted {
                self.tasks.runtime.start(&self.id).await.map_err(failed)?;
            }
            Ok(Serving::Endpoint(TaskEndpoint {
                addr: ip.to_string(),
                port: self.port,
            }))
        }
        .boxed()
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        async move {
            match self.tasks.runtime.wait_exit(&self.id).await {
                Ok(exit) => Exit {
                    code: Some(exit.status.0 as i32),
                    message: exit_message(exit.status, &exit.log_tail),
                },
                Err(e) => Exit {
                    code: None,
                    message: format!("the container is gone: {e}"),
                },
            }
        }
        .boxed()
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Result<(), RuntimeError>> {
        async move {
            self.tasks
                .runtime
                .stop(&self.id, grace)
                .await
                .map(|_| ())
                .map_err(failed)
        }
        .boxed()
    }

    fn remove(&mut self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        async move {
            lock(&self.tasks.in_use).remove(&self.id);
            self.ip = None;
            self.adopted = false;
            match self.tasks.runtime.remove(&self.id).await {
                Ok(()) | Err(ContainerError::NotFound { .. }) => Ok(()),
                Err(e) => Err(failed(e)),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_env_follows_and_replaces_the_image_env() {
        let image = vec!["PATH=/usr/bin".to_string(), "MODE=prod".to_string()];
        let service = vec!["MODE=dev".to_string(), "EXTRA=1".to_string()];
        assert_eq!(
            merge_env(&image, &service),
            vec!["PATH=/usr/bin", "MODE=dev", "EXTRA=1"]
        );
        assert_eq!(merge_env(&[], &["A=1".into(), "A=2".into()]), vec!["A=2"]);
    }

    #[test]
    fn exit_messages_quote_the_last_lines_on_one_line() {
        let tail = "one\ntwo\n\nthree\nfour\nfive\nsix\n";
        assert_eq!(
            exit_message(super::super::ExitStatus(1), tail),
            "exited with code 1: two | three | four | five | six"
        );
        assert_eq!(
            exit_message(super::super::ExitStatus(137), ""),
            "exited with code 137 (signal 9)"
        );
        let long = "x".repeat(2000);
        let line = one_line_tail(&long);
        assert!(line.starts_with('…') && line.chars().count() == EXIT_LOG_CHARS + 1);
    }

    #[test]
    fn a_pinned_digest_is_pulled_by_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            pull_reference("127.0.0.1:5000/web:v1", Some(&d)).unwrap(),
            format!("127.0.0.1:5000/web@{d}")
        );
        assert_eq!(
            pull_reference("nginx:1.27", None).unwrap(),
            "docker.io/library/nginx:1.27"
        );
        assert!(pull_reference("Not A Ref", None).is_err());
    }
}
