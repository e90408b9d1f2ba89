//! OCI containers as replicas (issue 11), end to end on one node: a real
//! daemon, a real registry (`swarmlet_e2e::registry`), the real
//! `containerd-shim-runc-v2`, runc and nginx. What a user checks: replicas
//! answer through the published port beside a wasm service, a killed
//! container is replaced, a killed daemon comes back to the same containers,
//! `service rm` leaves nothing on the machine, and bad input says what went
//! wrong and creates nothing.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;
use swarmlet_e2e::containers::{cgroups_of, leftovers, processes_of, shims_of};
use swarmlet_e2e::registry::{Registry, CRASH, NGINX, NOCMD};
use swarmlet_e2e::swarm::eventually;
use swarmlet_e2e::{http_get, Node};

/// `service ps NAME --format json`.
fn ps(node: &Node, service: &str) -> Result<Vec<Value>, String> {
    let out = node.cli(&["service", "ps", service, "--format", "json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("service ps json: {e}"))?;
    v.as_array().cloned().ok_or_else(|| "not a list".into())
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn is_running(t: &Value) -> bool {
    t["task"]["state"] == "running" && t["task"]["desired_state"] == "running"
}

/// The task objects of `service`, once exactly `n` of them run.
fn running(node: &Node, service: &str, n: usize) -> Vec<Value> {
    let mut tasks = Vec::new();
    eventually(&format!("{n} running tasks of {service}"), || {
        let all = ps(node, service)?;
        tasks = all
            .iter()
            .filter(|t| is_running(t))
            .map(|t| t["task"].clone())
            .collect();
        if tasks.len() == n {
            Ok(())
        } else {
            Err(format!("{all:#?}"))
        }
    });
    tasks
}

fn ids(tasks: &[Value]) -> BTreeSet<String> {
    tasks.iter().map(|t| text(&t["id"])).collect()
}

/// Which containers answer `tries` requests to `ip:port`: nginx in the test
/// image answers `hello from nginx on HOSTNAME`, and a container's hostname
/// is its task ID.
fn hostnames(ip: IpAddr, port: u16, tries: usize) -> Result<BTreeSet<String>, String> {
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        let (status, body) = http_get(SocketAddr::new(ip, port), "/")?;
        if status != 200 {
            return Err(format!("status {status}: {body}"));
        }
        let host = body
            .trim()
            .strip_prefix("hello from nginx on ")
            .ok_or_else(|| format!("not the test nginx: {body:?}"))?;
        seen.insert(host.to_string());
    }
    Ok(seen)
}

/// The daemon's container bridge (the harness gives each node its own).
fn bridge_of(node: &Node) -> String {
    node.bridge
        .as_ref()
        .map(|b| b.name.clone())
        .unwrap_or_else(|| "swarmlet0".into())
}

/// Host-side veths still attached to the node's bridge.
fn veths_on(bridge: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines().map(str::to_string).collect()
}

/// (memory limit in bytes, (cpu quota, period) in µs) of the task's cgroup,
/// read from cgroup v1 (`memory.limit_in_bytes`, `cpu.cfs_quota_us`) or v2
/// (`memory.max`, `cpu.max`).
fn cgroup_limits(task_id: &str) -> (Option<u64>, Option<(u64, u64)>) {
    let (mut memory, mut cpu) = (None, None);
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok();
    for dir in cgroups_of(task_id) {
        if let Some(v) = read(dir.join("memory.limit_in_bytes")).or(read(dir.join("memory.max"))) {
            memory = v.trim().parse().ok();
        }
        if let (Some(q), Some(p)) = (
            read(dir.join("cpu.cfs_quota_us")),
            read(dir.join("cpu.cfs_period_us")),
        ) {
            cpu = q.trim().parse().ok().zip(p.trim().parse().ok());
        }
        if let Some(v) = read(dir.join("cpu.max")) {
            let mut it = v.split_whitespace().map(|x| x.parse().ok());
            cpu = it.next().flatten().zip(it.next().flatten());
        }
    }
    (memory, cpu)
}

fn swarm_node(name: &str) -> Node {
    let node = Node::start(name);
    let out = node.ok(&["init"]);
    assert!(out.contains("Swarm initialized"), "{out}");
    node
}

#[test]
fn nginx_replicas_answer_through_the_mesh_beside_a_wasm_service() {
    let Some(reg) = Registry::start() else { return };
    let node = swarm_node("ct-mesh");
    let image = reg.image(NGINX);
    node.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "-p",
        "8081:80",
        &image,
    ]);
    let tasks = running(&node, "web", 3);
    let want = ids(&tasks);
    for t in &tasks {
        let ep = &t["endpoint"];
        assert_eq!(
            ep["port"], 80,
            "a container task reports its endpoint: {t:#}"
        );
        assert!(!text(&ep["addr"]).is_empty(), "{t:#}");
    }
    // Round robin through the published port reaches every container.
    eventually("all three containers answer on the published port", || {
        let seen = hostnames(IpAddr::V4(node.ip), 8081, 12)?;
        if seen == want {
            Ok(())
        } else {
            Err(format!("saw {seen:?}, want {want:?}"))
        }
    });
    // A wasm service beside it, on its own port; both keep answering.
    node.create("hello", "hello", &["-p", "8080:80"]);
    let (status, body) = node.get(8080, "/").expect("wasm service answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello from hello.1"), "{body}");
    assert_eq!(
        hostnames(IpAddr::V4(node.ip), 8081, 3)
            .expect("nginx still answers")
            .len(),
        3
    );

    // What the user reads: the image and the digest it was pinned to.
    let ls = node.ok(&["service", "ls"]);
    assert!(
        ls.lines().any(|l| l.contains("web") && l.contains(&image)),
        "{ls}"
    );
    let inspect: Value =
        serde_json::from_str(&node.ok(&["service", "inspect", "web"])).expect("inspect json");
    let pinned = inspect.to_string();
    assert!(pinned.contains(&image), "{inspect:#}");
    assert!(
        pinned.contains("sha256:"),
        "the digest is pinned at create: {inspect:#}"
    );
}

#[test]
fn a_killed_container_is_replaced() {
    let Some(reg) = Registry::start() else { return };
    let node = swarm_node("ct-kill");
    node.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "-p",
        "8082:80",
        "--limit-memory",
        "64M",
        "--limit-cpu",
        "0.5",
        "--env",
        "GREETING=hi there",
        &reg.image(NGINX),
    ]);
    let old = text(&running(&node, "web", 1)[0]["id"]);
    // The limits are the container's cgroup's, the env its process's.
    let limits = cgroup_limits(&old);
    assert_eq!(
        limits.0,
        Some(64 << 20),
        "memory limit in the task's cgroup"
    );
    assert_eq!(
        limits.1,
        Some((50_000, 100_000)),
        "cpu quota/period in the task's cgroup"
    );
    // (nginx rewrites its own /proc/PID/environ with its process title, so
    // the env is read where runc took it from: the task's bundle.)
    let config = node
        .data_dir
        .join("containers/tasks")
        .join(&old)
        .join("config.json");
    let config: Value =
        serde_json::from_slice(&std::fs::read(&config).expect("the task's config.json"))
            .expect("config.json");
    let env = &config["process"]["env"];
    assert!(
        env.as_array()
            .is_some_and(|e| e.iter().any(|v| v == "GREETING=hi there")),
        "--env reaches the container: {env}"
    );
    let nginx: Vec<i32> = processes_of(&old)
        .into_iter()
        .filter(|(_, comm)| comm == "nginx")
        .map(|(pid, _)| pid)
        .collect();
    assert!(
        !nginx.is_empty(),
        "nginx runs in the task's cgroup: {:?}",
        processes_of(&old)
    );
    for pid in nginx {
        // SAFETY: kill(2) on a pid we just read; at worst ESRCH.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut new = String::new();
    eventually(
        "the killed replica is replaced and its old task failed",
        || {
            let all = ps(&node, "web")?;
            let old_t = all
                .iter()
                .find(|t| text(&t["task"]["id"]) == old)
                .ok_or("old task gone from ps")?;
            if old_t["task"]["state"] != "failed" {
                return Err(format!("old task: {old_t:#}"));
            }
            let fresh = all
                .iter()
                .find(|t| is_running(t) && text(&t["task"]["id"]) != old)
                .ok_or_else(|| format!("no new running task: {all:#?}"))?;
            new = text(&fresh["task"]["id"]);
            Ok(())
        },
    );
    eventually("the replacement answers on the published port", || {
        let seen = hostnames(IpAddr::V4(node.ip), 8082, 3)?;
        if seen == BTreeSet::from([new.clone()]) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    assert!(
        leftovers(&node.data_dir, &old).is_empty(),
        "{:?}",
        leftovers(&node.data_dir, &old)
    );
}

#[test]
fn a_killed_daemon_comes_back_to_the_same_containers() {
    let Some(reg) = Registry::start() else { return };
    let mut node = swarm_node("ct-restart");
    node.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "-p",
        "8083:80",
        &reg.image(NGINX),
    ]);
    let tasks = running(&node, "web", 2);
    let before = ids(&tasks);
    let shims: Vec<(String, Vec<i32>)> =
        before.iter().map(|id| (id.clone(), shims_of(id))).collect();
    for (id, pids) in &shims {
        assert_eq!(pids.len(), 1, "one shim per task {id}: {pids:?}");
    }

    node.kill9();
    // The containers outlive the daemon: each still answers at its address.
    for t in &tasks {
        let ip: IpAddr = text(&t["endpoint"]["addr"]).parse().expect("endpoint addr");
        let seen = hostnames(ip, 80, 1).expect("a container serves while its node is down");
        assert_eq!(seen, BTreeSet::from([text(&t["id"])]));
    }
    node.spawn();
    eventually("the mesh serves both containers again", || {
        let seen = hostnames(IpAddr::V4(node.ip), 8083, 8)?;
        if seen == before {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    // Neither lost nor duplicated: the same two tasks, the same shims, no
    // third task and no second container.
    let all = ps(&node, "web").expect("ps");
    assert_eq!(all.len(), 2, "no task was added: {all:#?}");
    assert_eq!(ids(&running(&node, "web", 2)), before);
    for (id, pids) in &shims {
        assert_eq!(&shims_of(id), pids, "task {id} kept its one shim");
        let nginx = processes_of(id)
            .iter()
            .filter(|(_, c)| c == "nginx")
            .count();
        assert!(nginx >= 1, "task {id} still runs nginx");
    }
}

#[test]
fn service_rm_leaves_nothing_behind() {
    let Some(reg) = Registry::start() else { return };
    let node = swarm_node("ct-rm");
    node.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "-p",
        "8084:80",
        &reg.image(NGINX),
    ]);
    let gone = ids(&running(&node, "web", 2));
    let bridge = bridge_of(&node);
    assert_eq!(
        veths_on(&bridge).len(),
        2,
        "one veth per container on {bridge}"
    );
    for id in &gone {
        assert!(
            !leftovers(&node.data_dir, id).is_empty(),
            "the probe sees a running task {id}"
        );
    }
    node.ok(&["service", "rm", "web"]);
    eventually("nothing of the removed service is left", || {
        let mut left: Vec<String> = gone
            .iter()
            .flat_map(|id| leftovers(&node.data_dir, id))
            .collect();
        left.extend(veths_on(&bridge).into_iter().map(|l| format!("veth {l}")));
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:#?}"))
        }
    });
    assert!(
        http_get(SocketAddr::new(IpAddr::V4(node.ip), 8084), "/").is_err(),
        "the port is closed"
    );
}

#[test]
fn bad_images_say_what_went_wrong_and_create_nothing() {
    let Some(reg) = Registry::start() else { return };
    let node = swarm_node("ct-bad");
    // An unknown tag, and an unreachable registry: refused at create.
    let unknown = reg.image("swarmlet/nginx:no-such-tag");
    let err = node.fails(&["service", "create", "--name", "bad", &unknown]);
    assert!(err.contains("no-such-tag"), "{err}");
    let err = node.fails(&[
        "service",
        "create",
        "--name",
        "bad",
        "127.0.0.1:1/swarmlet/nginx:1.27",
    ]);
    assert!(err.contains("127.0.0.1:1"), "names the registry: {err}");
    let ls = node.ok(&["service", "ls"]);
    assert!(!ls.contains("bad"), "nothing was created: {ls}");

    // A command that does not exist, and one that crashes at start: the
    // task fails saying why, and the slot is retried (with back-off).
    node.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "nocmd",
        &reg.image(NOCMD),
    ]);
    node.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "crash",
        &reg.image(CRASH),
    ]);
    for (service, why) in [("nocmd", "does-not-exist"), ("crash", "exited with code 1")] {
        eventually(
            &format!("{service}: failed tasks saying why, and a retry"),
            || {
                let all = ps(&node, service)?;
                let failed: Vec<&Value> = all
                    .iter()
                    .filter(|t| t["task"]["state"] == "failed")
                    .collect();
                if failed.len() >= 2
                    && failed
                        .iter()
                        .all(|t| text(&t["task"]["error"]).contains(why))
                {
                    Ok(())
                } else {
                    Err(format!("{all:#?}"))
                }
            },
        );
    }
    // The crashing container's own words reach `service ps` and `service logs`.
    let all = ps(&node, "crash").expect("ps");
    assert!(
        all.iter()
            .any(|t| text(&t["task"]["error"]).contains("crash: exiting with code 1 at start")),
        "{all:#?}"
    );
    let logs = node.ok(&["service", "logs", "crash"]);
    assert!(
        logs.contains("crash: exiting with code 1 at start"),
        "{logs}"
    );
    assert!(
        logs.lines().all(|l| l.starts_with("crash.1.")),
        "Docker's prefix: {logs}"
    );
}
