//! Durable file writes. Every file whose presence acknowledges something (a
//! blob upload, the node identity, a compiled artifact) is written through
//! `write_atomic`, so after a crash or power cut it is either there whole or
//! not there at all.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A write that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl WriteError {
    /// True when the disk (or quota) is full.
    pub fn is_disk_full(&self) -> bool {
        self.source.raw_os_error() == Some(libc::ENOSPC)
            || self.source.raw_os_error() == Some(libc::EDQUOT)
    }
}

/// A temp file name next to `path`, unique per process and call, so two
/// writers of the same file never share a temp file.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

/// Fsyncs the directory holding `path`, so a rename into it is durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Moves the finished temp file `tmp` to `path` durably: fsync the file,
/// rename, fsync the directory. Removes `tmp` on failure.
pub fn commit(tmp: &Path, file: &File, path: &Path) -> Result<(), WriteError> {
    let result = file
        .sync_all()
        .and_then(|_| std::fs::rename(tmp, path))
        .and_then(|_| sync_parent(path));
    result.map_err(|source| {
        let _ = std::fs::remove_file(tmp);
        WriteError {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Writes `bytes` to `path` atomically and durably (mode 0600): a temp file
/// with a unique name, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = temp_path(path);
    let err = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    if let Err(source) = file.write_all(bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(source));
    }
    commit(&tmp, &file, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_whole_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("swarmlet-fsutil-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("node.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
