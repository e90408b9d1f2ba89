//! Several daemons joined into one swarm, as a user builds it: `init` on the
//! first, `swarm join-token -q worker|manager` there, `join --token … ADDR`
//! on each of the others.

use std::time::{Duration, Instant};

use crate::Node;

/// One row of `node ls --format json` as a test reads it.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub id: String,
    pub hostname: String,
    pub role: String,
    pub status: String,
    pub availability: String,
    pub manager_status: String,
    pub is_self: bool,
}

/// `node ls --format json` on `node`, or the CLI's error.
pub fn node_rows(node: &Node) -> Result<Vec<NodeRow>, String> {
    let out = node.cli(&["node", "ls", "--format", "json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("node ls --format json printed no JSON: {e}"))?;
    let rows = v.as_array().ok_or("node ls --format json: not a list")?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    Ok(rows
        .iter()
        .map(|r| NodeRow {
            id: s(&r["node"]["id"]),
            hostname: s(&r["node"]["hostname"]),
            role: s(&r["node"]["role"]),
            status: s(&r["status"]),
            availability: s(&r["node"]["availability"]),
            manager_status: s(&r["manager_status"]),
            is_self: r["is_self"].as_bool().unwrap_or(false),
        })
        .collect())
}

/// The swarm's join token for `role` ("worker" or "manager"), from `node`.
pub fn join_token(node: &Node, role: &str) -> String {
    node.ok(&["swarm", "join-token", "-q", role])
        .trim()
        .to_string()
}

/// `join --token TOKEN ADDR` on `node`, which must succeed.
pub fn join(node: &Node, token: &str, manager: &Node) -> String {
    node.ok(&["join", "--token", token, &manager.cluster_addr()])
}

/// Polls `f` until it holds, failing after a generous bound naming `what`.
pub fn eventually(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match f() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A swarm of managers and workers, each a real daemon.
pub struct Swarm {
    pub managers: Vec<Node>,
    pub workers: Vec<Node>,
}

impl Swarm {
    /// Starts `managers` + `workers` daemons; the first manager inits, the
    /// others join with the tokens it prints. Returns once every manager's
    /// `node ls` shows every node `Ready` and one leader.
    pub fn start(prefix: &str, managers: usize, workers: usize) -> Swarm {
        Swarm::start_with(prefix, managers, workers, &[])
    }

    /// `start` with extra daemon flags for every node.
    pub fn start_with(prefix: &str, managers: usize, workers: usize, args: &[&str]) -> Swarm {
        assert!(managers >= 1);
        let first = Node::start_with(&format!("{prefix}-m1"), args);
        let out = first.ok(&["init"]);
        assert!(out.contains("Swarm initialized"), "{out}");
        let manager_token = join_token(&first, "manager");
        let worker_token = join_token(&first, "worker");
        let mut swarm = Swarm {
            managers: vec![first],
            workers: Vec::new(),
        };
        for i in 2..=managers {
            let n = Node::start_with(&format!("{prefix}-m{i}"), args);
            let out = join(&n, &manager_token, &swarm.managers[0]);
            assert!(
                out.contains("This node joined a swarm as a manager"),
                "{out}"
            );
            swarm.managers.push(n);
        }
        for i in 1..=workers {
            let n = Node::start_with(&format!("{prefix}-w{i}"), args);
            let out = join(&n, &worker_token, &swarm.managers[0]);
            assert!(
                out.contains("This node joined a swarm as a worker"),
                "{out}"
            );
            swarm.workers.push(n);
        }
        swarm.wait_all_ready();
        swarm
    }

    /// Joins daemons already running (e.g. each in its own network
    /// namespace, `Node::start_in`) into a swarm: the first manager inits,
    /// the others join it with its tokens. Returns as `start` does.
    pub fn form(managers: Vec<Node>, workers: Vec<Node>) -> Swarm {
        let mut managers = managers.into_iter();
        let first = managers.next().expect("at least one manager");
        let out = first.ok(&["init"]);
        assert!(out.contains("Swarm initialized"), "{out}");
        let manager_token = join_token(&first, "manager");
        let worker_token = join_token(&first, "worker");
        let mut swarm = Swarm {
            managers: vec![first],
            workers: Vec::new(),
        };
        for n in managers {
            let out = join(&n, &manager_token, &swarm.managers[0]);
            assert!(
                out.contains("This node joined a swarm as a manager"),
                "{out}"
            );
            swarm.managers.push(n);
        }
        for n in workers {
            let out = join(&n, &worker_token, &swarm.managers[0]);
            assert!(
                out.contains("This node joined a swarm as a worker"),
                "{out}"
            );
            swarm.workers.push(n);
        }
        swarm.wait_all_ready();
        swarm
    }

    /// Every node, managers first.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.managers.iter().chain(self.workers.iter())
    }

    /// Waits until every running manager shows every node Ready, the right
    /// roles and exactly one leader.
    pub fn wait_all_ready(&self) {
        let total = self.managers.len() + self.workers.len();
        for m in self.managers.iter().filter(|m| m.pid().is_some()) {
            eventually(
                &format!("{total} Ready nodes and one leader on {}", m.name),
                || {
                    let rows = node_rows(m)?;
                    let ready = rows.iter().filter(|r| r.status == "Ready").count();
                    let leaders = rows.iter().filter(|r| r.manager_status == "Leader").count();
                    let managers = rows.iter().filter(|r| r.role == "manager").count();
                    if rows.len() == total
                        && ready == total
                        && leaders == 1
                        && managers == self.managers.len()
                    {
                        Ok(())
                    } else {
                        Err(format!("{rows:?}"))
                    }
                },
            );
        }
    }

    /// The manager that `node ls` on any running manager calls `Leader`.
    pub fn leader(&self) -> usize {
        let mut found = None;
        eventually("a leader", || {
            for m in self.managers.iter().filter(|m| m.pid().is_some()) {
                let rows = node_rows(m)?;
                if let Some(l) = rows.iter().find(|r| r.manager_status == "Leader") {
                    if let Some(i) = self
                        .managers
                        .iter()
                        .position(|m| m.name == l.hostname && m.pid().is_some())
                    {
                        found = Some(i);
                        return Ok(());
                    }
                }
            }
            Err("no running manager is shown as Leader".into())
        });
        found.expect("a leader was found")
    }
}

/// `info --format json` on `node`, or the CLI's error.
pub fn info_json(node: &Node) -> Result<serde_json::Value, String> {
    let out = node.cli(&["info", "--format", "json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("info --format json printed no JSON: {e}"))
}

/// `node inspect ID` on `node`: the one view it prints, or the CLI's error.
pub fn inspect_node(node: &Node, id: &str) -> Result<serde_json::Value, String> {
    let out = node.cli(&["node", "inspect", id]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("node inspect printed no JSON: {e}"))?;
    v.as_array()
        .and_then(|a| a.first())
        .cloned()
        .ok_or_else(|| format!("node inspect printed no view: {v}"))
}

/// The ID `node ls` on `manager` gives the node named `name`.
pub fn node_id(manager: &Node, name: &str) -> String {
    let rows = node_rows(manager).expect("node ls");
    rows.iter()
        .find(|r| r.hostname == name)
        .unwrap_or_else(|| panic!("no node named {name} in {rows:?}"))
        .id
        .clone()
}
