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
        if path.exists() {
            // Uploaded again: it is wanted now, whatever its age (see `gc`).
            let touch = std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            if let Err(source) = touch {
                return Err(BlobError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        } else {
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

    /// Deletes blobs no service references that are older than `grace` (an
    /// upload is referenced only once its `service create` commits), and
    /// returns the digests it deleted.
    pub fn gc(
        &self,
        referenced: &std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> Vec<String> {
        let mut deleted = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return deleted;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let digest = format!("sha256:{name}");
            let old_enough = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= grace);
            if old_enough && !referenced.contains(&digest) && std::fs::remove_file(e.path()).is_ok()
            {
                deleted.push(digest);
            }
        }
        deleted
    }

    pub fn get(&self, digest: &str) -> Result<Vec<u8>, BlobError> {
        let p = self.existing(digest)?;
        std::fs::read(&p).map_err(|source| BlobError::Io {
            path: p.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn put_is_content_addressed_and_gc_keeps_what_is_referenced() {
        let dir = std::env::temp_dir().join(format!("swarmlet-blobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let blobs = Blobs::open(&dir).unwrap();
        let a = blobs.put(b"component a").unwrap();
        let b = blobs.put(b"component b").unwrap();
        assert_eq!(a, digest_of(b"component a"));
        assert_eq!(blobs.get(&a).unwrap(), b"component a");
        assert!(matches!(
            blobs.path("sha256:../../etc/passwd"),
            Err(BlobError::BadDigest(_))
        ));

        let referenced: HashSet<String> = [a.clone()].into();
        let hour = Duration::from_secs(3600);
        assert!(
            blobs.gc(&referenced, hour).is_empty(),
            "young blobs are kept"
        );
        let age = |digest: &str, by: Duration| {
            let f = std::fs::File::options()
                .write(true)
                .open(blobs.path(digest).unwrap())
                .unwrap();
            f.set_modified(std::time::SystemTime::now() - by).unwrap();
        };
        age(&a, 2 * hour);
        age(&b, 2 * hour);
        // Uploading an old blob again makes it young: a create may be on its way.
        blobs.put(b"component b").unwrap();
        assert!(blobs.gc(&referenced, hour).is_empty());
        age(&b, 2 * hour);
        assert_eq!(blobs.gc(&referenced, hour), vec![b.clone()]);
        assert!(
            blobs.existing(&a).is_ok(),
            "referenced blobs stay, however old"
        );
        assert!(matches!(blobs.existing(&b), Err(BlobError::NotFound(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
