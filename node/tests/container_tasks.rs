//! Container tasks as the agent drives them (`ContainerTasks` through the
//! `Runtime`/`Controller` interface and one `Supervisor` per task), against
//! the real thing: a local `docker-registry` (scripts/images/registry.sh),
//! images built from the nginx rootfs (scripts/images/nginx-rootfs.sh) by
//! umoci and pushed by skopeo, pulled by the node's `Puller`, and run by
//! containerd-shim-runc-v2 + runc.
//!
//! Needs root, the shim, runc, iproute2, iptables, nginx, docker-registry,
//! skopeo, umoci, jq, curl (scripts/setup.sh installs them). Without them the
//! tests are skipped with a line on stderr, except under `CI=true`, where
//! that fails them.
//!
//! Each test has its own state directory, containerd namespace, cgroup
//! parent, bridge (`sw21tN`) and subnet (`10.221.N.0/24`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use swarmlet::image::{ImageRef, ImageStore, Puller, RegistryOptions};
use swarmlet::runtime::container::{
    cgroup_dirs, link_exists, remove_bridge, ContainerRuntime, ContainerTasks, NetworkConfig,
    RuntimeConfig,
};
use swarmlet::runtime::{Event, Runtime, RuntimeError, Supervisor};
use swarmlet_proto::dispatcher::AssignedTask;
use swarmlet_proto::{
    DesiredState, Image, Limits, PortConfig, Protocol, Service, ServiceSpec, TaskEndpoint,
    TaskState,
};
use tokio::sync::mpsc;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// `true` if the tests may run; skips (or fails under CI=true) otherwise.
fn prerequisites() -> bool {
    let mut missing: Vec<String> = [
        "containerd-shim-runc-v2",
        "runc",
        "ip",
        "iptables",
        "nginx",
        "docker-registry",
        "skopeo",
        "umoci",
        "jq",
        "curl",
    ]
    .iter()
    .filter(|t| !on_path(t))
    .map(|t| t.to_string())
    .collect();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".into());
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "container task tests need {} (scripts/setup.sh; CI must run them as root)",
        missing.join(", ")
    );
    eprintln!("SKIPPED: container task tests need {}", missing.join(", "));
    false
}

/// Builds the test images from the nginx rootfs and pushes them:
///   nginx:1.27  entrypoint nginx, cmd `-g "daemon off;"`, env NGINX_MODE=image, port 80
///   crash:1     nginx told to read a config that does not exist: exits 1 at start
///   nocmd:1     entrypoint /bin/nope, which the image does not contain
const BUILD_IMAGES: &str = r#"
set -euo pipefail
dir=$1 addr=$2 repo=$3
bash "$repo/scripts/images/nginx-rootfs.sh" "$dir/rootfs" >/dev/null
tar --numeric-owner --sort=name -C "$dir/rootfs" -cf "$dir/nginx.tar" .
oci="$dir/oci"
umoci init --layout "$oci"
for tag in nginx crash nocmd; do
    umoci new --image "$oci:$tag"
    umoci raw add-layer --image "$oci:$tag" "$dir/nginx.tar"
done
umoci config --image "$oci:nginx" --config.entrypoint /usr/sbin/nginx \
    --config.cmd=-g --config.cmd="daemon off;" --config.env NGINX_MODE=image \
    --config.env KEEP=1 --config.exposedports 80/tcp --os linux --architecture amd64
umoci config --image "$oci:crash" --config.entrypoint /usr/sbin/nginx \
    --config.cmd=-c --config.cmd=/etc/nginx/missing.conf --os linux --architecture amd64
umoci config --image "$oci:nocmd" --config.entrypoint /bin/nope --os linux --architecture amd64
to="--dest-tls-verify=false"
skopeo copy -q $to "oci:$oci:nginx" "docker://$addr/nginx:1.27"
skopeo copy -q $to "oci:$oci:crash" "docker://$addr/crash:1"
skopeo copy -q $to "oci:$oci:nocmd" "docker://$addr/nocmd:1"
"#;

/// Removes what test processes that are gone left in the temp dir
/// (`sw21-registry-<pid>`, `sw21-ct-<pid>-N`).
fn sweep_stale() {
    common::sweep_stale(&["sw21-registry-", "sw21-ct-"]);
}

/// The registry of this test process, with the images above.
fn registry() -> &'static str {
    static REG: OnceLock<String> = OnceLock::new();
    REG.get_or_init(|| {
        sweep_stale();
        let port = std::net::TcpListener::bind("127.21.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.21.0.1")
            .port();
        let addr = format!("127.21.0.1:{port}");
        let dir = std::env::temp_dir().join(format!("sw21-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let script = repo().join("scripts/images/registry.sh");
        let pid = std::process::id().to_string();
        let out = Command::new(&script)
            .args([
                "start",
                &dir.display().to_string(),
                addr.as_str(),
                pid.as_str(),
            ])
            .output()
            .expect("run registry.sh");
        assert!(
            out.status.success(),
            "registry.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("bash")
            .args(["-c", BUILD_IMAGES, "build"])
            .arg(&dir)
            .arg(&addr)
            .arg(repo())
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "building the test images failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        addr
    })
}

/// One test's runtime: state dir, namespace, cgroup parent, bridge, subnet.
fn config(n: u8) -> RuntimeConfig {
    let root = std::env::temp_dir().join(format!("sw21-ct-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut cfg = RuntimeConfig::new(root.join("containers"));
    cfg.namespace = format!("sw21-test{n}");
    cfg.cgroup_parent = format!("sw21-test{n}");
    cfg.network = NetworkConfig {
        bridge: format!("sw21t{n}"),
        subnet: std::net::Ipv4Addr::new(10, 221, n, 0),
        prefix_len: 24,
        name_prefix: format!("sw21t{n}"),
    };
    cfg
}

fn puller(cfg: &RuntimeConfig) -> Arc<Puller> {
    let data = cfg.root.parent().expect("data dir");
    let store = Arc::new(ImageStore::open(data).expect("image store"));
    Arc::new(Puller::new(store, RegistryOptions::default()).expect("puller"))
}

async fn tasks(cfg: &RuntimeConfig) -> Arc<ContainerTasks> {
    let rt = ContainerRuntime::new(cfg.clone()).await.expect("runtime");
    ContainerTasks::start(Arc::new(rt), puller(cfg)).await
}

fn service(image: Image, ports: &[u16]) -> Service {
    Service {
        id: "svc".into(),
        spec: ServiceSpec {
            name: "web".into(),
            replicas: 1,
            image,
            ports: ports
                .iter()
                .map(|p| PortConfig {
                    published: 8080,
                    target: *p,
                    protocol: Protocol::Tcp,
                })
                .collect(),
            limits: Limits {
                memory_bytes: Some(64 << 20),
                concurrent_requests: None,
                nano_cpus: Some(500_000_000),
            },
            allow_outbound: vec![],
            instance_reuse: 0,
            instance_concurrency: 0,
            env: vec!["NGINX_MODE=service".into(), "EXTRA=1".into()],
            stop_grace_period_ms: Some(2_000),
        },
        version: 1,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

async fn oci(reference: &str, resolve: bool, puller: &Puller) -> Image {
    let digest = if resolve {
        let r = ImageRef::parse(reference).expect("reference");
        Some(puller.resolve(&r).await.expect("resolve"))
    } else {
        None
    };
    Image::Oci {
        reference: reference.to_string(),
        digest,
    }
}

fn task(id: &str, slot: u64) -> AssignedTask {
    AssignedTask {
        id: id.to_string(),
        service_id: "svc".into(),
        service_name: "web".into(),
        slot,
        service_version: 1,
        desired_state: DesiredState::Running,
        state: TaskState::Assigned,
    }
}

fn id(name: &str) -> String {
    format!("{name}{}", std::process::id())
}

/// The next event, or a failure naming what was awaited.
async fn next(events: &mut mpsc::UnboundedReceiver<Event>, what: &str) -> Event {
    // Generous: a first pull and container start on a loaded machine.
    match tokio::time::timeout(Duration::from_secs(300), events.recv()).await {
        Ok(Some(e)) => e,
        _ => panic!("never happened: {what}"),
    }
}

fn endpoint(e: Event) -> (String, TaskEndpoint) {
    match e {
        Event::Started { task_id, serving } => (
            task_id,
            serving.endpoint().expect("a container has an endpoint"),
        ),
        Event::Failed { task_id, error } => panic!("{task_id} failed: {error}"),
        Event::Exited { task_id, exit } => panic!("{task_id} exited: {}", exit.message),
        Event::Stopped { task_id } => panic!("{task_id} stopped"),
    }
}

/// GET / at the endpoint; polls (bounded) until something answers.
fn get(ep: &TaskEndpoint) -> String {
    common::get(
        format!("{}:{}", ep.addr, ep.port)
            .parse()
            .expect("endpoint"),
    )
}

use common::shims;

/// Polls (bounded) until `f` holds; fails naming `what`.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

/// Removes the test's bridge, state and cgroup parent.
async fn finish(cfg: &RuntimeConfig) {
    remove_bridge(&cfg.network).await;
    assert!(!link_exists(&cfg.network.bridge), "bridge left");
    if let Some(data) = cfg.root.parent() {
        let _ = std::fs::remove_dir_all(data);
    }
    for dir in cgroup_dirs(&format!("/{}", cfg.cgroup_parent)) {
        let _ = std::fs::remove_dir(dir);
    }
    let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&cfg.namespace));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_pull_once_serve_and_stop_cleanly() {
    if !prerequisites() {
        return;
    }
    let reg = registry();
    let cfg = config(1);
    let tasks = tasks(&cfg).await;
    let runtime: Arc<dyn Runtime> = Arc::new(tasks.clone());
    let image = oci(&format!("{reg}/nginx:1.27"), true, &puller(&cfg)).await;
    let svc = service(image, &[80]);
    let (tx, mut events) = mpsc::unbounded_channel();
    let ids: Vec<String> = (1..=3).map(|n| id(&format!("ctr1x{n}x"))).collect();
    let mut handles = Vec::new();
    for (n, tid) in ids.iter().enumerate() {
        let c = runtime
            .controller(&task(tid, n as u64 + 1), &svc)
            .expect("controller");
        handles.push(Supervisor::spawn(tid.clone(), c, tx.clone()));
    }
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        endpoints.push(endpoint(next(&mut events, "three replicas started").await));
    }
    assert_eq!(
        tasks.pull_count(),
        1,
        "3 replicas of one image pull it once"
    );
    let mut addrs: Vec<&str> = endpoints.iter().map(|(_, e)| e.addr.as_str()).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(
        addrs.len(),
        3,
        "each replica has its own address: {endpoints:?}"
    );
    for (tid, ep) in &endpoints {
        assert_eq!(
            ep.port, 80,
            "the endpoint port is the service's target port"
        );
        let info = tasks.runtime().info(tid).expect("info");
        assert_eq!(info.ip.to_string(), ep.addr);
        let body = get(ep);
        assert!(body.contains("hello from nginx"), "{tid}: {body}");
        // The image's env, then the service's (replacing the same key).
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(info.bundle.join("config.json")).expect("config.json"),
        )
        .expect("json");
        let env: Vec<&str> = config["process"]["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(env.contains(&"NGINX_MODE=service"), "{env:?}");
        assert!(!env.contains(&"NGINX_MODE=image"), "{env:?}");
        assert!(
            env.contains(&"KEEP=1") && env.contains(&"EXTRA=1"),
            "{env:?}"
        );
        assert_eq!(
            config["linux"]["resources"]["memory"]["limit"].as_i64(),
            Some(64 << 20)
        );
        assert_eq!(
            config["process"]["args"],
            serde_json::json!(["/usr/sbin/nginx", "-g", "daemon off;"])
        );
        assert!(
            info.log.starts_with(cfg.root.join("logs")),
            "log {} under DATA_DIR/containers/logs",
            info.log.display()
        );
    }
    for h in handles {
        h.stop(svc.spec.stop_grace(), Box::pin(async {}));
    }
    for _ in 0..3 {
        match next(&mut events, "three replicas stopped").await {
            Event::Stopped { .. } => {}
            Event::Failed { task_id, error } => panic!("{task_id}: {error}"),
            Event::Exited { task_id, exit } => panic!("{task_id}: {}", exit.message),
            Event::Started { task_id, .. } => panic!("{task_id} started again"),
        }
    }
    assert!(
        tasks.runtime().ids().is_empty(),
        "{:?}",
        tasks.runtime().ids()
    );
    for tid in &ids {
        assert!(shims(&cfg.namespace, tid).is_empty(), "shim of {tid} left");
        assert!(
            !cfg.root.join("tasks").join(tid).exists(),
            "bundle of {tid} left"
        );
    }
    drop(runtime);
    drop(tasks);
    finish(&cfg).await;
}

/// What a user sees in `service ps` ERROR, per bad input.
async fn failure(runtime: &Arc<dyn Runtime>, svc: &Service, tid: &str) -> String {
    let (tx, mut events) = mpsc::unbounded_channel();
    let c = runtime.controller(&task(tid, 1), svc).expect("controller");
    let _h = Supervisor::spawn(tid.to_string(), c, tx);
    let mut event = next(&mut events, &format!("{tid} failed")).await;
    if let Event::Started { .. } = event {
        // A crash may come right after start returned (the process was
        // still alive then): the task runs, then fails with its exit.
        event = next(&mut events, &format!("{tid} exited after starting")).await;
    }
    match event {
        Event::Failed { error, .. } => {
            assert!(matches!(error, RuntimeError::Failed(_)), "{error:?}");
            error.to_string()
        }
        Event::Exited { exit, .. } => {
            assert_eq!(exit.state(), TaskState::Failed, "{exit:?}");
            exit.message
        }
        Event::Started { .. } => panic!("{tid} started twice"),
        Event::Stopped { .. } => panic!("{tid} stopped"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_and_commands_fail_the_task_saying_why() {
    if !prerequisites() {
        return;
    }
    let reg = registry();
    let cfg = config(2);
    let tasks = tasks(&cfg).await;
    let runtime: Arc<dyn Runtime> = Arc::new(tasks.clone());
    let p = puller(&cfg);

    let unknown = service(oci(&format!("{reg}/nginx:nope"), false, &p).await, &[80]);
    let e = failure(&runtime, &unknown, &id("ctr2a")).await;
    assert!(e.contains("no such tag"), "{e}");

    let unreachable = service(oci("127.21.0.9:1/nginx:1.27", false, &p).await, &[80]);
    let e = failure(&runtime, &unreachable, &id("ctr2b")).await;
    assert!(e.contains("unreachable"), "{e}");

    let nocmd = service(oci(&format!("{reg}/nocmd:1"), true, &p).await, &[80]);
    let e = failure(&runtime, &nocmd, &id("ctr2c")).await;
    assert!(e.contains("/bin/nope") && e.contains("not found"), "{e}");

    let crash = service(oci(&format!("{reg}/crash:1"), true, &p).await, &[80]);
    let e = failure(&runtime, &crash, &id("ctr2d")).await;
    assert!(e.contains("exited with code 1"), "{e}");
    assert!(e.contains("missing.conf"), "the log tail is quoted: {e}");

    until("every failed task removed", || {
        tasks.runtime().ids().is_empty()
    })
    .await;
    for n in ["ctr2a", "ctr2b", "ctr2c", "ctr2d"] {
        let tid = id(n);
        assert!(shims(&cfg.namespace, &tid).is_empty(), "shim of {tid} left");
        assert!(
            !cfg.root.join("tasks").join(&tid).exists(),
            "bundle of {tid} left"
        );
    }
    drop(runtime);
    drop(tasks);
    finish(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_adopts_assigned_containers_and_removes_the_rest() {
    if !prerequisites() {
        return;
    }
    let reg = registry();
    let cfg = config(3);
    let tasks1 = tasks(&cfg).await;
    let runtime: Arc<dyn Runtime> = Arc::new(tasks1.clone());
    let svc = service(
        oci(&format!("{reg}/nginx:1.27"), true, &puller(&cfg)).await,
        &[80],
    );
    let (kept, orphan) = (id("ctr3keep"), id("ctr3gone"));
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut handles = Vec::new();
    for (n, tid) in [&kept, &orphan].into_iter().enumerate() {
        let c = runtime
            .controller(&task(tid, n as u64 + 1), &svc)
            .expect("controller");
        handles.push(Supervisor::spawn(tid.clone(), c, tx.clone()));
    }
    let mut before = std::collections::HashMap::new();
    for _ in 0..2 {
        let (tid, ep) = endpoint(next(&mut events, "two replicas started").await);
        before.insert(tid, ep);
    }
    let kept_shim = shims(&cfg.namespace, &kept);
    assert_eq!(kept_shim.len(), 1, "one shim for {kept}");

    // The node process goes away: its handles are dropped without a stop
    // (the containers stay), then its runtime.
    drop(handles);
    drop(runtime);
    until("the old supervisors let go of the runtime", || {
        Arc::strong_count(&tasks1) == 1
    })
    .await;
    drop(tasks1);

    // The next node process: reattach first, then the agent's controllers.
    let tasks2 = tasks(&cfg).await;
    let mut adopted = tasks2.adopted();
    adopted.sort();
    let mut want = vec![kept.clone(), orphan.clone()];
    want.sort();
    assert_eq!(adopted, want, "both running containers found");
    let runtime: Arc<dyn Runtime> = Arc::new(tasks2.clone());
    let (tx, mut events) = mpsc::unbounded_channel();
    let c = runtime
        .controller(&task(&kept, 1), &svc)
        .expect("controller");
    let h = Supervisor::spawn(kept.clone(), c, tx);
    let (tid, ep) = endpoint(next(&mut events, "the kept task adopted").await);
    assert_eq!(tid, kept);
    assert_eq!(ep, before[&kept], "the same container, the same endpoint");
    assert_eq!(
        shims(&cfg.namespace, &kept),
        kept_shim,
        "no second container"
    );
    assert!(get(&ep).contains("hello from nginx"));
    assert_eq!(tasks2.pull_count(), 0, "an adopted container pulls nothing");

    // The first assignments are known: the unassigned one goes.
    runtime.assignments_known();
    until("the unassigned container stopped and removed", || {
        tasks2.runtime().ids() == vec![kept.clone()]
            && shims(&cfg.namespace, &orphan).is_empty()
            && !cfg.root.join("tasks").join(&orphan).exists()
    })
    .await;
    assert!(tasks2.adopted().is_empty());
    assert!(
        get(&ep).contains("hello from nginx"),
        "the kept one still serves"
    );

    h.stop(svc.spec.stop_grace(), Box::pin(async {}));
    match next(&mut events, "the kept task stopped").await {
        Event::Stopped { .. } => {}
        _ => panic!("the kept task did not stop cleanly"),
    }
    assert!(
        shims(&cfg.namespace, &kept).is_empty(),
        "shim of {kept} left"
    );
    drop(runtime);
    drop(tasks2);
    finish(&cfg).await;
}

/// A TCP proxy in front of the registry that forwards requests freely but
/// answers only `limit` bytes per connection at full speed, then a byte
/// every 500 ms (so manifests and configs pass and a layer download crawls
/// without ever timing out, as behind a registry or link that stalls). Reports when a download stalled
/// and when the client then closed that connection.
struct StallingProxy {
    addr: String,
    stalled: Arc<std::sync::atomic::AtomicBool>,
    closed_after_stall: Arc<std::sync::atomic::AtomicBool>,
}

async fn stalling_proxy(upstream: &str, limit: usize) -> StallingProxy {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.21.0.4:0")
        .await
        .expect("bind the proxy");
    let addr = listener.local_addr().expect("addr").to_string();
    let stalled = Arc::new(AtomicBool::new(false));
    let closed_after_stall = Arc::new(AtomicBool::new(false));
    let (s, c, up) = (
        stalled.clone(),
        closed_after_stall.clone(),
        upstream.to_string(),
    );
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&up).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let this_stalled = Arc::new(AtomicBool::new(false));
            let (s1, t1) = (s.clone(), this_stalled.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 << 10];
                let mut sent = 0;
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    // Up to the limit at once, then a byte every 500 ms: the
                    // download neither ends nor times out.
                    let fast = n.min(limit.saturating_sub(sent));
                    if cw.write_all(&buf[..fast]).await.is_err() {
                        return;
                    }
                    sent += fast;
                    for byte in &buf[fast..n] {
                        t1.store(true, Ordering::SeqCst);
                        s1.store(true, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if cw.write_all(std::slice::from_ref(byte)).await.is_err() {
                            return;
                        }
                    }
                }
            });
            let c1 = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    match cr.read(&mut buf).await {
                        Ok(n) if n > 0 => {
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        _ => {
                            if this_stalled.load(Ordering::SeqCst) {
                                c1.store(true, Ordering::SeqCst);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    StallingProxy {
        addr,
        stalled,
        closed_after_stall,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_no_task_waits_for_any_more_is_cancelled() {
    use std::sync::atomic::Ordering;
    if !prerequisites() {
        return;
    }
    let reg = registry();
    let proxy = stalling_proxy(reg, 64 << 10).await;
    let cfg = config(4);
    let images_tmp = ImageStore::open(cfg.root.parent().expect("data dir"))
        .expect("image store")
        .root()
        .join("tmp");
    let tasks = tasks(&cfg).await;
    let runtime: Arc<dyn Runtime> = Arc::new(tasks.clone());
    // Two replicas of one image share one pull, which stalls mid-layer.
    let svc = service(
        oci(&format!("{}/nginx:1.27", proxy.addr), false, &puller(&cfg)).await,
        &[80],
    );
    let (tx, mut events) = mpsc::unbounded_channel();
    let (a, b) = (id("ctr4a"), id("ctr4b"));
    let ha = Supervisor::spawn(
        a.clone(),
        runtime.controller(&task(&a, 1), &svc).expect("controller"),
        tx.clone(),
    );
    let hb = Supervisor::spawn(
        b.clone(),
        runtime.controller(&task(&b, 2), &svc).expect("controller"),
        tx.clone(),
    );
    until("the layer download stalled", || {
        proxy.stalled.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(tasks.pull_count(), 1, "one pull for both replicas");
    let unpacking = || std::fs::read_dir(&images_tmp).map_or(0, |d| d.count());
    until("the layer is being unpacked under tmp/", || {
        unpacking() == 1
    })
    .await;

    // One replica removed: the other still waits, the pull goes on.
    ha.stop(svc.spec.stop_grace(), Box::pin(async {}));
    match next(&mut events, "the first replica stopped").await {
        Event::Stopped { task_id } => assert_eq!(task_id, a),
        _ => panic!("the first replica did not stop cleanly"),
    }
    // Longer than the node waits before abandoning a pull nobody awaits.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !proxy.closed_after_stall.load(Ordering::SeqCst),
        "the pull was cancelled while a replica still waited for it"
    );
    assert_eq!(unpacking(), 1, "the layer is still being unpacked");

    // The last one removed: the download is abandoned (the registry sees
    // the connection close; left alone it would crawl on for hours) and the
    // half-unpacked layer is removed.
    hb.stop(svc.spec.stop_grace(), Box::pin(async {}));
    match next(&mut events, "the second replica stopped").await {
        Event::Stopped { task_id } => assert_eq!(task_id, b),
        _ => panic!("the second replica did not stop cleanly"),
    }
    until("the stalled download was closed", || {
        proxy.closed_after_stall.load(Ordering::SeqCst)
    })
    .await;
    until("the half-unpacked layer was removed", || unpacking() == 0).await;
    drop(runtime);
    drop(tasks);
    finish(&cfg).await;
}
