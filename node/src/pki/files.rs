//! The node's certificate files under `DATA_DIR/certs/` and client bundles.

use std::path::{Path, PathBuf};

use super::PkiError;

/// The cluster CA certificate, this node's certificate and its key (PEM).
#[derive(Clone)]
pub struct NodeCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCerts").finish_non_exhaustive()
    }
}

pub fn certs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("certs")
}

fn make_private_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PkiError::File {
            path: dir.to_path_buf(),
            reason: format!("creating the directory: {e}"),
        })
}

/// Writes `ca.crt`, `node.crt`, `node.key` (0600 each, atomically; the key
/// last, so a present key means a whole set).
pub fn save_node_certs(data_dir: &Path, certs: &NodeCerts) -> Result<(), PkiError> {
    let dir = certs_dir(data_dir);
    make_private_dir(&dir)?;
    crate::fsutil::write_atomic(&dir.join("ca.crt"), certs.ca_pem.as_bytes())?;
    crate::fsutil::write_atomic(&dir.join("node.crt"), certs.cert_pem.as_bytes())?;
    crate::fsutil::write_atomic(&dir.join("node.key"), certs.key_pem.as_bytes())?;
    Ok(())
}

/// The node's certificates, or `None` if the node has none (not in a swarm).
pub fn load_node_certs(data_dir: &Path) -> Result<Option<NodeCerts>, PkiError> {
    let dir = certs_dir(data_dir);
    if !dir.join("node.key").exists() {
        return Ok(None);
    }
    load_set(&dir, "ca.crt", "node.crt", "node.key").map(Some)
}

fn load_set(dir: &Path, ca: &str, cert: &str, key: &str) -> Result<NodeCerts, PkiError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| PkiError::File {
            path: path.clone(),
            reason: format!("{e}"),
        })
    };
    let certs = NodeCerts {
        ca_pem: read(ca)?,
        cert_pem: read(cert)?,
        key_pem: read(key)?,
    };
    // Parse now, so a damaged file is named here rather than as a TLS error.
    for (name, check) in [
        (ca, super::cert_der(&certs.ca_pem).map(|_| ())),
        (cert, super::cert_der(&certs.cert_pem).map(|_| ())),
        (key, super::key_der(&certs.key_pem).map(|_| ())),
    ] {
        check.map_err(|e| PkiError::File {
            path: dir.join(name),
            reason: e.to_string(),
        })?;
    }
    Ok(certs)
}

/// Writes a client bundle as docker's `--tlsverify` layout: `ca.pem`,
/// `cert.pem`, `key.pem` (0600).
pub fn write_client_bundle(dir: &Path, bundle: &NodeCerts) -> Result<(), PkiError> {
    make_private_dir(dir)?;
    crate::fsutil::write_atomic(&dir.join("ca.pem"), bundle.ca_pem.as_bytes())?;
    crate::fsutil::write_atomic(&dir.join("cert.pem"), bundle.cert_pem.as_bytes())?;
    crate::fsutil::write_atomic(&dir.join("key.pem"), bundle.key_pem.as_bytes())?;
    Ok(())
}

pub fn load_client_bundle(dir: &Path) -> Result<NodeCerts, PkiError> {
    load_set(dir, "ca.pem", "cert.pem", "key.pem")
}
