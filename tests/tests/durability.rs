//! What survives: a compacted raft log across a restart, and a broken data
//! dir showing up as failed tasks with their error instead of a dead node.

use swarmlet_e2e::Node;

#[test]
fn restart_after_log_compaction_keeps_every_change() {
    let mut node = Node::start("n1");
    node.ok(&["init"]);
    node.create("hello", "hello", &["--replicas", "1", "-p", "8080:80"]);
    // Each cycle commits a few hundred entries (scale, tasks, status reports);
    // the log is compacted into a snapshot every 1000.
    for _ in 0..4 {
        node.ok(&["service", "scale", "hello=100"]);
        node.ok(&["service", "scale", "hello=1"]);
    }
    node.create("after", "hello", &["--replicas", "2", "-p", "8081:80"]);
    assert!(
        node.log().contains("raft log compacted"),
        "the test should have compacted the log"
    );

    node.kill9();
    node.spawn();
    node.wait_until("both services to serve", || {
        matches!(node.get(8080, "/"), Ok((200, _))) && matches!(node.get(8081, "/"), Ok((200, _)))
    });
    node.wait_until("replica counts to be back", || {
        let ls = node.ok(&["service", "ls"]);
        ls.contains("1/1") && ls.contains("2/2")
    });
}

#[test]
fn a_lost_component_shows_as_failed_tasks_with_the_reason() {
    let mut node = Node::start("n1");
    node.ok(&["init"]);
    node.create("hello", "hello", &["-p", "8080:80"]);
    node.kill9();
    // Someone wiped the blobs and the compile cache while the node was down.
    std::fs::remove_dir_all(node.data_dir.join("blobs")).unwrap();
    std::fs::remove_dir_all(node.data_dir.join("wasm-cache")).unwrap();
    node.spawn();

    node.wait_until("the task to be reported failed", || {
        let ps = node.ok(&["service", "ps", "hello"]);
        ps.contains("Failed") && ps.contains("not found")
    });
    // The node itself is fine: it answers, and the port says why it can't serve.
    let (status, body) = node.get(8080, "/").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no running replica"), "{body}");
    assert!(node.ok(&["service", "ls"]).contains("0/1"));
}
