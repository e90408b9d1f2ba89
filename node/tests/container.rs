//! The container runtime against the real thing: containerd-shim-runc-v2,
//! runc, overlayfs, network namespaces, and nginx (the rootfs
//! `scripts/images/nginx-rootfs.sh` builds, as the single image layer).
//!
//! Needs root, the shim, runc, iproute2, iptables and nginx (for the
//! rootfs); `scripts/setup.sh` installs them. Without them a test is
//! skipped with a message, except under `CI=true`, where that fails it.
//!
//! Each test has its own state directory, containerd namespace, cgroup
//! parent, bridge (`sh5brN`) and subnet (`10.55.N.0/24`), so they run in
//! parallel, and removes its bridge at the end.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use swarmlet::runtime::container::sweep::sweep_namespace;
use swarmlet::runtime::container::{
    cgroup_dirs, is_mountpoint, link_exists, netns_path, remove_bridge, ContainerError,
    ContainerRuntime, ContainerSpec, ExitStatus, NetworkConfig, Reattached, RuntimeConfig,
};

/// Why this machine cannot run the tests, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".to_string());
    }
    for tool in ["containerd-shim-runc-v2", "runc", "ip", "iptables"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// `true` if the test may run; skips (or fails under CI=true) otherwise.
fn prerequisites() -> bool {
    let Some(why) = missing_prerequisite() else {
        return true;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "cannot run containers ({why}); CI must run these tests as root after scripts/setup.sh"
    );
    eprintln!("skipping: cannot run containers ({why}); run as root after scripts/setup.sh");
    false
}

/// Removes what test processes that no longer run left in the temp dir
/// (`sh5-…-<pid>…`).
fn sweep_stale() {
    common::sweep_stale(&["sh5-nginx-rootfs-", "sh5-ct-"]);
}

/// The nginx rootfs, built once per test process.
fn nginx_layer() -> PathBuf {
    static LAYER: OnceLock<PathBuf> = OnceLock::new();
    LAYER
        .get_or_init(|| {
            sweep_stale();
            let dir = std::env::temp_dir().join(format!("sh5-nginx-rootfs-{}", std::process::id()));
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/images/nginx-rootfs.sh");
            let out = std::process::Command::new("bash")
                .arg(&script)
                .arg(&dir)
                .output()
                .expect("running nginx-rootfs.sh");
            assert!(
                out.status.success(),
                "nginx-rootfs.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            dir
        })
        .clone()
}

/// Per-test config: state dir, namespace, cgroup parent, bridge, subnet.
fn config(n: u8) -> RuntimeConfig {
    let root = std::env::temp_dir().join(format!("sh5-ct-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut cfg = RuntimeConfig::new(root);
    cfg.namespace = format!("sh5-test{n}");
    sweep_namespace(&cfg.namespace, &format!("sh5t{n}-"), "sh5-ct-");
    cfg.cgroup_parent = format!("sh5-test{n}");
    cfg.network = NetworkConfig {
        bridge: format!("sh5br{n}"),
        subnet: Ipv4Addr::new(10, 55, n, 0),
        prefix_len: 24,
        name_prefix: format!("sh5t{n}"),
    };
    cfg
}

fn nginx(id: &str) -> ContainerSpec {
    ContainerSpec {
        id: id.to_string(),
        layers: vec![nginx_layer()],
        args: vec!["/usr/sbin/nginx".into(), "-g".into(), "daemon off;".into()],
        env: vec![],
        cwd: None,
        user: None,
        memory_bytes: Some(64 << 20),
        cpus: Some(0.5),
    }
}

fn get(ip: Ipv4Addr) -> String {
    common::get(SocketAddr::from((ip, 80)))
}

use common::shims as shim_processes;

/// Asserts, each on its own, that nothing of the task is left.
fn assert_nothing_left(rt: &ContainerRuntime, id: &str, veth: &str, netns: &str) {
    let cfg = rt.config();
    let shims = shim_processes(&cfg.namespace, id);
    assert!(
        shims.is_empty(),
        "shim processes of {id} still running: {shims:?}"
    );
    let rootfs = cfg.root.join("tasks").join(id).join("rootfs");
    assert!(
        !is_mountpoint(&rootfs),
        "{} is still mounted",
        rootfs.display()
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(&cfg.root.join("tasks").join(id).display().to_string()),
        "a mount under the bundle of {id} is left"
    );
    assert!(
        !netns_path(netns).exists(),
        "network namespace {netns} is left"
    );
    assert!(!link_exists(veth), "veth {veth} is left");
    let cgroups = cgroup_dirs(&format!("/{}/{id}", cfg.cgroup_parent));
    assert!(cgroups.is_empty(), "cgroup directories left: {cgroups:?}");
    let bundle = cfg.root.join("tasks").join(id);
    assert!(!bundle.exists(), "bundle {} is left", bundle.display());
    assert!(
        !Path::new("/run/containerd/runc")
            .join(&cfg.namespace)
            .join(id)
            .exists(),
        "runc state of {id} is left"
    );
    assert!(
        rt.leftovers(id).is_empty(),
        "leftovers: {:?}",
        rt.leftovers(id)
    );
}

/// Removes the test's bridge and state directory.
async fn finish(rt: ContainerRuntime) {
    let cfg = rt.config().clone();
    drop(rt);
    remove_bridge(&cfg.network).await;
    assert!(
        !link_exists(&cfg.network.bridge),
        "bridge {} is left",
        cfg.network.bridge
    );
    let _ = std::fs::remove_dir_all(&cfg.root);
    for dir in cgroup_dirs(&format!("/{}", cfg.cgroup_parent)) {
        let _ = std::fs::remove_dir(dir);
    }
    // runc's per-namespace state directory (empty once its containers are gone).
    let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&cfg.namespace));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nginx_containers_on_port_80_then_stop_leaves_nothing() {
    if !prerequisites() {
        return;
    }
    let rt = ContainerRuntime::new(config(1)).await.expect("runtime");
    let mut seen = Vec::new();
    for id in ["sh5-web-1", "sh5-web-2"] {
        let t0 = std::time::Instant::now();
        let prepared = rt.prepare(&nginx(id)).await.expect("prepare nginx");
        let t1 = std::time::Instant::now();
        let pid = rt.start(id).await.expect("start nginx");
        // Reported, not asserted (timings belong in the benchmark).
        eprintln!("{id}: prepare {:?}, start {:?}", t1 - t0, t1.elapsed());
        assert!(pid > 0);
        let info = rt.info(id).expect("info");
        assert_eq!(info.ip, prepared.ip);
        seen.push((id, prepared.ip, info.veth, info.netns, info.shim_pid));
    }
    assert_ne!(seen[0].1, seen[1].1, "each container has its own address");
    for (id, ip, ..) in &seen {
        let response = get(*ip);
        assert!(response.starts_with("HTTP/1.1 200"), "{id}: {response}");
        assert!(
            response.ends_with(&format!("hello from nginx on {id}\n")),
            "{id}: {response}"
        );
    }
    // The hostname is the task ID (in the container's UTS namespace).
    let pid = rt.pid("sh5-web-1").await.expect("pid");
    let out = std::process::Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--uts", "hostname"])
        .output()
        .expect("nsenter");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sh5-web-1");
    // --limit-memory is the cgroup's memory limit.
    let cgroup = cgroup_dirs(&rt.info("sh5-web-1").expect("info").cgroups_path);
    let limit = cgroup
        .iter()
        .find_map(|d| {
            std::fs::read_to_string(d.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(d.join("memory.max")))
                .ok()
        })
        .unwrap_or_else(|| panic!("no memory limit file in {cgroup:?}"));
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    // Outgoing traffic is masqueraded.
    let net = &rt.config().network;
    let nat = std::process::Command::new("iptables")
        .args([
            "-w",
            "-t",
            "nat",
            "-C",
            "POSTROUTING",
            "-s",
            &net.cidr(),
            "!",
            "-o",
            &net.bridge,
            "-j",
            "MASQUERADE",
        ])
        .status()
        .expect("iptables");
    assert!(nat.success(), "no MASQUERADE rule for {}", net.cidr());

    for (id, _, veth, netns, shim_pid) in &seen {
        assert!(
            !shim_processes(&rt.config().namespace, id).is_empty(),
            "no shim found for {id}"
        );
        let status = rt.stop(id, Duration::from_secs(10)).await.expect("stop");
        // nginx exits 0 on SIGTERM (fast shutdown), within the grace period.
        assert_eq!(status, ExitStatus(0), "{id} stopped with {status}");
        rt.remove(id).await.expect("remove");
        assert!(
            !swarmlet::runtime::container::process_alive(*shim_pid),
            "shim {shim_pid} of {id} alive"
        );
        assert_nothing_left(&rt, id, veth, netns);
    }
    finish(rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_nginx_inside_is_an_exit_event_with_its_status() {
    if !prerequisites() {
        return;
    }
    let rt = ContainerRuntime::new(config(2)).await.expect("runtime");
    let id = "sh5-kill";
    let prepared = rt.prepare(&nginx(id)).await.expect("prepare");
    rt.start(id).await.expect("start");
    assert!(get(prepared.ip).contains("hello from nginx on "));
    let info = rt.info(id).expect("info");
    let pid = rt.pid(id).await.expect("pid");
    assert_eq!(rt.exit_status(id), None);
    // SAFETY: kill(2) on the container's main process, which we just asked for.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let exit = tokio::time::timeout(Duration::from_secs(60), rt.wait_exit(id))
        .await
        .expect("the exit comes within 60 s")
        .expect("exit event");
    assert_eq!(
        exit.status,
        ExitStatus(137),
        "killed by SIGKILL: {}",
        exit.status
    );
    assert_eq!(exit.status.signal(), Some(9));
    rt.remove(id).await.expect("remove");
    assert_nothing_left(&rt, id, &info.veth, &info.netns);
    finish(rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_give_typed_errors_and_leave_nothing() {
    if !prerequisites() {
        return;
    }
    let cfg = config(3);
    let rt = ContainerRuntime::new(cfg.clone()).await.expect("runtime");

    // A command the image does not have: refused before anything runs.
    let id = "sh5-nocmd";
    let mut spec = nginx(id);
    spec.args = vec!["/usr/bin/does-not-exist".into()];
    let err = rt
        .prepare(&spec)
        .await
        .expect_err("a missing command must fail");
    assert!(
        matches!(&err, ContainerError::CommandNotFound { command, .. } if command == "/usr/bin/does-not-exist"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("not found in the image") && text.contains("ENTRYPOINT"),
        "{text}"
    );
    assert_nothing_left(
        &rt,
        id,
        &cfg.network.veth_name(id),
        &cfg.network.netns_name(id),
    );

    // A bare name searched through PATH, also missing.
    spec.args = vec!["httpd".into()];
    let err = rt
        .prepare(&spec)
        .await
        .expect_err("a missing command must fail");
    assert!(
        matches!(err, ContainerError::CommandNotFound { .. }),
        "{err:?}"
    );

    // A command that exists but fails at once: the exit comes with its
    // status and the log's last lines, and the error says so.
    let id = "sh5-crash";
    let mut spec = nginx(id);
    spec.args = vec![
        "/usr/sbin/nginx".into(),
        "-c".into(),
        "/etc/nginx/missing.conf".into(),
    ];
    rt.prepare(&spec).await.expect("prepare");
    let info = rt.info(id).expect("info");
    let err = match rt.start(id).await {
        Err(e) => e,
        Ok(_) => {
            let exit = tokio::time::timeout(Duration::from_secs(60), rt.wait_exit(id))
                .await
                .expect("the exit comes within 60 s")
                .expect("exit");
            ContainerError::Exited {
                id: id.to_string(),
                status: exit.status,
                log_tail: exit.log_tail,
            }
        }
    };
    match &err {
        ContainerError::Exited {
            status, log_tail, ..
        } => {
            assert_eq!(*status, ExitStatus(1), "{err}");
            assert!(
                log_tail.contains("missing.conf"),
                "log tail: {log_tail}\nshim log: {}",
                std::fs::read_to_string(info.bundle.join("shim.log")).unwrap_or_default()
            );
        }
        other => panic!("expected an exit, got {other:?}"),
    }
    assert!(err.to_string().contains("exit code 1"), "{err}");
    rt.remove(id).await.expect("remove");
    assert_nothing_left(&rt, id, &info.veth, &info.netns);

    // Prepared but never started (the service went away meanwhile): remove
    // takes all of it away too.
    let id = "sh5-unstarted";
    rt.prepare(&nginx(id)).await.expect("prepare");
    let info = rt.info(id).expect("info");
    assert!(
        !shim_processes(&cfg.namespace, id).is_empty(),
        "no shim for the created container"
    );
    rt.remove(id).await.expect("remove a created container");
    assert_nothing_left(&rt, id, &info.veth, &info.netns);

    // An ID that cannot be a file or namespace name.
    let err = rt.prepare(&nginx("../etc")).await.expect_err("bad id");
    assert!(matches!(err, ContainerError::InvalidId { .. }), "{err:?}");
    finish(rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattach_after_restart_adopts_running_and_cleans_up_dead() {
    if !prerequisites() {
        return;
    }
    let cfg = config(4);
    let rt = ContainerRuntime::new(cfg.clone()).await.expect("runtime");
    let alive = "sh5-alive";
    let dead = "sh5-dead";
    let ip = rt.prepare(&nginx(alive)).await.expect("prepare").ip;
    rt.start(alive).await.expect("start");
    rt.prepare(&nginx(dead)).await.expect("prepare");
    rt.start(dead).await.expect("start");
    let alive_info = rt.info(alive).expect("info");
    let dead_info = rt.info(dead).expect("info");
    let dead_pid = rt.pid(dead).await.expect("pid");

    // The node goes away; its containers and shims stay.
    drop(rt);
    assert!(
        !shim_processes(&cfg.namespace, alive).is_empty(),
        "the shim must outlive the runtime"
    );
    assert!(get(ip).contains("hello from nginx on "));
    // One container dies while no node listens.
    // SAFETY: kill(2) on a pid the shim reported for our container.
    assert_eq!(unsafe { libc::kill(dead_pid as i32, libc::SIGKILL) }, 0);
    let mut gone = false;
    for _ in 0..600 {
        if !swarmlet::runtime::container::process_alive(dead_pid) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "nginx {dead_pid} never died of SIGKILL");

    let rt = ContainerRuntime::new(cfg.clone())
        .await
        .expect("runtime after restart");
    let mut found = rt.reattach_all().await;
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(found.len(), 2, "{found:?}");
    match &found[0] {
        (id, Ok(Reattached::Running { ip: got, pid })) if id == alive => {
            assert_eq!(*got, ip);
            assert!(*pid > 0);
        }
        other => panic!("expected {alive} adopted, got {other:?}"),
    }
    match &found[1] {
        (id, Ok(Reattached::CleanedUp { exit })) if id == dead => {
            assert_eq!(
                *exit,
                Some(ExitStatus(137)),
                "the dead one's exit is known from the shim"
            );
        }
        other => panic!("expected {dead} cleaned up, got {other:?}"),
    }
    assert_nothing_left(&rt, dead, &dead_info.veth, &dead_info.netns);
    assert_eq!(rt.ids(), vec![alive.to_string()]);
    // Never twice: preparing the adopted task again is refused.
    let err = rt.prepare(&nginx(alive)).await.expect_err("duplicate");
    assert!(
        matches!(err, ContainerError::AlreadyExists { .. }),
        "{err:?}"
    );

    // Adopted for real: it serves, and stopping it comes back through the
    // new runtime's events.
    assert!(get(ip).contains("hello from nginx on "));
    let status = rt.stop(alive, Duration::from_secs(10)).await.expect("stop");
    assert_eq!(status, ExitStatus(0));
    rt.remove(alive).await.expect("remove");
    assert_nothing_left(&rt, alive, &alive_info.veth, &alive_info.netns);
    finish(rt).await;
}

/// A second layer over nginx's: the host's `sleep` (it links only libc,
/// which the nginx layer has).
fn sleep_layer(root: &Path) -> PathBuf {
    let dir = root.join("sleep-layer");
    std::fs::create_dir_all(dir.join("usr/bin")).expect("mkdir");
    std::fs::copy("/usr/bin/sleep", dir.join("usr/bin/sleep")).expect("copy /usr/bin/sleep");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_sigkill_after_the_grace_period() {
    if !prerequisites() {
        return;
    }
    let cfg = config(5);
    let rt = ContainerRuntime::new(cfg.clone()).await.expect("runtime");
    let id = "sh5-stubborn";
    // `sleep` as the container's PID 1 has no SIGTERM handler, so the
    // kernel ignores SIGTERM for it: only SIGKILL after the grace ends it.
    let mut spec = nginx(id);
    spec.layers.push(sleep_layer(&cfg.root));
    spec.args = vec!["sleep".into(), "infinity".into()];
    rt.prepare(&spec).await.expect("prepare over two layers");
    rt.start(id).await.expect("start");
    let info = rt.info(id).expect("info");
    let status = rt.stop(id, Duration::from_millis(300)).await.expect("stop");
    assert_eq!(
        status,
        ExitStatus(137),
        "SIGTERM ignored, SIGKILL after the grace: {status}"
    );
    rt.remove(id).await.expect("remove");
    assert_nothing_left(&rt, id, &info.veth, &info.netns);
    finish(rt).await;
}
