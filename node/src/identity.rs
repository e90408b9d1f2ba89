//! The node's identity, kept in `DATA_DIR/node.json` so a restarted daemon
//! comes back as the same node.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// Why the identity cannot be loaded; each message names the file and says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path} is damaged ({reason}); it holds this node's identity: restore it from a backup, or, if this node never joined a swarm (no raft.redb beside it), delete it to start as a new node")]
    Damaged { path: String, reason: String },
    #[error("{path} is missing but {raft_log} holds this node's swarm state; restore node.json from a backup (a node with a new identity could not serve its services), or move the data dir away to start as a new node")]
    MissingWithRaftLog { path: String, raft_log: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}; free some space under the data dir and start again")]
    Write(#[from] crate::fsutil::WriteError),
    #[error("serializing the node identity: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Identity {
    /// Loads the identity, or creates and saves one on first start. A name
    /// given on the command line wins over the saved one (and is saved).
    /// The file is written only when it changes, so a node on a full disk
    /// still starts. `has_swarm_state()` is asked only when the file is
    /// missing: a node whose raft log exists must not start as a new node.
    pub fn load_or_create(
        data_dir: &Path,
        name: Option<&str>,
        has_swarm_state: impl FnOnce() -> bool,
    ) -> Result<Self, IdentityError> {
        let path = data_dir.join("node.json");
        let shown = || path.display().to_string();
        let loaded = match std::fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice::<Identity>(&bytes).map_err(|e| {
                IdentityError::Damaged {
                    path: shown(),
                    reason: if bytes.is_empty() {
                        "it is empty".to_string()
                    } else {
                        format!("not a node identity: {e}")
                    },
                }
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if has_swarm_state() {
                    return Err(IdentityError::MissingWithRaftLog {
                        path: shown(),
                        raft_log: data_dir.join("raft.redb").display().to_string(),
                    });
                }
                None
            }
            Err(source) => {
                return Err(IdentityError::Read {
                    path: shown(),
                    source,
                })
            }
        };
        if let Some(id) = &loaded {
            if id.node_id.is_empty() || id.raft_id == 0 {
                return Err(IdentityError::Damaged {
                    path: shown(),
                    reason: "its node_id or raft_id is empty".into(),
                });
            }
        }
        let mut id = loaded.clone().unwrap_or_else(|| Identity {
            node_id: random_id(25),
            raft_id: rand::random::<u64>() >> 1 | 1,
            hostname: String::new(),
        });
        id.hostname = match name {
            Some(n) => n.to_string(),
            None if id.hostname.is_empty() => hostname(),
            None => id.hostname,
        };
        let changed = loaded.is_none_or(|l| l.hostname != id.hostname);
        if changed {
            crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&id)?)?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_once_and_damage_or_loss_is_refused() {
        let dir = std::env::temp_dir().join(format!("swarmlet-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.json");
        let a = Identity::load_or_create(&dir, Some("n1"), || false).unwrap();
        let mtime = || std::fs::metadata(&path).unwrap().modified().unwrap();
        let written = mtime();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = Identity::load_or_create(&dir, Some("n1"), || false).unwrap();
        assert_eq!(a, b);
        assert_eq!(mtime(), written, "an unchanged identity is not rewritten");
        let c = Identity::load_or_create(&dir, Some("n2"), || false).unwrap();
        assert_eq!((c.node_id, c.hostname.as_str()), (a.node_id.clone(), "n2"));
        assert_ne!(mtime(), written, "a new --node-name is saved");

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let e = Identity::load_or_create(&dir, None, || false).unwrap_err();
        assert!(matches!(e, IdentityError::Damaged { .. }), "{e}");
        assert!(e.to_string().contains("node.json"), "{e}");

        std::fs::remove_file(&path).unwrap();
        let e = Identity::load_or_create(&dir, None, || true).unwrap_err();
        assert!(matches!(e, IdentityError::MissingWithRaftLog { .. }), "{e}");
        assert!(!path.exists(), "nothing written when refusing");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
