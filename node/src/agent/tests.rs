//! The agent on a real single-voter raft log and the local dispatcher, with
//! the hello component on wasmtime and the mesh on loopback (127.0.6.x).

use std::net::SocketAddr;
use std::time::Duration;

use swarmlet_proto::{Command, DesiredState, Image, PortConfig, Protocol, ServiceSpec, Task};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::dispatcher::tests::{cluster, task, TestCluster};
use crate::dispatcher::{Dispatcher, DispatcherConfig};
use crate::listen::{Budget, Limits};
use crate::runtime::task::NO_CONTAINERS;

const IP: &str = "127.0.6.1";

fn service(id: &str, name: &str, image: Image, port: u16) -> Service {
    Service {
        id: id.into(),
        spec: ServiceSpec {
            name: name.into(),
            replicas: 1,
            image,
            ports: vec![PortConfig {
                published: port,
                target: 80,
                protocol: Protocol::Tcp,
            }],
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

fn free_port() -> u16 {
    std::net::TcpListener::bind(format!("{IP}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw `GET /` to the published port: the status and the body.
async fn get(port: u16) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(SocketAddr::new(IP.parse().unwrap(), port)).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn stored(c: &TestCluster, id: &str) -> Task {
    c.store.read().tasks[id].clone()
}

/// Polls `what` until it holds; fails naming it after `WAIT`. The deadline
/// holds even when one check hangs (a connection that gets no answer): each
/// check gets only the time that is left.
async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(true) => return,
            Ok(false) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => break,
        }
    }
    panic!("never happened within {WAIT:?}: {what}");
}

/// How long `wait_for` waits.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_replicas_run_serve_and_stop_and_oci_tasks_are_rejected() {
    let c = cluster().await;
    let dir = std::env::temp_dir().join(format!(
        "swarmlet-agent-test-{}-{}",
        std::process::id(),
        crate::identity::random_id(6)
    ));
    let blobs = Arc::new(Blobs::open(&dir.join("blobs"), 64 << 20).unwrap());
    let wasm = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../guests/out/hello.wasm"
    ))
    .expect("guests/out/hello.wasm (guests/build.sh)");
    let digest = blobs.put(&wasm).unwrap().to_string();
    let runtime = WasmRuntime::new(
        dir.join("cache"),
        Duration::from_secs(5),
        Default::default(),
    )
    .unwrap();
    let budget = Budget::new(1024);
    let mesh = Mesh::new(IP.parse().unwrap(), Limits::new(&budget, None), budget);
    let dispatcher = Dispatcher::new(
        "m".into(),
        c.store.clone(),
        c.raft.clone(),
        DispatcherConfig::default(),
        None,
    );
    let agent = Agent {
        node_id: "m".into(),
        source: Arc::new(InProcess::new("m".into(), dispatcher, blobs.clone(), None)),
        runtime: runtime.clone(),
        blobs,
        mesh: mesh.clone(),
        containers: None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let agent = tokio::spawn(agent.run(stop_rx));

    let (web_port, nginx_port) = (free_port(), free_port());
    let web = service(
        "sw",
        "hello",
        Image::Wasm {
            digest: digest.clone(),
            name: "hello.wasm".into(),
            size: wasm.len() as u64,
        },
        web_port,
    );
    let nginx = service(
        "sn",
        "nginx",
        Image::Oci {
            reference: "nginx:1.27".into(),
            digest: None,
        },
        nginx_port,
    );
    let for_service = |id: &str, s: &Service, slot| Task {
        service_id: s.id.clone(),
        service_name: s.spec.name.clone(),
        ..task(id, "m", slot)
    };
    for s in [&web, &nginx] {
        c.raft
            .propose(Command::CreateService { service: s.clone() })
            .await
            .unwrap();
    }
    c.raft
        .propose(Command::CreateTasks {
            tasks: vec![
                for_service("w1", &web, 1),
                for_service("w2", &web, 2),
                for_service("n1", &nginx, 1),
            ],
        })
        .await
        .unwrap();

    // Both wasm replicas run and serve through the published port; the
    // container task is rejected with the reason, and nothing else breaks.
    wait_for("both wasm tasks running", async || {
        ["w1", "w2"]
            .iter()
            .all(|id| stored(&c, id).state == TaskState::Running)
    })
    .await;
    wait_for("the container task rejected", async || {
        stored(&c, "n1").state == TaskState::Rejected
    })
    .await;
    let n1 = stored(&c, "n1");
    assert_eq!(n1.error.as_deref(), Some(NO_CONTAINERS), "{n1:?}");
    assert_eq!(
        stored(&c, "w1").endpoint,
        None,
        "wasm replicas are in-process"
    );
    let mut seen = std::collections::BTreeSet::new();
    wait_for(
        "both replicas answering on the published port",
        async || {
            if let Ok((200, body)) = get(web_port).await {
                seen.insert(
                    body.lines()
                        .find(|l| l.contains("hello from"))
                        .map(str::to_string),
                );
            }
            seen.len() >= 2
        },
    )
    .await;
    assert!(
        seen.iter()
            .flatten()
            .any(|l| l.contains("hello from hello.1"))
            && seen
                .iter()
                .flatten()
                .any(|l| l.contains("hello from hello.2")),
        "{seen:?}"
    );
    assert!(runtime.loaded(&digest).is_some());

    // Stopping one: it is shut down and the other keeps serving.
    c.raft
        .propose(Command::SetDesiredState {
            task_ids: vec!["w1".into()],
            desired: DesiredState::Shutdown,
        })
        .await
        .unwrap();
    wait_for("w1 shut down", async || {
        stored(&c, "w1").state == TaskState::Shutdown
    })
    .await;
    for _ in 0..4 {
        let (status, body) = get(web_port).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("hello from hello.2"), "{body}");
    }
    assert_eq!(stored(&c, "n1").state, TaskState::Rejected, "not restarted");

    // The last replica of the component stops: the component is unloaded.
    c.raft
        .propose(Command::SetDesiredState {
            task_ids: vec!["w2".into()],
            desired: DesiredState::Shutdown,
        })
        .await
        .unwrap();
    wait_for("w2 shut down", async || {
        stored(&c, "w2").state == TaskState::Shutdown
    })
    .await;
    wait_for("the component unloaded", async || {
        runtime.loaded(&digest).is_none()
    })
    .await;

    stop_tx.send(true).unwrap();
    agent.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Container tasks through the agent, with real containers (shim, runc,
/// nginx); skipped (failing under `CI=true`) without root and the tools.
mod containers {
    use std::net::{Ipv4Addr, SocketAddr};

    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::image::{ImageConfig, ImageInfo, ImageStore, Puller, RegistryOptions};
    use crate::runtime::container::sweep::{self, sweep_namespace};
    use crate::runtime::container::{
        cgroup_dirs, remove_bridge, ContainerRuntime, ContainerTasks, NetworkConfig, RuntimeConfig,
    };

    fn can_run() -> bool {
        let tools = ["containerd-shim-runc-v2", "runc", "ip", "iptables", "nginx"];
        let missing: Vec<&str> = tools
            .into_iter()
            .filter(|t| {
                !std::env::var_os("PATH")
                    .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            })
            .collect();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if missing.is_empty() && root {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "container agent test needs root and {missing:?} (scripts/setup.sh)"
        );
        eprintln!("SKIPPED: container agent test needs root and {missing:?}");
        false
    }

    fn sha(s: &str) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(s.as_bytes())))
    }

    /// The nginx rootfs as an image in the store, as `image import` leaves
    /// one on an offline node (its registry, 127.0.0.1:1, answers nothing:
    /// a pull would fail).
    fn import_nginx(store: &ImageStore) -> String {
        let tmp = store.temp_dir().unwrap();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/images/nginx-rootfs.sh"
        );
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(tmp.path())
            .output()
            .expect("run nginx-rootfs.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let layer = sha("agent test nginx layer");
        store.commit_layer(tmp, &layer, 0).unwrap();
        let manifest = sha("agent test nginx manifest");
        store
            .save(ImageInfo {
                id: sha("agent test nginx config"),
                names: vec!["127.0.0.1:1/nginx:1.27".into()],
                repo_digests: vec![format!("127.0.0.1:1/nginx@{manifest}")],
                manifest_digest: Some(manifest.clone()),
                platform: "linux/amd64".into(),
                layers: vec![layer],
                size: 0,
                config: ImageConfig {
                    entrypoint: vec!["/usr/sbin/nginx".into()],
                    cmd: vec!["-g".into(), "daemon off;".into()],
                    ..Default::default()
                },
                created: None,
                blobs: vec![],
            })
            .unwrap();
        manifest
    }

    fn shims(namespace: &str, id: &str) -> usize {
        sweep::shims()
            .iter()
            .filter(|s| s.namespace == namespace && s.id == id)
            .count()
    }

    /// One `GET /` to nginx, 5 s at most: false when it does not answer.
    async fn http_ok(addr: SocketAddr) -> bool {
        let get = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            std::io::Result::Ok(String::from_utf8_lossy(&buf).contains("hello from nginx"))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), get).await,
            Ok(Ok(true))
        )
    }

    /// Waits for a stopped agent's run to end, `WAIT` at most.
    async fn stopped(agent: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(WAIT, agent)
            .await
            .expect("the agent stops within the wait")
            .expect("the agent's run ends without a panic");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_agent_adopts_its_running_container_and_removes_the_unassigned() {
        if !can_run() {
            return;
        }
        // What a run of this test that died left behind (its container
        // n1 or n2 would collide with this run's).
        sweep_namespace("sw21-agent", "sw21ag-", "sw21-agent-ct-");
        let c = cluster().await;
        let dir = std::env::temp_dir().join(format!(
            "sw21-agent-ct-{}-{}",
            std::process::id(),
            crate::identity::random_id(6)
        ));
        let blobs = Arc::new(Blobs::open(&dir.join("blobs"), 64 << 20).unwrap());
        let wasm = WasmRuntime::new(
            dir.join("cache"),
            Duration::from_secs(5),
            Default::default(),
        )
        .unwrap();
        let store = Arc::new(ImageStore::open(&dir).unwrap());
        let digest = import_nginx(&store);
        let images = Arc::new(Puller::new(store, RegistryOptions::default()).unwrap());
        let mut cfg = RuntimeConfig::new(dir.join("containers"));
        cfg.namespace = "sw21-agent".into();
        cfg.cgroup_parent = "sw21-agent".into();
        cfg.network = NetworkConfig {
            bridge: "sw21ag".into(),
            subnet: Ipv4Addr::new(10, 221, 99, 0),
            prefix_len: 24,
            name_prefix: "sw21ag".into(),
        };
        let budget = Budget::new(1024);
        let mesh = Mesh::new(IP.parse().unwrap(), Limits::new(&budget, None), budget);
        let dispatcher = Dispatcher::new(
            "m".into(),
            c.store.clone(),
            c.raft.clone(),
            DispatcherConfig::default(),
            None,
        );
        let start_agent = async |tasks: &Arc<ContainerTasks>| {
            let agent = Agent {
                node_id: "m".into(),
                source: Arc::new(InProcess::new(
                    "m".into(),
                    dispatcher.clone(),
                    blobs.clone(),
                    None,
                )),
                runtime: wasm.clone(),
                blobs: blobs.clone(),
                mesh: mesh.clone(),
                containers: Some(Arc::new(tasks.clone())),
            };
            let (stop_tx, stop_rx) = watch::channel(false);
            (stop_tx, tokio::spawn(agent.run(stop_rx)))
        };

        let mut nginx = service(
            "sn",
            "nginx",
            Image::Oci {
                reference: "127.0.0.1:1/nginx:1.27".into(),
                digest: Some(digest),
            },
            free_port(),
        );
        nginx.spec.stop_grace_period_ms = Some(1_000);
        c.raft
            .propose(Command::CreateService {
                service: nginx.clone(),
            })
            .await
            .unwrap();
        let for_nginx = |id: &str, slot| Task {
            service_id: "sn".into(),
            service_name: "nginx".into(),
            ..task(id, "m", slot)
        };
        c.raft
            .propose(Command::CreateTasks {
                tasks: vec![for_nginx("n1", 1), for_nginx("n2", 2)],
            })
            .await
            .unwrap();

        let rt = ContainerRuntime::new(cfg.clone()).await.unwrap();
        let tasks = ContainerTasks::start(Arc::new(rt), images.clone()).await;
        let (stop_tx, agent) = start_agent(&tasks).await;
        wait_for("both container tasks running", async || {
            ["n1", "n2"]
                .iter()
                .all(|id| stored(&c, id).state == TaskState::Running)
        })
        .await;
        let endpoint = stored(&c, "n1").endpoint.expect("n1 reports its endpoint");
        assert_eq!(endpoint.port, 80, "the service's target port");
        assert!(endpoint.addr.starts_with("10.221.99."), "{endpoint:?}");
        let addr: SocketAddr = format!("{}:{}", endpoint.addr, endpoint.port)
            .parse()
            .unwrap();
        wait_for("nginx of n1 answering at its endpoint", async || {
            http_ok(addr).await
        })
        .await;
        assert_eq!(
            tasks.pull_count(),
            0,
            "the stored image is used, not pulled"
        );

        // The node process stops (its containers stay); meanwhile n2 is
        // taken off this node.
        stop_tx.send(true).unwrap();
        stopped(agent).await;
        wait_for("the old agent let go of the runtime", async || {
            Arc::strong_count(&tasks) == 1
        })
        .await;
        drop(tasks);
        c.raft
            .propose(Command::SetDesiredState {
                task_ids: vec!["n2".into()],
                desired: DesiredState::Shutdown,
            })
            .await
            .unwrap();
        assert_eq!(
            shims(&cfg.namespace, "n2"),
            1,
            "n2 still runs while the node is down"
        );

        // The next process: reattach, then the agent.
        let rt = ContainerRuntime::new(cfg.clone()).await.unwrap();
        let tasks = ContainerTasks::start(Arc::new(rt), images.clone()).await;
        assert_eq!(tasks.adopted(), vec!["n1".to_string(), "n2".to_string()]);
        let (stop_tx, agent) = start_agent(&tasks).await;
        wait_for("n2 shut down and its container removed", async || {
            stored(&c, "n2").state == TaskState::Shutdown
                && shims(&cfg.namespace, "n2") == 0
                && tasks.runtime().ids() == vec!["n1".to_string()]
        })
        .await;
        assert_eq!(stored(&c, "n1").state, TaskState::Running);
        assert_eq!(
            stored(&c, "n1").endpoint,
            Some(endpoint),
            "n1 adopted, not replaced"
        );
        assert_eq!(shims(&cfg.namespace, "n1"), 1, "one container for n1");
        assert!(http_ok(addr).await, "n1 still serves");

        // Shut down through the store: stopped and removed.
        c.raft
            .propose(Command::SetDesiredState {
                task_ids: vec!["n1".into()],
                desired: DesiredState::Shutdown,
            })
            .await
            .unwrap();
        wait_for("n1 shut down and removed", async || {
            stored(&c, "n1").state == TaskState::Shutdown
                && shims(&cfg.namespace, "n1") == 0
                && tasks.runtime().ids().is_empty()
        })
        .await;
        stop_tx.send(true).unwrap();
        stopped(agent).await;
        drop(tasks);
        remove_bridge(&cfg.network).await;
        for d in cgroup_dirs("/sw21-agent") {
            let _ = std::fs::remove_dir(d);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
