//! The wasm engine: wasmtime's default isolation unless a node opts out, a
//! pool sized for the address space the machine gives (Raspberry Pi OS:
//! 512 GiB) with on-demand allocation as the fallback, and a compile cache
//! that compiles once and survives being deleted or damaged.

use swarmlet_e2e::{swarmlet_bin, Launch, Node};

const GIB: u64 = 1 << 30;

/// `swarmlet info --format json`'s engine part.
fn engine_info(node: &Node) -> serde_json::Value {
    let out = node.ok(&["info", "--format", "json"]);
    let info: serde_json::Value = serde_json::from_str(&out).expect("info is JSON");
    info["engine"].clone()
}

/// init, `hello` with two replicas on port 8080, and ten 200s from it.
fn deploy_and_serve(node: &Node) {
    node.ok(&["init"]);
    node.create("hello", "hello", &["--replicas", "2", "-p", "8080:80"]);
    for _ in 0..10 {
        let (status, body) = node.get(8080, "/").expect("request to hello");
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("hello from hello."), "{body}");
    }
}

fn compiles(node: &Node) -> usize {
    node.log().matches("compiling component").count()
}

#[test]
fn a_node_runs_wasmtimes_default_isolation_and_says_so() {
    let node = Node::start("n1");
    let text = node.ok(&["info"]);
    for line in [
        "Isolation: guard-pages",
        "Guard pages: 32 MiB",
        "Signals-based traps: on",
        "Spectre mitigations: on",
        "Instance allocator: pooling",
    ] {
        assert!(
            text.contains(line),
            "`swarmlet info` lacks {line:?}:\n{text}"
        );
    }
    let e = engine_info(&node);
    assert_eq!(e["isolation"], "guard-pages");
    assert_eq!(e["signals_based_traps"], true);
    assert_eq!(e["spectre_mitigations"], true);
    assert_eq!(e["memory_guard_bytes"], 32 << 20);
    deploy_and_serve(&node);
    assert!(node.ok(&["info"]).contains("Swarm: active"));
    // Compiled in a child process (the daemon only loads the artifact).
    assert_eq!(compiles(&node), 1, "{}", node.log());
    assert!(
        !node.log().contains("compiling in the daemon"),
        "{}",
        node.log()
    );
}

#[test]
fn no_guard_pages_is_an_opt_in_that_info_reports() {
    let node = Node::launch(
        "n1",
        Launch {
            args: vec!["--wasm-isolation".into(), "no-guard-pages".into()],
            ..Launch::default()
        },
    );
    let text = node.ok(&["info"]);
    for line in [
        "Isolation: no-guard-pages",
        "Guard pages: none (explicit bounds checks)",
        "Signals-based traps: off",
        "Spectre mitigations: off",
    ] {
        assert!(
            text.contains(line),
            "`swarmlet info` lacks {line:?}:\n{text}"
        );
    }
    deploy_and_serve(&node);

    let out = std::process::Command::new(swarmlet_bin())
        .args(["daemon", "--wasm-isolation", "fast"])
        .output()
        .expect("run swarmlet daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("guard-pages") && err.contains("no-guard-pages"),
        "the error should name the choices: {err}"
    );
}

#[test]
fn the_node_starts_and_serves_under_small_address_spaces() {
    // 512 GiB: a Raspberry Pi 4 on 64-bit Pi OS; the full pool (~4 TiB) fails there.
    // 16 GiB: a small pool. 4 GiB: no room for a pool, on-demand allocation.
    for (limit, allocator) in [
        (512 * GIB, "pooling"),
        (16 * GIB, "pooling"),
        (4 * GIB, "on-demand"),
    ] {
        let node = Node::launch(
            &format!("as{}g", limit / GIB),
            Launch {
                ulimit_v_kib: Some(limit / 1024),
                ..Launch::default()
            },
        );
        let e = engine_info(&node);
        assert_eq!(e["allocator"], allocator, "under ulimit -v {limit}: {e}");
        let space = e["address_space_bytes"]
            .as_u64()
            .expect("address space known");
        assert!(space <= limit, "{e}");
        let reserved = e["pool_reservation_bytes"].as_u64().unwrap();
        assert!(
            reserved <= limit / 2,
            "the pool leaves room for the rest: {e}"
        );
        assert!(
            node.log().contains(&format!("wasm engine: {allocator}")),
            "the log says which allocator runs:\n{}",
            node.log()
        );
        deploy_and_serve(&node);
    }
}

#[test]
fn when_the_pool_cannot_be_reserved_the_engine_falls_back_to_a_smaller_one() {
    // Pretend the limits are unknown, so the full pool is tried and fails.
    let node = Node::launch(
        "n1",
        Launch {
            ulimit_v_kib: Some(64 * GIB / 1024),
            env: vec![("SWARMLET_TEST_UNKNOWN_ADDRESS_SPACE".into(), "1".into())],
            ..Launch::default()
        },
    );
    assert!(
        node.log().contains("trying a smaller one"),
        "the failed reservation should be logged:\n{}",
        node.log()
    );
    let e = engine_info(&node);
    let slots = e["pool_slots"].as_u64().unwrap_or(0);
    assert!(
        e["allocator"] == "on-demand" || (slots > 0 && slots < 1000),
        "{e}"
    );
    deploy_and_serve(&node);
}

#[test]
fn concurrent_creates_of_one_new_component_compile_it_once() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    std::thread::scope(|s| {
        for name in ["svc-x", "svc-y", "svc-z"] {
            let node = &node;
            s.spawn(move || node.create(name, "hello", &["--replicas", "2"]));
        }
    });
    let ls = node.ok(&["service", "ls"]);
    assert_eq!(ls.matches("2/2").count(), 3, "{ls}");
    assert_eq!(
        compiles(&node),
        1,
        "one compile for one component:\n{}",
        node.log()
    );
}

#[test]
fn compiling_leaves_no_compiler_memory_in_the_daemon() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    let before = node.rss();
    // Two components, each compiled once (in a child process), loaded by
    // two replicas, and serving.
    node.create("hello", "hello", &["--replicas", "2", "-p", "8080:80"]);
    node.create("faulty", "faulty", &["--replicas", "2", "-p", "8081:80"]);
    for port in [8080, 8081] {
        for _ in 0..20 {
            assert!(matches!(node.get(port, "/"), Ok((200, _))));
        }
    }
    let after = node.rss();
    // Compiling in the daemon left ~16 MB behind (Cranelift's heap and code);
    // loading two artifacts and serving costs a few.
    assert!(
        after < before + (8 << 20),
        "RSS grew from {} to {} MiB",
        before >> 20,
        after >> 20
    );
    assert_eq!(compiles(&node), 2, "{}", node.log());
}

#[test]
fn a_deleted_or_damaged_compile_cache_is_rebuilt() {
    let mut node = Node::start("n1");
    deploy_and_serve(&node);
    let cache = node.data_dir.join("wasm-cache");
    let artifacts: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
    assert_eq!(artifacts.len(), 1, "one artifact, no temp file left");
    let artifact = artifacts[0].path();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&artifact).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "native code the daemon loads is private");

    node.kill9();
    std::fs::remove_dir_all(&cache).unwrap();
    node.spawn();
    node.wait_until("hello to serve after the cache was deleted", || {
        matches!(node.get(8080, "/"), Ok((200, _)))
    });
    assert_eq!(compiles(&node), 2, "{}", node.log());

    node.kill9();
    let mut bytes = std::fs::read(&artifact).expect("the artifact was rewritten");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&artifact, &bytes).unwrap();
    node.spawn();
    node.wait_until("hello to serve after the artifact was damaged", || {
        matches!(node.get(8080, "/"), Ok((200, _)))
    });
    assert!(
        node.log()
            .contains("damaged (checksum mismatch); recompiling"),
        "{}",
        node.log()
    );
    assert_eq!(compiles(&node), 3, "{}", node.log());
}
