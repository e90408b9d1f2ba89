//! What a node gossips about itself, and what a peer makes of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use swarmlet_proto::model::{Availability, NodeRole};

/// The chitchat key under which a node publishes its [`NodeInfo`] as JSON.
/// One key, not one per field: a peer always sees a consistent set (an
/// update never shows half applied), and a JSON object lets a later version
/// add fields (`#[serde(default)]`) that older nodes ignore.
pub(crate) const INFO_KEY: &str = "swarmlet.node";

/// Operating system and CPU architecture, as Rust names them
/// (`std::env::consts::{OS, ARCH}`: `linux`, `x86_64`, `aarch64`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub arch: String,
}

impl Platform {
    /// The platform this binary runs on.
    pub fn current() -> Platform {
        Platform {
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
        }
    }
}

/// What the node can offer to tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPUs this process may use (`available_parallelism`: honours cgroup
    /// quotas and affinity masks).
    pub cpus: u32,
    /// Total memory of the machine in bytes (`MemTotal`), 0 when unknown.
    pub memory_bytes: u64,
}

impl Resources {
    /// This machine's resources.
    pub fn current() -> Resources {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Resources {
            cpus,
            memory_bytes: mem_total().unwrap_or(0),
        }
    }
}

/// `MemTotal` from /proc/meminfo, in bytes.
fn mem_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// Everything a node says about itself over gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub role: NodeRole,
    /// The node's cluster address (IP:PORT of its TLS cluster port).
    pub addr: String,
    pub availability: Availability,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub platform: Platform,
    pub resources: Resources,
}

impl NodeInfo {
    /// A node's info with this machine's platform and resources, `Active`
    /// and without labels.
    pub fn new(role: NodeRole, addr: impl Into<String>) -> NodeInfo {
        NodeInfo {
            role,
            addr: addr.into(),
            availability: Availability::Active,
            labels: BTreeMap::new(),
            platform: Platform::current(),
            resources: Resources::current(),
        }
    }

    pub(crate) fn encode(&self) -> String {
        // Only strings, enums and maps of strings: serializing cannot fail.
        serde_json::to_string(self).expect("NodeInfo serializes to JSON")
    }

    pub(crate) fn decode(json: &str) -> Result<NodeInfo, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// Liveness as gossip's failure detector sees it: a hint, not the
/// authority (the dispatcher's heartbeats decide `Ready`/`Down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Live,
    Dead,
}

/// One node as this node's gossip sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The 25-hex node ID.
    pub node_id: String,
    /// Changes each time the node's gossip restarts (start time in ms);
    /// when a node restarted, only its newest generation is listed.
    pub generation: u64,
    /// Where the node gossips (UDP).
    pub gossip_addr: SocketAddr,
    pub liveness: Liveness,
    /// True on the entry for the node answering.
    pub is_self: bool,
    pub info: NodeInfo,
}

impl Member {
    pub fn is_live(&self) -> bool {
        self.liveness == Liveness::Live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_and_ignores_fields_it_does_not_know() {
        let mut info = NodeInfo::new(NodeRole::Worker, "127.0.0.2:2377");
        info.labels.insert("zone".into(), "a".into());
        assert_eq!(NodeInfo::decode(&info.encode()).unwrap(), info);
        let mut v: serde_json::Value = serde_json::from_str(&info.encode()).unwrap();
        v["from_a_later_version"] = serde_json::json!(1);
        assert_eq!(NodeInfo::decode(&v.to_string()).unwrap(), info);
    }

    #[test]
    fn this_machine_reports_its_platform_and_resources() {
        let info = NodeInfo::new(NodeRole::Manager, "x");
        assert_eq!(info.platform.os, std::env::consts::OS);
        assert!(info.resources.cpus >= 1);
        if cfg!(target_os = "linux") {
            assert!(info.resources.memory_bytes > 0, "MemTotal was not read");
        }
    }
}
