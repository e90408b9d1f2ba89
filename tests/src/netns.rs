//! Network namespaces for e2e tests: each node in its own namespace on a
//! bridge, with links the test can cut and heal, as a real partition does.
//!
//! Layout (the recipe /work/shared/NETNS.md verified on these machines):
//! a bridge in the root namespace holds `10.14.S.1/24` (so the test process
//! itself reaches every node), and node `i` (0-based) is a namespace whose
//! `eth0` (one end of a veth pair; the other end is on the bridge) has
//! `10.14.S.(i+2)/24`. `S` is picked per network so that concurrent tests
//! and test processes never share a subnet.
//!
//! Cuts are silent drops on the bridge (an nftables `bridge` table of our
//! own, `forward` hook): the nodes see nothing but missing packets, as
//! when a remote switch fails. Taking the veth down instead would tell the
//! node its link went away, and a DROP in the node's own OUTPUT chain
//! makes `send()` fail with EPERM: neither looks like a partition.
//!
//! Everything is named `sl<pid hex><n>...` (interface names are at most 15
//! characters) and removed on `Drop`, also when the test panics: first the
//! processes still inside the namespaces (which the test started there),
//! then the nftables table, the namespaces (taking their veths with them)
//! and the bridge. `sweep_stale` removes what a killed test process left.
//!
//! Needs root (CAP_NET_ADMIN), `ip` (iproute2) and `nft` (nftables);
//! `scripts/setup.sh` installs them. Without them a test is skipped, except
//! under `CI=true`, where that fails it (as `Tmpfs::mount`).

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Runs a command; `Err` carries what it printed, for the message.
fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Like `run`, for setup steps after the capability check: a failure there
/// is a bug or a broken machine, so it fails the test.
fn must(program: &str, args: &[&str]) -> Output {
    run(program, args).unwrap_or_else(|e| panic!("network namespace setup: {e}"))
}

/// Best effort, for teardown: what cannot be removed is said on stderr.
fn quietly(program: &str, args: &[&str]) {
    if let Err(e) = run(program, args) {
        eprintln!("netns cleanup: {e}");
    }
}

/// A unique prefix per network in this process: `sl` + pid in hex + `x` +
/// a counter digit (`x` is no hex digit, so `sweep_stale` can read the pid
/// back). At most 15 characters with the longest suffix (`br`, `v199`).
fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 10, "more than 10 netns networks in one test process");
    format!("sl{:x}x{n}", std::process::id())
}

/// The pid in a name made by `unique_prefix`.
fn creator_pid(name: &str) -> Option<u32> {
    let (hex, _) = name.strip_prefix("sl")?.split_once('x')?;
    u32::from_str_radix(hex, 16).ok()
}

/// A network namespace of our own, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`; `Err` says why (not root, no iproute2, ...).
    pub fn create(name: &str) -> Result<Netns, String> {
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` run inside the namespace (`ip netns exec NAME program`);
    /// add arguments, environment and stdio as for any `Command`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// PIDs of the processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        run("ip", &["netns", "pids", &self.name])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A process still inside keeps the namespace (and its veth) alive
        // after `ip netns del`; they were started there by this test.
        for pid in self.pids() {
            // SAFETY: kill(2) with a pid read from the kernel just now.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        quietly("ip", &["netns", "del", &self.name]);
    }
}

/// Nodes in their own namespaces on one bridge, with cuttable links.
pub struct Network {
    prefix: String,
    bridge: String,
    subnet: [u8; 3],
    /// The nftables table (bridge family) holding the cut rules.
    table: String,
    nodes: Vec<Netns>,
    /// Handles of the drop rules per cut node.
    cuts: Mutex<Vec<Vec<u64>>>,
    /// The FORWARD accept rule we inserted, to delete it again.
    forward_rule: Option<Vec<String>>,
}

impl Network {
    /// `nodes` namespaces on a new bridge. Without the capability (not
    /// root, no `ip`/`nft`), `None` and a line on stderr, except under
    /// `CI=true`, where that fails the test.
    pub fn create(nodes: usize) -> Option<Network> {
        assert!(
            (1..=200).contains(&nodes),
            "a netns network has 1 to 200 nodes"
        );
        let prefix = unique_prefix();
        // The capability check: the first namespace, and nft.
        let first = match Netns::create(&format!("{prefix}n0"))
            .and_then(|ns| run("nft", &["--version"]).map(|_| ns))
        {
            Ok(ns) => ns,
            Err(why) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "cannot create network namespaces ({why}); CI must run the e2e tests as root with iproute2 and nftables installed (scripts/setup.sh)"
                );
                eprintln!(
                    "SKIPPED: cannot create network namespaces (needs root, ip and nft): {why}"
                );
                return None;
            }
        };
        sweep_stale();
        // Held until the bridge has its address, so that networks created
        // at once by parallel tests of this process pick different subnets
        // (`free_subnet_octet` sees only addresses already assigned).
        let subnet_guard = SUBNETS.lock().unwrap_or_else(|p| p.into_inner());
        let mut net = Network {
            bridge: format!("{prefix}br"),
            table: prefix.clone(),
            subnet: [10, 14, free_subnet_octet()],
            nodes: vec![first],
            cuts: Mutex::new(vec![Vec::new(); nodes]),
            forward_rule: None,
            prefix,
        };
        // From here on, `net`'s Drop removes whatever was made.
        let br = net.bridge.clone();
        must("ip", &["link", "add", &br, "type", "bridge"]);
        let host = format!("{}/24", net.host_ip());
        must("ip", &["addr", "add", &host, "dev", &br]);
        must("ip", &["link", "set", &br, "up"]);
        drop(subnet_guard);
        // Bridged frames traverse the host's iptables FORWARD chain
        // (bridge-nf-call-iptables); if its policy is DROP (Docker sets it)
        // traffic between our namespaces would die there.
        let rule: Vec<String> = ["FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut insert = vec!["-I".to_string()];
        insert.extend(rule.iter().cloned());
        let insert: Vec<&str> = insert.iter().map(String::as_str).collect();
        if run("iptables", &insert).is_ok() {
            net.forward_rule = Some(rule);
        }
        for i in 1..nodes {
            let ns = Netns::create(&format!("{}n{i}", net.prefix))
                .unwrap_or_else(|e| panic!("network namespace setup: {e}"));
            net.nodes.push(ns);
        }
        for i in 0..nodes {
            let ns = net.nodes[i].name.clone();
            let veth = format!("{}v{i}", net.prefix);
            must(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            );
            must("ip", &["link", "set", &veth, "master", &br, "up"]);
            let addr = format!("{}/24", net.ip(i));
            must("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            let gw = net.host_ip().to_string();
            must("ip", &["-n", &ns, "route", "add", "default", "via", &gw]);
        }
        let t = net.table.clone();
        must("nft", &["add", "table", "bridge", &t]);
        must(
            "nft",
            &[
                "add",
                "chain",
                "bridge",
                &t,
                "cut",
                "{ type filter hook forward priority 0; policy accept; }",
            ],
        );
        Some(net)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s address (on its `eth0`).
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 2 + i as u8)
    }

    /// The host's address on the bridge (the nodes' default gateway); the
    /// test process reaches every node from the root namespace.
    pub fn host_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    pub fn netns(&self, i: usize) -> &Netns {
        &self.nodes[i]
    }

    /// `program` run inside node `i`'s namespace.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.nodes[i].command(program)
    }

    /// Names of what this network made: namespaces, bridge, nft table.
    pub fn names(&self) -> (Vec<String>, String, String) {
        (
            self.nodes.iter().map(|n| n.name.clone()).collect(),
            self.bridge.clone(),
            self.table.clone(),
        )
    }

    /// Cuts node `i` off from every other node, both directions, silently
    /// (its packets are dropped on the bridge). The host still reaches it.
    /// Cutting a node already cut does nothing.
    pub fn cut(&self, i: usize) {
        let mut cuts = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        if !cuts[i].is_empty() {
            return;
        }
        let ip = self.ip(i).to_string();
        // The hook sees the frames of every bridge on the host: match only
        // this network's ports (`PREFIXv*`), so a cut never touches another
        // test's network, even one that had to reuse an address.
        let ports = format!("{}v*", self.prefix);
        for (port, dir) in [("iifname", "saddr"), ("oifname", "daddr")] {
            let out = must(
                "nft",
                &[
                    "--echo",
                    "--handle",
                    "add",
                    "rule",
                    "bridge",
                    &self.table,
                    "cut",
                    port,
                    &ports,
                    "ip",
                    dir,
                    &ip,
                    "drop",
                ],
            );
            cuts[i].push(rule_handle(&out));
        }
    }

    /// Undoes `cut(i)`.
    pub fn heal(&self, i: usize) {
        let mut cuts = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        for handle in cuts[i].drain(..) {
            let h = handle.to_string();
            must(
                "nft",
                &["delete", "rule", "bridge", &self.table, "cut", "handle", &h],
            );
        }
    }
}

/// The handle nft prints for an added rule (`... # handle 7`).
fn rule_handle(out: &Output) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.split_once("# handle ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("nft printed no rule handle: {text}"))
}

/// Serializes subnet choice between the networks of this process.
static SUBNETS: Mutex<()> = Mutex::new(());

/// A third octet for `10.14.X.0/24` that no interface of this machine uses.
fn free_subnet_octet() -> u8 {
    let used = run("ip", &["-4", "-o", "addr", "show"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let start = std::process::id() % 250;
    (0..250)
        .map(|k| ((start + k) % 250 + 1) as u8)
        .find(|x| !used.contains(&format!(" 10.14.{x}.")))
        .expect("a free 10.14.X.0/24 subnet")
}

impl Drop for Network {
    fn drop(&mut self) {
        // Namespaces first (their processes killed, their veths gone with
        // them), then the rules and the bridge.
        self.nodes.clear();
        quietly("nft", &["delete", "table", "bridge", &self.table]);
        quietly("ip", &["link", "del", &self.bridge]);
        if let Some(rule) = &self.forward_rule {
            let mut args = vec!["-D"];
            args.extend(rule.iter().map(String::as_str));
            quietly("iptables", &args);
        }
    }
}

/// Removes namespaces, bridges and nft tables left by test processes that
/// no longer run (killed before their `Drop`). Names carry the creating
/// pid, so a live process's network is never touched.
pub fn sweep_stale() {
    let stale = |name: &str| {
        creator_pid(name).is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(o) = run("ip", &["netns", "list"]) {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if stale(name) {
                quietly("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(o) = run("ip", &["-o", "link", "show", "type", "bridge"]) {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let name = line.split(':').nth(1).map(str::trim).unwrap_or("");
            if stale(name) {
                quietly("ip", &["link", "del", name]);
            }
        }
    }
    if let Ok(o) = run("nft", &["list", "tables", "bridge"]) {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(name) = line.strip_prefix("table bridge ").map(str::trim) {
                if stale(name) {
                    quietly("nft", &["delete", "table", "bridge", name]);
                }
            }
        }
    }
}
