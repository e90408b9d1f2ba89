//! A full disk degrades, never kills: on a data dir that is a small tmpfs
//! (mounted by the test; needs root), filled to the last byte, changes are
//! refused with a clear "no space left under DATA_DIR" while the running
//! service keeps answering; once space is back, writes work again without a
//! restart, and a restart on the freed disk is fine.

use std::io::Write;
use std::path::Path;

use swarmlet_e2e::{Node, Tmpfs};

/// Writes `path` until the file system says it is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("create the filler");
    for chunk in [1 << 20, 4096, 512] {
        let buf = vec![0xa5u8; chunk];
        loop {
            match f.write_all(&buf) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_refuses_changes_keeps_serving_and_recovers() {
    // `node` is declared after the mount, so it is dropped (the daemon
    // killed) before the tmpfs is unmounted.
    let probe = Node::new("n1");
    let Some(_tmpfs) = Tmpfs::mount(&probe.data_dir, "64m") else {
        return;
    };
    let mut node = probe;
    node.spawn();
    let filler = node.data_dir.join("filler");
    // init on a full disk: refused, nothing half-made; it works once there is space.
    fill(&filler);
    let err = node.fails(&["init"]);
    assert!(err.contains("no space left under DATA_DIR"), "{err}");
    std::fs::remove_file(&filler).unwrap();
    node.ok(&["init"]);
    node.create("hello", "hello", &["--replicas", "2", "-p", "8080:80"]);
    fill(&filler);

    // Changes big enough to need new pages in the raft file (the tasks of
    // hundreds of replicas); the first write that finds no space stalls
    // raft, and from then on every change is refused with the reason.
    let mut refusal = String::new();
    let mut replicas = 300;
    node.wait_until("a change to be refused for lack of space", || {
        let out = node.cli(&["service", "scale", "-d", &format!("hello={replicas}")]);
        replicas += 100;
        refusal = String::from_utf8_lossy(&out.stderr).into_owned();
        !out.status.success()
    });
    eprintln!("refused after scaling to {replicas}: {refusal}");
    assert!(
        refusal.contains("no space left under DATA_DIR"),
        "the refusal should say why: {refusal}"
    );
    assert!(
        refusal.contains(&node.data_dir.display().to_string()),
        "the refusal should name the data dir: {refusal}"
    );
    // Refused up front now, with the same reason; nothing is half-done.
    let err = node.fails(&["service", "scale", "-d", "hello=2"]);
    assert!(err.contains("no space left under DATA_DIR"), "{err}");
    let wasm = swarmlet_e2e::guest("hello");
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "other",
        "-p",
        "8081:80",
        &wasm.to_string_lossy(),
    ]);
    assert!(err.contains("no space left"), "{err}");
    // The running replicas keep serving, published port included.
    for _ in 0..20 {
        let (status, body) = node.get(8080, "/").expect("hello answers on a full disk");
        assert_eq!(status, 200, "{body}");
    }

    // Space comes back: the node resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    node.wait_until("changes to be accepted again", || {
        node.cli(&["service", "scale", "-d", "hello=2"])
            .status
            .success()
    });
    node.wait_until("hello to converge to 2 replicas", || {
        node.ok(&["service", "ls"]).contains("2/2")
    });
    node.create("other", "hello", &["-p", "8081:80"]);
    let (status, body) = node.get(8081, "/").unwrap();
    assert_eq!(status, 200, "{body}");
    let log = node.log();
    assert!(
        log.contains("the raft log is writable again"),
        "the node should have saved what it held once space was back"
    );
    assert_eq!(
        log.matches("swarmlet daemon ready").count(),
        1,
        "the daemon never stopped"
    );

    // And a restart on the freed disk is fine.
    node.kill9();
    node.spawn();
    node.wait_until("both services to serve after the restart", || {
        matches!(node.get(8080, "/"), Ok((200, _))) && matches!(node.get(8081, "/"), Ok((200, _)))
    });
    let ls = node.ok(&["service", "ls"]);
    assert!(ls.contains("2/2") && ls.contains("1/1"), "{ls}");
}
