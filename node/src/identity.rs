//! The node's identity, kept in `DATA_DIR/node.json` so a restarted daemon
//! comes back as the same node.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// 25 hex characters, as docker's node IDs are 25 characters long.
    pub node_id: String,
    pub raft_id: u64,
    pub hostname: String,
}

/// A random lowercase hex ID of `len` characters.
pub fn random_id(len: usize) -> String {
    let mut s = String::with_capacity(len);
    while s.len() < len {
        s.push_str(&format!("{:016x}", rand::random::<u64>()));
    }
    s.truncate(len);
    s
}

impl Identity {
    /// Loads the identity, or creates and saves one on first start. A name
    /// given on the command line wins over the saved one.
    pub fn load_or_create(data_dir: &Path, name: Option<&str>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let path = data_dir.join("node.json");
        let mut id = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Identity>(&bytes).with_context(|| {
                format!(
                    "{} is not a swarmlet node identity; move it away to start as a new node",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Identity {
                node_id: random_id(25),
                raft_id: rand::random::<u64>() >> 1 | 1,
                hostname: String::new(),
            },
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        id.hostname = match name {
            Some(n) => n.to_string(),
            None if id.hostname.is_empty() => hostname(),
            None => id.hostname,
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&id)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(id)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
