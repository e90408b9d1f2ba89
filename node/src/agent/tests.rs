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

/// Polls `what` until it holds; fails naming it after a bounded number of tries.
async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

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
