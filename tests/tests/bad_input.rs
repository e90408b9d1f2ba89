//! Bad input gets a clear error, stores nothing, and the node keeps serving.

use std::io::Write;

use swarmlet_e2e::{guest, Node};

fn write_tmp(node: &Node, name: &str, bytes: &[u8]) -> String {
    let p = node.data_dir.join(name);
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(bytes))
        .expect("write test file");
    p.to_string_lossy().into_owned()
}

fn assert_serving(node: &Node) {
    let (status, body) = node
        .get(8080, "/still-there")
        .expect("hello still reachable");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn bad_input_is_refused_and_loses_nothing() {
    let node = Node::start("n1");

    // Before init: the commands say what to do.
    let err = node.fails(&["service", "ls"]);
    assert!(err.contains("swarmlet init"), "{err}");

    node.ok(&["init"]);
    let err = node.fails(&["init"]);
    assert!(err.contains("already part of a swarm"), "{err}");

    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    node.ok(&[
        "service",
        "create",
        "--name",
        "hello",
        "--replicas",
        "2",
        "-p",
        "8080:80",
        hello,
    ]);

    // Not wasm at all.
    let txt = write_tmp(&node, "notes.wasm", b"this is not wasm");
    let err = node.fails(&["service", "create", "--name", "x1", "-p", "9001:80", &txt]);
    assert!(err.contains("not a WebAssembly file"), "{err}");
    // A core module, not a component.
    let module = wat::parse_str("(module)").unwrap();
    let m = write_tmp(&node, "module.wasm", &module);
    let err = node.fails(&["service", "create", "--name", "x2", "-p", "9002:80", &m]);
    assert!(err.contains("not a WebAssembly component"), "{err}");
    // A component that is neither a wasi:http/proxy nor a wasi:http/service.
    let component = wat::parse_str("(component)").unwrap();
    let c = write_tmp(&node, "empty-component.wasm", &component);
    let err = node.fails(&["service", "create", "--name", "x3", "-p", "9003:80", &c]);
    assert!(
        err.contains("neither a wasi:http/proxy@0.2 component")
            && err.contains("wasi:http/service@0.3"),
        "{err}"
    );
    // A file that does not exist; an image reference (a container
    // service) given a wasm-only flag.
    let err = node.fails(&["service", "create", "--name", "x4", "./missing.wasm"]);
    assert!(err.contains("no such file"), "{err}");
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "x5",
        "--instance-reuse",
        "2",
        "nginx:1.27",
    ]);
    assert!(err.contains("wasm services only"), "{err}");

    // Duplicate name, port taken by a service, port taken by another process.
    let err = node.fails(&[
        "service", "create", "--name", "hello", "-p", "9004:80", hello,
    ]);
    assert!(err.contains("already in use"), "{err}");
    let err = node.fails(&["service", "create", "--name", "y1", "-p", "8080:80", hello]);
    assert!(err.contains("already published by service hello"), "{err}");
    let squatter = std::net::TcpListener::bind((node.ip, 9005)).expect("bind squatter");
    let err = node.fails(&["service", "create", "--name", "y2", "-p", "9005:80", hello]);
    assert!(
        err.contains("in use on this node by another process"),
        "{err}"
    );
    drop(squatter);

    // Bad numbers.
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "y3",
        "--replicas",
        "-1",
        hello,
    ]);
    assert!(err.contains("0 or more"), "{err}");
    let err = node.fails(&["service", "scale", "hello=10000000"]);
    assert!(err.contains("at most 10000"), "{err}");
    let err = node.fails(&["service", "create", "--name", "y4", "-p", "70000:80", hello]);
    assert!(err.contains("1 to 65535"), "{err}");
    let err = node.fails(&["service", "create", "--name", "bad name!", hello]);
    assert!(err.contains("invalid service name"), "{err}");

    // Unknown services.
    for args in [
        &["service", "scale", "nope=2"][..],
        &["service", "rm", "nope"],
        &["service", "ps", "nope"],
        &["service", "inspect", "nope"],
    ] {
        let err = node.fails(args);
        assert!(err.contains("service nope not found"), "{args:?}: {err}");
    }
    let err = node.fails(&["service", "scale", "hello"]);
    assert!(err.contains("SERVICE=REPLICAS"), "{err}");

    // Nothing of the above was stored, and the node keeps serving.
    let ls = node.ok(&["service", "ls"]);
    assert_eq!(ls.lines().count(), 2, "only the header and hello: {ls}");
    assert!(ls.contains("2/2"), "{ls}");
    assert_serving(&node);

    // A malformed API request gets a clear 400, not a crash.
    let resp = node.api_raw(
        b"POST /v1/services HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n{bad",
    );
    assert!(
        resp.starts_with("HTTP/1.1 400") && resp.contains("malformed request body"),
        "{resp}"
    );
    assert_serving(&node);
}

#[test]
fn unreachable_daemon_says_where_it_looked() {
    let out = std::process::Command::new(swarmlet_e2e::swarmlet_bin())
        .args(["-H", "unix:///nonexistent/swarmlet.sock", "service", "ls"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to the swarmlet daemon at unix:///nonexistent/swarmlet.sock"),
        "{err}"
    );
    assert!(err.contains("-H unix:///path/to/swarmlet.sock"), "{err}");
}

#[test]
fn guest_faults_fail_only_their_own_request() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    node.create("faulty", "faulty", &["-p", "8081:80"]);
    node.create("hello", "hello", &["-p", "8080:80"]);

    let (status, body) = node.get(8081, "/trap").unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("wasm trap"), "{body}");
    // The daemon runs with --wasm-timeout 2s.
    let (status, body) = node.get(8081, "/spin").unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("timed out"), "{body}");
    let (status, body) = node.get(8081, "/sleep").unwrap();
    assert_eq!(status, 504, "{body}");

    assert_eq!(node.get(8081, "/ok").unwrap().0, 200);
    assert_serving(&node);
    assert!(node.ok(&["service", "ls"]).contains("1/1"));

    // Anyone who reaches the port can make it trap on every request: the
    // node's log about the service stays within its budget (a burst of 50
    // lines, then 10 a second), says how many lines it dropped, and the
    // guest's own stderr (its panic message) only appears tagged with the
    // service, never as a raw line.
    for _ in 0..300 {
        assert_eq!(node.get(8081, "/trap").unwrap().0, 500);
    }
    node.wait_until("the dropped lines counted in the log", || {
        node.log()
            .contains("log lines about this service were dropped")
    });
    let log = node.log();
    let about: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("wasm request failed") || l.contains("stderr:"))
        .collect();
    // Each trap makes at least 2 lines (the failure and the guest's panic).
    assert!(
        about.len() < 600,
        "{} lines for 301 trapping requests",
        about.len()
    );
    for l in log.lines().filter(|l| l.contains("panicked at")) {
        assert!(
            l.contains("stderr:") && l.contains("service=faulty"),
            "a guest line in the log untagged: {l}"
        );
    }
    assert!(about.iter().any(|l| l.contains("stderr:")), "{log}");
}

#[test]
fn memory_limit_fails_only_the_greedy_request() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    node.create(
        "greedy",
        "faulty",
        &["--limit-memory", "16m", "-p", "8082:80"],
    );
    node.create("roomy", "faulty", &["-p", "8083:80"]);

    assert_eq!(node.get(8082, "/alloc?mb=1").unwrap().0, 200);
    let (status, body) = node.get(8082, "/alloc?mb=64").unwrap();
    assert_eq!(
        status, 500,
        "64 MiB must not fit under a 16 MiB limit: {body}"
    );
    assert_eq!(
        node.get(8082, "/ok").unwrap().0,
        200,
        "the next request is fine"
    );
    assert_eq!(
        node.get(8083, "/alloc?mb=64").unwrap().0,
        200,
        "without a limit it fits"
    );

    let inspect: serde_json::Value =
        serde_json::from_str(&node.ok(&["service", "inspect", "greedy"])).unwrap();
    assert_eq!(
        inspect[0]["service"]["spec"]["limits"]["memory_bytes"],
        16 << 20,
        "{inspect}"
    );

    for (limit, says) in [
        ("1k", "too small"),
        ("1g", "more than a wasm instance may have"),
        ("lots", "invalid size"),
    ] {
        let wasm = swarmlet_e2e::guest("faulty");
        let err = node.fails(&[
            "service",
            "create",
            "--name",
            "x",
            "--limit-memory",
            limit,
            wasm.to_str().unwrap(),
        ]);
        assert!(err.contains(says), "--limit-memory {limit}: {err}");
    }
}

/// A daemon started with a `--publish-addr` this machine does not have
/// (192.0.2.1, TEST-NET-1): publishing a port says so, not "in use".
#[test]
fn a_publish_address_this_machine_lacks_is_named_as_the_problem() {
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let dir = std::env::temp_dir().join(format!("swarmlet-e2e-{}-pubaddr", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _daemon = Kill(
        std::process::Command::new(swarmlet_e2e::swarmlet_bin())
            .args(["daemon", "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-addr",
                "127.0.77.1:2377",
                "--publish-addr",
                "192.0.2.1",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the daemon"),
    );
    let sock = format!("unix://{}", dir.join("swarmlet.sock").display());
    let cli = |args: &[&str]| {
        std::process::Command::new(swarmlet_e2e::swarmlet_bin())
            .args(["-H", &sock])
            .args(args)
            .output()
            .expect("run the CLI")
    };
    let mut ready = false;
    for _ in 0..600 {
        if cli(&["init"]).status.success() {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(ready, "the daemon never took init");
    let hello = guest("hello");
    let out = cli(&[
        "service",
        "create",
        "--name",
        "x",
        "-p",
        "9100:80",
        hello.to_str().expect("path"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("192.0.2.1") && err.contains("not an address of this machine"),
        "{err}"
    );
    drop(_daemon);
    let _ = std::fs::remove_dir_all(&dir);
}
