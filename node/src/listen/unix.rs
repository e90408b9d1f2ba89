//! The API's unix socket, created with its final mode and group whatever the
//! umask: it is the only way to control the node.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Group that may use the socket besides root, as docker's `docker` group.
const SOCKET_GROUP: &str = "swarmlet";

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create the API socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Binds `path` with mode 0660, group `swarmlet` if that group exists (else
/// the daemon's own). The socket is bound under a temporary name, given its
/// mode and group, then renamed into place, so it is never reachable with
/// the umask's mode, and a stale socket of a killed daemon is replaced.
pub fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, SocketError> {
    let err = |source| SocketError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = Path::new(&tmp);
    let _ = std::fs::remove_file(tmp);
    let std_listener = std::os::unix::net::UnixListener::bind(tmp).map_err(err)?;
    let placed = (|| {
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o660))?;
        if let Some(gid) = socket_group() {
            let c = CString::new(tmp.as_os_str().as_bytes())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            // SAFETY: chown on a NUL-terminated path we own; uid -1 keeps the owner.
            if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
                let e = std::io::Error::last_os_error();
                tracing::warn!("cannot give the API socket to group {SOCKET_GROUP}: {e}");
            }
        }
        std::fs::rename(tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(tmp);
        return Err(err(e));
    }
    std_listener.set_nonblocking(true).map_err(err)?;
    tokio::net::UnixListener::from_std(std_listener).map_err(err)
}

/// The group that may use the API socket, if it exists on this machine.
pub fn socket_group() -> Option<libc::gid_t> {
    group_id(SOCKET_GROUP)
}

/// The id of group `name`, if it exists.
fn group_id(name: &str) -> Option<libc::gid_t> {
    let cname = CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `grp` and `buf`, both valid for their
    // sizes, and sets `result` to `&grp` or null.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}
