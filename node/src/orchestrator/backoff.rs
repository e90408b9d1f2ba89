//! Restart back-off: how long a slot's next task waits before it starts,
//! decided from the slot's own task history (so any leader decides the same,
//! and the deterministic simulation stays deterministic).
//!
//! The first replacement of a failed task starts at once; while the slot's
//! tasks keep failing, each next one waits twice as long as the last
//! (1 s, 2 s, 4 s … capped at [`MAX_DELAY_MS`]). A task that ran for
//! [`RESET_AFTER_MS`] or more, or one that was stopped rather than failed,
//! ends the streak; so does a new service version (Swarm clears a slot's
//! restart history when the spec changes).
//!
//! Swarm's own supervisor waits a fixed `--restart-delay` (5 s) before every
//! restart; it creates the replacement at once in desired state `Ready` and
//! starts it after the delay, so `docker service ps` shows it waiting. A
//! delayed task here is likewise created at once (`New`, placed on its node,
//! not yet handed to it), with `created_at_ms` set to the time it may start;
//! the orchestrator assigns it then.
//!
//! Architecture invariant: the delay is a pure function of the store state
//! and the time passed to `reconcile`; nothing about it is kept in memory.

use swarmlet_proto::{Task, TaskState};

/// The longest a slot waits between two tasks.
pub const MAX_DELAY_MS: u64 = 60_000;
/// The second failure in a row waits this long; each next one twice as long.
pub const FIRST_DELAY_MS: u64 = 1_000;
/// A task that ran this long before it ended resets the back-off.
pub const RESET_AFTER_MS: u64 = 10_000;

/// Whether `t` ended on its own (it failed, was rejected, or exited)
/// soon after it was started: a sign the next one may do the same. "Ran"
/// counts from the time it could start (`created_at_ms`) to its last status
/// change, so it includes an image pull: the store records no separate
/// start time, and only a first pull is slow.
fn crashed_soon(t: &Task) -> bool {
    matches!(
        t.state,
        TaskState::Failed | TaskState::Rejected | TaskState::Complete
    ) && t.updated_at_ms.saturating_sub(t.created_at_ms) < RESET_AFTER_MS
}

/// The delay before the task replacing `ended` starts. `previous` is the
/// slot's task before `ended` (the one `ended` replaced), if the history
/// still holds it; `version` the service's current version.
///
/// How long `ended` itself waited is read back from the store: it was
/// created (with `created_at_ms` at its start time) when `previous` was told
/// to stop, which set `previous.updated_at_ms`.
pub fn delay_after(ended: &Task, previous: Option<&Task>, version: u64) -> u64 {
    if !crashed_soon(ended) || ended.service_version < version {
        return 0;
    }
    let Some(previous) =
        previous.filter(|p| crashed_soon(p) && p.service_version == ended.service_version)
    else {
        // The first failure after a task that ran fine: replaced at once.
        return 0;
    };
    let waited = ended.created_at_ms.saturating_sub(previous.updated_at_ms);
    // Rounded to whole seconds: the store's clock readings are a few
    // milliseconds apart, and the delays are whole seconds.
    let waited = (waited + 500) / 1000 * 1000;
    waited.saturating_mul(2).clamp(FIRST_DELAY_MS, MAX_DELAY_MS)
}

/// `service ps`'s message for a task waiting `delay_ms`.
pub fn waiting_message(delay_ms: u64) -> String {
    format!(
        "restart back-off: starts {} s after the last failure (its slot's tasks keep failing)",
        delay_ms / 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmlet_proto::DesiredState;

    fn task(created: u64, ended: u64, state: TaskState) -> Task {
        Task {
            id: format!("t{created}"),
            service_id: "s".into(),
            service_name: "web".into(),
            slot: 1,
            service_version: 1,
            node_id: Some("n1".into()),
            desired_state: DesiredState::Shutdown,
            state,
            message: String::new(),
            error: None,
            created_at_ms: created,
            updated_at_ms: ended,
            endpoint: None,
        }
    }

    #[test]
    fn the_first_failure_is_replaced_at_once() {
        let ended = task(1_000, 1_500, TaskState::Failed);
        assert_eq!(delay_after(&ended, None, 1), 0);
        let ran_fine = task(0, 1_000, TaskState::Shutdown);
        assert_eq!(delay_after(&ended, Some(&ran_fine), 1), 0);
    }

    #[test]
    fn delays_double_while_tasks_keep_failing_up_to_the_cap() {
        // Each task fails 200 ms after it started; the next is created when
        // its predecessor's failure was seen and starts `delay` later.
        let mut prev = task(0, 200, TaskState::Failed);
        let mut now = 200;
        let mut cur = task(now, now + 200, TaskState::Failed);
        let mut delays = Vec::new();
        for _ in 0..9 {
            let d = delay_after(&cur, Some(&prev), 1);
            delays.push(d / 1000);
            now = cur.updated_at_ms;
            prev = cur;
            // The orchestrator stops the failed task (its updated_at_ms is
            // now) and creates the next one starting `d` later.
            prev.updated_at_ms = now;
            cur = task(now + d, now + d + 200, TaskState::Failed);
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn a_task_that_ran_long_enough_resets_the_back_off() {
        let prev = task(0, 200, TaskState::Failed);
        let long = task(30_200, 30_200 + RESET_AFTER_MS, TaskState::Failed);
        assert_eq!(delay_after(&long, Some(&prev), 1), 0);
        let short = task(30_200, 30_300, TaskState::Failed);
        assert_eq!(delay_after(&short, Some(&prev), 1), 60_000);
    }

    #[test]
    fn a_new_service_version_resets_the_back_off() {
        let prev = task(0, 200, TaskState::Failed);
        let ended = task(4_200, 4_300, TaskState::Failed);
        assert_eq!(delay_after(&ended, Some(&prev), 2), 0);
        let mut newer = ended.clone();
        newer.service_version = 2;
        assert_eq!(delay_after(&newer, Some(&prev), 2), 0);
    }

    #[test]
    fn a_stopped_task_is_no_failure() {
        let prev = task(0, 200, TaskState::Failed);
        let stopped = task(1_200, 1_300, TaskState::Shutdown);
        assert_eq!(delay_after(&stopped, Some(&prev), 1), 0);
    }
}
