//! Crash points for tests. `SWARMLET_CRASH_AT=NAME` (read once, at the first
//! `point` call) makes the process abort at the crash point called `NAME`,
//! as a power cut would stop it there; tests then restart the node on the
//! same data dir and check that the operation is either fully there or
//! fully absent. Unset (always, outside tests) a point costs one load.
//!
//! Points are named `module.what`, e.g. `blobs.after_write`; grep for
//! `fault::point(` to list them.

use std::sync::OnceLock;

static CRASH_AT: OnceLock<Option<String>> = OnceLock::new();

/// Aborts the process if `SWARMLET_CRASH_AT` names this point.
pub fn point(name: &str) {
    let at = CRASH_AT.get_or_init(|| std::env::var("SWARMLET_CRASH_AT").ok());
    if at.as_deref() == Some(name) {
        eprintln!("SWARMLET_CRASH_AT={name}: aborting at this crash point");
        std::process::abort();
    }
}
