//! WASIp3 components (`wasi:http/service@0.3`), and `--instance-concurrency`:
//! one instance serving several requests at the same time. The `hello-p3`
//! guest answers `hello-p3 from REPLICA instance-requests=N in-flight=K`,
//! N counted in its instance's memory and K the requests that instance is
//! serving as it answers, so a test sees from outside what the host does.

use std::net::{IpAddr, SocketAddr};

use swarmlet_e2e::{http_get, Node};

/// What one `hello-p3` answer says.
#[derive(Debug, Clone, Copy)]
struct Answer {
    instance_requests: u32,
    in_flight: u32,
}

fn parse(body: &str) -> Answer {
    let field = |name: &str| -> u32 {
        body.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}N in the answer {body:?}"))
    };
    Answer {
        instance_requests: field("instance-requests="),
        in_flight: field("in-flight="),
    }
}

/// `n` GETs of `path` sent at the same time; their statuses and bodies.
fn at_once(node: &Node, port: u16, path: &str, n: usize) -> Vec<(u16, String)> {
    let addr = SocketAddr::new(IpAddr::V4(node.ip), port);
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_string();
            std::thread::spawn(move || http_get(addr, &path))
        })
        .collect();
    threads
        .into_iter()
        .map(|t| {
            t.join()
                .expect("request thread")
                .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        })
        .collect()
}

#[test]
fn a_wasip3_service_gets_a_fresh_instance_per_request_by_default() {
    let node = Node::start("p3-fresh");
    node.ok(&["init"]);
    node.create("fresh", "hello-p3", &["-p", "8110:80"]);

    for i in 0..5 {
        let (status, body) = node.get(8110, &format!("/{i}")).expect("GET");
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("hello-p3 from fresh."), "{body}");
        let a = parse(&body);
        assert_eq!(
            a.instance_requests, 1,
            "a fresh instance per request: {body}"
        );
        assert_eq!(a.in_flight, 1, "{body}");
    }
    // Requests at the same time get an instance each.
    for (status, body) in at_once(&node, 8110, "/?sleep=200", 4) {
        assert_eq!(status, 200, "{body}");
        let a = parse(&body);
        assert_eq!((a.instance_requests, a.in_flight), (1, 1), "{body}");
    }
}

#[test]
fn instance_concurrency_serves_overlapping_requests_in_one_instance() {
    let node = Node::start("p3-conc");
    node.ok(&["init"]);
    node.create(
        "shared",
        "hello-p3",
        &[
            "-p",
            "8111:80",
            "--instance-concurrency",
            "8",
            "--instance-reuse",
            "100",
        ],
    );

    // Eight requests that each wait 300 ms inside the guest: one instance
    // holds several at once. (Retried: on a loaded machine the eight may
    // happen not to overlap.)
    let mut most_in_flight = 0;
    let mut most_served = 0;
    node.wait_until("requests overlapping in one instance", || {
        for (status, body) in at_once(&node, 8111, "/?sleep=300", 8) {
            assert_eq!(status, 200, "{body}");
            let a = parse(&body);
            assert!(
                a.in_flight <= 8,
                "--instance-concurrency 8 lets an instance hold at most 8: {body}"
            );
            assert!(a.instance_requests <= 100, "--instance-reuse 100: {body}");
            most_in_flight = most_in_flight.max(a.in_flight);
            most_served = most_served.max(a.instance_requests);
        }
        most_in_flight > 1
    });
    assert!(
        most_served > 1,
        "the instance's counter grows across requests (at most {most_served})"
    );
    // And one after another, too: instances stay for later requests. (Not
    // every one: a request that finds every instance busy, e.g. still
    // writing a body, gets a new instance, as in `wasmtime serve`.)
    node.wait_until("a later request served by a reused instance", || {
        let (status, body) = node.get(8111, "/").expect("GET");
        assert_eq!(status, 200, "{body}");
        parse(&body).instance_requests > 1
    });

    let inspect: serde_json::Value =
        serde_json::from_str(&node.ok(&["service", "inspect", "shared"])).expect("JSON");
    assert_eq!(
        inspect[0]["service"]["spec"]["instance_concurrency"], 8,
        "{inspect}"
    );
}

#[test]
fn instance_concurrency_is_refused_where_it_cannot_apply() {
    let node = Node::start("p3-refuse");
    node.ok(&["init"]);
    let hello = swarmlet_e2e::guest("hello");
    let hello = hello.to_string_lossy();
    let p3 = swarmlet_e2e::guest("hello-p3");
    let p3 = p3.to_string_lossy();

    // A WASIp2 component serves one request per instance at a time.
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "p2",
        "--instance-concurrency",
        "4",
        &hello,
    ]);
    assert!(
        err.contains("--instance-concurrency needs a WASIp3 component") && err.contains("WASIp2"),
        "{err}"
    );
    // A container is not a wasm instance at all.
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "box",
        "--instance-concurrency",
        "4",
        "nginx:1.27",
    ]);
    assert!(
        err.contains("--instance-concurrency applies to wasm services only"),
        "{err}"
    );
    // Counts that are no count, or too many.
    for (n, says) in [("0", "0 is not in 1"), ("100000", "at most 256")] {
        let err = node.fails(&[
            "service",
            "create",
            "--name",
            "many",
            "--instance-concurrency",
            n,
            &p3,
        ]);
        assert!(err.contains(says), "--instance-concurrency {n}: {err}");
    }
    let ls = node.ok(&["service", "ls"]);
    for name in ["p2", "box", "many"] {
        assert!(
            !ls.split_whitespace().any(|w| w == name),
            "a refused create left service {name}:\n{ls}"
        );
    }
    // The same WASIp3 component with a count in range is served.
    node.create(
        "ok",
        "hello-p3",
        &["-p", "8112:80", "--instance-concurrency", "4"],
    );
    let (status, body) = node.get(8112, "/").expect("GET");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_trap_or_timeout_in_a_concurrent_instance_fails_only_that_request() {
    let node = Node::start_with("p3-faults", &["--wasm-timeout", "2s"]);
    node.ok(&["init"]);
    node.create(
        "faults",
        "hello-p3",
        &[
            "-p",
            "8113:80",
            "--instance-concurrency",
            "4",
            "--instance-reuse",
            "100",
        ],
    );
    // Warm: an instance is serving.
    let (status, body) = node.get(8113, "/").expect("GET");
    assert_eq!(status, 200, "{body}");

    // A request past the timeout answers 504, while a request beside it in
    // the same instance answers.
    let addr = SocketAddr::new(IpAddr::V4(node.ip), 8113);
    let slow = std::thread::spawn(move || http_get(addr, "/?sleep=60000"));
    let (status, body) = node
        .get(8113, "/?sleep=100")
        .expect("GET beside the slow one");
    assert_eq!(status, 200, "{body}");
    let (status, body) = slow.join().expect("thread").expect("GET ?sleep=60000");
    assert_eq!(status, 504, "a guest past --wasm-timeout: {body}");
    assert!(body.contains("timed out"), "{body}");
    let (status, body) = node.get(8113, "/").expect("GET after the timeout");
    assert_eq!(status, 200, "served after a timeout: {body}");

    // A trap answers 500 and ends its instance; the next request is served.
    let (status, body) = node.get(8113, "/?sleep=100&trap=1").expect("GET ?trap");
    assert_eq!(status, 500, "a trapping guest: {body}");
    assert!(body.contains("trapped"), "{body}");
    let (status, body) = node.get(8113, "/").expect("GET after the trap");
    assert_eq!(status, 200, "served after a trap: {body}");
    assert_eq!(
        parse(&body).instance_requests,
        1,
        "a new instance after the trap: {body}"
    );
    let log = node.log();
    assert!(log.contains("wasm instance trapped"), "{log}");
}

#[test]
fn a_client_that_goes_away_frees_its_slot_in_a_concurrent_instance() {
    use std::io::Write;
    let node = Node::start_with("p3-cancel", &["--wasm-timeout", "300s"]);
    node.ok(&["init"]);
    node.create(
        "one",
        "hello-p3",
        &[
            "-p",
            "8114:80",
            "--instance-concurrency",
            "4",
            "--max-concurrent-requests",
            "1",
        ],
    );
    let addr = SocketAddr::new(IpAddr::V4(node.ip), 8114);
    let mut held = std::net::TcpStream::connect(addr).expect("connect");
    write!(held, "GET /?sleep=300000 HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    node.wait_until("the one slot to be taken by the sleeping request", || {
        matches!(node.get(8114, "/"), Ok((503, _)))
    });
    drop(held);
    // Without expiry the sleeping request would hold the slot for 300 s.
    node.wait_until("the slot to be freed when its client left", || {
        matches!(node.get(8114, "/"), Ok((200, _)))
    });
}

#[test]
fn a_concurrent_instance_stays_under_the_node_memory_budget() {
    let node = Node::start_with(
        "p3-mem",
        &["--instance-memory-budget", "64m", "--wasm-timeout", "60s"],
    );
    node.ok(&["init"]);
    node.create(
        "mem",
        "hello-p3",
        &["-p", "8115:80", "--instance-concurrency", "4"],
    );
    // 100 MiB is under the instance limit (128 MiB) but over the node's budget.
    let (status, body) = node.get(8115, "/?alloc=100").expect("GET ?alloc=100");
    assert_eq!(status, 503, "growing past the budget must fail: {body}");
    assert!(body.contains("memory budget"), "{body}");
    // The failed instance gave its memory back.
    let (status, body) = node.get(8115, "/?alloc=10").expect("GET ?alloc=10");
    assert_eq!(status, 200, "{body}");
}
