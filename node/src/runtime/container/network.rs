//! One network namespace per container on a node-local bridge, so several
//! replicas on one node all listen on port 80 and the node reaches each by
//! its own address (what the mesh dials).
//!
//! Layout: a bridge (`swarmlet0` by default) holding the subnet's first
//! address as gateway; per task a namespace `PREFIX-<task id>` whose `eth0`
//! is one end of a veth pair (the other end, `PREFIX<hash>`, on the bridge)
//! with an address from the subnet and a default route via the gateway.
//! Outgoing traffic is masqueraded (`iptables -t nat ... MASQUERADE`) and the
//! bridge's traffic is accepted in FORWARD (Docker sets that chain's policy
//! to DROP when present). Deleting the namespace deletes its veth pair.
//!
//! We drive iproute2 and iptables rather than netlink crates: these are a
//! handful of calls per task start and stop, the same commands an operator
//! would use to inspect the result, and they need no code entering another
//! namespace from a thread of this process.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::error::ContainerError;

/// The node-local container network.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The bridge's name (at most 15 characters).
    pub bridge: String,
    /// The subnet's network address and prefix length; the first host
    /// address is the bridge's (the gateway).
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    /// Starts the names of network namespaces and host-side veths.
    pub name_prefix: String,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bridge: "swarmlet0".to_string(),
            subnet: Ipv4Addr::new(10, 219, 0, 0),
            prefix_len: 24,
            name_prefix: "swl".to_string(),
        }
    }
}

impl NetworkConfig {
    pub fn validate(&self) -> Result<(), ContainerError> {
        let bad = |why: String| Err(ContainerError::Network(why));
        if self.bridge.is_empty() || self.bridge.len() > 15 {
            return bad(format!(
                "bridge name {:?} must have 1 to 15 characters",
                self.bridge
            ));
        }
        if !(8..=30).contains(&self.prefix_len) {
            return bad(format!(
                "subnet prefix /{} must be between /8 and /30",
                self.prefix_len
            ));
        }
        if u32::from(self.subnet) & !self.mask() != 0 {
            return bad(format!(
                "{}/{} is not a network address",
                self.subnet, self.prefix_len
            ));
        }
        if self.name_prefix.is_empty() || self.name_prefix.len() > 8 {
            return bad(format!(
                "name prefix {:?} must have 1 to 8 characters",
                self.name_prefix
            ));
        }
        Ok(())
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix_len)
    }

    /// The bridge's own address: the containers' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }

    /// `10.219.0.0/24`
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.subnet, self.prefix_len)
    }

    /// Addresses containers may get: after the gateway, before broadcast.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.subnet);
        let size = 1u32 << (32 - self.prefix_len);
        (2..size - 1).map(move |i| Ipv4Addr::from(base + i))
    }

    pub fn netns_name(&self, task_id: &str) -> String {
        format!("{}-{}", self.name_prefix, task_id)
    }

    /// Interface names have at most 15 characters: a hash of the task ID.
    pub fn veth_name(&self, task_id: &str) -> String {
        let hash = hex::encode(Sha256::digest(task_id.as_bytes()));
        let mut name = self.name_prefix.clone();
        name.push_str(&hash[..15 - self.name_prefix.len()]);
        name
    }
}

/// `/run/netns/NAME`, where `ip netns add` keeps a namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Runs a tool; its stderr becomes the error.
async fn run(program: &str, args: &[&str]) -> Result<String, ContainerError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ContainerError::ToolMissing {
                    tool: program.to_string(),
                    hint: "install iproute2 and iptables (scripts/setup.sh does)".to_string(),
                }
            } else {
                ContainerError::Network(format!("cannot run {program}: {e}"))
            }
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ContainerError::Network(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Adds an iptables rule unless it is there (`-C` checks).
async fn ensure_rule(
    table: &str,
    chain: &str,
    rule: &[&str],
    insert: bool,
) -> Result<(), ContainerError> {
    let mut check = vec!["-w", "-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if run("iptables", &check).await.is_ok() {
        return Ok(());
    }
    let mut add = vec!["-w", "-t", table, if insert { "-I" } else { "-A" }, chain];
    add.extend_from_slice(rule);
    run("iptables", &add).await.map(|_| ())
}

async fn delete_rule(table: &str, chain: &str, rule: &[&str]) {
    let mut del = vec!["-w", "-t", table, "-D", chain];
    del.extend_from_slice(rule);
    while run("iptables", &del).await.is_ok() {}
}

/// The bridge, forwarding and NAT; idempotent (run at every start).
pub async fn ensure_bridge(cfg: &NetworkConfig) -> Result<(), ContainerError> {
    let br = cfg.bridge.as_str();
    if run("ip", &["link", "show", "dev", br]).await.is_err() {
        run("ip", &["link", "add", br, "type", "bridge"]).await?;
    }
    let gw = format!("{}/{}", cfg.gateway(), cfg.prefix_len);
    let addrs = run("ip", &["-o", "-4", "addr", "show", "dev", br]).await?;
    if !addrs.split_whitespace().any(|w| w == gw) {
        run("ip", &["addr", "add", &gw, "dev", br]).await?;
    }
    run("ip", &["link", "set", br, "up"]).await?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| ContainerError::Network(format!("enabling IPv4 forwarding: {e}")))?;
    let cidr = cfg.cidr();
    for rule in forward_rules(br) {
        ensure_rule("filter", "FORWARD", &rule, true).await?;
    }
    ensure_rule("nat", "POSTROUTING", &nat_rule(&cidr, br), false).await
}

fn forward_rules(br: &str) -> [[&str; 4]; 2] {
    [["-i", br, "-j", "ACCEPT"], ["-o", br, "-j", "ACCEPT"]]
}

fn nat_rule<'a>(cidr: &'a str, br: &'a str) -> [&'a str; 7] {
    ["-s", cidr, "!", "-o", br, "-j", "MASQUERADE"]
}

/// Removes the bridge and its rules (when the node leaves containers
/// behind for good, and in tests). Containers must be gone first.
pub async fn remove_bridge(cfg: &NetworkConfig) {
    let cidr = cfg.cidr();
    delete_rule("nat", "POSTROUTING", &nat_rule(&cidr, &cfg.bridge)).await;
    for rule in forward_rules(&cfg.bridge) {
        delete_rule("filter", "FORWARD", &rule).await;
    }
    if let Err(e) = run("ip", &["link", "del", &cfg.bridge]).await {
        tracing::debug!("removing bridge {}: {e}", cfg.bridge);
    }
}

/// A task's place on the network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub netns: String,
    pub veth: String,
    pub ip: Ipv4Addr,
}

/// Creates the task's namespace and veth pair with address `ip`.
pub async fn attach(
    cfg: &NetworkConfig,
    task_id: &str,
    ip: Ipv4Addr,
) -> Result<Attachment, ContainerError> {
    let att = Attachment {
        netns: cfg.netns_name(task_id),
        veth: cfg.veth_name(task_id),
        ip,
    };
    if let Err(e) = setup(cfg, &att).await {
        detach(&att).await;
        return Err(e);
    }
    Ok(att)
}

async fn setup(cfg: &NetworkConfig, att: &Attachment) -> Result<(), ContainerError> {
    let ns = att.netns.as_str();
    run("ip", &["netns", "add", ns]).await?;
    run(
        "ip",
        &[
            "link", "add", &att.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )
    .await?;
    run(
        "ip",
        &["link", "set", &att.veth, "master", &cfg.bridge, "up"],
    )
    .await?;
    run("ip", &["-n", ns, "link", "set", "lo", "up"]).await?;
    let addr = format!("{}/{}", att.ip, cfg.prefix_len);
    run("ip", &["-n", ns, "addr", "add", &addr, "dev", "eth0"]).await?;
    run("ip", &["-n", ns, "link", "set", "eth0", "up"]).await?;
    run(
        "ip",
        &[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &cfg.gateway().to_string(),
        ],
    )
    .await?;
    Ok(())
}

/// Deletes the namespace (taking the veth pair with it) and the host-side
/// veth if it outlived it. Idempotent; what cannot be removed is logged.
pub async fn detach(att: &Attachment) {
    if netns_path(&att.netns).exists() {
        if let Err(e) = run("ip", &["netns", "del", &att.netns]).await {
            tracing::warn!("removing network namespace {}: {e}", att.netns);
        }
    }
    if link_exists(&att.veth) {
        // Deleting the namespace takes the veth pair with it, a moment
        // later: a veth gone by now is not a failure.
        if let Err(e) = run("ip", &["link", "del", &att.veth]).await {
            if link_exists(&att.veth) {
                tracing::warn!("removing veth {}: {e}", att.veth);
            }
        }
    }
}

/// Whether a network interface of that name exists in the host namespace.
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limits() {
        let cfg = NetworkConfig::default();
        let veth = cfg.veth_name("a-very-long-task-identifier-0123456789");
        assert_eq!(veth.len(), 15);
        assert!(veth.starts_with("swl"));
        assert_ne!(veth, cfg.veth_name("another"));
        assert_eq!(cfg.netns_name("t1"), "swl-t1");
    }

    #[test]
    fn subnet_addresses() {
        let cfg = NetworkConfig::default();
        cfg.validate().expect("default config is valid");
        assert_eq!(cfg.gateway(), Ipv4Addr::new(10, 219, 0, 1));
        let hosts: Vec<_> = cfg.hosts().collect();
        assert_eq!(hosts.first(), Some(&Ipv4Addr::new(10, 219, 0, 2)));
        assert_eq!(hosts.last(), Some(&Ipv4Addr::new(10, 219, 0, 254)));
        let bad = NetworkConfig {
            subnet: Ipv4Addr::new(10, 219, 0, 5),
            ..NetworkConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
