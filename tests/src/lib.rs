//! The end-to-end test harness: real `swarmlet daemon` processes on their own
//! loopback addresses (127.0.x.y, one per node, so ports never collide), the
//! real CLI, and plain HTTP from the test.
//!
//! Waits are bounded polls that fail with a message naming what never
//! happened; no test asserts a duration (timings belong to the benchmark).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod containers;
pub mod http;
pub mod netns;
pub mod registry;

/// Whether this runs in CI (`CI=true`): there a missing tool or privilege
/// fails a test instead of skipping it.
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The `swarmlet` binary under test: `$SWARMLET_BIN`, or the one cargo built
/// next to this test executable (`scripts/test.sh` builds it first).
pub fn swarmlet_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SWARMLET_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = dir.join("swarmlet");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --release -p swarmlet) or set SWARMLET_BIN; scripts/test.sh does both",
        bin.display()
    );
    bin
}

/// A guest component built by `guests/build.sh`.
pub fn guest(name: &str) -> PathBuf {
    // The directory of *this* checkout, read when the test runs: the target
    // dir is shared between checkouts (.cargo/config.toml), so a path baked
    // in at compile time could name another clone's guests.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let p = manifest_dir
        .join("../guests/out")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} not found: run guests/build.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

pub mod swarm;

static NEXT: AtomicU32 = AtomicU32::new(0);
static NEXT_BRIDGE: AtomicU32 = AtomicU32::new(0);

/// The container bridge of one node: several daemons on one host must not
/// share a bridge or a subnet (`daemon --bridge NAME --bridge-cidr CIDR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// `sweBBBnN`: B from the test process (as the loopback addresses), N
    /// the node's number in it; at most 15 characters, as Linux requires.
    pub name: String,
    /// `10.B.N.0/24`: its containers' subnet (the bridge takes `.1`).
    pub cidr: String,
}

/// Whether daemons get their own bridge: `SWARMLET_E2E_BRIDGES=1` / `0`,
/// otherwise whenever `swarmlet daemon --help` offers `--bridge-cidr` (the
/// container runtime's flags; a daemon without them would refuse them).
pub fn bridges_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| match std::env::var("SWARMLET_E2E_BRIDGES").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => Command::new(swarmlet_bin())
            .args(["daemon", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--bridge-cidr"))
            .unwrap_or(false),
    })
}

/// The next node's bridge in this test process.
fn next_bridge() -> Bridge {
    let n = NEXT_BRIDGE.fetch_add(1, Ordering::SeqCst) % 250;
    let b = 100 + (std::process::id() % 100);
    Bridge {
        name: format!("swe{b}n{n}"),
        cidr: format!("10.{b}.{n}.0/24"),
    }
}

/// A fresh loopback address for one node of one test.
fn next_ip() -> Ipv4Addr {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    // Spread test binaries (run one after another, but maybe beside a demo)
    // over 127.<pid-derived>.x.y.
    let b = 100 + (std::process::id() % 100) as u8;
    Ipv4Addr::new(127, b, (n / 200) as u8, (n % 200 + 2) as u8)
}

pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
    /// Extra `swarmlet daemon` flags (e.g. `--shutdown-grace 1s`); a
    /// `--wasm-timeout` here replaces the harness's 2s.
    pub daemon_args: Vec<String>,
    /// The umask the daemon starts under (default: the test's).
    pub umask: Option<u32>,
    /// Start the daemon under `ulimit -v` of this many KiB.
    pub ulimit_v_kib: Option<u64>,
    /// Extra environment of every start of the daemon.
    pub env: Vec<(String, String)>,
    /// The network namespace the daemon runs in (`ip netns exec NS`), for
    /// partition tests (`Node::start_in`). The CLI still reaches it over
    /// the unix socket in `data_dir`, which works across namespaces.
    pub netns: Option<String>,
    /// This node's container bridge, passed at every start (so a restarted
    /// daemon finds its containers' network again); `None` when
    /// `bridges_enabled()` is false. Deleted when the node is dropped.
    pub bridge: Option<Bridge>,
    child: Option<Child>,
}

/// How `Node::launch` starts the daemon besides the defaults.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Run under `sh -c 'ulimit -v KIB; exec swarmlet daemon …'`.
    pub ulimit_v_kib: Option<u64>,
    /// Extra daemon flags.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl Node {
    /// Starts a daemon on a new data dir and waits for its API.
    pub fn start(name: &str) -> Node {
        Node::start_with(name, &[])
    }

    /// `start` with extra daemon flags.
    pub fn start_with(name: &str, daemon_args: &[&str]) -> Node {
        Node::launch(
            name,
            Launch {
                args: daemon_args.iter().map(|a| a.to_string()).collect(),
                ..Launch::default()
            },
        )
    }

    /// `start` with extra environment for this first start of the daemon
    /// (e.g. `SWARMLET_CRASH_AT`); later `spawn`s run without it.
    pub fn start_with_env(name: &str, env: &[(&str, &str)]) -> Node {
        let mut node = Self::new(name);
        let _ = std::fs::remove_dir_all(&node.data_dir);
        std::fs::create_dir_all(&node.data_dir).expect("create data dir");
        node.spawn_with_env(env);
        node
    }

    /// Starts a daemon launched as `launch` says (flags, environment and
    /// `ulimit -v` kept for every later `spawn`).
    pub fn launch(name: &str, launch: Launch) -> Node {
        let mut node = Self::new(name);
        node.daemon_args = launch.args;
        node.env = launch.env;
        node.ulimit_v_kib = launch.ulimit_v_kib;
        let _ = std::fs::remove_dir_all(&node.data_dir);
        std::fs::create_dir_all(&node.data_dir).expect("create data dir");
        node.spawn();
        node
    }

    /// Starts a daemon inside node `i`'s namespace of `net`, on that
    /// namespace's address (so `net.cut(i)` partitions it), and waits for
    /// its API.
    pub fn start_in(net: &netns::Network, i: usize, name: &str) -> Node {
        let mut node = Self::new_at(name, net.ip(i));
        node.netns = Some(net.netns(i).name().to_string());
        let _ = std::fs::remove_dir_all(&node.data_dir);
        std::fs::create_dir_all(&node.data_dir).expect("create data dir");
        node.spawn();
        node
    }

    /// A node whose daemon is not started yet; `data_dir` is where it will
    /// run (the test may mount something there first), then call `spawn`.
    pub fn new(name: &str) -> Node {
        Self::new_at(name, next_ip())
    }

    fn new_at(name: &str, ip: Ipv4Addr) -> Node {
        let data_dir =
            std::env::temp_dir().join(format!("swarmlet-e2e-{}-{name}-{ip}", std::process::id()));
        Node {
            name: name.to_string(),
            ip,
            data_dir,
            daemon_args: Vec::new(),
            umask: None,
            ulimit_v_kib: None,
            env: Vec::new(),
            netns: None,
            bridge: bridges_enabled().then(next_bridge),
            child: None,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("swarmlet.sock")
    }

    /// The cluster port (`--listen-addr`). It serves no client API: the CLI
    /// and tests talk to `socket()`.
    pub fn cluster_addr(&self) -> String {
        format!("{}:2377", self.ip)
    }

    /// Sends raw HTTP/1.1 to the API socket and returns everything the daemon
    /// answers until it closes the connection (send `Connection: close`).
    /// A write cut short by the daemon's answer is not an error.
    pub fn api_raw(&self, request: &[u8]) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(self.socket())
            .expect("connect to the API socket");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("set read timeout");
        // The daemon may answer (431, 413) and close before reading it all.
        let _ = s.write_all(request);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// (Re)starts the daemon process on this node's data dir.
    pub fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    /// Waits for the daemon to exit by itself (e.g. at a crash point).
    pub fn wait_exit(&mut self, what: &str) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().expect("wait for daemon") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "timed out waiting for the daemon of node {} to exit ({what})",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `swarmlet daemon` on this node's data dir, addresses and name
    /// (none of the harness's extra flags), with `env`, expecting it to stop
    /// by itself without serving: a damaged file, a crash point at start-up.
    /// Returns what it printed on stderr; fails if it does not stop within
    /// the harness's bound or exits successfully.
    pub fn refuses_to_start(&self, env: &[(&str, &str)]) -> String {
        let log_path = self.data_dir.join("refused-start.log");
        let log = std::fs::File::create(&log_path).expect("refused-start log");
        let mut child = Command::new(swarmlet_bin())
            .args(["daemon", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen-addr", &self.cluster_addr()])
            .args(["--publish-addr", &self.ip.to_string()])
            .args(["--node-name", &self.name])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start swarmlet daemon");
        let mut status = None;
        self.wait_until("the daemon to stop by itself", || {
            status = child.try_wait().expect("wait for daemon");
            status.is_some()
        });
        let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            !status.is_some_and(|s| s.success()),
            "the daemon should have refused to start:\n{stderr}"
        );
        stderr
    }

    /// `spawn` with extra environment for this start of the daemon.
    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("daemon.log"))
            .expect("daemon log");
        // `ip netns exec` and `sh -c '… exec'` both exec the next program,
        // so the child's pid stays the daemon's.
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns.as_str()].map(Into::into));
        }
        if let Some(kib) = self.ulimit_v_kib {
            let kib = kib.to_string();
            argv.extend(["sh", "-c", "ulimit -v \"$0\" && exec \"$@\"", &kib].map(Into::into));
        }
        argv.push(swarmlet_bin().into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.args(["daemon", "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--listen-addr",
                &self.cluster_addr(),
                "--publish-addr",
                &self.ip.to_string(),
            ])
            .args(["--node-name", &self.name]);
        if !self.daemon_args.iter().any(|a| a == "--wasm-timeout") {
            cmd.args(["--wasm-timeout", "2s"]);
        }
        if let Some(b) = &self.bridge {
            if !self.daemon_args.iter().any(|a| a == "--bridge") {
                cmd.args(["--bridge", &b.name, "--bridge-cidr", &b.cidr]);
            }
        }
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask(2) is async-signal-safe; nothing else runs in the child.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(&self.daemon_args)
            .env("SWARMLET_LOG", "info,swarmlet=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start swarmlet daemon");
        self.child = Some(child);
        let sock = self.socket();
        let cluster = self.cluster_addr();
        self.wait_until("the daemon's API to answer", || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
                && TcpStream::connect(&cluster).is_ok()
        });
    }

    /// The daemon's resident memory (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        let pid = self.pid().expect("daemon running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// Runs `swarmlet -H unix://SOCK ARGS…`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let host = format!("unix://{}", self.socket().display());
        Command::new(swarmlet_bin())
            .arg("-H")
            .arg(host)
            .args(args)
            .env_remove("SWARMLET_HOST")
            .output()
            .expect("run swarmlet cli")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "swarmlet {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `service create --name NAME [EXTRA…] GUEST.wasm`, which must succeed.
    pub fn create(&self, name: &str, guest_name: &str, extra: &[&str]) -> String {
        let wasm = guest(guest_name);
        let mut args = vec!["service", "create", "--name", name];
        args.extend_from_slice(extra);
        let path = wasm.to_string_lossy().into_owned();
        args.push(&path);
        self.ok(&args)
    }

    /// Runs a CLI command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "swarmlet {} should have failed but printed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn get(&self, port: u16, path: &str) -> Result<(u16, String), String> {
        http_get(SocketAddr::new(IpAddr::V4(self.ip), port), path)
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("wait for daemon") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("daemon did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `f` until it holds; panics after a generous bound, naming `what`.
    pub fn wait_until(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} on node {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        // Containers and shims outlive a killed daemon by design; a test's
        // node is gone for good, so its containers go with it.
        containers::reap(&self.data_dir);
        if let Some(b) = &self.bridge {
            // The daemon keeps its bridge when it exits (as dockerd keeps
            // docker0); a test's node is gone for good. Absent: nothing to do.
            containers::remove_bridge(self.netns.as_deref(), &b.name, &b.cidr);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- daemon log of node {} ({}) ----\n{}",
                self.name,
                self.data_dir.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// A minimal HTTP/1.1 GET (Connection: close), enough to check what a user
/// would see with curl. Returns the status and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let r = http::exchange(s, addr, request.as_bytes(), Duration::from_secs(30))?;
    Ok((r.status, r.body))
}

pub(crate) fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The published port of `service` as `service ls` shows it (`*:P->T/tcp`).
pub fn published_port(ls_output: &str, service: &str) -> Option<u16> {
    let line = ls_output
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(service))?;
    let ports = line.split_whitespace().find(|w| w.starts_with("*:"))?;
    ports
        .trim_start_matches("*:")
        .split("->")
        .next()?
        .parse()
        .ok()
}

/// Which replicas answered `n` requests to `port` (from hello's body).
pub fn replicas_seen(node: &Node, port: u16, n: usize) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        let (status, body) = node.get(port, "/probe").expect("request to the mesh");
        assert_eq!(status, 200, "body: {body}");
        let name = body
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string();
        seen.insert(name);
    }
    seen
}

/// A tmpfs mounted for a test (needs root), unmounted when dropped: a small
/// file system the test can fill for real.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `64m`) at `dir`. Without the
    /// capability to mount, the test is skipped (`None`, said on stderr),
    /// except in CI (`CI=true`), where that fails it.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("run mount");
        if out.status.success() {
            return Some(Tmpfs(dir.to_path_buf()));
        }
        let why = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot mount a tmpfs for a full-disk test ({why}); CI must run the e2e tests as root"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {why}");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}
