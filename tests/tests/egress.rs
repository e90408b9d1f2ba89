//! A guest's outgoing `wasi:http` requests: denied unless the service's
//! `--allow-outbound` list names the target, never to the node itself by a
//! wildcard, and each denial logged with the service's name.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use swarmlet_e2e::{published_port, Node};

/// A plain HTTP server on a loopback port that answers every request with
/// `from-test-server` and counts the requests it got.
struct TestServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl TestServer {
    fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
        let addr = listener.local_addr().expect("test server address");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let body = "from-test-server";
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TestServer { addr, hits }
    }
}

/// A raw `POST path` with a JSON body to the daemon's API socket.
fn api_post(node: &Node, path: &str, json: &str) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(node.socket()).expect("API socket");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: swarmlet\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )
    .expect("send to the API");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the API's answer");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn fetch(node: &Node, port: u16, url: &str) -> (u16, String) {
    node.get(port, &format!("/?url={url}"))
        .unwrap_or_else(|e| panic!("request to the fetch guest for {url}: {e}"))
}

fn assert_denied(node: &Node, port: u16, url: &str) {
    let (status, body) = fetch(node, port, url);
    assert_eq!(status, 502, "{url} should be denied, the guest got: {body}");
    assert!(
        body.contains("HttpRequestDenied"),
        "{url}: the guest should see HttpRequestDenied, got: {body}"
    );
}

#[test]
fn outgoing_requests_reach_only_what_the_service_allows() {
    let node = Node::start("egress");
    node.ok(&["init"]);
    let allowed = TestServer::start();
    let unlisted = TestServer::start();
    let allow = format!("http://{}", allowed.addr);
    node.create(
        "fetcher",
        "fetch",
        &["-p", "8091:80", "--allow-outbound", &allow],
    );
    node.create("hello", "hello", &["-p", "8092:80"]);

    // Allowed: the listed local test server, named literally.
    let (status, body) = fetch(&node, 8091, &format!("http://{}/x", allowed.addr));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("status 200") && body.contains("from-test-server"),
        "{body}"
    );

    // Denied: the node's API port, the service's own published port, another
    // local service, a port of the allowed host that is not listed, a host
    // that is not listed at all.
    let ip = node.ip;
    assert_denied(&node, 8091, &format!("http://{ip}:2377/v1/services"));
    assert_denied(
        &node,
        8091,
        &format!("http://{ip}:8091/?url=http://{ip}:8091/"),
    );
    assert_denied(&node, 8091, &format!("http://{ip}:8092/"));
    assert_denied(&node, 8091, &format!("http://{}/", unlisted.addr));
    assert_denied(&node, 8091, "http://api.example.com/");
    assert_denied(&node, 8091, &format!("https://{}/", allowed.addr));
    assert_eq!(
        unlisted.hits.load(Ordering::SeqCst),
        0,
        "a denied request reached the server"
    );

    let log = node.log();
    assert!(
        log.lines().any(|l| l.contains("outgoing request denied")
            && l.contains("service=fetcher")
            && l.contains(&format!("{ip}:2377"))),
        "the log should name the service and what it tried:\n{log}"
    );
    let ls = node.ok(&["service", "ls"]);
    assert_eq!(published_port(&ls, "hello"), Some(8092), "{ls}");
}

#[test]
fn a_wildcard_never_reaches_the_node_itself() {
    let node = Node::start("egress-wild");
    node.ok(&["init"]);
    let server = TestServer::start();
    node.create(
        "wild",
        "fetch",
        &["-p", "8093:80", "--allow-outbound", "*://*:*"],
    );

    // Loopback by address and by a name that resolves to it: the check is on
    // the resolved address, and `*` does not name the host.
    let port = server.addr.port();
    assert_denied(&node, 8093, &format!("http://127.0.0.1:{port}/"));
    assert_denied(&node, 8093, &format!("http://localhost:{port}/"));
    assert_denied(&node, 8093, &format!("http://{}:2377/v1/services", node.ip));
    assert_denied(&node, 8093, "http://169.254.169.254/latest/meta-data/");
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        0,
        "a denied request reached the server"
    );
    let log = node.log();
    assert!(
        log.contains("is this node or a local address"),
        "the log should say why:\n{log}"
    );
}

#[test]
fn a_bad_allow_outbound_pattern_is_refused_and_shown_when_good() {
    let node = Node::start("egress-bad");
    node.ok(&["init"]);
    let wasm = swarmlet_e2e::guest("fetch");
    let wasm = wasm.to_string_lossy();
    for bad in [
        "api.example.com",
        "ftp://example.com",
        "https://example.com/v1",
    ] {
        let err = node.fails(&[
            "service",
            "create",
            "--name",
            "bad",
            "--allow-outbound",
            bad,
            &wasm,
        ]);
        assert!(
            err.contains(bad) && err.contains("scheme://host[:port]"),
            "{bad}: {err}"
        );
    }
    // The daemon checks too, whatever the client: a clear 400.
    let (status, body) = api_post(
        &node,
        "/v1/services",
        r#"{"name":"bad","replicas":1,"wasm_digest":"sha256:00","wasm_name":"x.wasm","ports":[],"allow_outbound":["http://ok.example.com","api.example.com"]}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("api.example.com") && body.contains("scheme"),
        "{body}"
    );
    assert!(!node.ok(&["service", "ls"]).contains("bad"));

    node.create(
        "good",
        "fetch",
        &[
            "--allow-outbound",
            "https://api.example.com",
            "--allow-outbound",
            "http://*.example.org:8080",
        ],
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&node.ok(&["service", "inspect", "good"])).expect("inspect is JSON");
    assert_eq!(
        inspect[0]["service"]["spec"]["allow_outbound"],
        serde_json::json!(["https://api.example.com", "http://*.example.org:8080"]),
        "{inspect}"
    );
}

#[test]
fn a_guest_allowed_to_call_itself_cannot_loop_without_bound() {
    let node = Node::start_with("egress-loop", &["--wasm-timeout", "60s"]);
    node.ok(&["init"]);
    let me = format!("http://{}:8100", node.ip);
    node.create(
        "looper",
        "fetch",
        &["-p", "8100:80", "--allow-outbound", &me],
    );
    // Each level fetches the rest of the chain from itself: 20 levels asked,
    // the host stops the chain after 8 guests.
    let chain = format!("{me}/?url=").repeat(20);
    let (status, body) = fetch(&node, 8100, &format!("{chain}{me}/"));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("status 508") && body.contains("request loop"),
        "the chain should end in a 508 from the host: {body}"
    );
    assert!(node.log().contains("request loop"), "{}", node.log());
}
