//! Container output: the shim appends the container's stdout and stderr to
//! one file per task itself (see `shim::log_stdio`), so output is kept while the
//! node restarts. Here: the log's place and its last lines for errors.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of the end of a log `tail` reads at most.
const TAIL_BYTES: u64 = 16 * 1024;

/// How long a log's size must stay the same to count as complete.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(30);
/// How long an empty log is given to receive the output (a container may
/// have printed nothing at all).
const SETTLE_EMPTY_MAX: std::time::Duration = std::time::Duration::from_millis(300);
/// How long a growing log is waited for at most.
const SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// The last `lines` lines of an exited container's log, once its output
/// has landed. The shim copies the container's stdout and stderr into the
/// file itself and may still be copying when its exit event reaches us
/// (seen here: a crash's last words missing from the task's error under
/// load). containerd's shim holds the file open while it copies and closes
/// it when the container's pipes reach their end, so the log is complete
/// once no descriptor of process `shim_pid` points at it (`COPY_MAX` at
/// most). Where the shim's descriptors cannot be read, the file is read
/// once its size held still for `SETTLE` (or stayed empty for
/// `SETTLE_EMPTY_MAX`), `SETTLE_MAX` at most.
pub async fn settled_tail(path: &Path, shim_pid: u32, lines: usize) -> String {
    let start = tokio::time::Instant::now();
    loop {
        match shim_holds(shim_pid, path) {
            Some(false) => return tail(path, lines),
            Some(true) if start.elapsed() < COPY_MAX => {
                tokio::time::sleep(COPY_POLL).await;
            }
            Some(true) => {
                tracing::warn!(log = %path.display(), "the shim was still writing the log after {COPY_MAX:?}; reading it as it is");
                return tail(path, lines);
            }
            None => break,
        }
    }
    let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut last = size();
    loop {
        tokio::time::sleep(SETTLE).await;
        let now = size();
        let waited = start.elapsed();
        let still = now == last;
        if (still && (now > 0 || waited >= SETTLE_EMPTY_MAX)) || waited >= SETTLE_MAX {
            break;
        }
        last = now;
    }
    tail(path, lines)
}

/// How long the shim is given to finish copying an exited container's
/// output (containerd's own wait for it, at delete, is 2 s).
const COPY_MAX: std::time::Duration = std::time::Duration::from_secs(5);
const COPY_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether process `pid` has `path` open; None when that cannot be told
/// (no such process, `/proc` unreadable, the file missing).
fn shim_holds(pid: u32, path: &Path) -> Option<bool> {
    if pid == 0 {
        return None;
    }
    let target = std::fs::canonicalize(path).ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target)),
    )
}

/// The last `lines` lines of the file at `path` (empty if there is none).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    // A partial first line (cut by the byte window) is dropped.
    let skip_partial = usize::from(start > 0 && all.len() > 1);
    let from = all.len().saturating_sub(lines).max(skip_partial);
    all[from..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let path = std::env::temp_dir().join(format!("sh5-logs-unit-{}", std::process::id()));
        std::fs::write(&path, "a\nb\nc\nd\n").expect("write");
        assert_eq!(tail(&path, 2), "c\nd");
        assert_eq!(tail(&path, 10), "a\nb\nc\nd");
        assert_eq!(tail(&path.with_extension("none"), 3), "");
        let _ = std::fs::remove_file(&path);
    }
}
