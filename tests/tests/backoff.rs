//! Restart back-off with real daemons: a slot whose tasks keep failing gets
//! each replacement at once but starting later each time (1 s, 2 s, 4 s …);
//! the waiting replacement shows in `service ps` at once (`New`, "restart
//! back-off"), and every failed task shows why it failed.
//!
//! Two ways to fail: a wasm service whose component was wiped from the data
//! dir, and (when this swarmlet runs containers) a container that crashes at
//! start (`swarmlet/crash:1` from the fixture registry).
//!
//! The delays are read from the tasks' own timestamps (when the orchestrator
//! stopped a failed task, and when its successor may start), not measured by
//! the test.

use swarmlet_e2e::registry::{containers_supported, Registry, CRASH};
use swarmlet_e2e::Node;

fn tasks(node: &Node, service: &str) -> Vec<serde_json::Value> {
    let out = node.ok(&["service", "ps", service, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("service ps JSON");
    let mut tasks: Vec<serde_json::Value> = v
        .as_array()
        .expect("a list of tasks")
        .iter()
        .map(|t| t["task"].clone())
        .collect();
    tasks.sort_by_key(|t| t["created_at_ms"].as_u64());
    tasks
}

/// Failed (or rejected, if the runtime calls a failure at start that).
fn ended_by_itself(t: &serde_json::Value) -> bool {
    t["state"] == "failed" || t["state"] == "rejected"
}

/// How long each task waited before it could start, in whole seconds: from
/// the moment its predecessor was stopped (its `updated_at_ms`) to its own
/// `created_at_ms` (the time it may start).
fn waits(ts: &[serde_json::Value]) -> Vec<u64> {
    ts.windows(2)
        .map(|w| {
            let stopped = w[0]["updated_at_ms"].as_u64().unwrap_or(0);
            let starts = w[1]["created_at_ms"].as_u64().unwrap_or(0);
            (starts.saturating_sub(stopped) + 500) / 1000
        })
        .collect()
}

/// Waits until `service`'s only slot has failed often enough to show three
/// growing delays, and checks what `service ps` showed on the way.
fn assert_backs_off(node: &Node, service: &str, error_says: &str) {
    let mut ps_table = String::new();
    node.wait_until("three growing restart delays", || {
        let ts = tasks(node, service);
        if let Some(w) = ts.iter().find(|t| t["state"] == "new") {
            assert!(
                w["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("restart back-off")),
                "a waiting task says why: {w}"
            );
            if ps_table.is_empty() {
                ps_table = node.ok(&["service", "ps", service]);
            }
        }
        waits(&ts).iter().filter(|w| **w > 0).count() >= 3
    });
    assert!(
        ps_table.contains(" New "),
        "service ps shows the waiting replacement:\n{ps_table}"
    );
    let ts = tasks(node, service);
    let ended: Vec<&serde_json::Value> = ts.iter().filter(|t| ended_by_itself(t)).collect();
    assert!(ended.len() >= 3, "{ts:#?}");
    for t in ended {
        let error = t["error"].as_str().unwrap_or_default();
        assert!(error.contains(error_says), "a failed task says why: {t}");
    }
    // At once first, then each delay twice the last.
    let waits = waits(&ts);
    eprintln!("{service}: restart delays {waits:?} s\n{ps_table}");
    let growing: Vec<u64> = waits.iter().copied().skip_while(|w| *w == 0).collect();
    assert!(
        growing.windows(2).all(|w| w[1] == 2 * w[0] || w[1] == 60),
        "delays {waits:?} of tasks {ts:#?}"
    );
    assert!(
        growing.first().is_some_and(|w| w.is_power_of_two()),
        "{waits:?}"
    );
}

#[test]
fn a_wasm_task_that_keeps_failing_is_restarted_with_growing_delays() {
    let mut node = Node::start("backoff");
    node.ok(&["init"]);
    node.create("hello", "hello", &[]);
    node.kill9();
    // Its component is gone: every task of the slot fails at start.
    std::fs::remove_dir_all(node.data_dir.join("blobs")).expect("remove blobs");
    std::fs::remove_dir_all(node.data_dir.join("wasm-cache")).expect("remove wasm-cache");
    node.spawn();
    assert_backs_off(&node, "hello", "not found");
}

#[test]
fn a_container_that_crashes_at_start_is_restarted_with_growing_delays() {
    if !containers_supported() {
        eprintln!("SKIPPED: this swarmlet has no container services");
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        assert!(!swarmlet_e2e::ci(), "CI must run the e2e tests as root");
        eprintln!("SKIPPED: containers need root");
        return;
    }
    let Some(reg) = Registry::start() else { return };
    let node = Node::start("crashing");
    node.ok(&["init"]);
    node.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "crash",
        &reg.image(CRASH),
    ]);
    assert_backs_off(&node, "crash", "code 1");
    node.ok(&["service", "rm", "crash"]);
}
