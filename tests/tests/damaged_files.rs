//! Damaged or missing files in the data dir, crashes mid-upload, and the
//! modes the daemon gives its files: the node either recovers or stops
//! with a message that names the file and says what to do.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use swarmlet_e2e::{guest, Node};

fn blob_dir_files(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.data_dir.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_damaged_or_missing_node_json_stops_the_daemon_with_what_to_do() {
    let mut node = Node::start("n1");
    node.ok(&["init"]);
    node.create("hello", "hello", &["-p", "8080:80"]);
    node.kill9();
    let path = node.data_dir.join("node.json");
    let good = std::fs::read(&path).unwrap();

    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let err = node.refuses_to_start(&[]);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("restore it from a backup"),
        "{err}"
    );
    std::fs::write(&path, b"").unwrap();
    let err = node.refuses_to_start(&[]);
    assert!(err.contains("node.json is damaged (it is empty)"), "{err}");

    std::fs::remove_file(&path).unwrap();
    let err = node.refuses_to_start(&[]);
    assert!(
        err.contains("node.json is missing") && err.contains("raft.redb"),
        "{err}"
    );
    assert!(!path.exists(), "a refused start writes no new identity");

    // Restored, the node comes back as itself, with its service.
    std::fs::write(&path, &good).unwrap();
    node.spawn();
    node.wait_until("hello to serve again", || {
        matches!(node.get(8080, "/"), Ok((200, _)))
    });
    assert_eq!(
        std::fs::read(&path).unwrap(),
        good,
        "node.json is not rewritten"
    );
}

#[test]
fn a_damaged_blob_fails_its_task_with_the_reason_and_a_reupload_repairs_it() {
    let mut node = Node::start("n1");
    node.ok(&["init"]);
    node.create("hello", "hello", &["-p", "8080:80"]);
    node.kill9();
    let files = blob_dir_files(&node);
    assert_eq!(files.len(), 1, "{files:?}");
    let blob = node.data_dir.join("blobs/sha256").join(&files[0]);
    let bytes = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap();
    node.spawn();

    node.wait_until("the task to fail naming the damaged file", || {
        // Not `ok`: right after a restart the API may not have replayed the
        // log yet (issue 7 item 6, another change).
        let ps =
            String::from_utf8_lossy(&node.cli(&["service", "ps", "hello"]).stdout).into_owned();
        ps.contains("Failed")
            && ps.contains(&blob.display().to_string())
            && ps.contains("upload the same .wasm file again")
    });
    let (status, _) = node.get(8080, "/").unwrap();
    assert_eq!(status, 503);

    // Uploading the component again (service create uploads it first, even
    // though the create itself is refused as a duplicate) repairs the blob,
    // and the service recovers on its own.
    let hello = guest("hello");
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "hello",
        "-p",
        "8080:80",
        hello.to_str().unwrap(),
    ]);
    assert!(err.contains("already in use"), "{err}");
    assert_eq!(std::fs::read(&blob).unwrap(), bytes, "the blob is repaired");
    node.wait_until("hello to serve again", || {
        matches!(node.get(8080, "/"), Ok((200, _)))
    });
    node.wait_until("service ls to show 1/1", || {
        node.ok(&["service", "ls"]).contains("1/1")
    });
}

#[test]
fn a_crash_before_an_upload_is_acknowledged_leaves_it_whole_or_absent() {
    let wasm = std::fs::read(guest("hello")).unwrap();
    for (point, expect_blob) in [("blobs.before_commit", false), ("blobs.after_write", true)] {
        let mut node = Node::start("n1");
        // The API's answer means start-up is done, so the kill below lands
        // after it (a kill during the first start is crash_points' test).
        let err = node.fails(&["service", "ls"]);
        assert!(err.contains("swarmlet init"), "{err}");
        node.kill9();
        node.spawn_with_env(&[("SWARMLET_CRASH_AT", point)]);
        let sock = node.socket();
        let mut s = UnixStream::connect(&sock).unwrap();
        write!(
            s,
            "POST /v1/blobs HTTP/1.1\r\nHost: swarmlet\r\nContent-Length: {}\r\n\r\n",
            wasm.len()
        )
        .unwrap();
        s.write_all(&wasm).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(
            answer.is_empty(),
            "{point}: the upload must not be acknowledged: {}",
            String::from_utf8_lossy(&answer)
        );
        let status = node.wait_exit(point);
        assert!(!status.success(), "{point}: the daemon should have aborted");

        node.spawn();
        let files = blob_dir_files(&node);
        assert!(
            files.iter().all(|f| !f.starts_with('.')),
            "{point}: temp files left behind: {files:?}"
        );
        match files.as_slice() {
            [] => assert!(!expect_blob, "{point}: the blob should be there"),
            [hex] => {
                let on_disk = std::fs::read(node.data_dir.join("blobs/sha256").join(hex)).unwrap();
                assert!(on_disk == wasm, "{point}: the blob {hex} is not whole");
                assert!(expect_blob, "{point}: the blob should not be there");
            }
            more => panic!("{point}: unexpected files {more:?}"),
        }
        // Either way the same upload now succeeds, under the same name.
        node.ok(&["init"]);
        node.create("hello", "hello", &["-p", "8080:80"]);
        assert_eq!(blob_dir_files(&node).len(), 1);
    }
}

#[test]
fn files_are_private_whatever_the_umask() {
    // SAFETY: umask(2) has no preconditions; the daemon inherits it.
    let old = unsafe { libc::umask(0) };
    let node = Node::start("n1");
    // SAFETY: as above; restores the test process's umask.
    unsafe { libc::umask(old) };
    node.ok(&["init"]);
    node.create("hello", "hello", &["-p", "8080:80"]);
    let d = &node.data_dir;
    for dir in [
        d.clone(),
        d.join("blobs"),
        d.join("blobs/sha256"),
        d.join("wasm-cache"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let mut files = vec![d.join("node.json"), d.join("raft.redb")];
    for sub in ["blobs/sha256", "wasm-cache"] {
        for e in std::fs::read_dir(d.join(sub)).unwrap().flatten() {
            files.push(e.path());
        }
    }
    assert!(files.len() >= 4, "a blob and an artifact: {files:?}");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}
