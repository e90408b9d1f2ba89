//! What a test process that died mid-test (a failed assertion, a killed CI
//! run) left in its container namespace. Tests call this before they start
//! so that one failed run does not make every later one fail: the same task
//! IDs would collide with runc's state ("container with given ID already
//! exists") and with the network namespaces ("File exists").
//!
//! A node does not need it: it keeps its bundles under its data dir and
//! `reattach` adopts or removes them. Tests start from a new state dir each
//! run, so nothing else finds these leftovers.

use std::path::Path;
use std::process::Command;

/// Kills the shims in `namespace` whose owner is gone, deletes the network
/// namespaces named `netns_prefix…` and every container runc still keeps in
/// `namespace`. A shim's owner is the process whose ID follows
/// `owner_marker` in the shim's `-address` (the test's state dir is named
/// `…{owner_marker}{PID}-…`); shims of a live owner (another test process
/// running now) are left alone.
pub fn sweep_namespace(namespace: &str, netns_prefix: &str, owner_marker: &str) {
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with(super::SHIM_BINARY));
            let arg = |name: &str| {
                args.iter()
                    .position(|a| a == name)
                    .and_then(|i| args.get(i + 1))
            };
            let owner_gone = arg("-address")
                .and_then(|a| a.split(owner_marker).nth(1))
                .and_then(|r| r.split('-').next())
                .is_some_and(|owner| !Path::new(&format!("/proc/{owner}")).exists());
            if is_shim && arg("-namespace").map(String::as_str) == Some(namespace) && owner_gone {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with(netns_prefix) {
                let _ = Command::new("ip").args(["netns", "delete", name]).status();
            }
        }
    }
    let state = format!("/run/containerd/runc/{namespace}");
    let Ok(out) = Command::new("runc")
        .args(["--root", &state, "list", "-q"])
        .output()
    else {
        return;
    };
    for id in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = Command::new("runc")
            .args(["--root", &state, "delete", "--force", id])
            .status();
    }
}
