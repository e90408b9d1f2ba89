//! No service can stall the others, and racing changes leave nothing behind:
//! concurrent creates of one new component, a create racing its `rm`, and a
//! small service converging while a 10,000-replica one starts.

use std::collections::BTreeSet;

use swarmlet_e2e::Node;

/// Replica names the daemon log says were started / stopped, for `service`.
fn replicas_logged(node: &Node, what: &str, service: &str) -> BTreeSet<String> {
    let prefix = format!("task={service}.");
    node.log()
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with(&prefix)))
        .map(|w| w.trim_start_matches("task=").to_string())
        .collect()
}

/// `N/M` of `service` in `service ls`.
fn running_of(node: &Node, service: &str) -> Option<(u64, u64)> {
    let ls = node.ok(&["service", "ls"]);
    let line = ls
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(service))?;
    let (n, m) = line
        .split_whitespace()
        .find(|w| w.contains('/'))?
        .split_once('/')?;
    Some((n.parse().ok()?, m.parse().ok()?))
}

#[test]
fn two_creates_of_one_new_component_both_run() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    let wasm = swarmlet_e2e::guest("hello");
    let wasm = wasm.to_string_lossy();
    let create = |name: &str, port: &str| {
        node.cli(&[
            "service",
            "create",
            "--name",
            name,
            "--replicas",
            "2",
            "-p",
            port,
            &wasm,
        ])
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| create("a", "8080:80"));
        let b = s.spawn(|| create("b", "8081:80"));
        (a.join().unwrap(), b.join().unwrap())
    });
    for (name, out) in [("a", &a), ("b", &b)] {
        assert!(
            out.status.success(),
            "create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (name, port) in [("a", 8080), ("b", 8081)] {
        let ps = node.ok(&["service", "ps", name]);
        assert_eq!(
            ps.lines().filter(|l| l.contains("Running")).count(),
            2,
            "{name}:\n{ps}"
        );
        let (status, body) = node.get(port, "/").unwrap();
        assert_eq!(status, 200, "{name}: {body}");
    }
}

#[test]
fn a_create_racing_its_rm_leaves_no_replica_behind() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    let wasm = swarmlet_e2e::guest("hello");
    let wasm = wasm.to_string_lossy();
    for i in 0..4u16 {
        let name = format!("race{i}");
        let port = 8090 + i;
        std::thread::scope(|s| {
            s.spawn(|| {
                // Fails when the rm lands while it waits for convergence.
                let _ = node.cli(&[
                    "service",
                    "create",
                    "--name",
                    &name,
                    "--replicas",
                    "3",
                    "-p",
                    &format!("{port}:80"),
                    &wasm,
                ]);
            });
            // rm as soon as the service exists: while its tasks are being
            // created and started.
            node.wait_until("the racing rm to remove the service", || {
                node.cli(&["service", "rm", &name]).status.success()
            });
        });
        assert!(!node.ok(&["service", "ls"]).contains(&name));
        node.wait_until("the removed service's port to close", || {
            node.get(port, "/").is_err()
        });
        node.wait_until("every replica that started to be stopped", || {
            let started = replicas_logged(&node, "replica running", &name);
            let stopped = replicas_logged(&node, "replica stopped", &name);
            started.is_subset(&stopped)
        });
    }
    // The names and ports are free again, and a new service shows only its own.
    node.create("race0", "hello", &["-p", "8090:80"]);
    let ps = node.ok(&["service", "ps", "race0"]);
    assert_eq!(
        ps.lines().count(),
        2,
        "one task under the new service:\n{ps}"
    );
    let (status, body) = node.get(8090, "/").unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_small_service_converges_while_a_huge_one_starts() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    node.create("small", "hello", &["--replicas", "0", "-p", "8071:80"]);
    let wasm = swarmlet_e2e::guest("hello");
    node.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "big",
        "--replicas",
        "10000",
        "-p",
        "8070:80",
        &wasm.to_string_lossy(),
    ]);
    // Waits until small runs 3 replicas; big's 10,000 must not queue it.
    node.ok(&["service", "scale", "small=3"]);
    let (big_then, _) = running_of(&node, "big").expect("big in service ls");
    let (small, _) = running_of(&node, "small").expect("small in service ls");
    assert_eq!(small, 3);
    eprintln!("small converged while big ran {big_then}/10000 replicas");
    node.wait_until("big to converge", || {
        running_of(&node, "big") == Some((10000, 10000))
    });
    let (status, body) = node.get(8071, "/").unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = node.get(8070, "/").unwrap();
    assert_eq!(status, 200, "{body}");
}
