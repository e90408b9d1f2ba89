//! The wasm runtime as a `Runtime`: a replica is its component loaded in
//! the engine and served in-process by the mesh. `prepare` gets the
//! component (fetched from a manager when this node lacks it) and loads it
//! (compiling it the first time); `start` hands the mesh the loaded app; a
//! replica "exits" only when stopped; `remove` unloads the component once
//! no replica of this node uses it.
//!
//! Tasks of one component share one load: the first task's `prepare`
//! spawns it, the others (10,000 replicas of one service) await the same
//! attempt without holding a thread, and get its result, failure included.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::FutureExt as _;
use swarmlet_proto::dispatcher::AssignedTask;
use swarmlet_proto::{Image, Service};

use super::{lock, WasmApp, WasmRuntime};
use crate::runtime::task::{Controller, Exit, Runtime, RuntimeError, Serving};

/// Where components come from: the node's blobs, or a manager.
pub trait Components: Send + Sync + 'static {
    /// The path of the component `digest`, checked against its digest,
    /// fetched first if this node does not hold it (or its copy is damaged).
    fn component(&self, digest: String) -> BoxFuture<'static, Result<PathBuf, String>>;
}

type Load = Shared<BoxFuture<'static, Result<Arc<WasmApp>, String>>>;

pub struct WasmTasks {
    runtime: Arc<WasmRuntime>,
    components: Arc<dyn Components>,
    /// Loads under way, per digest, with an attempt number.
    loading: Mutex<HashMap<String, (u64, Load)>>,
    attempts: std::sync::atomic::AtomicU64,
    /// How many tasks use each loaded component.
    users: Mutex<HashMap<String, usize>>,
}

impl WasmTasks {
    pub fn new(runtime: Arc<WasmRuntime>, components: Arc<dyn Components>) -> Arc<WasmTasks> {
        Arc::new(WasmTasks {
            runtime,
            components,
            loading: Mutex::new(HashMap::new()),
            attempts: Default::default(),
            users: Mutex::new(HashMap::new()),
        })
    }

    /// The loaded component `digest` for one more task.
    async fn acquire(self: &Arc<Self>, digest: &str) -> Result<Arc<WasmApp>, String> {
        {
            let mut users = lock(&self.users);
            if let Some(app) = self.runtime.loaded(digest) {
                *users.entry(digest.to_string()).or_default() += 1;
                return Ok(app);
            }
        }
        let app = self.load(digest).await?;
        *lock(&self.users).entry(digest.to_string()).or_default() += 1;
        Ok(app)
    }

    /// Joins the load of `digest` under way, or starts one. It runs in its
    /// own tokio task: a task stopped while waiting does not cancel it for
    /// the others.
    fn load(self: &Arc<Self>, digest: &str) -> Load {
        let mut loading = lock(&self.loading);
        if let Some((_, l)) = loading.get(digest) {
            return l.clone();
        }
        let attempt = self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (this, d) = (self.clone(), digest.to_string());
        let handle = tokio::spawn(async move {
            let result = load(&this, &d).await;
            let mut loading = lock(&this.loading);
            if loading.get(&d).is_some_and(|(a, _)| *a == attempt) {
                loading.remove(&d);
            }
            result
        });
        let shared = async move {
            handle
                .await
                .unwrap_or_else(|e| Err(format!("loading the component panicked: {e}")))
        }
        .boxed()
        .shared();
        loading.insert(digest.to_string(), (attempt, shared.clone()));
        shared
    }

    /// One task less uses `digest`; the last one unloads it.
    fn release(&self, digest: &str) {
        let mut users = lock(&self.users);
        if let Some(n) = users.get_mut(digest) {
            *n -= 1;
            if *n == 0 {
                users.remove(digest);
                self.runtime.unload(digest);
            }
        }
    }
}

async fn load(tasks: &WasmTasks, digest: &str) -> Result<Arc<WasmApp>, String> {
    let blob = tasks.components.component(digest.to_string()).await?;
    let (runtime, digest) = (tasks.runtime.clone(), digest.to_string());
    // Compiling can take a while the first time: keep it off the reactor.
    tokio::task::spawn_blocking(move || runtime.load(&digest, &blob))
        .await
        .map_err(|e| format!("loading the component panicked: {e}"))?
        .map_err(|e| e.to_string())
}

impl Runtime for Arc<WasmTasks> {
    fn controller(
        &self,
        _task: &AssignedTask,
        service: &Service,
    ) -> Result<Box<dyn Controller>, RuntimeError> {
        match &service.spec.image {
            Image::Wasm { digest, .. } => Ok(Box::new(WasmTask {
                tasks: self.clone(),
                digest: digest.clone(),
                app: None,
            })),
            other => Err(RuntimeError::Unsupported(format!(
                "{} is not a wasm component",
                other.display_name()
            ))),
        }
    }
}

/// One wasm replica.
struct WasmTask {
    tasks: Arc<WasmTasks>,
    digest: String,
    /// Set by `prepare`; counted in `tasks.users` until `remove`.
    app: Option<Arc<WasmApp>>,
}

impl Controller for WasmTask {
    fn prepare(&mut self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        async move {
            if self.app.is_none() {
                let app = self
                    .tasks
                    .acquire(&self.digest)
                    .await
                    .map_err(RuntimeError::Failed)?;
                self.app = Some(app);
            }
            Ok(())
        }
        .boxed()
    }

    fn start(&mut self) -> BoxFuture<'_, Result<Serving, RuntimeError>> {
        let app = self.app.clone();
        async move {
            app.map(Serving::InProcess)
                .ok_or_else(|| RuntimeError::Failed("started before it was prepared".into()))
        }
        .boxed()
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        // Requests run in fresh instances; nothing runs between them that
        // could exit.
        futures::future::pending().boxed()
    }

    fn stop(&mut self, _grace: Duration) -> BoxFuture<'_, Result<(), RuntimeError>> {
        // The mesh already took it out of rotation and drained it.
        async { Ok(()) }.boxed()
    }

    fn remove(&mut self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        if self.app.take().is_some() {
            self.tasks.release(&self.digest);
        }
        async { Ok(()) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use sha2::{Digest as _, Sha256};
    use swarmlet_proto::{DesiredState, ServiceSpec, TaskState};
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::runtime::{Event, Supervisor};

    /// Components from a fixed map; a digest not in it never arrives (a
    /// fetch that hangs).
    struct Fixed(HashMap<String, PathBuf>);

    impl Components for Fixed {
        fn component(&self, digest: String) -> BoxFuture<'static, Result<PathBuf, String>> {
            match self.0.get(&digest).cloned() {
                Some(p) => async move { Ok(p) }.boxed(),
                None => futures::future::pending().boxed(),
            }
        }
    }

    fn guest(name: &str) -> (String, PathBuf) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../guests/out")
            .join(format!("{name}.wasm"));
        let wasm = std::fs::read(&path).expect("guests/out (guests/build.sh)");
        (
            format!("sha256:{}", hex::encode(Sha256::digest(&wasm))),
            path,
        )
    }

    fn service(digest: &str) -> Service {
        Service {
            id: "s".into(),
            spec: ServiceSpec {
                name: "web".into(),
                replicas: 1,
                image: Image::Wasm {
                    digest: digest.into(),
                    name: "w.wasm".into(),
                    size: 1,
                },
                ports: vec![],
                limits: Default::default(),
                allow_outbound: vec![],
                instance_reuse: 0,
                instance_concurrency: 0,
                env: vec![],
                stop_grace_period_ms: None,
            },
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn task(id: &str) -> AssignedTask {
        AssignedTask {
            id: id.into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot: 1,
            service_version: 1,
            desired_state: DesiredState::Running,
            state: TaskState::Assigned,
        }
    }

    struct Setup {
        runtime: Arc<WasmRuntime>,
        tasks: Arc<WasmTasks>,
        events: mpsc::UnboundedReceiver<Event>,
        tx: mpsc::UnboundedSender<Event>,
        dir: PathBuf,
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn setup(name: &str, components: HashMap<String, PathBuf>) -> Setup {
        let dir = std::env::temp_dir().join(format!(
            "swarmlet-wasm-task-{name}-{}-{}",
            std::process::id(),
            crate::identity::random_id(6)
        ));
        let runtime = WasmRuntime::new(
            dir.join("cache"),
            Duration::from_secs(5),
            Default::default(),
        )
        .unwrap();
        let tasks = WasmTasks::new(runtime.clone(), Arc::new(Fixed(components)));
        let (tx, events) = mpsc::unbounded_channel();
        Setup {
            runtime,
            tasks,
            events,
            tx,
            dir,
        }
    }

    impl Setup {
        fn spawn(&self, id: &str, digest: &str) -> Supervisor {
            let c = self.tasks.controller(&task(id), &service(digest)).unwrap();
            Supervisor::spawn(id.into(), c, self.tx.clone())
        }

        async fn next(&mut self) -> Event {
            tokio::time::timeout(Duration::from_secs(120), self.events.recv())
                .await
                .expect("an event from a supervisor within two minutes")
                .expect("the channel is open")
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_share_one_load_start_stop_after_the_drain_and_unload() {
        let (digest, path) = guest("hello");
        let mut s = setup("life", HashMap::from([(digest.clone(), path)]));
        let a = s.spawn("a", &digest);
        let b = s.spawn("b", &digest);
        let mut started = Vec::new();
        for _ in 0..2 {
            match s.next().await {
                Event::Started {
                    task_id,
                    serving: Serving::InProcess(_),
                } => started.push(task_id),
                e => panic!("expected Started, got an event for {}", e.task_id()),
            }
        }
        started.sort();
        assert_eq!(started, ["a", "b"]);
        assert_eq!(
            s.runtime.compiles.load(Ordering::Relaxed),
            1,
            "one compile for both replicas"
        );

        // Stop waits for `before` (the mesh's drain), then reports Stopped.
        let (drained_tx, drained) = oneshot::channel::<()>();
        a.stop(
            Duration::from_secs(10),
            async move {
                let _ = drained.await;
            }
            .boxed(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(s.events.try_recv().is_err(), "not stopped before drained");
        assert!(s.runtime.loaded(&digest).is_some());
        drained_tx.send(()).unwrap();
        assert!(matches!(s.next().await, Event::Stopped { task_id } if task_id == "a"));
        assert!(
            s.runtime.loaded(&digest).is_some(),
            "b still uses the component"
        );
        b.stop(Duration::from_secs(10), async {}.boxed());
        assert!(matches!(s.next().await, Event::Stopped { task_id } if task_id == "b"));
        assert!(
            s.runtime.loaded(&digest).is_none(),
            "the last one unloads it"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_start_delays_no_other_and_a_bad_component_fails_its_tasks() {
        let (hello, hello_path) = guest("hello");
        let junk = format!("sha256:{}", "1".repeat(64));
        let not_wasm = std::env::temp_dir().join(format!(
            "swarmlet-not-wasm-{}-{}",
            std::process::id(),
            crate::identity::random_id(6)
        ));
        std::fs::write(&not_wasm, b"not a component").unwrap();
        let never = format!("sha256:{}", "2".repeat(64));
        let mut s = setup(
            "slow",
            HashMap::from([
                (hello.clone(), hello_path),
                (junk.clone(), not_wasm.clone()),
            ]),
        );
        // `slow` never gets its component; the others go on regardless.
        let slow = s.spawn("slow", &never);
        let bad1 = s.spawn("bad1", &junk);
        let bad2 = s.spawn("bad2", &junk);
        let ok = s.spawn("ok", &hello);
        let mut failed = Vec::new();
        let mut running = Vec::new();
        for _ in 0..3 {
            match s.next().await {
                Event::Failed { task_id, error } => {
                    assert_eq!(error.state(), TaskState::Failed);
                    assert!(
                        error.to_string().contains("not a WebAssembly file"),
                        "{error}"
                    );
                    failed.push(task_id);
                }
                Event::Started { task_id, .. } => running.push(task_id),
                e => panic!("unexpected event for {}", e.task_id()),
            }
        }
        failed.sort();
        assert_eq!(
            (failed, running),
            (vec!["bad1".into(), "bad2".into()], vec!["ok".to_string()])
        );
        drop((bad1, bad2));

        // A task stopped while it prepares is removed without ever starting.
        slow.stop(Duration::from_secs(10), async {}.boxed());
        assert!(matches!(s.next().await, Event::Stopped { task_id } if task_id == "slow"));
        ok.stop(Duration::from_secs(10), async {}.boxed());
        assert!(matches!(s.next().await, Event::Stopped { task_id } if task_id == "ok"));
        assert!(s.runtime.loaded(&hello).is_none());
        let _ = std::fs::remove_file(not_wasm);
    }

    #[test]
    fn oci_images_are_not_this_runtimes() {
        let s = setup("oci", HashMap::new());
        let mut svc = service("sha256:00");
        svc.spec.image = Image::Oci {
            reference: "nginx:1.27".into(),
            digest: None,
        };
        let err = s.tasks.controller(&task("t"), &svc).err().unwrap();
        assert_eq!(err.state(), TaskState::Rejected);
        let runtimes = crate::runtime::Runtimes {
            wasm: Arc::new(s.tasks.clone()),
            containers: None,
        };
        let err = runtimes.controller(&task("t"), &svc).err().unwrap();
        assert_eq!(err.to_string(), crate::runtime::task::NO_CONTAINERS);
    }
}
