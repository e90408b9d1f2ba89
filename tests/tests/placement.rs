//! Where replicas go, on a real swarm (three managers, two workers): spread
//! per service, `node update --availability pause` (keeps its tasks, takes
//! no new ones) and `drain` (each task gets a running replacement on another
//! node before it stops), all seen as a user sees them: `service ps` and
//! `node ls`.

use std::collections::BTreeMap;

use swarmlet_e2e::swarm::{eventually, node_rows, Swarm};
use swarmlet_e2e::Node;

/// One row of `service ps NAME --format json`.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    slot: u64,
    node: String,
    state: String,
    desired: String,
    updated_at_ms: u64,
}

impl Row {
    fn live(&self) -> bool {
        self.state == "running" && self.desired == "running"
    }
}

/// `service ps NAME --format json` on `node`: one consistent view of the
/// store, every task of the service with its history.
fn ps(node: &Node, service: &str) -> Result<Vec<Row>, String> {
    let out = node.cli(&["service", "ps", service, "--format", "json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("service ps json: {e}"))?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    Ok(v.as_array()
        .ok_or("service ps --format json: not a list")?
        .iter()
        .map(|r| Row {
            id: s(&r["task"]["id"]),
            slot: r["task"]["slot"].as_u64().unwrap_or(0),
            node: s(&r["node_name"]),
            state: s(&r["task"]["state"]),
            desired: s(&r["task"]["desired_state"]),
            updated_at_ms: r["task"]["updated_at_ms"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// Once exactly `n` tasks of `service` run (and nothing else is on its way
/// or stopping): how many run on each node, by hostname.
fn running_per_node(node: &Node, service: &str, n: usize) -> BTreeMap<String, usize> {
    let mut per_node = BTreeMap::new();
    eventually(&format!("{n} running tasks of {service}"), || {
        let rows = ps(node, service)?;
        let settled = rows
            .iter()
            .all(|r| r.live() || (r.desired == "shutdown" && r.state != "running"));
        let live: Vec<&Row> = rows.iter().filter(|r| r.live()).collect();
        if live.len() != n || !settled {
            return Err(format!("{rows:?}"));
        }
        per_node.clear();
        for r in live {
            *per_node.entry(r.node.clone()).or_insert(0) += 1;
        }
        Ok(())
    });
    per_node
}

fn availability(swarm: &Swarm, node: &Node, to: &str) {
    let m = &swarm.managers[0];
    let out = m.ok(&["node", "update", "--availability", to, &node.name]);
    assert_eq!(out.trim(), node.name);
    // `node ls` shows it, in the table and in JSON, on every manager.
    let shown = format!("{}{}", to[..1].to_uppercase(), &to[1..]);
    for m in &swarm.managers {
        eventually(
            &format!("{} shown as {shown} on {}", node.name, m.name),
            || {
                let rows = node_rows(m)?;
                let row = rows
                    .iter()
                    .find(|r| r.hostname == node.name)
                    .ok_or(format!("{} not listed: {rows:?}", node.name))?;
                if row.availability != to {
                    return Err(format!("{rows:?}"));
                }
                let table = m.ok(&["node", "ls"]);
                match table.lines().find(|l| l.contains(&node.name)) {
                    Some(line) if line.contains(&shown) => Ok(()),
                    _ => Err(table),
                }
            },
        );
    }
}

#[test]
fn replicas_spread_per_service_and_a_paused_node_takes_no_new_ones() {
    let swarm = Swarm::start("spread", 3, 2);
    let m = &swarm.managers[0];
    let (w1, w2) = (&swarm.workers[0], &swarm.workers[1]);

    m.create("hello", "hello", &["--replicas", "5"]);
    let hello = running_per_node(m, "hello", 5);
    assert!(
        hello.len() >= 4,
        "5 replicas on 5 nodes should use at least 4: {hello:?}"
    );

    // Both workers paused: a new service lands on the managers only, and
    // what the workers run stays.
    availability(&swarm, w1, "pause");
    availability(&swarm, w2, "pause");
    m.create("big", "hello", &["--replicas", "6"]);
    let big = running_per_node(m, "big", 6);
    for w in [w1, w2] {
        assert!(
            !big.contains_key(&w.name),
            "a paused node got a task: {big:?}"
        );
    }
    assert_eq!(
        running_per_node(m, "hello", 5),
        hello,
        "pause moved nothing"
    );

    // Active again. The workers now run 1 task each, the managers 3: spread
    // by overall load would put 2 replicas of a new service on each worker;
    // spread per service puts one on every node.
    availability(&swarm, w1, "active");
    availability(&swarm, w2, "active");
    m.create("second", "hello", &["--replicas", "5"]);
    let second = running_per_node(m, "second", 5);
    assert_eq!(
        second.values().copied().collect::<Vec<_>>(),
        vec![1; 5],
        "one replica of the second service per node: {second:?}"
    );

    // Scaling up while w1 is paused: the new tasks go elsewhere, its own
    // replica keeps running.
    availability(&swarm, w1, "pause");
    m.ok(&["service", "scale", "second=9"]);
    let second = running_per_node(m, "second", 9);
    assert_eq!(second.get(&w1.name), Some(&1), "{second:?}");
    assert_eq!(second.len(), 5, "{second:?}");
    // Active again, it is where the service has fewest: the next one lands there.
    availability(&swarm, w1, "active");
    m.ok(&["service", "scale", "second=10"]);
    let second = running_per_node(m, "second", 10);
    assert_eq!(
        second.values().copied().collect::<Vec<_>>(),
        vec![2; 5],
        "{second:?}"
    );
}

#[test]
fn drain_moves_each_replica_and_its_replacement_runs_before_it_stops() {
    let swarm = Swarm::start("drain", 3, 2);
    let m = &swarm.managers[0];
    m.create("hello", "hello", &["--replicas", "5"]);
    running_per_node(m, "hello", 5);
    // Drain the node of slot 1's replica, whichever it is.
    let rows = ps(m, "hello").expect("service ps");
    let old: Vec<Row> = {
        let on = rows
            .iter()
            .find(|r| r.slot == 1 && r.live())
            .map(|r| r.node.clone())
            .expect("slot 1 runs");
        rows.iter()
            .filter(|r| r.node == on && r.live())
            .cloned()
            .collect()
    };
    let victim = swarm
        .nodes()
        .find(|n| n.name == old[0].node)
        .expect("the node is in the swarm");
    availability(&swarm, victim, "drain");

    // Every view the store gives while it moves: a task of the drained node
    // is told to stop only when its slot's new task runs elsewhere.
    eventually(
        &format!("the tasks of {} to move away", victim.name),
        || {
            let rows = ps(m, "hello")?;
            for o in &old {
                let now = rows
                    .iter()
                    .find(|r| r.id == o.id)
                    .ok_or(format!("task {} vanished: {rows:?}", o.id))?;
                let replaced = rows
                    .iter()
                    .any(|r| r.slot == o.slot && r.id != o.id && r.live() && r.node != victim.name);
                if now.desired == "shutdown" && !replaced {
                    panic!(
                        "task {} of slot {} was told to stop with no running replacement: {rows:?}",
                        o.id, o.slot
                    );
                }
            }
            let done = old.iter().all(|o| {
                rows.iter()
                    .any(|r| r.id == o.id && r.state == "shutdown" && r.desired == "shutdown")
            });
            if done {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        },
    );
    let on = running_per_node(m, "hello", 5);
    assert!(!on.contains_key(&victim.name), "{on:?}");
    // The history agrees: each old task's shutdown came after its
    // replacement's running (both times set by the leader as it commits).
    let rows = ps(m, "hello").expect("service ps");
    for o in &old {
        let stopped = rows.iter().find(|r| r.id == o.id).expect("old task kept");
        let new = rows
            .iter()
            .find(|r| r.slot == o.slot && r.live())
            .expect("the slot runs");
        assert!(
            stopped.updated_at_ms >= new.updated_at_ms,
            "slot {}: the old task stopped at {} before its replacement ran at {}",
            o.slot,
            stopped.updated_at_ms,
            new.updated_at_ms
        );
    }

    // Drained, it takes nothing new; active again, it does.
    m.ok(&["service", "scale", "hello=8"]);
    let on = running_per_node(m, "hello", 8);
    assert!(!on.contains_key(&victim.name), "{on:?}");
    availability(&swarm, victim, "active");
    m.ok(&["service", "scale", "hello=9"]);
    let on = running_per_node(m, "hello", 9);
    assert_eq!(on.get(&victim.name), Some(&1), "{on:?}");
}
