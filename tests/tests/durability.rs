//! What survives: a compacted raft log across a restart, and a broken data
//! dir showing up as failed tasks with their error instead of a dead node.

use swarmlet_e2e::Node;

#[test]
fn restart_after_log_compaction_keeps_every_change() {
    let mut node = Node::start("n1");
    node.ok(&["init"]);
    node.create("hello", "hello", &["--replicas", "1", "-p", "8080:80"]);
    // Each scale commits a few entries (the scale, the task changes, one
    // batch of status reports); the log is compacted into a snapshot every
    // 1000. Scale until it has been, then once more after it.
    let mut replicas = 1;
    node.wait_until("the raft log to be compacted", || {
        replicas = 3 - replicas;
        node.ok(&["service", "scale", "-d", &format!("hello={replicas}")]);
        node.log().contains("raft log compacted")
    });
    node.ok(&["service", "scale", "hello=1"]);
    node.create("after", "hello", &["--replicas", "2", "-p", "8081:80"]);
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

#[test]
fn right_after_a_restart_the_api_shows_every_change_made_before_it() {
    let mut node = Node::start("n1");
    node.ok(&["init"]);
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let port = format!("{}:80", 8080 + i);
        node.create(name, "hello", &["--replicas", "3", "-p", &port]);
    }
    node.kill9();
    node.spawn();
    // The first answer after the restart already has the whole log applied.
    let ls = node.ok(&["service", "ls"]);
    for name in ["a", "b", "c", "d"] {
        assert!(ls.contains(&format!(" {name} ")), "{name} missing:\n{ls}");
    }
    assert!(node.ok(&["service", "ps", "d"]).contains("d.3"));
}

#[test]
fn a_damaged_raft_file_stops_the_daemon_with_a_message_naming_it() {
    let mut node = Node::start("n1");
    node.ok(&["init"]);
    node.create("hello", "hello", &["-p", "8080:80"]);
    node.kill9();
    let raft_file = node.data_dir.join("raft.redb");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&raft_file)
        .unwrap();
    f.set_len(8192).unwrap();
    drop(f);

    let stderr = node.refuses_to_start(&[]);
    assert!(
        stderr.contains(&raft_file.display().to_string()),
        "names the file: {stderr}"
    );
    assert!(stderr.contains("backup"), "says what to do: {stderr}");
}
