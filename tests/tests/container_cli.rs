//! The command line of container services and images, against a real
//! daemon and (where a registry is needed) a real `docker-registry` with
//! images pushed by skopeo: `service create IMAGE` pins the digest the
//! registry resolves, refuses what it cannot resolve and creates nothing,
//! shows image and digest in `ls`/`inspect`; `image pull/import/ls/rm`.
//! (Containers do not run here: this is the API and CLI surface.)

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use swarmlet_e2e::Node;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A registry with the test images of scripts/images/registry.sh and the
/// archives it writes, shared by this test binary; stops with it.
struct Registry {
    dir: PathBuf,
    addr: String,
}

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        // A free port on our own loopback range.
        let port = std::net::TcpListener::bind("127.22.200.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.22.200.1")
            .port();
        let addr = format!("127.22.200.1:{port}");
        let dir = std::env::temp_dir().join(format!(
            "swarmlet-registry-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let script = repo().join("scripts/images/registry.sh");
        for args in [
            vec![
                "start".to_string(),
                dir.display().to_string(),
                addr.clone(),
                std::process::id().to_string(),
            ],
            vec!["images".to_string(), dir.display().to_string(), addr.clone()],
        ] {
            let out = Command::new(&script)
                .args(&args)
                .output()
                .expect("run registry.sh");
            assert!(
                out.status.success(),
                "registry.sh {} failed (it needs docker-registry, skopeo, umoci, jq; scripts/setup.sh installs them): {}{}",
                args[0],
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Registry { dir, addr }
    })
}

#[test]
fn an_image_service_without_resolving_shows_its_reference_and_settings() {
    let node = Node::start("img1");
    node.ok(&["init"]);
    node.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--detach",
        "--no-resolve-image",
        "-p",
        "8080:80",
        "--env",
        "GREETING=hi",
        "--limit-cpu",
        "0.5",
        "--limit-memory",
        "64m",
        "--stop-grace-period",
        "3s",
        "nginx:1.27",
    ]);
    let ls = node.ok(&["service", "ls"]);
    let row = ls
        .lines()
        .find(|l| l.contains(" web "))
        .unwrap_or_else(|| panic!("web in service ls:\n{ls}"));
    assert!(row.contains("nginx:1.27"), "{row}");
    assert!(row.contains("*:8080->80/tcp"), "{row}");
    let inspect = node.ok(&["service", "inspect", "web"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("inspect is JSON");
    let spec = &v[0]["service"]["spec"];
    assert_eq!(spec["image"]["kind"], "oci", "{inspect}");
    assert_eq!(spec["image"]["reference"], "nginx:1.27", "{inspect}");
    assert!(spec["image"]["digest"].is_null(), "not resolved: {inspect}");
    assert_eq!(spec["env"][0], "GREETING=hi", "{inspect}");
    assert_eq!(spec["limits"]["nano_cpus"], 500_000_000u64, "{inspect}");
    assert_eq!(spec["limits"]["memory_bytes"], 64u64 << 20, "{inspect}");
    assert_eq!(spec["stop_grace_period_ms"], 3000, "{inspect}");
    let ps = node.ok(&["service", "ps", "web"]);
    assert!(ps.contains("nginx:1.27"), "{ps}");
}

#[test]
fn flags_of_the_other_kind_of_service_are_refused_and_nothing_is_created() {
    let node = Node::start("img2");
    node.ok(&["init"]);
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "web",
        "--instance-reuse",
        "5",
        "nginx:1.27",
    ]);
    assert!(
        err.contains("--instance-reuse applies to wasm services only"),
        "{err}"
    );
    let wasm = swarmlet_e2e::guest("hello");
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "web",
        "--env",
        "A=1",
        wasm.to_str().expect("utf-8 path"),
    ]);
    assert!(
        err.contains("--env applies to container services only"),
        "{err}"
    );
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "web",
        "--no-resolve-image",
        "--limit-memory",
        "1m",
        "nginx:1.27",
    ]);
    assert!(err.contains("at least 6MiB"), "{err}");
    let err = node.fails(&["service", "create", "--name", "web", "Not An Image!"]);
    assert!(
        err.contains("neither a .wasm file here nor an image reference"),
        "{err}"
    );
    assert_eq!(
        node.ok(&["service", "ls", "-q"]).trim(),
        "",
        "nothing created"
    );
}

#[test]
fn an_unreachable_registry_fails_naming_it_and_creates_nothing() {
    let node = Node::start("img3");
    node.ok(&["init"]);
    // Port 1 on our loopback range: nothing listens there.
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "web",
        "--detach",
        "127.22.201.1:1/web:v1",
    ]);
    assert!(err.contains("127.22.201.1:1"), "names the registry: {err}");
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(
        node.ok(&["service", "ls", "-q"]).trim(),
        "",
        "nothing created"
    );
}

#[test]
fn the_manager_pins_the_digest_the_registry_resolves() {
    let reg = registry();
    let node = Node::start("img4");
    node.ok(&["init"]);
    let reference = format!("{}/web:v1", reg.addr);
    node.ok(&["service", "create", "--name", "web", "--detach", &reference]);
    let inspect = node.ok(&["service", "inspect", "web"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("inspect is JSON");
    let image = &v[0]["service"]["spec"]["image"];
    assert_eq!(image["reference"], reference.as_str(), "{inspect}");
    let digest = image["digest"].as_str().unwrap_or_default();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "pinned: {inspect}"
    );
    // The digest is the one the registry has for the tag.
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{reference}"),
        ])
        .output()
        .expect("run skopeo");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        digest,
        "skopeo's digest"
    );

    // An unknown tag: a clear error, nothing created.
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "nope",
        "--detach",
        &format!("{}/web:nope", reg.addr),
    ]);
    assert!(err.contains("no such tag"), "{err}");
    let ids = node.ok(&["service", "ls", "-q"]);
    assert_eq!(ids.lines().count(), 1, "only web: {ids}");
}

#[test]
fn image_pull_import_ls_and_rm() {
    let reg = registry();
    let node = Node::start("img5");
    let reference = format!("{}/web:v1", reg.addr);
    // Node-local: works before the node is in a swarm.
    let pulled = node.ok(&["image", "pull", &reference]);
    assert!(pulled.contains("Pull complete"), "{pulled}");
    let ls = node.ok(&["image", "ls"]);
    let row = ls
        .lines()
        .find(|l| l.starts_with(&format!("{}/web ", reg.addr)))
        .unwrap_or_else(|| panic!("the pulled image in image ls:\n{ls}"));
    assert!(row.contains(" v1 "), "{row}");
    assert!(row.contains("sha256:"), "{row}");

    let archive = reg.dir.join("web-docker.tar");
    let loaded = node.ok(&["image", "import", archive.to_str().expect("utf-8 path")]);
    assert!(loaded.contains("imported/web:v1"), "{loaded}");
    let ls = node.ok(&["image", "ls"]);
    assert!(ls.contains("docker.io/imported/web"), "{ls}");

    // A file that is no image archive: refused, nothing listed anew.
    let junk = node.data_dir.join("junk.tar");
    std::fs::write(&junk, b"not a tar archive at all").expect("write junk");
    let err = node.fails(&["image", "import", junk.to_str().expect("utf-8 path")]);
    assert!(err.contains("not an image archive"), "{err}");

    let rm = node.ok(&["image", "rm", "imported/web:v1"]);
    assert!(rm.contains("Untagged: docker.io/imported/web:v1"), "{rm}");
    let ls = node.ok(&["image", "ls"]);
    assert!(!ls.contains("imported/web"), "{ls}");
    assert!(ls.contains(&format!("{}/web ", reg.addr)), "{ls}");
    let err = node.fails(&["image", "rm", "imported/web:v1"]);
    assert!(err.contains("no image imported/web:v1"), "{err}");
}

/// Full task IDs of `service ps -q SERVICE`.
fn task_ids(node: &Node, service: &str) -> Vec<String> {
    node.ok(&["service", "ps", "-q", service])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn service_logs_reads_each_tasks_log_file_prefixed_and_follows_it() {
    use std::io::{BufRead, BufReader, Write};
    let node = Node::start("img6");
    node.ok(&["init"]);
    node.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--detach",
        "--no-resolve-image",
        "nginx:1.27",
    ]);
    let mut ids = Vec::new();
    node.wait_until("web's first task is placed on a node", || {
        ids = task_ids(&node, "web");
        !ids.is_empty()
    });
    // The file the container runtime writes for the task (containers do
    // not run on this branch; the log is put where the runtime puts it).
    let id = ids[0].clone();
    let logs_dir = node.data_dir.join("containers/logs");
    std::fs::create_dir_all(&logs_dir).expect("logs dir");
    let log = logs_dir.join(format!("{id}.log"));
    std::fs::write(&log, "first line\nsecond line\n").expect("write the log");

    let out = node.ok(&["service", "logs", "web"]);
    let prefix = format!("web.1.{}@", &id[..12]);
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].ends_with("    | first line"), "{out}");
    assert!(lines[1].ends_with("    | second line"), "{out}");
    let out = node.ok(&["service", "logs", "--tail", "1", "web"]);
    assert!(out.contains("| second line"), "{out}");
    assert!(!out.contains("first line"), "{out}");

    // -f: what is appended arrives while the command runs.
    let mut child = Command::new(swarmlet_e2e::swarmlet_bin())
        .arg("-H")
        .arg(format!("unix://{}", node.socket().display()))
        .args(["service", "logs", "-f", "--tail", "0", "web"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run service logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open the log");
    let mut seen = Vec::new();
    for _ in 0..600 {
        writeln!(f, "appended").expect("append");
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
            seen.push(line);
            break;
        }
    }
    assert!(
        seen.first()
            .is_some_and(|l| l.starts_with(&prefix) && l.ends_with("| appended")),
        "service logs -f never showed the appended line: {seen:?}"
    );

    // The same -f stream takes in a task placed after it began (here a
    // scale-up; a replacement is the same) and shows its output whole...
    node.ok(&["service", "scale", "--detach", "web=2"]);
    let mut later = String::new();
    node.wait_until("a task of web.2 is placed", || {
        let ps = node.ok(&["service", "ps", "web"]);
        let Some(short) = ps
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("web.2"))
            .and_then(|l| l.split_whitespace().next())
        else {
            return false;
        };
        match task_ids(&node, "web")
            .into_iter()
            .find(|t| t.starts_with(short))
        {
            Some(t) => {
                later = t;
                true
            }
            None => false,
        }
    });
    std::fs::write(logs_dir.join(format!("{later}.log")), "from a later task\n")
        .expect("write the later task's log");
    let later_prefix = format!(".{}@", &later[..12]);
    let shown = |seen: &[String]| {
        seen.iter()
            .any(|l| l.contains(&later_prefix) && l.ends_with("| from a later task"))
    };
    for _ in 0..600 {
        if shown(&seen) {
            break;
        }
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
            seen.push(line);
        }
    }
    assert!(
        shown(&seen),
        "service logs -f never showed task {later}'s line; it showed {seen:?}; tasks now: {}",
        node.ok(&["service", "ps", "web"])
    );
    // ...and ends by itself when the service is removed.
    node.ok(&["service", "rm", "web"]);
    node.wait_until("service logs -f ends after service rm", || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    let status = child.wait().expect("service logs -f exit status");
    assert!(status.success(), "service logs -f ended with {status}");

    // A wasm service: said plainly.
    node.create("hello", "hello", &["--detach"]);
    let err = node.fails(&["service", "logs", "hello"]);
    assert!(err.contains("no logs for wasm services"), "{err}");
}
