//! TCP ports end to end at unit level: real TCP servers on 127.23.x.x stand
//! in for containers (each greets with its name, then echoes every byte
//! until the client half-closes, then closes), real published ports, and
//! two real mutual-TLS cluster ports for the tunnel.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use swarmlet_proto::dispatcher::{RoutePort, RouteReplica, Routes};
use swarmlet_proto::TaskEndpoint;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::tests::{free_port, mesh_at, node_certs, replica, start_node, SVC};
use super::*;
use crate::listen::{Budget, Limits};
use crate::pki::{self, CertRole};

/// A stand-in container: greets each connection with `{name}\n`, echoes
/// until EOF, then closes. Counts connections accepted and open.
struct Backend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn backend(ip: &str, name: &str) -> Backend {
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .expect("bind the stand-in container");
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (a, o, name) = (accepted.clone(), open.clone(), name.to_string());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let (o, name) = (o.clone(), name.clone());
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let mut buf = vec![0u8; 8192];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Backend {
        addr,
        accepted,
        open,
        _task: task,
    }
}

fn endpoint(task_id: &str, name: &str, addr: SocketAddr) -> super::Backend {
    super::Backend::LocalEndpoint {
        replica: name.to_string(),
        task_id: task_id.to_string(),
        addr,
        drain_max: Duration::from_secs(60),
    }
}

fn service(list: Vec<super::Backend>) -> HashMap<String, ServiceBackends> {
    [(
        SVC.to_string(),
        ServiceBackends {
            name: "web".into(),
            max_concurrent: DEFAULT_CONCURRENT_REQUESTS,
            list,
        },
    )]
    .into()
}

fn tcp_routes(port: u16, replicas: Vec<RouteReplica>) -> Routes {
    Routes {
        ports: vec![RoutePort {
            port,
            service_id: SVC.into(),
            service_name: "web".into(),
            mode: MeshMode::Tcp,
            target: 80,
        }],
        replicas,
    }
}

/// Opens a TCP-mode published port of `SVC` on the mesh's address.
fn publish_tcp(mesh: &Arc<Mesh>, ip: &str) -> SocketAddr {
    let port = free_port(ip);
    let failed = mesh.sync_listeners(&[Publish {
        port,
        service_id: SVC.into(),
        service_name: "web".into(),
        mode: MeshMode::Tcp,
    }]);
    assert!(failed.is_empty(), "{failed:?}");
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A client connection through the port: the replica's greeting line.
async fn open(to: SocketAddr) -> (String, BufReader<TcpStream>) {
    let s = TcpStream::connect(to).await.expect("connect to the port");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut line))
        .await
        .expect("a replica greets within a minute")
        .expect("read the greeting");
    assert!(
        line.ends_with('\n'),
        "the connection closed before a replica greeted: {line:?}"
    );
    (line.trim().to_string(), r)
}

/// Sends `data`, half-closes, and reads the echo to the end.
async fn echo(r: BufReader<TcpStream>, data: &[u8]) -> Vec<u8> {
    assert!(
        r.buffer().is_empty(),
        "only the greeting came before the echo"
    );
    let mut s = r.into_inner();
    let (mut rd, mut wr) = s.split();
    let write = async {
        wr.write_all(data).await.expect("send");
        wr.shutdown().await.expect("half-close");
    };
    let mut got = Vec::new();
    let read = rd.read_to_end(&mut got);
    let (_, n) = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(write, read) })
        .await
        .expect("the echo ends within a minute");
    n.expect("read the echo");
    got
}

/// Polls `cond` until it holds, failing with `what` after a minute.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..600 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_go_round_robin_to_local_replicas_and_skip_one_that_refuses() {
    let a = backend("127.23.0.11", "web.1").await;
    let b = backend("127.23.0.12", "web.2").await;
    // A replica whose container does not listen (crashed): refused.
    let dead = SocketAddr::new(IpAddr::from([127, 23, 0, 13]), free_port("127.23.0.13"));
    let mesh = mesh_at("127.23.0.1");
    mesh.set_backends(service(vec![
        endpoint("t1", "web.1", a.addr),
        endpoint("t2", "web.2", b.addr),
        endpoint("t3", "web.3", dead),
    ]));
    let to = publish_tcp(&mesh, "127.23.0.1");

    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..12 {
        let (name, r) = open(to).await;
        let data = format!("hello {i}");
        let got = echo(r, data.as_bytes()).await;
        assert_eq!(String::from_utf8_lossy(&got), data, "echo through {name}");
        *seen.entry(name).or_default() += 1;
    }
    // web.3 refuses: its turns go to the next replica, nothing is lost.
    assert_eq!(seen.values().sum::<usize>(), 12);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen["web.1"] >= 4 && seen["web.2"] >= 4,
        "spread over both live replicas: {seen:?}"
    );
    assert_eq!(
        a.accepted.load(Ordering::SeqCst) + b.accepted.load(Ordering::SeqCst),
        12
    );

    // A large transfer both ways, with the client half-closing its side
    // first: every byte arrives, in order.
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (_, r) = open(to).await;
    let got = echo(r, &big).await;
    assert!(got == big, "{} bytes echoed of {}", got.len(), big.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_gets_no_new_connection_and_its_open_ones_finish() {
    let a = backend("127.23.0.21", "web.1").await;
    let b = backend("127.23.0.22", "web.2").await;
    let mesh = mesh_at("127.23.0.2");
    mesh.set_backends(service(vec![
        endpoint("t1", "web.1", a.addr),
        endpoint("t2", "web.2", b.addr),
    ]));
    let to = publish_tcp(&mesh, "127.23.0.2");
    // One open connection on each replica.
    let mut held = HashMap::new();
    for _ in 0..2 {
        let (name, r) = open(to).await;
        held.insert(name, r);
    }
    assert_eq!(held.len(), 2, "one connection each");
    let drained = tokio::spawn(mesh.drain(&["t1".to_string()]).pop().unwrap());
    // Every new connection goes to web.2.
    for _ in 0..4 {
        let (name, r) = open(to).await;
        assert_eq!(name, "web.2", "a draining replica took a new connection");
        echo(r, b"x").await;
    }
    // web.1's open connection still works; the drain waits for it.
    let r = held.remove("web.1").unwrap();
    assert!(
        !drained.is_finished(),
        "a connection is still open in web.1"
    );
    let got = echo(r, b"still here").await;
    assert_eq!(got, b"still here");
    tokio::time::timeout(Duration::from_secs(60), drained)
        .await
        .expect("the drain ends once the connection closed")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_port_holds_new_connections_until_one_ends() {
    let a = backend("127.23.0.31", "web.1").await;
    let budget = Budget::new(1024);
    let limits = Limits::new(&budget, Some(2));
    let mesh = Mesh::new("127.23.0.3".parse().unwrap(), limits, budget);
    mesh.set_backends(service(vec![endpoint("t1", "web.1", a.addr)]));
    let to = publish_tcp(&mesh, "127.23.0.3");
    let (_, first) = open(to).await;
    let (_, _second) = open(to).await;
    // The third waits in the backlog: accepted by the kernel, not by the
    // mesh, so no connection to the replica is made for it.
    let third = tokio::spawn(open(to));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a.accepted.load(Ordering::SeqCst),
        2,
        "the cap is 2 connections"
    );
    assert!(!third.is_finished());
    drop(first);
    let (name, r) = tokio::time::timeout(Duration::from_secs(60), third)
        .await
        .expect("the third is served once one connection ended")
        .unwrap();
    assert_eq!(name, "web.1");
    assert_eq!(echo(r, b"ok").await, b"ok");
}

// ---- through the tunnel: two real mutual-TLS cluster ports ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_replicas_tunnels_to_another_node_and_skips_a_dead_one() {
    let ca = pki::create_ca("c1").unwrap();
    let (a_id, b_id) = ("a00000000000000000000000a", "b00000000000000000000000b");
    let a = start_node("127.23.1.1", a_id, &node_certs(&ca, a_id, CertRole::Worker)).await;
    let b = start_node("127.23.1.2", b_id, &node_certs(&ca, b_id, CertRole::Worker)).await;
    let web1 = backend("127.23.1.21", "web.1").await;
    let web2 = backend("127.23.1.22", "web.2").await;
    b.mesh.set_backends(service(vec![
        endpoint("t1", "web.1", web1.addr),
        endpoint("t2", "web.2", web2.addr),
    ]));
    let to = publish_tcp(&a.mesh, "127.23.1.1");
    let dead = format!("127.23.1.3:{}", free_port("127.23.1.3"));
    let with_endpoint = |task: &str, name: &str, addr: SocketAddr| RouteReplica {
        endpoint: Some(TaskEndpoint {
            addr: addr.ip().to_string(),
            port: addr.port(),
        }),
        ..replica(task, name, b_id, &b.cluster_addr)
    };
    let view = tcp_routes(
        to.port(),
        vec![
            replica("t0", "web.0", "c00000000000000000000000c", &dead),
            with_endpoint("t1", "web.1", web1.addr),
            with_endpoint("t2", "web.2", web2.addr),
        ],
    );
    a.mesh.set_routes(view.clone());
    b.mesh.set_routes(view);

    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..8 {
        let (name, r) = open(to).await;
        let data = format!("through the tunnel {i}");
        assert_eq!(
            echo(r, data.as_bytes()).await,
            data.as_bytes(),
            "via {name}"
        );
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "both of B's replicas, each as asked: {seen:?}"
    );
    // The dead node left rotation after its first failure.
    let t = a.mesh.table.load();
    let out = t.rotations[SVC]
        .list
        .iter()
        .filter(|r| matches!(r, table::Replica::Remote(r) if r.health.is_out(health::now_ms())))
        .count();
    assert_eq!(out, 1, "the unreachable node is out of rotation");

    // Many bytes both ways, half-close carried as END_STREAM.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
    let (_, r) = open(to).await;
    let got = echo(r, &big).await;
    assert!(got == big, "{} bytes echoed of {}", got.len(), big.len());

    // Several connections at once share the pooled connection.
    let mut all = Vec::new();
    for i in 0..20 {
        all.push(tokio::spawn(async move {
            let (_, r) = open(to).await;
            let data = format!("concurrent {i}");
            assert_eq!(echo(r, data.as_bytes()).await, data.as_bytes());
        }));
    }
    for j in all {
        j.await.expect("every concurrent connection echoed");
    }

    // B's web.1 drains: a tunnel open to it keeps it; new ones asked for it
    // go to web.2 on B.
    let (name, held) = loop {
        let (name, r) = open(to).await;
        if name == "web.1" {
            break (name, r);
        }
        echo(r, b"").await;
    };
    let drained = tokio::spawn(b.mesh.drain(&["t1".to_string()]).pop().unwrap());
    for _ in 0..4 {
        let (n, r) = open(to).await;
        assert_eq!(n, "web.2", "a draining replica took a new tunnel");
        echo(r, b"y").await;
    }
    assert!(!drained.is_finished(), "{name} still has an open tunnel");
    assert_eq!(echo(held, b"late").await, b"late");
    tokio::time::timeout(Duration::from_secs(60), drained)
        .await
        .expect("the drain ends once the tunnel closed")
        .unwrap();
    until("every replica connection closed", || {
        web1.open.load(Ordering::SeqCst) == 0 && web2.open.load(Ordering::SeqCst) == 0
    })
    .await;

    // No replica on B any more: the client's connection is closed, never
    // left hanging.
    b.mesh.set_backends(HashMap::new());
    let s = TcpStream::connect(to).await.expect("connect");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut line))
        .await
        .expect("closed within a minute");
    assert!(matches!(n, Ok(0) | Err(_)), "served by nothing: {line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_at_both_ends() {
    let ca = pki::create_ca("c1").unwrap();
    let (a_id, b_id) = ("a00000000000000000000000a", "b00000000000000000000000b");
    let a = start_node("127.23.2.1", a_id, &node_certs(&ca, a_id, CertRole::Worker)).await;
    let b = start_node("127.23.2.2", b_id, &node_certs(&ca, b_id, CertRole::Worker)).await;
    let web1 = backend("127.23.2.21", "web.1").await;
    b.mesh
        .set_backends(service(vec![endpoint("t1", "web.1", web1.addr)]));
    let to = publish_tcp(&a.mesh, "127.23.2.1");
    let view = tcp_routes(
        to.port(),
        vec![replica("t1", "web.1", b_id, &b.cluster_addr)],
    );
    a.mesh.set_routes(view.clone());
    b.mesh.set_routes(view);
    for m in [&a.mesh, &b.mesh] {
        m.set_tcp_idle(Duration::from_millis(300));
    }
    let (name, mut r) = open(to).await;
    assert_eq!(name, "web.1");
    let silent_since = std::time::Instant::now();
    // Silent: the mesh closes it (the client reads EOF) and the replica's
    // side is closed too.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut rest))
        .await
        .expect("the idle connection was never closed");
    assert!(n.is_ok() || rest.is_empty(), "{n:?}");
    assert!(
        silent_since.elapsed() >= Duration::from_millis(250),
        "closed after {:?}, before it was idle for the timeout",
        silent_since.elapsed()
    );
    until("the replica's connection closed", || {
        web1.open.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(web1.accepted.load(Ordering::SeqCst), 1);
}

/// Not a test: a bench fixture. Serves `SWARMLET_BENCH_BACKEND` (e.g. an
/// nginx on 127.0.0.1:8080) as one container replica on node B, published
/// on B at 127.23.5.2:18082 (a local replica) and on node A at
/// 127.23.5.1:18081 (through a tunnel to B), for `SWARMLET_BENCH_SECS`;
/// run wrk against both meanwhile.
/// `SWARMLET_BENCH_BACKEND=127.0.0.1:8080 cargo test --release -p swarmlet --lib bench_fixture -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a bench fixture, run by hand"]
async fn bench_fixture() {
    let backend: SocketAddr = std::env::var("SWARMLET_BENCH_BACKEND")
        .expect("SWARMLET_BENCH_BACKEND=IP:PORT")
        .parse()
        .expect("IP:PORT");
    let secs: u64 = std::env::var("SWARMLET_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let ca = pki::create_ca("c1").unwrap();
    let (a_id, b_id) = ("a00000000000000000000000a", "b00000000000000000000000b");
    let a = start_node("127.23.5.1", a_id, &node_certs(&ca, a_id, CertRole::Worker)).await;
    let b = start_node("127.23.5.2", b_id, &node_certs(&ca, b_id, CertRole::Worker)).await;
    b.mesh
        .set_backends(service(vec![endpoint("t1", "web.1", backend)]));
    let view = |port| tcp_routes(port, vec![replica("t1", "web.1", b_id, &b.cluster_addr)]);
    for (mesh, ip, port) in [
        (&a.mesh, "127.23.5.1", 18081),
        (&b.mesh, "127.23.5.2", 18082),
    ] {
        mesh.set_routes(view(port));
        let failed = mesh.sync_listeners(&[Publish {
            port,
            service_id: SVC.into(),
            service_name: "web".into(),
            mode: MeshMode::Tcp,
        }]);
        assert!(failed.is_empty(), "{ip}:{port}: {failed:?}");
    }
    println!("tunnel: 127.23.5.1:18081  local: 127.23.5.2:18082  for {secs} s");
    tokio::time::sleep(Duration::from_secs(secs)).await;
}
