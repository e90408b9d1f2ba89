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
    for shim in shims() {
        let owner_gone = shim
            .address
            .split(owner_marker)
            .nth(1)
            .and_then(|r| r.split('-').next())
            .is_some_and(|owner| !Path::new(&format!("/proc/{owner}")).exists());
        if shim.namespace == namespace && owner_gone {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(shim.pid, libc::SIGKILL) };
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

/// A running `containerd-shim-runc-v2`, as its command line names it.
#[derive(Debug, Clone)]
pub struct ShimProcess {
    pub pid: i32,
    /// `-namespace`: the containerd namespace it serves.
    pub namespace: String,
    /// `-id`: the task (container) it runs.
    pub id: String,
    /// `-address`: the owner's (containerd's or the node's) socket.
    pub address: String,
}

/// Every `containerd-shim-runc-v2` process running now, read from /proc.
pub fn shims() -> Vec<ShimProcess> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| {
            let pid = p.file_name().to_string_lossy().parse::<i32>().ok()?;
            // A process may exit between the listing and this read.
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            shim_of_cmdline(pid, &cmdline)
        })
        .collect()
}

/// The shim a NUL-separated command line describes, if it is one.
fn shim_of_cmdline(pid: i32, cmdline: &[u8]) -> Option<ShimProcess> {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !args.first()?.ends_with(super::SHIM_BINARY) {
        return None;
    }
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_default()
    };
    Some(ShimProcess {
        pid,
        namespace: arg("-namespace"),
        id: arg("-id"),
        address: arg("-address"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shims_command_line_names_its_namespace_task_and_owner() {
        let cmd = b"/usr/bin/containerd-shim-runc-v2\0-namespace\0swarmlet\0-id\0abc\0-address\0/tmp/x/events.sock\0";
        let s = shim_of_cmdline(7, cmd).expect("a shim");
        assert_eq!(
            (
                s.pid,
                s.namespace.as_str(),
                s.id.as_str(),
                s.address.as_str()
            ),
            (7, "swarmlet", "abc", "/tmp/x/events.sock")
        );
        assert!(shim_of_cmdline(8, b"/usr/sbin/nginx\0-g\0daemon off;\0").is_none());
    }
}
