//! Content-addressed blob store (`DATA_DIR/blobs/sha256/<hex>`): the `.wasm`
//! files services run.
//!
//! An upload is streamed into a temp file next to the blobs while it is
//! hashed (`Upload`), never held whole in memory, and capped in size; its
//! first bytes must be a WebAssembly component header, so junk is refused
//! after a few bytes. It becomes a blob only through `Staged::commit`
//! (fsync, rename, fsync of the directory), so a crash leaves either the
//! whole blob or nothing but a temp file, which `Blobs::open` removes.
//!
//! A blob is checked against its digest when a task loads it (`verified`);
//! uploading the same bytes again always replaces the file, which repairs a
//! damaged one.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use swarmlet_proto::{BadDigest, Digest};

use crate::fault;

/// Default cap on one upload (`--max-upload-size`).
pub const DEFAULT_MAX_UPLOAD: u64 = 64 << 20;
/// Uploads received at once; more wait up to `UPLOAD_QUEUE_WAIT`, then get a
/// 503. Each one may hold its component in memory while it is validated.
pub const CONCURRENT_UPLOADS: usize = 2;
pub const UPLOAD_QUEUE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(Digest),
    #[error(transparent)]
    BadDigest(#[from] BadDigest),
    #[error("the uploaded file is empty")]
    Empty,
    #[error("not a WebAssembly file (it does not start with the \\0asm header); swarmlet runs wasi:http/proxy components")]
    NotWasm,
    #[error("not a WebAssembly component (it is a core module); build it as a component, e.g. cargo build --target wasm32-wasip2")]
    CoreModule,
    #[error("the upload is larger than this node accepts ({limit}); the daemon's --max-upload-size sets the limit")]
    TooLarge { limit: String },
    #[error("too many uploads in progress (at most {0} at a time); retry in a moment")]
    Busy(usize),
    #[error("the component file {path} is damaged (its content no longer matches {digest}); upload the same .wasm file again (swarmlet service create uploads it) and the service restarts on its own")]
    Corrupt { path: String, digest: Digest },
    #[error("no space left under DATA_DIR ({data_dir}) writing {path}; free some space and retry")]
    DiskFull { data_dir: String, path: String },
    #[error("blob store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What identifies one version of a file on disk: a blob verified once is
/// not hashed again until it is replaced or modified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        }
    }
}

pub struct Blobs {
    dir: PathBuf,
    data_dir: PathBuf,
    max_upload: u64,
    uploads: tokio::sync::Semaphore,
    /// Held while an upload is read back and validated: one component in
    /// memory at a time (the compiler uses both cores anyway).
    validating: Mutex<()>,
    verified: Mutex<HashMap<Digest, Stamp>>,
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest::from_sha256(&Sha256::digest(bytes).into())
}

/// A file name `fsutil::temp_path` makes (`.<name>.tmp-<pid>-<rand>`).
fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// `64m`-style size for messages.
pub fn show_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

impl Blobs {
    /// Opens (creating) the store under `data_dir` and removes temp files a
    /// crash left behind. `max_upload` caps one upload.
    pub fn open(data_dir: &Path, max_upload: u64) -> Result<Self, BlobError> {
        let dir = data_dir.join("blobs").join("sha256");
        let io = |source| BlobError::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        for e in std::fs::read_dir(&dir).map_err(io)?.flatten() {
            if is_temp(&e.file_name().to_string_lossy()) {
                tracing::info!(file = %e.path().display(), "removing an unfinished upload");
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Blobs {
            dir,
            data_dir: data_dir.to_path_buf(),
            max_upload,
            uploads: tokio::sync::Semaphore::new(CONCURRENT_UPLOADS),
            validating: Mutex::new(()),
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn max_upload(&self) -> u64 {
        self.max_upload
    }

    /// A slot to receive one upload in: waits up to `UPLOAD_QUEUE_WAIT`
    /// while `CONCURRENT_UPLOADS` others run.
    pub async fn upload_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, BlobError> {
        match tokio::time::timeout(UPLOAD_QUEUE_WAIT, self.uploads.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(BlobError::Busy(CONCURRENT_UPLOADS)),
        }
    }

    /// The error an upload larger than the cap gets.
    pub fn too_large(&self) -> BlobError {
        BlobError::TooLarge {
            limit: show_size(self.max_upload),
        }
    }

    fn write_error(&self, path: &Path, source: std::io::Error) -> BlobError {
        if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
            BlobError::DiskFull {
                data_dir: self.data_dir.display().to_string(),
                path: path.display().to_string(),
            }
        } else {
            BlobError::Io {
                path: path.display().to_string(),
                source,
            }
        }
    }

    /// Starts an upload: a new temp file in the blob directory.
    pub fn begin_upload(self: &Arc<Self>) -> Result<Upload, BlobError> {
        let tmp = crate::fsutil::temp_path(&self.dir.join("upload"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.write_error(&tmp, e))?;
        Ok(Upload {
            staged: Staged {
                blobs: self.clone(),
                tmp: Some(tmp),
                file,
                digest: None,
                size: 0,
            },
            hasher: Sha256::new(),
            head: Vec::with_capacity(8),
        })
    }

    /// Where the blob `digest` lives.
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Where the blob `digest` lives (validated, so a digest from a request
    /// can never name a path outside the store).
    pub fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        Ok(self.path_of(&Digest::parse(digest)?))
    }

    /// The path of a blob that exists.
    pub fn existing(&self, digest: &str) -> Result<PathBuf, BlobError> {
        let d = Digest::parse(digest)?;
        let p = self.path_of(&d);
        if p.exists() {
            Ok(p)
        } else {
            Err(BlobError::NotFound(d))
        }
    }

    /// The path of a blob whose content matches its digest: hashed on first
    /// use and again whenever the file changed since.
    pub fn verified(&self, digest: &str) -> Result<PathBuf, BlobError> {
        let d = Digest::parse(digest)?;
        let p = self.path_of(&d);
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => BlobError::NotFound(d.clone()),
            _ => BlobError::Io {
                path: p.display().to_string(),
                source,
            },
        };
        let mut f = File::open(&p).map_err(io)?;
        let stamp = Stamp::of(&f.metadata().map_err(io)?);
        if self.verified.lock().ok().and_then(|v| v.get(&d).copied()) == Some(stamp) {
            return Ok(p);
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        if Digest::from_sha256(&hasher.finalize().into()) != d {
            return Err(BlobError::Corrupt {
                path: p.display().to_string(),
                digest: d,
            });
        }
        if let Ok(mut v) = self.verified.lock() {
            v.insert(d, stamp);
        }
        Ok(p)
    }

    /// Deletes blobs no service references that are older than `grace` (an
    /// upload is referenced only once its `service create` commits), and
    /// returns the digests it deleted. `referenced` may hold digests in any
    /// case (services created before digests were canonical).
    pub fn gc(&self, referenced: &HashSet<String>, grace: Duration) -> Vec<String> {
        let referenced: HashSet<Digest> = referenced
            .iter()
            .filter_map(|d| Digest::parse(d).ok())
            .collect();
        let mut deleted = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return deleted;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Only blobs: an upload in progress is a temp file.
            let Ok(digest) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            if digest.hex() != name {
                continue;
            }
            let old_enough = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= grace);
            if old_enough && !referenced.contains(&digest) && std::fs::remove_file(e.path()).is_ok()
            {
                deleted.push(digest.to_string());
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

    /// Stores `bytes` durably and returns their digest (no size or header
    /// checks: for tests and callers that already hold the bytes).
    pub fn put(self: &Arc<Self>, bytes: &[u8]) -> Result<Digest, BlobError> {
        let mut staged = self.begin_upload()?.staged;
        staged
            .file
            .write_all(bytes)
            .map_err(|e| self.write_error(&self.dir, e))?;
        staged.size = bytes.len() as u64;
        staged.digest = Some(digest_of(bytes));
        staged.commit()
    }
}

/// An upload being received: bytes go to the temp file and the hash.
pub struct Upload {
    staged: Staged,
    hasher: Sha256,
    /// The first bytes, until the header could be checked.
    head: Vec<u8>,
}

/// The component layer of the binary format: `\0asm`, a version, then
/// layer 1 (a core module has layer 0).
fn check_header(head: &[u8]) -> Result<(), BlobError> {
    if head.len() < 4 || &head[..4] != b"\0asm" {
        return Err(BlobError::NotWasm);
    }
    if head.len() >= 8 && head[6..8] != [1, 0] {
        return Err(BlobError::CoreModule);
    }
    Ok(())
}

impl Upload {
    /// Appends `chunk`: refuses it past the size cap or when the first
    /// bytes are not a WebAssembly component.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        let blobs = &self.staged.blobs;
        if self.staged.size + chunk.len() as u64 > blobs.max_upload {
            return Err(blobs.too_large());
        }
        if self.head.len() < 8 {
            let take = (8 - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            if self.head.len() == 8 {
                check_header(&self.head)?;
            }
        }
        self.hasher.update(chunk);
        self.staged.size += chunk.len() as u64;
        let tmp = self.staged.tmp.as_deref().unwrap_or(&blobs.dir);
        self.staged
            .file
            .write_all(chunk)
            .map_err(|e| blobs.write_error(tmp, e))
    }

    /// The complete upload, still a temp file.
    pub fn finish(mut self) -> Result<Staged, BlobError> {
        if self.staged.size == 0 {
            return Err(BlobError::Empty);
        }
        check_header(&self.head)?;
        if self.head.len() < 8 {
            return Err(BlobError::NotWasm);
        }
        self.staged.digest = Some(Digest::from_sha256(&self.hasher.finalize().into()));
        Ok(self.staged)
    }
}

/// A complete upload in its temp file, removed on drop unless committed.
pub struct Staged {
    blobs: Arc<Blobs>,
    tmp: Option<PathBuf>,
    file: File,
    digest: Option<Digest>,
    pub size: u64,
}

impl Staged {
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// Runs `check` on the uploaded bytes (at most the size cap), one
    /// upload at a time, so concurrent uploads never hold more than one
    /// component in memory.
    pub fn validate<T>(&mut self, check: impl FnOnce(&Digest, &[u8]) -> T) -> Result<T, BlobError> {
        let blobs = self.blobs.clone();
        let _one = blobs.validating.lock().unwrap_or_else(|e| e.into_inner());
        let digest = self.digest.clone().ok_or(BlobError::Empty)?;
        let bytes = self.read_all()?;
        Ok(check(&digest, &bytes))
    }

    /// The uploaded bytes (at most the size cap).
    pub fn read_all(&mut self) -> Result<Vec<u8>, BlobError> {
        use std::io::Seek;
        let tmp = self.tmp.clone().unwrap_or_default();
        let io = |source| BlobError::Io {
            path: tmp.display().to_string(),
            source,
        };
        let mut bytes = Vec::with_capacity(self.size as usize);
        self.file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        self.file.read_to_end(&mut bytes).map_err(io)?;
        Ok(bytes)
    }

    /// Makes the upload a blob, durably: fsync, rename over any existing
    /// file of that digest (which repairs a damaged one), fsync the directory.
    pub fn commit(mut self) -> Result<Digest, BlobError> {
        let blobs = self.blobs.clone();
        let (Some(tmp), Some(digest)) = (self.tmp.take(), self.digest.clone()) else {
            return Err(BlobError::Empty);
        };
        fault::point("blobs.before_commit");
        let path = blobs.path_of(&digest);
        crate::fsutil::commit(&tmp, &self.file, &path).map_err(|e| {
            if e.is_disk_full() {
                BlobError::DiskFull {
                    data_dir: blobs.data_dir.display().to_string(),
                    path: path.display().to_string(),
                }
            } else {
                BlobError::Io {
                    path: path.display().to_string(),
                    source: e.source,
                }
            }
        })?;
        fault::point("blobs.after_write");
        Ok(digest)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("swarmlet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn files_in(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn put_is_content_addressed_and_gc_keeps_what_is_referenced() {
        let dir = temp_dir("blobs");
        let blobs = Arc::new(Blobs::open(&dir, DEFAULT_MAX_UPLOAD).unwrap());
        let a = blobs.put(b"component a").unwrap();
        let b = blobs.put(b"component b").unwrap();
        assert_eq!(a, digest_of(b"component a"));
        assert_eq!(blobs.get(a.as_str()).unwrap(), b"component a");
        assert!(matches!(
            blobs.path("sha256:../../etc/passwd"),
            Err(BlobError::BadDigest(_))
        ));

        // An uppercase reference keeps its blob (it used to be deleted).
        let referenced: HashSet<String> =
            [a.as_str().to_ascii_uppercase().replace("SHA256", "sha256")].into();
        let hour = Duration::from_secs(3600);
        assert!(
            blobs.gc(&referenced, hour).is_empty(),
            "young blobs are kept"
        );
        let age = |digest: &Digest, by: Duration| {
            let f = std::fs::File::options()
                .write(true)
                .open(blobs.path_of(digest))
                .unwrap();
            f.set_modified(std::time::SystemTime::now() - by).unwrap();
        };
        age(&a, 2 * hour);
        age(&b, 2 * hour);
        // Uploading an old blob again makes it young: a create may be on its way.
        blobs.put(b"component b").unwrap();
        assert!(blobs.gc(&referenced, hour).is_empty());
        age(&b, 2 * hour);
        assert_eq!(blobs.gc(&referenced, hour), vec![b.to_string()]);
        assert!(
            blobs.existing(a.as_str()).is_ok(),
            "referenced blobs stay, however old"
        );
        assert!(matches!(
            blobs.existing(b.as_str()),
            Err(BlobError::NotFound(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn uploads_are_capped_checked_and_leave_no_temp_file() {
        let dir = temp_dir("uploads");
        let blobs = Arc::new(Blobs::open(&dir, 1024).unwrap());
        let sha = dir.join("blobs/sha256");
        let header = b"\0asm\x0d\x00\x01\x00";

        let mut up = blobs.begin_upload().unwrap();
        assert!(matches!(up.write(b"GIF89a junk"), Err(BlobError::NotWasm)));
        drop(up);
        let mut up = blobs.begin_upload().unwrap();
        assert!(matches!(
            up.write(b"\0asm\x01\x00\x00\x00"),
            Err(BlobError::CoreModule)
        ));
        drop(up);
        let mut up = blobs.begin_upload().unwrap();
        up.write(header).unwrap();
        assert!(matches!(
            up.write(&[0; 1024]),
            Err(BlobError::TooLarge { .. })
        ));
        drop(up);
        assert!(files_in(&sha).is_empty(), "{:?}", files_in(&sha));

        // Byte by byte: the header is checked once 8 bytes are in.
        let mut up = blobs.begin_upload().unwrap();
        for b in header.iter().chain(b"rest") {
            up.write(&[*b]).unwrap();
        }
        let mut staged = up.finish().unwrap();
        let bytes = staged.read_all().unwrap();
        assert_eq!(staged.digest(), Some(&digest_of(&bytes)));
        let d = staged.commit().unwrap();
        assert_eq!(files_in(&sha), vec![d.hex().to_string()]);
        assert_eq!(blobs.verified(d.as_str()).unwrap(), blobs.path_of(&d));

        // Damaged on disk: found when loaded; uploading it again repairs it.
        std::fs::write(blobs.path_of(&d), &bytes[..5]).unwrap();
        assert!(matches!(
            blobs.verified(d.as_str()),
            Err(BlobError::Corrupt { .. })
        ));
        let mut up = blobs.begin_upload().unwrap();
        up.write(&bytes).unwrap();
        assert_eq!(up.finish().unwrap().commit().unwrap(), d);
        assert!(blobs.verified(d.as_str()).is_ok());

        // A temp file left by a crash is removed at the next open.
        std::fs::write(sha.join(".upload.tmp-1-2"), b"partial").unwrap();
        let _ = Blobs::open(&dir, 1024).unwrap();
        assert_eq!(files_in(&sha), vec![d.hex().to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
