//! One service cannot take the node from the others: per-service
//! concurrency limits, a guest cancelled when its client goes away, a
//! node-wide instance memory budget; and instance reuse only when asked.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};

use swarmlet_e2e::Node;

/// Opens a connection and sends `GET path` on it without reading the answer.
fn send_and_hold(node: &Node, port: u16, path: &str) -> TcpStream {
    let addr = SocketAddr::new(IpAddr::V4(node.ip), port);
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
        .unwrap_or_else(|e| panic!("send to {addr}: {e}"));
    s
}

#[test]
fn a_service_full_of_slow_requests_leaves_the_others_serving() {
    // Long enough that the slow requests stay in flight for the whole test.
    let node = Node::start_with("iso-slow", &["--wasm-timeout", "300s"]);
    node.ok(&["init"]);
    node.create("slow", "faulty", &["-p", "8094:80"]);
    node.create("hello", "hello", &["-p", "8095:80"]);

    let held: Vec<TcpStream> = (0..300)
        .map(|_| send_and_hold(&node, 8094, "/sleep"))
        .collect();

    // The slow service is at its limit: it answers 503 itself...
    node.wait_until(
        "the slow service to answer 503 at its limit",
        || matches!(node.get(8094, "/"), Ok((503, body)) if body.contains("concurrent requests")),
    );
    // ...and every other service still answers.
    for i in 0..20 {
        let (status, body) = node.get(8095, &format!("/{i}")).expect("request to hello");
        assert_eq!(status, 200, "hello while slow is saturated: {body}");
    }
    drop(held);
    // Its clients are gone: their guests are cancelled and it serves again.
    node.wait_until(
        "the slow service to answer again once its clients left",
        || matches!(node.get(8094, "/"), Ok((200, _))),
    );
}

#[test]
fn a_client_that_goes_away_frees_its_instance() {
    let node = Node::start_with("iso-cancel", &["--wasm-timeout", "300s"]);
    node.ok(&["init"]);
    node.create(
        "one",
        "faulty",
        &["-p", "8096:80", "--max-concurrent-requests", "1"],
    );

    let spinning = send_and_hold(&node, 8096, "/spin");
    node.wait_until("the one slot to be taken by /spin", || {
        matches!(node.get(8096, "/"), Ok((503, _)))
    });
    drop(spinning);
    // Without cancellation the spinning guest would hold the slot for 300s.
    node.wait_until("the slot to be freed when the /spin client left", || {
        matches!(node.get(8096, "/"), Ok((200, _)))
    });
}

#[test]
fn instance_memory_stays_under_the_node_budget() {
    let node = Node::start_with(
        "iso-mem",
        &["--instance-memory-budget", "64m", "--wasm-timeout", "60s"],
    );
    node.ok(&["init"]);
    node.create("mem", "faulty", &["-p", "8097:80"]);
    // 100 MiB is under the instance limit (128 MiB) but over the node's budget.
    let (status, body) = node.get(8097, "/alloc?mb=100").expect("request to faulty");
    assert_eq!(status, 503, "growing past the budget must fail: {body}");
    assert!(body.contains("memory budget"), "{body}");
    let log = node.log();
    assert!(log.contains("instance memory budget exhausted"), "{log}");
    // The failed instance gave its memory back.
    let (status, body) = node.get(8097, "/alloc?mb=10").expect("request to faulty");
    assert_eq!(status, 200, "{body}");
}

fn counts(node: &Node, port: u16, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let (status, body) = node.get(port, "/").expect("request to counter");
            assert_eq!(status, 200, "{body}");
            body.trim()
                .parse()
                .unwrap_or_else(|_| panic!("not a count: {body:?}"))
        })
        .collect()
}

#[test]
fn instances_are_fresh_per_request_unless_reuse_is_asked_for() {
    let node = Node::start("iso-reuse");
    node.ok(&["init"]);
    node.create("fresh", "counter", &["-p", "8098:80"]);
    node.create(
        "reused",
        "counter",
        &["-p", "8099:80", "--instance-reuse", "5"],
    );

    let fresh = counts(&node, 8098, 10);
    assert!(
        fresh.iter().all(|&c| c == 1),
        "a fresh instance per request: {fresh:?}"
    );

    let reused = counts(&node, 8099, 20);
    assert!(
        reused.iter().any(|&c| c >= 2),
        "--instance-reuse 5 should serve requests with one instance: {reused:?}"
    );
    assert!(
        reused.iter().all(|&c| (1..=5).contains(&c)),
        "an instance serves at most 5 requests: {reused:?}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&node.ok(&["service", "inspect", "reused"])).expect("JSON");
    assert_eq!(
        inspect[0]["service"]["spec"]["instance_reuse"], 5,
        "{inspect}"
    );
}
