//! What a node's containers leave on the machine, seen from outside the
//! daemon as a user would look (`/proc`, `ip netns`, the cgroup tree), and
//! the harness's clean-up after a test: containers and their shims outlive
//! a killed daemon by design, so a test node that is dropped must take its
//! containers away itself.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// Processes whose cgroup is the task's (`…/<task id>`), with their names.
pub fn processes_of(task_id: &str) -> Vec<(i32, String)> {
    let suffix = format!("/{task_id}");
    pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.ends_with(&suffix))
        })
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

/// PIDs of `containerd-shim-runc-v2 … -id TASK` processes.
pub fn shims_of(task_id: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"-id" && w[1] == task_id.as_bytes())
        })
        .collect()
}

/// Network namespaces (`ip netns list`) whose name carries the task ID.
pub fn netns_of(task_id: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.contains(task_id))
        .map(str::to_string)
        .collect()
}

/// Cgroup directories named for the task, in every hierarchy (v1 or v2).
pub fn cgroups_of(task_id: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut roots = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    if let Ok(dir) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(dir.flatten().map(|e| e.path()));
    }
    for root in roots {
        let Ok(parents) = std::fs::read_dir(&root) else {
            continue;
        };
        for p in parents.flatten() {
            let dir = p.path().join(task_id);
            if dir.is_dir() {
                found.push(dir);
            }
        }
    }
    found
}

/// Everything of a task still on the machine, named (empty: nothing):
/// processes, shim, mounts, network namespace, cgroups and its bundle.
pub fn leftovers(data_dir: &Path, task_id: &str) -> Vec<String> {
    let mut left = Vec::new();
    for (pid, comm) in processes_of(task_id) {
        left.push(format!("process {pid} ({comm}) in the task's cgroup"));
    }
    for pid in shims_of(task_id) {
        left.push(format!("shim process {pid}"));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for m in mounts.lines().filter(|l| l.contains(task_id)) {
        left.push(format!("mount {m}"));
    }
    for n in netns_of(task_id) {
        left.push(format!("network namespace {n}"));
    }
    for c in cgroups_of(task_id) {
        left.push(format!("cgroup {}", c.display()));
    }
    let bundle = data_dir.join("containers/tasks").join(task_id);
    if bundle.exists() {
        left.push(format!("bundle {}", bundle.display()));
    }
    left
}

/// Where runc keeps the state of the test daemons' containers (their
/// containerd namespace is the default, `swarmlet`).
const RUNC_ROOT: &str = "/run/containerd/runc/swarmlet";

fn quiet(cmd: &mut Command) {
    let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Takes away every container a (killed) daemon on `data_dir` left:
/// SIGKILL to its processes and shim, runc's record, the rootfs mount, the network
/// namespace (its veth goes with it) and the cgroups.
pub fn reap(data_dir: &Path) {
    let Ok(tasks) = std::fs::read_dir(data_dir.join("containers/tasks")) else {
        return;
    };
    for t in tasks.flatten() {
        let id = t.file_name().to_string_lossy().into_owned();
        let victims: Vec<i32> = processes_of(&id)
            .into_iter()
            .map(|(pid, _)| pid)
            .chain(shims_of(&id))
            .collect();
        for pid in victims {
            // SAFETY: kill(2) on a pid read from /proc; at worst ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // runc's record of the (now dead) container: the daemon would delete
        // it through the shim on its next start; this node has none.
        quiet(Command::new("runc").args(["--root", RUNC_ROOT, "delete", "--force", &id]));
        quiet(
            Command::new("umount")
                .arg("-l")
                .arg(t.path().join("rootfs")),
        );
        for n in netns_of(&id) {
            quiet(Command::new("ip").args(["netns", "delete", &n]));
        }
        // A cgroup can be removed once its processes are reaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let dirs = cgroups_of(&id);
            for d in &dirs {
                let _ = std::fs::remove_dir(d);
            }
            if cgroups_of(&id).is_empty() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Removes a node's bridge and the NAT and forwarding rules its daemon
/// added for it (`ensure_bridge` in the runtime), as a node gone for good.
pub fn remove_bridge(netns: Option<&str>, bridge: &str, cidr: &str) {
    let cmd = |program: &str| {
        let mut c = Command::new("ip");
        match netns {
            Some(ns) => {
                c.args(["netns", "exec", ns, program]);
            }
            None => c = Command::new(program),
        }
        c
    };
    let rules: [(&str, &str, Vec<&str>); 3] = [
        (
            "nat",
            "POSTROUTING",
            vec!["-s", cidr, "!", "-o", bridge, "-j", "MASQUERADE"],
        ),
        ("filter", "FORWARD", vec!["-i", bridge, "-j", "ACCEPT"]),
        ("filter", "FORWARD", vec!["-o", bridge, "-j", "ACCEPT"]),
    ];
    for (table, chain, rule) in rules {
        // Delete every copy (a rule added twice is deleted twice).
        for _ in 0..8 {
            let ok = cmd("iptables")
                .args(["-w", "-t", table, "-D", chain])
                .args(&rule)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
        }
    }
    quiet(cmd("ip").args(["link", "del", bridge]));
}
