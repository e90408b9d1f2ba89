//! Compiling a component to native code, and the compile cache's files.
//!
//! Compiling runs in a short-lived child process (`swarmlet compile-component`,
//! the same binary re-executed): Cranelift's heap and code then leave with the
//! child instead of staying mapped in the daemon (~20 MB RSS per component
//! compiled, measured here), and the daemon only deserializes the artifact.
//! Where the child cannot run (e.g. under qemu-user without binfmt), the
//! daemon compiles in process.
//!
//! An artifact file is wasmtime's serialized component followed by the
//! SHA-256 of those bytes. The daemon maps it as native code, so a file that
//! is truncated or changed on disk must be refused (and recompiled), not run:
//! wasmtime checks versions and settings but not integrity.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::engine::{self, EngineSettings};
use super::WasmError;

/// The hidden subcommand the daemon runs to compile.
pub const CHILD_COMMAND: &str = "compile-component";
/// The child's exit code when the input is not a component it can compile.
const EXIT_REFUSED: i32 = 3;
const SUM_LEN: usize = 32;

/// Why a cached artifact cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum CacheMiss {
    #[error("not cached")]
    Absent,
    #[error("damaged ({0})")]
    Damaged(String),
}

/// The serialized component in `path`, checked against its checksum.
pub(super) fn read_artifact(path: &Path) -> Result<Vec<u8>, CacheMiss> {
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CacheMiss::Absent),
        Err(e) => return Err(CacheMiss::Damaged(format!("unreadable: {e}"))),
    };
    if bytes.len() < SUM_LEN {
        return Err(CacheMiss::Damaged("truncated".into()));
    }
    let sum = bytes.split_off(bytes.len() - SUM_LEN);
    if Sha256::digest(&bytes).as_slice() != sum.as_slice() {
        return Err(CacheMiss::Damaged("checksum mismatch".into()));
    }
    Ok(bytes)
}

/// Writes `artifact` and its checksum durably (fsutil::write_atomic, 0600).
fn write_artifact(path: &Path, mut artifact: Vec<u8>) -> Result<(), String> {
    let sum = Sha256::digest(&artifact);
    artifact.extend_from_slice(&sum);
    if let Some(dir) = path.parent() {
        // The cache dir may have been deleted under a running node.
        create_private_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    crate::fsutil::write_atomic(path, &artifact).map_err(|e| e.to_string())
}

/// Creates `dir` (mode 0700) if it is missing.
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// At start-up: the cache dir exists with mode 0700 whatever made it, and
/// temp files of writes a crash interrupted are gone (no writer runs yet:
/// the daemon holds the data dir's lock and starts compiles only later).
pub(super) fn open_cache_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    create_private_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Compiles `wasm` with `engine` and caches the artifact at `out`.
fn compile_here(engine: &wasmtime::Engine, wasm: &[u8], out: &Path) -> Result<(), WasmError> {
    let component = Component::from_binary(engine, wasm)
        .map_err(|e| WasmError::NotComponent(format!("{e:#}")))?;
    cache(&component, out).map_err(WasmError::Engine)
}

/// Writes the artifact of `component` to `out`.
pub(super) fn cache(component: &Component, out: &Path) -> Result<(), String> {
    let artifact = component.serialize().map_err(|e| format!("{e:#}"))?;
    write_artifact(out, artifact)
}

/// What became of a compile in a child process.
pub(super) enum ChildOutcome {
    /// The artifact is at `out`.
    Done,
    /// The input is not a component this node can compile.
    Refused(WasmError),
    /// The child could not do its work (not startable, killed, IO): compile
    /// in process instead.
    Unavailable(String),
}

/// Compiles `wasm` in a child process that writes the artifact to `out`.
pub(super) fn compile_in_child(settings: &EngineSettings, wasm: &[u8], out: &Path) -> ChildOutcome {
    let settings = match serde_json::to_string(settings) {
        Ok(s) => s,
        Err(e) => return ChildOutcome::Unavailable(e.to_string()),
    };
    // /proc/self/exe names this very binary even if the file was replaced
    // (an upgrade) since the daemon started.
    let child = Command::new("/proc/self/exe")
        .args([CHILD_COMMAND, "--engine", &settings, "--out"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return ChildOutcome::Unavailable(format!("starting the compiler process: {e}")),
    };
    // The child reads all of its input before it writes anything, so
    // writing first and then collecting stderr cannot deadlock.
    let wrote = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(wasm))
        .unwrap_or(Ok(()));
    let output = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => {
            return ChildOutcome::Unavailable(format!("waiting for the compiler process: {e}"))
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    match output.status.code() {
        Some(0) if wrote.is_ok() => ChildOutcome::Done,
        Some(EXIT_REFUSED) => ChildOutcome::Refused(WasmError::NotComponent(stderr)),
        _ => ChildOutcome::Unavailable(format!(
            "compiler process {}: {}",
            output.status,
            if stderr.is_empty() {
                "no message"
            } else {
                &stderr
            }
        )),
    }
}

/// `swarmlet compile-component --engine SETTINGS --out PATH` (hidden): reads
/// a component on stdin, compiles it with the daemon's engine settings and
/// writes the artifact. Exit 3 when the input is not a component.
/// Returns the process's exit code.
pub fn child_main(settings: &str, out: &Path) -> i32 {
    let fail = |code: i32, msg: String| {
        eprintln!("{msg}");
        code
    };
    let settings: EngineSettings = match serde_json::from_str(settings) {
        Ok(s) => s,
        Err(e) => return fail(1, format!("bad --engine settings: {e}")),
    };
    let mut wasm = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut wasm) {
        return fail(1, format!("reading the component from stdin: {e}"));
    }
    let engine = match engine::compiler(&settings) {
        Ok(e) => e,
        Err(e) => return fail(1, e.to_string()),
    };
    match compile_here(&engine, &wasm, out) {
        Ok(()) => 0,
        Err(WasmError::NotComponent(msg)) => fail(EXIT_REFUSED, msg),
        Err(e) => fail(1, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_or_truncated_artifact_is_refused() {
        let dir = std::env::temp_dir().join(format!("swarmlet-cache-{}", std::process::id()));
        let path = dir.join("x.cwasm");
        write_artifact(&path, b"native code".to_vec()).unwrap();
        assert_eq!(read_artifact(&path).unwrap(), b"native code");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_artifact(&path), Err(CacheMiss::Damaged(_))));
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(read_artifact(&path), Err(CacheMiss::Damaged(_))));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(read_artifact(&path), Err(CacheMiss::Absent)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
