//! Crash points (`SWARMLET_CRASH_AT`, node/src/fault.rs): the daemon aborts
//! at a chosen point as a power cut would stop it there; a restart on the
//! same data dir must show the operation fully there or fully absent, and a
//! node that serves.

use swarmlet_e2e::Node;

/// Restarts a node that aborted at `point` and checks that it came back.
fn crashed_at(node: &mut Node, point: &str) {
    let status = node.wait_exit(point);
    assert!(
        !status.success(),
        "the daemon should have aborted at {point}"
    );
    assert!(
        node.log().contains(&format!("SWARMLET_CRASH_AT={point}")),
        "the daemon should have stopped at the crash point {point}, not elsewhere"
    );
    node.spawn();
}

/// The swarm works: a service can be created and serves.
fn serves_a_new_service(node: &Node, name: &str, port: u16) {
    node.create(name, "hello", &["-p", &format!("{port}:80")]);
    let (status, body) = node.get(port, "/").unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_crash_before_init_is_saved_leaves_no_swarm() {
    let mut node = Node::start_with_env("n1", &[("SWARMLET_CRASH_AT", "init.before_bootstrap")]);
    node.fails(&["init"]);
    crashed_at(&mut node, "init.before_bootstrap");
    // No half swarm: the node is not in one, and init works now.
    let err = node.fails(&["service", "ls"]);
    assert!(err.contains("not a swarm manager"), "{err}");
    node.ok(&["init"]);
    assert!(node.ok(&["node", "ls"]).contains("n1"));
    serves_a_new_service(&node, "hello", 8080);
}

#[test]
fn a_crash_right_after_init_is_saved_leaves_a_whole_swarm() {
    let mut node = Node::start_with_env("n1", &[("SWARMLET_CRASH_AT", "init.after_bootstrap")]);
    node.fails(&["init"]);
    crashed_at(&mut node, "init.after_bootstrap");
    // The swarm is there whole: the cluster and this node, ready for services.
    let err = node.fails(&["init"]);
    assert!(err.contains("already part of a swarm"), "{err}");
    let ls = node.ok(&["node", "ls"]);
    assert!(ls.contains("n1") && ls.contains("Leader"), "{ls}");
    serves_a_new_service(&node, "hello", 8080);
}

/// `service create` with the daemon aborting at `point` (a raft driver
/// point): after the restart the service is there whole (converging to its
/// replica count), or absent and creatable; either way the node serves it.
fn create_crashing_at(point: &str) {
    // Nothing else proposes on a fresh swarm, so the create's entry is the
    // first to reach the point.
    let mut node = Node::start_with_env("n1", &[("SWARMLET_CRASH_AT", point)]);
    node.ok(&["init"]);
    let wasm = swarmlet_e2e::guest("hello");
    let wasm = wasm.to_string_lossy();
    node.fails(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "-p",
        "8081:80",
        &wasm,
    ]);
    crashed_at(&mut node, point);

    let ls = node.ok(&["service", "ls"]);
    if ls.contains("web") {
        node.wait_until("the saved service to converge", || {
            node.ok(&["service", "ls"]).contains("2/2")
        });
    } else {
        node.create("web", "hello", &["--replicas", "2", "-p", "8081:80"]);
    }
    let (status, body) = node.get(8081, "/").unwrap();
    assert_eq!(status, 200, "{body}");
    let ps = node.ok(&["service", "ps", "web"]);
    assert_eq!(
        ps.lines().filter(|l| l.contains("Running")).count(),
        2,
        "exactly the two replicas run:\n{ps}"
    );
}

#[test]
fn a_crash_between_a_proposals_append_and_its_apply() {
    create_crashing_at("raft.after_append");
}

#[test]
fn a_crash_after_a_create_is_applied_but_not_yet_answered() {
    create_crashing_at("raft.after_apply");
}

#[test]
fn a_crash_while_the_raft_file_is_first_created_leaves_a_node_that_starts() {
    // The very first start of a node creates DATA_DIR/raft.redb; a daemon
    // killed in the middle must not leave a file it can never open again.
    let mut node = Node::new("n1");
    std::fs::create_dir_all(&node.data_dir).unwrap();
    let err = node.refuses_to_start(&[("SWARMLET_CRASH_AT", "raft.before_create_rename")]);
    assert!(
        err.contains("SWARMLET_CRASH_AT=raft.before_create_rename"),
        "the daemon should have stopped at the crash point: {err}"
    );
    assert!(
        !node.data_dir.join("raft.redb").exists(),
        "no half-written raft file"
    );
    node.spawn();
    node.ok(&["init"]);
    serves_a_new_service(&node, "hello", 8080);
    let leftovers: Vec<_> = std::fs::read_dir(&node.data_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}
