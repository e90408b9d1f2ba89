//! The routing mesh across nodes, with real daemons: the guest sees the
//! client's address; the cluster port's `/v1/mesh/{service}/…` route serves
//! another node's forwarded request with a local replica, for node
//! certificates only; and (once the dispatcher delivers the routing view)
//! requests through every node reach replicas on the others.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use swarmlet_e2e::http::{exchange, Reply};
use swarmlet_e2e::swarm::{eventually, Swarm};
use swarmlet_e2e::Node;

/// One HTTP/1.1 request to `addr`: the answer, and the client's own
/// address as the server saw it.
fn get_with_head(addr: SocketAddr, raw_head: &str) -> Result<(Reply, String), String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let me = s.local_addr().map_err(|e| e.to_string())?.ip().to_string();
    let r = exchange(s, addr, raw_head.as_bytes(), Duration::from_secs(60))?;
    Ok((r, me))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn node_id(node: &Node) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.data_dir.join("node.json")).expect("node.json"))
            .expect("node.json parses");
    v["node_id"].as_str().expect("node_id").to_string()
}

fn service_id(manager: &Node, name: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&manager.ok(&["service", "inspect", name])).expect("inspect json");
    v[0]["service"]["id"]
        .as_str()
        .expect("service id")
        .to_string()
}

/// `service ps NAME --format json` on `manager`: (node hostname, replica
/// name) of the tasks running.
fn running(manager: &Node, service: &str) -> Vec<(String, String)> {
    let out = manager.ok(&["service", "ps", service, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("service ps json");
    v.as_array()
        .expect("a list")
        .iter()
        .filter(|t| t["task"]["state"] == "running" && t["task"]["desired_state"] == "running")
        .map(|t| {
            (
                t["node_name"].as_str().unwrap_or_default().to_string(),
                format!(
                    "{}.{}",
                    service,
                    t["task"]["slot"].as_u64().unwrap_or_default()
                ),
            )
        })
        .collect()
}

/// One HTTP/1.1 request over TLS to a node's cluster port, as the node
/// `server_name`, presenting `identity` (cert PEM, key PEM) if given.
fn tls_request(
    addr: &str,
    server_name: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    raw: &str,
) -> Result<(u16, String), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM"))
        .expect("add CA");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert PEM")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(raw.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let r = tls.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if text.is_empty() {
        return Err(format!("no answer: {r:?}"));
    }
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text}"))?;
    Ok((status, text))
}

#[test]
fn the_guest_sees_the_client_and_a_peer_node_reaches_the_mesh_route() {
    let swarm = Swarm::start("meshroute", 1, 1);
    let (manager, worker) = (&swarm.managers[0], &swarm.workers[0]);
    manager.create("hello", "hello", &["--replicas", "2", "-p", "8080:80"]);
    let on = {
        let mut on = Vec::new();
        eventually("2 running replicas of hello", || {
            on = running(manager, "hello");
            if on.len() == 2 {
                Ok(())
            } else {
                Err(format!("{on:?}"))
            }
        });
        on
    };
    let on_manager = on
        .iter()
        .find(|(host, _)| *host == manager.name)
        .map(|(_, r)| r.clone());
    let Some(on_manager) = on_manager else {
        panic!("spread put no replica on the manager: {on:?}");
    };

    // Through the manager's published port: the guest gets the client's
    // address appended to what the client sent.
    let addr = SocketAddr::new(manager.ip.into(), 8080);
    let mut answered = None;
    eventually("the manager's published port answers", || {
        let (r, me) = get_with_head(
            addr,
            "GET /who HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.5\r\nConnection: close\r\n\r\n",
        )?;
        if r.status == 200 {
            answered = Some((r, me));
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    });
    let (r, me) = answered.expect("an answer");
    assert_eq!(
        r.header("x-seen-forwarded-for"),
        Some(format!("203.0.113.5, {me}").as_str()),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("x-seen-forwarded"),
        Some(format!("for={me};proto=http").as_str()),
        "{:?}",
        r.headers
    );

    // The worker's certificate calls the manager's mesh route as a
    // forwarding node would: a local replica serves it, the path and the
    // forwarding headers arrive unchanged.
    let sid = service_id(manager, "hello");
    let wcerts = worker.data_dir.join("certs");
    let (ca, cert, key) = (
        read(&wcerts.join("ca.crt")),
        read(&wcerts.join("node.crt")),
        read(&wcerts.join("node.key")),
    );
    let manager_id = node_id(manager);
    let raw = format!(
        "GET /v1/mesh/{sid}/deep/path?q=1 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nswarmlet-forwarded: {}\r\nConnection: close\r\n\r\n",
        node_id(worker)
    );
    let (status, text) = tls_request(
        &manager.cluster_addr(),
        &manager_id,
        &ca,
        Some((&cert, &key)),
        &raw,
    )
    .expect("the cluster port answers a worker");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(&format!("hello from {on_manager} path=/deep/path?q=1")),
        "served by the manager's own replica, with the client's path: {text}"
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("x-seen-forwarded-for: 198.51.100.7\r\n"),
        "a forwarded request keeps its X-Forwarded-For: {text}"
    );
    // Without a node certificate: refused, naming who may call.
    let (status, text) = tls_request(&manager.cluster_addr(), &manager_id, &ca, None, &raw)
        .expect("the cluster port answers");
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("node certificate"), "{text}");
    // A service with no replica here: 503 marked so the sender tries elsewhere.
    let raw = "GET /v1/mesh/nosuchservice/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (status, text) = tls_request(
        &manager.cluster_addr(),
        &manager_id,
        &ca,
        Some((&cert, &key)),
        raw,
    )
    .expect("the cluster port answers");
    assert_eq!(status, 503, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("swarmlet-no-replica: 1"),
        "{text}"
    );
}

/// Needs the routing view (`Routes`) delivered to every node's mesh by the
/// dispatcher and the agent, and listeners for every published port on
/// every node: the lead's part of issue 10. Every assertion below waits for
/// it; remove the `ignore` once it lands.
fn task_states(node: &Node, service: &str) -> Vec<(String, String)> {
    let out = node.ok(&["service", "ps", service, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("service ps json");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|t| {
            (
                t["task"]["state"].as_str().unwrap_or_default().to_string(),
                t["task"]["desired_state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn a_replica_being_stopped_finishes_its_request_before_it_reports_shutdown() {
    // The faulty guest's /sleep outlives the request timeout: the request
    // is inside the replica for 4 s, then answered 504 by the node.
    let node = Node::start_with("meshdrain", &["--wasm-timeout", "4s"]);
    node.ok(&["init"]);
    node.create("slow", "faulty", &["--replicas", "1", "-p", "8090:80"]);
    eventually("slow serves", || match node.get(8090, "/") {
        Ok((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let addr = SocketAddr::new(node.ip.into(), 8090);
    let inflight = std::thread::spawn(move || {
        let r = swarmlet_e2e::http_get(addr, "/sleep");
        (r, std::time::Instant::now())
    });
    // Let the request get inside the replica, then stop the replica.
    std::thread::sleep(Duration::from_millis(500));
    node.ok(&["service", "scale", "slow=0", "--detach"]);
    let mut shutdown_seen = None;
    eventually("the stopped task reported shutdown", || {
        let states = task_states(&node, "slow");
        if states.iter().any(|(s, _)| s == "shutdown") {
            shutdown_seen = Some(std::time::Instant::now());
            Ok(())
        } else {
            Err(format!("{states:?}"))
        }
    });
    let (answer, answered_at) = inflight.join().expect("request thread");
    let (status, body) = answer.expect("the request in flight got an answer");
    assert_eq!(
        status, 504,
        "the guest ran until the request timeout: {body}"
    );
    assert!(
        answered_at <= shutdown_seen.expect("seen"),
        "the task was reported shut down while its request was still in flight"
    );
}
