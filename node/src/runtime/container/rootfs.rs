//! A task's root filesystem: an overlayfs over the image's unpacked layers
//! (read-only, shared by every task of the image) with a writable upper and
//! work directory of the task's own, mounted on `BUNDLE/rootfs`.
//!
//! We mount it ourselves (mount(2)) rather than passing the mount to the
//! shim's Create: then the bundle is complete before the shim starts, the
//! command can be checked in the image first, and cleanup after a dead shim
//! knows exactly what to unmount.
//!
//! Also here: what needs the merged view of the image, i.e. checking that the
//! command exists and resolving a user name through the image's
//! `/etc/passwd` and `/etc/group` (names there differ from the host's).

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::error::ContainerError;

/// The directories of one task's rootfs, all inside its bundle.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// `BUNDLE/rootfs`: the overlay mount point.
    pub merged: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Rootfs {
    pub fn in_bundle(bundle: &Path) -> Rootfs {
        Rootfs {
            merged: bundle.join("rootfs"),
            upper: bundle.join("upper"),
            work: bundle.join("work"),
        }
    }

    /// Mounts `layers` (bottom layer first, as an image manifest lists them)
    /// under a fresh upper directory.
    pub fn mount(&self, id: &str, layers: &[PathBuf]) -> Result<(), ContainerError> {
        if layers.is_empty() {
            return Err(ContainerError::Mount {
                id: id.to_string(),
                why: "the image has no layers".to_string(),
            });
        }
        for layer in layers {
            if !layer.is_dir() {
                return Err(ContainerError::MissingLayer {
                    path: layer.clone(),
                });
            }
            // overlayfs splits lowerdir on ':' and options on ','.
            let s = layer.as_os_str().as_bytes();
            if s.contains(&b':') || s.contains(&b',') {
                return Err(ContainerError::Mount {
                    id: id.to_string(),
                    why: format!("layer path {} contains ':' or ','", layer.display()),
                });
            }
        }
        for dir in [&self.merged, &self.upper, &self.work] {
            std::fs::create_dir_all(dir)
                .map_err(|e| ContainerError::io("creating", dir.clone(), e))?;
        }
        // overlayfs lists the topmost lower layer first.
        let lower: Vec<String> = layers
            .iter()
            .rev()
            .map(|l| l.display().to_string())
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            self.upper.display(),
            self.work.display()
        );
        let fail = |why: String| ContainerError::Mount {
            id: id.to_string(),
            why,
        };
        let target = cstring(&self.merged).map_err(fail)?;
        let data = CString::new(options).map_err(|e| fail(e.to_string()))?;
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                c"overlay".as_ptr(),
                target.as_ptr(),
                c"overlay".as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let hint = if e.raw_os_error() == Some(libc::EPERM) {
                " (mounting needs root)"
            } else {
                ""
            };
            return Err(fail(format!(
                "mount -t overlay on {}: {e}{hint}",
                self.merged.display()
            )));
        }
        Ok(())
    }

    /// Unmounts the overlay if it is mounted (idempotent).
    pub fn unmount(&self) -> Result<(), ContainerError> {
        if !is_mountpoint(&self.merged) {
            return Ok(());
        }
        let target = cstring(&self.merged).map_err(|why| ContainerError::Mount {
            id: String::new(),
            why,
        })?;
        // SAFETY: a NUL-terminated path.
        let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(ContainerError::io("unmounting", self.merged.clone(), e));
        }
        Ok(())
    }
}

fn cstring(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())
}

/// Whether `path` is a mount point, from /proc/self/mountinfo.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(Ok(v)) = s.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8)) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens `path` inside `root` as if `root` were `/` (symlinks included),
/// with openat2's RESOLVE_IN_ROOT, so an absolute symlink in the image
/// never points at the host's files.
fn open_in_root(root: &Path, path: &str) -> std::io::Result<File> {
    let root_c = CString::new(root.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path; the fd is owned below.
    let dirfd = unsafe {
        libc::open(
            root_c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dirfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: dirfd was just opened and is owned by nobody else.
    let dir = unsafe { OwnedFd::from_raw_fd(dirfd) };
    let rel = CString::new(path.trim_start_matches('/'))?;
    // SAFETY: open_how is plain data; zeroed is a valid value for it.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: valid fd, NUL-terminated path, and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new fd we now own.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// Checks that the container's command exists in the image (`rootfs` is
/// the mounted view) and is an executable file: an absolute path as is, a
/// bare name through the container's `PATH`, a relative path from `cwd`.
pub fn check_command(
    rootfs: &Path,
    args: &[String],
    env: &[String],
    cwd: &str,
) -> Result<(), ContainerError> {
    let command = args.first().ok_or(ContainerError::NoCommand)?;
    let candidates: Vec<String> = if command.starts_with('/') {
        vec![command.clone()]
    } else if command.contains('/') {
        vec![format!("{}/{}", cwd.trim_end_matches('/'), command)]
    } else {
        let path = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| format!("{}/{}", d.trim_end_matches('/'), command))
            .collect()
    };
    let mut why = format!(
        "no such file in the image (searched {})",
        candidates.join(", ")
    );
    for candidate in &candidates {
        match open_in_root(rootfs, candidate) {
            Ok(file) => match file.metadata() {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(()),
                Ok(m) if m.is_dir() => why = format!("{candidate} is a directory"),
                Ok(_) => why = format!("{candidate} is not an executable file"),
                Err(e) => why = format!("{candidate}: {e}"),
            },
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Ok(()), // kernel < 5.6: runc will say
            Err(e) => why = format!("{candidate}: {e}"),
        }
    }
    Err(ContainerError::CommandNotFound {
        command: command.clone(),
        why,
    })
}

/// A process identity inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

fn read_in_root(rootfs: &Path, path: &str) -> String {
    let mut s = String::new();
    if let Ok(mut f) = open_in_root(rootfs, path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Resolves an image's `USER` (`name`, `uid`, `name:group`, `uid:gid`, or
/// empty for root) through the image's own passwd and group files, as
/// Docker does.
pub fn resolve_user(rootfs: &Path, user: Option<&str>) -> Result<Identity, ContainerError> {
    let user = user.unwrap_or("").trim();
    if user.is_empty() {
        return Ok(Identity {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
        });
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let unknown = || ContainerError::UnknownUser {
        user: user.to_string(),
    };
    let passwd = read_in_root(rootfs, "/etc/passwd");
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && (f[0] == u || f[2] == u)).then(|| {
            (
                f[0].to_string(),
                f[2].parse::<u32>().ok(),
                f[3].parse::<u32>().ok(),
            )
        })
    });
    let (name, uid, mut gid) = match (u.parse::<u32>(), entry) {
        (_, Some((name, Some(uid), Some(gid)))) => (Some(name), uid, gid),
        (Ok(uid), _) => (None, uid, 0),
        _ => return Err(unknown()),
    };
    let group = read_in_root(rootfs, "/etc/group");
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g)
                        .then(|| f[2].parse::<u32>().ok())
                        .flatten()
                })
                .ok_or_else(unknown)?,
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        for l in group.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                if let Ok(n) = f[2].parse::<u32>() {
                    if n != gid {
                        additional_gids.push(n);
                    }
                }
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sh5-rootfs-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
        std::fs::create_dir_all(dir.join("usr/bin")).expect("mkdir");
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:101:102::/:/bin/false\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.join("etc/group"),
            "root:x:0:\nweb:x:102:\nlog:x:4:web\n",
        )
        .expect("group");
        std::fs::write(dir.join("usr/bin/tool"), "#!/bin/true\n").expect("tool");
        std::fs::set_permissions(
            dir.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::fs::write(dir.join("usr/bin/data"), "x").expect("data");
        // An absolute symlink must resolve inside the image, not on the host.
        std::os::unix::fs::symlink("/usr/bin/tool", dir.join("usr/bin/link")).expect("symlink");
        std::os::unix::fs::symlink("/bin/sh", dir.join("usr/bin/hostsh")).expect("symlink");
        dir
    }

    #[test]
    fn commands_are_looked_up_in_the_image() {
        let root = image("commands");
        let env = vec!["PATH=/usr/bin".to_string()];
        let ok = |cmd: &str| check_command(&root, &[cmd.to_string()], &env, "/");
        assert!(ok("tool").is_ok());
        assert!(ok("/usr/bin/tool").is_ok());
        assert!(ok("/usr/bin/link").is_ok());
        assert!(
            matches!(
                ok("/usr/bin/hostsh"),
                Err(ContainerError::CommandNotFound { .. })
            ),
            "a symlink to the host's /bin/sh is not in the image"
        );
        assert!(matches!(
            ok("nope"),
            Err(ContainerError::CommandNotFound { .. })
        ));
        assert!(matches!(
            ok("/usr/bin/data"),
            Err(ContainerError::CommandNotFound { .. })
        ));
        assert!(matches!(
            check_command(&root, &[], &env, "/"),
            Err(ContainerError::NoCommand)
        ));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn users_resolve_through_the_image() {
        let root = image("users");
        let id = |u: &str| resolve_user(&root, Some(u));
        assert_eq!(
            id("web").ok(),
            Some(Identity {
                uid: 101,
                gid: 102,
                additional_gids: vec![4]
            })
        );
        assert_eq!(id("101").ok().map(|i| i.gid), Some(102));
        assert_eq!(
            id("5000:5000").ok(),
            Some(Identity {
                uid: 5000,
                gid: 5000,
                additional_gids: vec![]
            })
        );
        assert_eq!(id("web:root").ok().map(|i| i.gid), Some(0));
        assert!(matches!(
            id("nobody"),
            Err(ContainerError::UnknownUser { .. })
        ));
        assert_eq!(resolve_user(&root, None).ok().map(|i| i.uid), Some(0));
        let _ = std::fs::remove_dir_all(&root);
    }
}
