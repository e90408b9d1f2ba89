//! Joining a swarm over mutual TLS: tokens, the CA check, refusals that say
//! which part is wrong, what the cluster port gives callers without the
//! right certificate, and remote control with a client bundle.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use swarmlet_e2e::{swarmlet_bin, Node};

fn token(manager: &Node, role: &str) -> String {
    manager
        .ok(&["swarm", "join-token", "-q", role])
        .trim()
        .to_string()
}

/// `node ls -q` on `node`: the IDs.
fn node_ids(node: &Node) -> Vec<String> {
    node.ok(&["node", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn node_id(node: &Node) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.data_dir.join("node.json")).expect("node.json"))
            .expect("node.json parses");
    v["node_id"].as_str().expect("node_id").to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One HTTP/1.1 GET over TLS to `addr` as `server_name`, trusting `ca_pem`
/// and presenting `identity` (cert PEM, key PEM) if given. `Err`: the TLS
/// connection failed (handshake refused, or closed before an answer).
fn tls_get(
    addr: &str,
    server_name: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    path: &str,
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
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes())
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

/// Runs the CLI with `-H ADDR --tls DIR` (or without `--tls`).
fn remote_cli(addr: &str, tls: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(swarmlet_bin());
    cmd.env_remove("SWARMLET_HOST")
        .env_remove("SWARMLET_TLS")
        .args(["-H", addr]);
    if let Some(dir) = tls {
        cmd.arg("--tls").arg(dir);
    }
    cmd.args(args).output().expect("run swarmlet")
}

#[test]
fn a_worker_joins_with_the_token_and_the_cluster_port_admits_only_the_right_certificates() {
    let manager = Node::start("manager");
    let init = manager.ok(&["init"]);
    assert!(init.contains("Swarm initialized"), "{init}");
    let certs = manager.data_dir.join("certs");
    for f in ["ca.crt", "node.crt", "node.key"] {
        assert!(certs.join(f).exists(), "init wrote certs/{f}");
    }
    let ca_pem = read(&certs.join("ca.crt"));

    let text = manager.ok(&["swarm", "join-token", "worker"]);
    assert!(
        text.contains("To add a worker to this swarm, run the following command:"),
        "{text}"
    );
    let worker_token = token(&manager, "worker");
    assert!(worker_token.starts_with("SWMTKN-1-"), "{worker_token}");
    assert!(text.contains(&worker_token), "{text}");
    assert!(text.contains(&manager.cluster_addr()), "{text}");

    let worker = Node::start("worker");
    let out = worker.ok(&["join", "--token", &worker_token, &manager.cluster_addr()]);
    assert!(out.contains("joined a swarm as a worker"), "{out}");
    let wid = node_id(&worker);
    let ls = manager.ok(&["node", "ls", "--format", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&ls).expect("node ls json");
    let row = nodes
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["node"]["id"] == wid.as_str())
        .unwrap_or_else(|| panic!("the worker {wid} is not in node ls: {ls}"));
    assert_eq!(row["node"]["role"], "worker", "{ls}");
    assert_eq!(
        row["node"]["addr"].as_str(),
        Some(worker.cluster_addr().as_str()),
        "{ls}"
    );
    let wcerts = worker.data_dir.join("certs");
    assert_eq!(
        read(&wcerts.join("ca.crt")),
        ca_pem,
        "the worker has the swarm's CA"
    );
    let (wcert, wkey) = (
        read(&wcerts.join("node.crt")),
        read(&wcerts.join("node.key")),
    );

    let addr = manager.cluster_addr();
    // A worker certificate reaches the blob route but no manager-only call.
    for path in ["/v1/nodes", "/v1/services", "/v1/raft/messages"] {
        let (status, body) = tls_get(
            &addr,
            "swarmlet-manager",
            &ca_pem,
            Some((&wcert, &wkey)),
            path,
        )
        .unwrap_or_else(|e| panic!("{path} as the worker: {e}"));
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("not allowed for worker"), "{body}");
    }
    let (status, body) = tls_get(
        &addr,
        "swarmlet-manager",
        &ca_pem,
        Some((&wcert, &wkey)),
        "/v1/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
    )
    .expect("blob route");
    assert_eq!(status, 404, "a worker may fetch blobs: {body}");
    // Anonymous: the CA and nothing else.
    let (status, body) =
        tls_get(&addr, "swarmlet-manager", &ca_pem, None, "/v1/cluster/ca").expect("ca");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("BEGIN CERTIFICATE"), "{body}");
    let (status, _) =
        tls_get(&addr, "swarmlet-manager", &ca_pem, None, "/v1/services").expect("anon");
    assert_eq!(status, 403);

    // A self-signed client certificate fails the handshake: no answer.
    let own = rcgen::generate_simple_self_signed(vec!["swarmlet-manager".to_string()])
        .expect("self-signed");
    let r = tls_get(
        &addr,
        "swarmlet-manager",
        &ca_pem,
        Some((&own.cert.pem(), &own.signing_key.serialize_pem())),
        "/v1/services",
    );
    assert!(
        r.is_err(),
        "a self-signed client certificate got an answer: {r:?}"
    );
    // A plain-TCP client gets no HTTP at all.
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(b"GET /v1/services HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
        "plain TCP got an HTTP answer"
    );
    // The manager serves the worker's own name only to... the worker: a
    // client asking for a manager at the worker's port is refused by TLS.
    let r = tls_get(
        &worker.cluster_addr(),
        "swarmlet-manager",
        &ca_pem,
        None,
        "/v1/cluster/ca",
    );
    assert!(r.is_err(), "the worker passed as a manager: {r:?}");
    assert!(
        tls_get(
            &worker.cluster_addr(),
            &wid,
            &ca_pem,
            None,
            "/v1/cluster/ca"
        )
        .is_ok(),
        "the worker answers under its node ID"
    );
    // A joined node cannot found a swarm of its own by mistake.
    let err = worker.fails(&["init"]);
    assert!(err.contains("has joined a swarm"), "{err}");
    // After a restart the worker serves mutual TLS from its data dir.
    let mut worker = worker;
    assert!(worker.sigterm().success());
    worker.spawn();
    let r = tls_get(
        &worker.cluster_addr(),
        &wid,
        &ca_pem,
        Some((&wcert, &wkey)),
        "/v1/nodes",
    );
    let (status, body) = r.expect("the restarted worker speaks TLS with its certificate");
    assert_eq!(
        status, 403,
        "a worker's certificate is refused /v1/nodes: {body}"
    );
}

#[test]
fn bad_tokens_are_refused_saying_which_part_and_add_nothing() {
    let manager = Node::start("manager");
    manager.ok(&["init"]);
    let good = token(&manager, "worker");
    let parts: Vec<&str> = good.split('-').collect();
    let (digest, secret) = (parts[2], parts[3]);
    let flip = |s: &str| -> String {
        let mut c: Vec<char> = s.chars().collect();
        c[0] = if c[0] == 'a' { 'b' } else { 'a' };
        c.into_iter().collect()
    };
    let wrong_secret = format!("SWMTKN-1-{digest}-{}", flip(secret));
    let wrong_digest = format!("SWMTKN-1-{}-{secret}", flip(digest));
    let malformed = format!("SWMTKN-1-{digest}");
    manager.ok(&["swarm", "join-token", "--rotate", "worker"]);
    let rotated = good.clone();
    let current = token(&manager, "worker");
    assert_ne!(current, rotated, "--rotate gave a new token");

    let before = node_ids(&manager);
    let joiner = Node::start("joiner");
    for (tok, says) in [
        (wrong_secret.as_str(), "secret is wrong"),
        (wrong_digest.as_str(), "CA digest does not match"),
        (malformed.as_str(), "malformed join token"),
        (rotated.as_str(), "rotated away"),
    ] {
        let err = joiner.fails(&["swarm", "join", "--token", tok, &manager.cluster_addr()]);
        assert!(err.contains(says), "{tok}: expected {says:?} in: {err}");
        assert_eq!(node_ids(&manager), before, "{tok}: nothing added");
        assert!(
            !joiner.data_dir.join("certs").exists(),
            "{tok}: no certs written"
        );
    }
    // The joiner stopped before sending the wrong-digest token: the manager
    // logged refusals for the others, none for a CA digest.
    let log = manager.log();
    assert!(log.contains("refused a join"), "{log}");
    assert!(
        !log.contains("CA digest"),
        "the wrong-digest token reached the manager: {log}"
    );
    // The current token works.
    let out = joiner.ok(&["join", "--token", &current, &manager.cluster_addr()]);
    assert!(out.contains("worker"), "{out}");
    assert_eq!(node_ids(&manager).len(), before.len() + 1);
    // Joining twice is refused.
    let err = joiner.fails(&["join", "--token", &current, &manager.cluster_addr()]);
    assert!(err.contains("already part of a swarm"), "{err}");
}

#[test]
fn a_client_bundle_gives_remote_control_and_nothing_without_it() {
    let manager = Node::start("manager");
    manager.ok(&["init"]);
    manager.create("hello", "hello", &["-p", "8080:80"]);
    let bundle = manager.data_dir.with_extension("bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    let out = manager.ok(&["swarm", "ca", "--client-bundle", bundle.to_str().unwrap()]);
    assert!(out.contains("client bundle"), "{out}");
    let addr = manager.cluster_addr();

    let ok = remote_cli(&addr, Some(&bundle), &["service", "ls"]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("hello"), "{stdout}");
    // The same with the environment variable and the bare IP (port 2377).
    let env = std::process::Command::new(swarmlet_bin())
        .env("SWARMLET_HOST", manager.ip.to_string())
        .env("SWARMLET_TLS", &bundle)
        .args(["service", "ls"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&env.stdout).contains("hello"),
        "{env:?}"
    );

    // Without the bundle: refused before connecting, with what to do.
    let no = remote_cli(&addr, None, &["service", "ls"]);
    assert!(!no.status.success());
    let err = String::from_utf8_lossy(&no.stderr);
    assert!(
        err.contains("needs a TLS client certificate") && err.contains("--tls"),
        "{err}"
    );
    // A bundle of another swarm: the manager's certificate is not trusted.
    let other = Node::start("other");
    other.ok(&["init"]);
    let foreign = other.data_dir.with_extension("bundle");
    let _ = std::fs::remove_dir_all(&foreign);
    other.ok(&["swarm", "ca", "--client-bundle", foreign.to_str().unwrap()]);
    let bad = remote_cli(&addr, Some(&foreign), &["service", "ls"]);
    assert!(!bad.status.success(), "a foreign bundle was accepted");
    assert!(!String::from_utf8_lossy(&bad.stdout).contains("hello"));
    // The bundle's key is private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(bundle.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let _ = std::fs::remove_dir_all(&bundle);
    let _ = std::fs::remove_dir_all(&foreign);
}
