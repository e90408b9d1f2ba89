//! `.wasm` uploads: streamed to disk with a size cap, junk refused from its
//! first bytes, invalid components refused before they are stored, a
//! bounded number at a time, digests canonical, and a full disk answered
//! with 507 instead of a dead node.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use swarmlet_e2e::{guest, Node, Tmpfs};

/// What the daemon answered: status and body.
struct Answer {
    status: u16,
    body: String,
}

/// Reads one HTTP/1.1 response (Content-Length framed, as the API answers).
fn read_answer(s: &mut UnixStream) -> Answer {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {line:?}"));
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header line");
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).expect("response body");
    Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn connect(node: &Node) -> UnixStream {
    UnixStream::connect(node.socket()).expect("connect to the API socket")
}

/// `POST /v1/blobs` of `bytes`, Content-Length framed.
fn upload(node: &Node, bytes: &[u8]) -> Answer {
    let mut s = connect(node);
    write!(
        s,
        "POST /v1/blobs HTTP/1.1\r\nHost: swarmlet\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    )
    .unwrap();
    s.write_all(bytes).unwrap();
    read_answer(&mut s)
}

fn get(node: &Node, path: &str) -> Answer {
    let mut s = connect(node);
    write!(s, "GET {path} HTTP/1.1\r\nHost: swarmlet\r\n\r\n").unwrap();
    read_answer(&mut s)
}

fn post_json(node: &Node, path: &str, json: &str) -> Answer {
    let mut s = connect(node);
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: swarmlet\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    )
    .unwrap();
    read_answer(&mut s)
}

/// The component header (`\0asm`, version 0x0d, layer 1).
const COMPONENT_HEADER: &[u8] = b"\0asm\x0d\x00\x01\x00";

/// Files in the blob directory (blobs and temp files alike).
fn blob_files(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.data_dir.join("blobs/sha256"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Peak resident memory of the daemon so far (VmHWM), in bytes.
fn peak_rss(node: &Node) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", node.pid().expect("daemon pid")))
            .unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

fn assert_serving(node: &Node) {
    let (status, body) = node.get(8080, "/").expect("hello reachable");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn oversized_and_junk_uploads_are_refused_without_holding_them_in_memory() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    node.create("hello", "hello", &["-p", "8080:80"]);

    // 300 MB with a component header, chunked so the size is unknown up
    // front: streamed until the 64 MiB cap, then refused.
    let mut s = connect(&node);
    write!(
        s,
        "POST /v1/blobs HTTP/1.1\r\nHost: swarmlet\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let sender = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![0u8; 1 << 20];
            let mut first = chunk.clone();
            first[..8].copy_from_slice(COMPONENT_HEADER);
            for i in 0..300 {
                let c = if i == 0 { &first } else { &chunk };
                let sent = write!(s, "{:x}\r\n", c.len())
                    .and_then(|_| s.write_all(c))
                    .and_then(|_| s.write_all(b"\r\n"));
                if sent.is_err() {
                    return i; // the daemon stopped reading
                }
            }
            let _ = s.write_all(b"0\r\n\r\n");
            300
        })
    };
    let a = read_answer(&mut s);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(
        a.body.contains("64 MiB") && a.body.contains("--max-upload-size"),
        "the refusal names the cap and the flag: {}",
        a.body
    );
    let peak = peak_rss(&node);
    assert!(
        peak < 200 << 20,
        "a 300 MB upload took the daemon's peak RSS to {} MiB",
        peak >> 20
    );

    // A declared size over the cap is refused before any of it is sent.
    let mut s = connect(&node);
    write!(
        s,
        "POST /v1/blobs HTTP/1.1\r\nHost: swarmlet\r\nContent-Length: 300000000\r\nExpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let a = read_answer(&mut s);
    assert_eq!(a.status, 413, "{}", a.body);

    // Junk is refused from its first bytes: the answer comes although most
    // of the declared 60 MB was never sent.
    let mut s = connect(&node);
    write!(
        s,
        "POST /v1/blobs HTTP/1.1\r\nHost: swarmlet\r\nContent-Length: 60000000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[b'x'; 64 << 10]).unwrap();
    let a = read_answer(&mut s);
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("not a WebAssembly file"), "{}", a.body);
    // A core module is not a component either.
    let a = upload(&node, &wat::parse_str("(module)").unwrap());
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("not a WebAssembly component"), "{}", a.body);

    // A complete upload that is not a valid component is refused before it
    // is stored.
    let mut bad = COMPONENT_HEADER.to_vec();
    bad.extend_from_slice(&[0xff; 4096]);
    let a = upload(&node, &bad);
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("not a WebAssembly component"), "{}", a.body);
    let a = upload(&node, b"");
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("empty"), "{}", a.body);

    // Nothing of the above is on disk: only hello's blob, no temp file.
    node.wait_until("refused uploads' temp files to be gone", || {
        blob_files(&node).len() == 1
    });
    assert_serving(&node);
    let ls = node.ok(&["service", "ls"]);
    assert_eq!(ls.lines().count(), 2, "{ls}");
}

#[test]
fn digests_are_canonical_and_never_paths() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    let wasm = std::fs::read(guest("hello")).unwrap();
    let a = upload(&node, &wasm);
    assert_eq!(a.status, 201, "{}", a.body);
    let digest = serde_json::from_str::<serde_json::Value>(&a.body).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(digest, digest.to_ascii_lowercase());
    let hex = digest.trim_start_matches("sha256:");
    assert_eq!(blob_files(&node), vec![hex.to_string()]);

    // Path-like digests, in the URL and in a create request.
    for path in [
        "/v1/blobs/sha256:..%2F..%2Fnode.json",
        "/v1/blobs/..",
        "/v1/blobs/sha256:0000",
    ] {
        let a = get(&node, path);
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        assert!(a.body.contains("not a digest"), "{path}: {}", a.body);
    }
    let create = |name: &str, digest: &str| {
        post_json(
            &node,
            "/v1/services",
            &format!(
                r#"{{"name":"{name}","replicas":1,"wasm_digest":"{digest}","wasm_name":"hello.wasm","ports":[{{"target":80,"published":8080}}]}}"#
            ),
        )
    };
    let a = create("evil", "sha256:../../node.json");
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("not a digest"), "{}", a.body);

    // An uppercase digest names the same blob and is stored lowercase, so
    // garbage collection (which compares digests) sees the blob in use.
    let upper = format!("sha256:{}", hex.to_ascii_uppercase());
    let a = get(&node, &format!("/v1/blobs/{upper}"));
    assert_eq!(a.status, 200, "{}", a.body);
    let a = create("hello", &upper);
    assert_eq!(a.status, 201, "{}", a.body);
    let inspect = node.ok(&["service", "inspect", "hello"]);
    assert!(inspect.contains(&digest), "{inspect}");
    assert!(!inspect.contains(&upper), "{inspect}");
    node.wait_until("hello to serve", || {
        matches!(node.get(8080, "/"), Ok((200, _)))
    });
}

#[test]
fn uploads_are_bounded_and_a_stalled_one_leaves_no_temp_file() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    // Two uploads that stall after their first bytes hold the two slots.
    let stalled: Vec<UnixStream> = (0..2)
        .map(|_| {
            let mut s = connect(&node);
            write!(
                s,
                "POST /v1/blobs HTTP/1.1\r\nHost: swarmlet\r\nContent-Length: 1000000\r\n\r\n"
            )
            .unwrap();
            s.write_all(COMPONENT_HEADER).unwrap();
            s
        })
        .collect();
    node.wait_until("both stalled uploads to have temp files", || {
        blob_files(&node).len() == 2
    });
    // A third waits briefly, then is told to retry.
    let a = upload(&node, &std::fs::read(guest("hello")).unwrap());
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.body.contains("too many uploads"), "{}", a.body);

    // The clients go away: their partial uploads are removed.
    drop(stalled);
    node.wait_until("the partial uploads to be removed", || {
        blob_files(&node).is_empty()
    });
    let a = upload(&node, &std::fs::read(guest("hello")).unwrap());
    assert_eq!(a.status, 201, "{}", a.body);
}

#[test]
fn a_full_disk_refuses_uploads_with_507_and_recovers() {
    let mut node = Node::start("n1");
    node.ok(&["init"]);
    node.create("hello", "hello", &["-p", "8080:80"]);
    node.kill9();
    // The blob dir on a 1 MiB tmpfs (needs root: skipped as a user, a
    // failure under CI=true).
    let blobs = node.data_dir.join("blobs");
    let saved = node.data_dir.join("blobs-saved");
    std::fs::rename(&blobs, &saved).unwrap();
    let Some(_unmount) = Tmpfs::mount(&blobs, "1m") else {
        return;
    };
    std::fs::create_dir(blobs.join("sha256")).unwrap();
    for e in std::fs::read_dir(saved.join("sha256")).unwrap().flatten() {
        std::fs::copy(e.path(), blobs.join("sha256").join(e.file_name())).unwrap();
    }
    let filler = blobs.join("filler");
    let free = 1024 * 1024 - 64 * 1024 - 100 * 1024;
    std::fs::write(&filler, vec![1u8; free]).unwrap();
    node.spawn();
    node.wait_until("hello to serve", || {
        matches!(node.get(8080, "/"), Ok((200, _)))
    });

    // Less than ~100 KB is left.
    let mut big = std::fs::read(guest("hello")).unwrap();
    big.extend_from_slice(&[0u8; 200 << 10]); // the disk fills before it is validated
    let a = upload(&node, &big);
    assert_eq!(a.status, 507, "{}", a.body);
    assert!(
        a.body.contains("no space left under DATA_DIR"),
        "{}",
        a.body
    );
    assert_eq!(
        blob_files(&node).len(),
        1,
        "the partial upload was removed: {:?}",
        blob_files(&node)
    );
    // Running replicas keep serving.
    assert_serving(&node);

    // Space comes back: uploads work again.
    std::fs::remove_file(&filler).unwrap();
    let a = upload(&node, &std::fs::read(guest("faulty")).unwrap());
    assert_eq!(a.status, 201, "{}", a.body);
    node.kill9();
}

#[test]
fn names_that_no_service_can_have_are_refused_before_anything_is_sent() {
    use std::os::unix::ffi::OsStrExt;
    let node = Node::start("n1");
    node.ok(&["init"]);
    let hello = guest("hello");
    let host = format!("unix://{}", node.socket().display());
    let not_utf8 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    for args in [
        vec!["service", "create", "--name"],
        vec!["service", "ps"],
        vec!["service", "rm"],
        vec!["service", "inspect"],
    ] {
        let create = args.len() == 3;
        for name in [not_utf8, "../etc".as_ref(), "a/b".as_ref(), "a b".as_ref()] {
            let mut c = std::process::Command::new(swarmlet_e2e::swarmlet_bin());
            c.args(["-H", &host]).args(&args).arg(name);
            if create {
                c.arg(&hello);
            }
            let out = c.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} {name:?}");
            assert!(
                err.contains("invalid service name") && err.contains("letters, digits"),
                "{args:?} {name:?}: {err}"
            );
            if name == not_utf8 {
                assert!(err.contains("not valid UTF-8"), "{err}");
            }
        }
    }
    // The API refuses them too.
    let a = post_json(
        &node,
        "/v1/services",
        r#"{"name":"../x","replicas":1,"wasm_digest":"sha256:0","wasm_name":"h","ports":[]}"#,
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("invalid service name"), "{}", a.body);
    // Nothing was uploaded for any of them, nothing was created.
    assert!(blob_files(&node).is_empty(), "{:?}", blob_files(&node));
    assert_eq!(node.ok(&["service", "ls"]).lines().count(), 1);
}

#[test]
fn a_trickling_upload_loses_its_slot_after_the_grace() {
    let node = Node::start("n1");
    node.ok(&["init"]);
    // A byte every second: never idle long enough for the idle timeout,
    // but far below the least rate once the 10 s grace is over.
    let mut s = connect(&node);
    write!(
        s,
        "POST /v1/blobs HTTP/1.1\r\nHost: swarmlet\r\nContent-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    s.write_all(COMPONENT_HEADER).unwrap();
    let mut reader = s.try_clone().expect("clone the socket");
    let answer = std::thread::spawn(move || read_answer(&mut reader));
    let mut sent = 0;
    while !answer.is_finished() && sent < 40 {
        std::thread::sleep(Duration::from_secs(1));
        if s.write_all(b"x").is_err() {
            break;
        }
        sent += 1;
    }
    let a = answer.join().expect("answer");
    assert_eq!(a.status, 408, "{}", a.body);
    assert!(a.body.contains("too slow"), "{}", a.body);
    node.wait_until("the partial upload removed", || {
        blob_files(&node).is_empty()
    });
    let a = upload(&node, &std::fs::read(guest("hello")).unwrap());
    assert_eq!(a.status, 201, "{}", a.body);
}
