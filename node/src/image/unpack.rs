//! Unpacking one layer (a tar, plain or gzip) into its own directory, in the
//! form overlayfs reads as a lower layer: a whiteout `.wh.NAME` becomes a
//! character device 0/0 named NAME, an opaque marker `.wh..wh..opq` becomes
//! the `trusted.overlay.opaque=y` attribute on its directory (what
//! containerd's overlay snapshotter stores). Stacking the layer directories
//! with overlayfs then gives the image's root file system with every
//! deletion applied, and each layer is stored once for all images and tasks.
//!
//! Why our own loop over `tar` entries instead of a library's "apply layer":
//! no maintained Rust crate converts OCI whiteouts to overlayfs form (the
//! ones that apply layers flatten them into one tree, which would store
//! every layer again per image). Regular entries are unpacked by `tar`'s
//! `Entry::unpack_in`, which refuses paths that leave the directory; the
//! whiteouts, the only entries we write ourselves, get the same check.
//!
//! While unpacking, the compressed stream is hashed (the blob digest, which
//! names the layer in the manifest) and the uncompressed one too (the
//! diff-id, which names it in the image config); the caller compares both
//! before it keeps the directory.

use std::ffi::CString;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

/// What an unpacked layer turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// `sha256:` of the bytes as read (compressed or not).
    pub blob_digest: String,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// Bytes of file content unpacked.
    pub size: u64,
}

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Reading the stream failed (a download that broke, a truncated file).
    #[error("reading the layer: {0}")]
    Read(io::Error),
    /// The archive is not a layer we can apply safely.
    #[error("{0}")]
    Malformed(String),
    /// The layer is compressed in a format this node does not read.
    #[error("{0}")]
    Unsupported(String),
    /// Writing into the layer directory failed.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A `Read` that feeds everything it passes through to a shared hasher and
/// byte counter (shared because `tar` and `flate2` own the reader).
struct Hashing<R> {
    inner: R,
    state: Arc<Mutex<(Sha256, u64)>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0.update(&buf[..n]);
        st.1 += n as u64;
        Ok(n)
    }
}

fn finish(state: &Arc<Mutex<(Sha256, u64)>>) -> String {
    let st = state.lock().unwrap_or_else(|p| p.into_inner());
    format!("sha256:{}", hex::encode(st.0.clone().finalize()))
}

/// Unpacks the layer read from `reader` into `dest` (an empty directory).
/// Reads `reader` to its end, so the digests cover every byte.
pub fn unpack_layer<'a>(reader: impl Read + 'a, dest: &Path) -> Result<Unpacked, UnpackError> {
    let blob = Arc::new(Mutex::new((Sha256::new(), 0u64)));
    let diff = Arc::new(Mutex::new((Sha256::new(), 0u64)));
    let mut outer = BufReader::with_capacity(
        256 * 1024,
        Hashing {
            inner: reader,
            state: blob.clone(),
        },
    );
    let magic = outer.fill_buf().map_err(UnpackError::Read)?;
    let compressed = magic.starts_with(&[0x1f, 0x8b]);
    let tar_stream: Box<dyn Read + 'a> = if compressed {
        Box::new(Hashing {
            inner: flate2::bufread::MultiGzDecoder::new(outer),
            state: diff.clone(),
        })
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(UnpackError::Unsupported(
            "the layer is zstd-compressed, which this node does not unpack; push the image with gzip layers (e.g. `skopeo copy --dest-compress-format gzip`)".into(),
        ));
    } else {
        // Plain tar: the blob is the diff, one hash stands for both.
        Box::new(outer)
    };
    let size = apply(tar_stream, dest)?;
    let blob_digest = finish(&blob);
    let diff_id = if compressed {
        finish(&diff)
    } else {
        blob_digest.clone()
    };
    Ok(Unpacked {
        blob_digest,
        diff_id,
        size,
    })
}

fn apply(stream: Box<dyn Read + '_>, dest: &Path) -> Result<u64, UnpackError> {
    let root = unsafe { libc::geteuid() } == 0;
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(root);
    archive.set_preserve_ownerships(root);
    archive.set_overwrite(true);
    let mut size = 0u64;
    let malformed = |e: io::Error| UnpackError::Malformed(format!("not a tar archive: {e}"));
    for entry in archive.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        let path = entry.path().map_err(malformed)?.into_owned();
        let rel = relative(&path)?;
        let name = rel
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        if name == b".wh..wh..opq" {
            let dir = safe_dir(dest, rel.parent().unwrap_or(Path::new("")))?;
            set_opaque(&dir)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            let dir = safe_dir(dest, rel.parent().unwrap_or(Path::new("")))?;
            let target = dir.join(std::ffi::OsStr::from_bytes(hidden));
            whiteout(&target)?;
            continue;
        }
        size += entry.header().entry_size().unwrap_or(0);
        let unpacked = entry.unpack_in(dest).map_err(|e| {
            // `tar` wraps the OS error: a full disk or a denied write is
            // ours to report as such, the rest is the archive's fault.
            match os_error(&e) {
                Some(code) => UnpackError::Write {
                    path: dest.join(&rel),
                    source: io::Error::from_raw_os_error(code),
                },
                None => UnpackError::Malformed(format!("{}: {}", rel.display(), io_chain(&e))),
            }
        })?;
        if !unpacked {
            return Err(UnpackError::Malformed(format!(
                "entry {} points outside the layer",
                path.display()
            )));
        }
    }
    // Drain what follows the end-of-archive blocks, so the digests cover
    // the whole stream.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(UnpackError::Read)?;
    Ok(size)
}

/// The OS error code somewhere in `e`'s chain.
fn os_error(e: &io::Error) -> Option<i32> {
    if let Some(c) = e.raw_os_error() {
        return Some(c);
    }
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(code) = c.downcast_ref::<io::Error>().and_then(|i| i.raw_os_error()) {
            return Some(code);
        }
        cur = c.source();
    }
    None
}

/// An io::Error with what it wraps (`tar` puts the cause underneath).
fn io_chain(e: &io::Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The entry's path relative to the layer root: `/a/./b` → `a/b`; `..`
/// refused.
fn relative(path: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(UnpackError::Malformed(format!(
                    "entry {} climbs out of the layer with ..",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

/// `dest/rel` as a directory, created if missing, with no component a
/// symlink (a layer could otherwise plant `etc -> /` and then write a
/// whiteout through it onto the host).
fn safe_dir(dest: &Path, rel: &Path) -> Result<PathBuf, UnpackError> {
    let mut dir = dest.to_path_buf();
    for c in rel.components() {
        dir.push(c);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::Malformed(format!(
                    "whiteout under {}, which is a symlink in this layer",
                    rel.display()
                )))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(UnpackError::Malformed(format!(
                    "whiteout under {}, which is not a directory",
                    rel.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(|source| UnpackError::Write {
                    path: dir.clone(),
                    source,
                })?;
            }
            Err(source) => return Err(UnpackError::Write { path: dir, source }),
        }
    }
    Ok(dir)
}

fn cstr(path: &Path) -> Result<CString, UnpackError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| UnpackError::Malformed(format!("path {} has a NUL byte", path.display())))
}

/// overlayfs's whiteout: a character device 0/0 where the hidden file was.
fn whiteout(target: &Path) -> Result<(), UnpackError> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(target),
        Ok(_) => std::fs::remove_file(target),
        Err(_) => Ok(()),
    }
    .map_err(|source| UnpackError::Write {
        path: target.to_path_buf(),
        source,
    })?;
    let c = cstr(target)?;
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    if rc != 0 {
        return Err(UnpackError::Write {
            path: target.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// overlayfs's opaque directory: lower layers' entries under it are hidden.
fn set_opaque(dir: &Path) -> Result<(), UnpackError> {
    let c = cstr(dir)?;
    let name = c"trusted.overlay.opaque";
    // SAFETY: valid C strings and a 1-byte value.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            name.as_ptr(),
            b"y".as_ptr() as *const libc::c_void,
            1,
            0,
        )
    };
    if rc != 0 {
        return Err(UnpackError::Write {
            path: dir.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether `path` in a layer directory is a whiteout (char device 0/0).
pub fn is_whiteout(path: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

/// Whether `dir` in a layer directory is marked opaque.
pub fn is_opaque(dir: &Path) -> bool {
    let Ok(c) = cstr(dir) else { return false };
    let mut buf = [0u8; 4];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            } else {
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn sha(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "swarmlet-unpack-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn plain_and_gzip_layers_give_blob_digest_and_diff_id() {
        let tar = tar_of(&[("etc/", b""), ("etc/hello", b"hi\n")]);
        let d = tmp("plain");
        let u = unpack_layer(&tar[..], &d).unwrap();
        assert_eq!(u.blob_digest, sha(&tar));
        assert_eq!(u.diff_id, sha(&tar));
        assert_eq!(std::fs::read(d.join("etc/hello")).unwrap(), b"hi\n");

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let d2 = tmp("gz");
        let u = unpack_layer(&gz[..], &d2).unwrap();
        assert_eq!(u.blob_digest, sha(&gz));
        assert_eq!(u.diff_id, sha(&tar));
        assert_eq!(u.size, 3);
        let _ = std::fs::remove_dir_all(d);
        let _ = std::fs::remove_dir_all(d2);
    }

    #[test]
    fn escaping_entries_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        // Header::set_path refuses `..`; write the name bytes directly.
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let d = tmp("escape");
        let err = unpack_layer(&tar[..], &d.join("layer")).unwrap_err();
        assert!(matches!(err, UnpackError::Malformed(_)), "{err}");
        assert!(!d.join("escape").exists());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let d = tmp("garbage");
        let err = unpack_layer(&b"this is not a tar archive at all, not even close"[..], &d);
        // A short non-tar stream reads as an empty or broken archive: either
        // way nothing is unpacked and no panic.
        if let Err(e) = err {
            assert!(matches!(e, UnpackError::Malformed(_)), "{e}");
        }
        let _ = std::fs::remove_dir_all(d);
    }
}
