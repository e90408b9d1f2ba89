//! Content-addressed blob store (`DATA_DIR/blobs/sha256/<hex>`): the `.wasm`
//! files services run. Writes are atomic (temp file + rename), so a crash
//! never leaves a blob whose content does not match its name.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("{0:?} is not a digest of the form sha256:<64 hex digits>")]
    BadDigest(String),
    #[error("blob store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub struct Blobs {
    dir: PathBuf,
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Blobs {
    pub fn open(data_dir: &Path) -> Result<Self, BlobError> {
        let dir = data_dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&dir).map_err(|source| BlobError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Blobs { dir })
    }

    /// Stores `bytes` and returns their digest.
    pub fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let digest = digest_of(bytes);
        let path = self.path(&digest)?;
        if !path.exists() {
            let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
            let io = |source| BlobError::Io {
                path: path.display().to_string(),
                source,
            };
            std::fs::write(&tmp, bytes).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
        }
        Ok(digest)
    }

    /// Where the blob `digest` lives (validated, so a digest from a request
    /// can never name a path outside the store).
    pub fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| BlobError::BadDigest(digest.to_string()))?;
        Ok(self.dir.join(hex.to_ascii_lowercase()))
    }

    /// The path of a blob that exists.
    pub fn existing(&self, digest: &str) -> Result<PathBuf, BlobError> {
        let p = self.path(digest)?;
        if p.exists() {
            Ok(p)
        } else {
            Err(BlobError::NotFound(digest.to_string()))
        }
    }

    pub fn get(&self, digest: &str) -> Result<Vec<u8>, BlobError> {
        let p = self.existing(digest)?;
        std::fs::read(&p).map_err(|source| BlobError::Io {
            path: p.display().to_string(),
            source,
        })
    }
}
