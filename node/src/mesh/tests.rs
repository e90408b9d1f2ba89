//! The mesh in one process with real parts: the hello component on
//! wasmtime, published ports and cluster ports on loopback (127.0.2.x),
//! mutual TLS with certificates of a real cluster CA, and the cluster
//! port's route check. Each "node" is a `Mesh` with its own `ClusterPort`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::body::Incoming;
use swarmlet_proto::dispatcher::{RoutePort, RouteReplica, Routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::table::{Inputs, Replica, Table};
use super::*;
use crate::body::text_response;
use crate::listen::{Budget, Limits};
use crate::pki::{self, Ca, CertRole, NodeCerts};
use crate::runtime::wasm::WasmRuntime;
use crate::transport::Peer;

pub(super) const SVC: &str = "svc0000000001";

/// The hello component, loaded once per test process.
fn hello() -> Arc<WasmApp> {
    static APP: OnceLock<(Arc<WasmRuntime>, Arc<WasmApp>)> = OnceLock::new();
    APP.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests/out/hello.wasm");
        let wasm = std::fs::read(&path).expect("guests/out/hello.wasm (guests/build.sh)");
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&wasm)));
        let dir = std::env::temp_dir().join(format!("swarmlet-mesh-{}", std::process::id()));
        let rt = WasmRuntime::new(dir.clone(), Duration::from_secs(5), Default::default())
            .expect("wasm runtime");
        let app = rt.load(&digest, &path).expect("load hello");
        // The compiled artifact is mapped now; nothing else is loaded, so
        // the cache dir need not outlive the load (a static is never dropped).
        let _ = std::fs::remove_dir_all(&dir);
        (rt, app)
    })
    .1
    .clone()
}

fn local(task_id: &str, name: &str) -> Backend {
    Backend::LocalWasm {
        replica: name.to_string(),
        app: hello(),
        settings: Arc::new(ServiceSettings {
            service: "hello".into(),
            memory_limit: None,
            egress: Default::default(),
            instance_reuse: 0,
            instance_concurrency: 0,
            log: crate::runtime::wasm::LogBudget::of_service("hello"),
        }),
        task_id: task_id.to_string(),
    }
}

fn backends(list: Vec<Backend>) -> HashMap<String, ServiceBackends> {
    [(
        SVC.to_string(),
        ServiceBackends {
            name: "hello".into(),
            max_concurrent: 10,
            list,
        },
    )]
    .into()
}

pub(super) fn replica(task: &str, name: &str, node: &str, addr: &str) -> RouteReplica {
    RouteReplica {
        task_id: task.into(),
        service_id: SVC.into(),
        name: name.into(),
        node_id: node.into(),
        node_addr: addr.into(),
        endpoint: None,
    }
}

fn routes(port: u16, replicas: Vec<RouteReplica>) -> Routes {
    Routes {
        ports: vec![RoutePort {
            port,
            service_id: SVC.into(),
            service_name: "hello".into(),
            mode: swarmlet_proto::MeshMode::Http,
            target: 80,
        }],
        replicas,
    }
}

fn names(t: &Table) -> Vec<(String, Option<String>)> {
    t.rotations[SVC]
        .list
        .iter()
        .map(|r| (r.name().to_string(), r.node().map(str::to_string)))
        .collect()
}

pub(super) fn mesh_at(ip: &str) -> Arc<Mesh> {
    let budget = Budget::new(1024);
    let limits = Limits::new(&budget, None);
    Mesh::new(ip.parse().unwrap(), limits, budget)
}

#[test]
fn the_rotation_is_the_routing_view_plus_local_replicas_it_does_not_show_yet() {
    let mesh = mesh_at("127.0.2.1");
    mesh.set_backends(backends(vec![
        local("t2", "hello.2"),
        local("t4", "hello.4"),
    ]));
    // Not in a swarm: the view is not used.
    mesh.set_routes(routes(
        80,
        vec![replica("t1", "hello.1", "B", "127.0.2.2:2377")],
    ));
    assert_eq!(
        names(&mesh.table.load()),
        [("hello.2".to_string(), None), ("hello.4".to_string(), None)]
    );
    mesh.set_cluster("A".into(), ClusterPort::new());
    mesh.set_routes(routes(
        80,
        vec![
            replica("t1", "hello.1", "B", "127.0.2.2:2377"),
            replica("t2", "hello.2", "A", "127.0.2.1:2377"),
            // Ours in the view, but no longer running here: left out.
            replica("t3", "hello.3", "A", "127.0.2.1:2377"),
            replica("t5", "hello.5", "C", "127.0.2.3:2377"),
        ],
    ));
    let t = mesh.table.load();
    assert_eq!(
        names(&t),
        [
            ("hello.1".to_string(), Some("B".to_string())),
            ("hello.2".to_string(), None),
            ("hello.5".to_string(), Some("C".to_string())),
            // Just started, not in the view yet.
            ("hello.4".to_string(), None),
        ]
    );
    assert_eq!(t.rotations[SVC].name, "hello");
    // Equal weight: each replica once per round.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let r = t.rotations[SVC].pick(&[], 0).unwrap();
        *seen.entry(r.name().to_string()).or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 10), "{seen:?}");
    // The local part serves forwarded requests: local replicas only.
    let l = &t.local[SVC];
    assert_eq!(l.replicas.len(), 2);
}

#[test]
fn failing_and_tried_nodes_are_skipped_while_others_remain() {
    let mut inputs = Inputs {
        node_id: Some("A".into()),
        routes: Some(routes(
            80,
            vec![
                replica("t1", "hello.1", "B", "b:1"),
                replica("t2", "hello.2", "C", "c:1"),
                replica("t3", "hello.3", "C", "c:1"),
            ],
        )),
        ..Inputs::default()
    };
    let t = inputs.build(&Table::default());
    let rot = &t.rotations[SVC];
    inputs.health("C").failed(1000);
    for _ in 0..6 {
        let r = rot.pick(&[], 2000).unwrap();
        assert_eq!(r.node(), Some("B"), "node C is out of rotation");
    }
    // Back after the penalty.
    let later = 1000 + super::health::PENALTY.as_millis() as u64;
    let nodes: std::collections::BTreeSet<_> = (0..6)
        .map(|_| rot.pick(&[], later).unwrap().node())
        .collect();
    assert_eq!(nodes.len(), 2, "C is back: {nodes:?}");
    // B tried already and C out: C is still offered rather than nothing.
    let r = rot.pick(&[Some("B")], 2000).unwrap();
    assert_eq!(r.node(), Some("C"));
    assert!(rot.pick(&[Some("B"), Some("C")], 2000).is_none());
    // The same node keeps its health across rebuilds; a node without
    // replicas is forgotten.
    let t2 = inputs.build(&t);
    if let Replica::Remote(r) = &t2.rotations[SVC].list[1] {
        assert!(r.health.is_out(2000));
    } else {
        panic!("remote expected");
    }
    inputs.routes = Some(routes(80, vec![replica("t1", "hello.1", "B", "b:1")]));
    inputs.build(&t2);
    assert!(!inputs.health.contains_key("C"));
}

// ---- forwarding between real cluster ports ----

pub(super) fn node_certs(
    ca: &swarmlet_proto::cluster::CaMaterial,
    id: &str,
    role: CertRole,
) -> NodeCerts {
    let key = pki::new_csr(id).unwrap();
    let cert_pem = Ca::load(ca)
        .unwrap()
        .sign_node(&key.csr_pem, id, role, "c1")
        .unwrap();
    NodeCerts {
        ca_pem: ca.cert_pem.clone(),
        cert_pem,
        key_pem: key.key_pem,
    }
}

/// A node: a mesh whose cluster port serves forwarded requests as
/// `api::server::route_cluster_port` does (route check, then the mesh).
pub(super) struct TestNode {
    pub mesh: Arc<Mesh>,
    pub cluster_addr: String,
    _closing: watch::Sender<bool>,
}

pub(super) async fn start_node(ip: &str, id: &str, certs: &NodeCerts) -> TestNode {
    let mesh = mesh_at(ip);
    let port = ClusterPort::new();
    port.install(certs).unwrap();
    mesh.set_cluster(id.to_string(), port.clone());
    let budget = Budget::new(1024);
    let limits = Limits::new(&budget, None);
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap();
    let cluster_addr = listener.local_addr().unwrap().to_string();
    let (tx, closing) = watch::channel(false);
    let (p1, p2, m) = (port.clone(), port.clone(), mesh.clone());
    tokio::spawn(crate::listen::serve_tls(
        format!("cluster port of {id}"),
        listener,
        limits,
        budget,
        port.tls_switch(),
        Duration::from_secs(5),
        move |c: Option<&rustls::pki_types::CertificateDer<'_>>| p1.identify(c),
        |_req| async { text_response(403, "plain") },
        move |req: hyper::Request<Incoming>| {
            let (port, mesh) = (p2.clone(), m.clone());
            async move {
                let peer = req.extensions().get::<Peer>().cloned();
                let peer = peer.unwrap_or(Peer::Anonymous);
                if let Err(f) = port.check(&peer, req.method(), req.uri().path()) {
                    return text_response(403, f.0);
                }
                mesh.serve_forwarded(req).await
            }
        },
        closing,
    ));
    TestNode {
        mesh,
        cluster_addr,
        _closing: tx,
    }
}

/// A free port on `ip` (bound, then released for the mesh to bind).
pub(super) fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw HTTP/1.1 request from `from` (a loopback address) to `to`; the
/// status line, the head (lower-case) and the body.
async fn request(from: &str, to: SocketAddr, raw: &str) -> (u16, String, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let mut s = sock
        .connect(to)
        .await
        .expect("connect to the published port");
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf))
        .await
        .expect("an answer within a minute")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_replicas_forwards_and_the_guest_sees_the_client() {
    let ca = pki::create_ca("c1").unwrap();
    let (a_id, b_id, d_id) = (
        "a00000000000000000000000a",
        "b00000000000000000000000b",
        "d00000000000000000000000d",
    );
    let a = start_node("127.0.2.1", a_id, &node_certs(&ca, a_id, CertRole::Worker)).await;
    let b = start_node("127.0.2.2", b_id, &node_certs(&ca, b_id, CertRole::Manager)).await;
    // D runs no replica of the service (its view is stale).
    let d = start_node("127.0.2.4", d_id, &node_certs(&ca, d_id, CertRole::Worker)).await;
    b.mesh.set_backends(backends(vec![local("t1", "hello.1")]));
    let published = free_port("127.0.2.1");
    let ports = [Publish {
        port: published,
        service_id: SVC.into(),
        service_name: "hello".into(),
        mode: MeshMode::Http,
    }];
    assert!(a.mesh.sync_listeners(&ports).is_empty());
    let to = SocketAddr::new(IpAddr::from([127, 0, 2, 1]), published);
    // A dead node (nothing listens there), D without a replica, then B.
    let dead = format!("127.0.2.3:{}", free_port("127.0.2.3"));
    let view = routes(
        published,
        vec![
            replica("t0", "hello.0", "c00000000000000000000000c", &dead),
            replica("t2", "hello.2", d_id, &d.cluster_addr),
            replica("t1", "hello.1", b_id, &b.cluster_addr),
        ],
    );
    for m in [&a.mesh, &b.mesh, &d.mesh] {
        m.set_routes(view.clone());
    }

    // GETs: every one reaches B's replica, whichever replica was picked first.
    for i in 0..6 {
        let (status, head, body) = request(
            "127.0.2.9",
            to,
            &format!(
                "GET /probe?i={i} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.9.8.7\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status, 200, "{head}\n{body}");
        // (chunked: the line is inside a chunk)
        assert!(
            body.contains(&format!("hello from hello.1 path=/probe?i={i}\n")),
            "{body}"
        );
        assert_eq!(
            header(&head, "x-seen-forwarded-for"),
            Some("10.9.8.7, 127.0.2.9"),
            "{head}"
        );
        assert_eq!(
            header(&head, "x-seen-forwarded"),
            Some("for=127.0.2.9;proto=http"),
            "{head}"
        );
    }
    // The dead node left rotation after its first failure.
    let t = a.mesh.table.load();
    let out = t.rotations[SVC]
        .list
        .iter()
        .filter(|r| matches!(r, Replica::Remote(r) if r.health.is_out(super::health::now_ms())))
        .count();
    assert_eq!(out, 1, "the unreachable node is out of rotation");

    // A request with a body: a node that cannot be reached never saw it,
    // so it goes on to the next one.
    let mut served = 0;
    for _ in 0..3 {
        let (status, _, body) = request(
            "127.0.2.9",
            to,
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        // D has no replica and the body went there: 503 with the reason, or
        // B's answer. Never a lost or doubled request.
        assert!(
            status == 200 && body.contains("hello from hello.1")
                || status == 503 && body.contains("no replica"),
            "{status} {body}"
        );
        served += usize::from(status == 200);
    }
    assert!(served >= 1, "no request with a body was served");

    // B's replica drains: out of B's own rotation at once, still serving
    // forwarded requests until the request inside it is done.
    let inside = b.mesh.table.load().local[SVC].replicas[0].inflight.enter();
    let drained = tokio::spawn(
        b.mesh
            .drain(&["t1".to_string()])
            .pop()
            .expect("one future per task"),
    );
    b.mesh.set_backends(HashMap::new());
    assert!(
        !b.mesh.table.load().rotations[SVC]
            .list
            .iter()
            .any(|r| matches!(r, Replica::Local(_))),
        "a draining replica is out of rotation"
    );
    let (status, _, body) = request(
        "127.0.2.9",
        to,
        "GET /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "forwarded during the drain: {body}");
    assert!(!drained.is_finished(), "a request is still inside");
    drop(inside);
    tokio::time::timeout(Duration::from_secs(30), drained)
        .await
        .expect("the drain ends once the request is done")
        .unwrap();
    // Now nobody has a replica: the client is told so, nothing hangs.
    let (status, _, body) = request(
        "127.0.2.9",
        to,
        "GET /gone HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no replica"), "{body}");
}
