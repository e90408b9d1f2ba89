//! The routing mesh across a swarm (issue 10): every published port listens
//! on every node, a request reaches replicas on other nodes (with the
//! client's address intact), draining, scaling and a killed worker lose no
//! request once the swarm knows, a node joining later serves, and port
//! conflicts are refused or reported.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use swarmlet_e2e::http::get_from;
use swarmlet_e2e::swarm::{eventually, inspect_node, join, join_token, node_rows, Swarm};
use swarmlet_e2e::Node;

/// Where the tests' HTTP client connects from: no node has this address,
/// so a guest seeing it saw the real client.
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 99, 250, 1);

/// `service ps NAME --format json`: replica name (`web.3`) → (node
/// hostname, state, desired state) of each task.
fn tasks(node: &Node, service: &str) -> Result<Vec<(String, String, String, String)>, String> {
    let out = node.cli(&["service", "ps", service, "--format", "json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("service ps json: {e}"))?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    Ok(v.as_array()
        .ok_or("not a list")?
        .iter()
        .map(|t| {
            (
                format!("{service}.{}", t["task"]["slot"]),
                s(&t["node_name"]),
                s(&t["task"]["state"]),
                s(&t["task"]["desired_state"]),
            )
        })
        .collect())
}

/// Replica name → node hostname, once exactly `n` tasks run.
fn running(node: &Node, service: &str, n: usize) -> BTreeMap<String, String> {
    let mut on = BTreeMap::new();
    eventually(&format!("{n} running tasks of {service}"), || {
        let t = tasks(node, service)?;
        on = t
            .iter()
            .filter(|(_, _, state, desired)| state == "running" && desired == "running")
            .map(|(name, host, _, _)| (name.clone(), host.clone()))
            .collect();
        if on.len() == n {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    });
    on
}

fn addr(node: &Node, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(node.ip), port)
}

/// The replica hello names in its body (`hello from web.3 path=…`).
fn replica_of(body: &str) -> String {
    body.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn every_node_reaches_replicas_on_other_nodes_and_the_guest_sees_the_client() {
    let swarm = Swarm::start("spread", 3, 2);
    let m1 = &swarm.managers[0];
    m1.create("web", "hello", &["--replicas", "5", "-p", "8080:80"]);
    let placed = running(m1, "web", 5);
    let hosts: BTreeSet<&String> = placed.values().collect();
    assert!(
        hosts.len() >= 4,
        "5 replicas spread over at least 4 of 5 nodes: {placed:?}"
    );
    for node in swarm.nodes() {
        eventually(
            &format!("requests through {} reaching other nodes", node.name),
            || {
                let mut remote = BTreeSet::new();
                for _ in 0..20 {
                    let r = get_from(CLIENT, addr(node, 8080), "/via")?;
                    if r.status != 200 {
                        return Err(format!("{}: {} {}", node.name, r.status, r.body));
                    }
                    let replica = replica_of(&r.body);
                    let host = placed
                        .get(&replica)
                        .ok_or_else(|| format!("unknown replica in {:?}", r.body))?;
                    // The guest saw the client's address, not a node's,
                    // also when the request crossed to another node.
                    let seen = r.header("x-seen-forwarded-for").unwrap_or_default();
                    assert_eq!(
                        seen,
                        CLIENT.to_string(),
                        "X-Forwarded-For the guest {replica} on {host} saw through {}",
                        node.name
                    );
                    let fwd = r.header("x-seen-forwarded").unwrap_or_default();
                    assert!(
                        fwd.contains(&format!("for={CLIENT}")),
                        "Forwarded the guest saw: {fwd:?}"
                    );
                    if *host != node.name {
                        remote.insert(replica);
                    }
                }
                // Round robin over all 5 replicas: at least the 4 that
                // are not on this node answer.
                if remote.len() >= 4 {
                    Ok(())
                } else {
                    Err(format!("replicas on other nodes seen: {remote:?}"))
                }
            },
        );
    }
}

/// Sends requests through `node` one after another until stopped, keeping
/// every failure (with when it happened, as a request count).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<(usize, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(node: &Node, port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let to = addr(node, port);
        let (st, se, fa) = (stop.clone(), sent.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let n = se.fetch_add(1, Ordering::SeqCst);
                match get_from(CLIENT, to, "/loop") {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => fa
                        .lock()
                        .unwrap()
                        .push((n, format!("{} {}", r.status, r.body))),
                    Err(e) => fa.lock().unwrap().push((n, e)),
                }
            }
        });
        Load {
            stop,
            sent,
            failures,
            thread: Some(thread),
        }
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    fn failures_since(&self, n: usize) -> Vec<(usize, String)> {
        self.failures
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _)| *i >= n)
            .cloned()
            .collect()
    }

    /// Waits until `more` further requests have been sent.
    fn wait_for(&self, more: usize) {
        let target = self.sent() + more;
        eventually(&format!("{more} more requests sent"), || {
            if self.sent() >= target {
                Ok(())
            } else {
                Err(format!("{} sent", self.sent()))
            }
        });
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn drain_and_scaling_lose_no_request_and_a_killed_workers_failures_stop_once_it_is_down() {
    let mut swarm = Swarm::start("churn", 3, 2);
    let m1 = &swarm.managers[0];
    m1.create("web", "hello", &["--replicas", "5", "-p", "8083:80"]);
    let placed = running(m1, "web", 5);
    let load = Load::start(&swarm.workers[0], 8083);
    load.wait_for(50);
    assert_eq!(load.failures_since(0), vec![], "steady state");

    // Drain a manager that runs a replica: its task moves, none is lost.
    let drained = swarm.managers[2].name.clone();
    assert!(placed.values().any(|h| *h == drained), "{placed:?}");
    let before = load.sent();
    m1.ok(&["node", "update", "--availability", "drain", &drained]);
    eventually(
        "the drained node to run nothing and 5 replicas elsewhere",
        || {
            let on = running(m1, "web", 5);
            if on.values().any(|h| *h == drained) {
                Err(format!("still on {drained}: {on:?}"))
            } else {
                Ok(())
            }
        },
    );
    load.wait_for(50);
    assert_eq!(
        load.failures_since(before),
        vec![],
        "while draining {drained}"
    );
    let rows = node_rows(m1).expect("node ls");
    let row = rows.iter().find(|r| r.hostname == drained).expect("row");
    assert_eq!(row.availability, "drain", "{rows:?}");

    // Scale 5 → 1 → 5.
    let before = load.sent();
    m1.ok(&["service", "scale", "web=1"]);
    running(m1, "web", 1);
    load.wait_for(50);
    m1.ok(&["service", "scale", "web=5"]);
    running(m1, "web", 5);
    load.wait_for(50);
    assert_eq!(
        load.failures_since(before),
        vec![],
        "while scaling 5 → 1 → 5"
    );

    // Kill the other worker: once the swarm marks it Down, its replicas
    // are out of every node's rotation and no request fails any more.
    let victim = swarm.workers[1].name.clone();
    swarm.workers[1].kill9();
    eventually(&format!("{victim} marked Down"), || {
        let rows = node_rows(&swarm.managers[0])?;
        match rows.iter().find(|r| r.hostname == victim) {
            Some(r) if r.status == "Down" => Ok(()),
            r => Err(format!("{r:?}")),
        }
    });
    // The Down mark travels to the worker the load goes through with its
    // next routing view: failures (if any) must stop, for good.
    let mut clean_from = load.sent();
    eventually("100 requests in a row to succeed after the kill", || {
        let fails = load.failures_since(clean_from);
        if let Some((i, _)) = fails.last() {
            clean_from = i + 1;
        }
        if load.sent() >= clean_from + 100 {
            Ok(())
        } else {
            Err(format!("failures: {fails:?}"))
        }
    });
    let settled = load.sent();
    load.wait_for(200);
    assert_eq!(
        load.failures_since(settled),
        vec![],
        "failures came back after {victim} was out of rotation"
    );
}

#[test]
fn a_node_joining_after_the_service_was_created_opens_the_port_and_serves() {
    let swarm = Swarm::start("late", 1, 0);
    let m1 = &swarm.managers[0];
    m1.create("web", "hello", &["--replicas", "1", "-p", "8084:80"]);
    running(m1, "web", 1);
    let late = Node::start("late-w1");
    let out = join(&late, &join_token(m1, "worker"), m1);
    assert!(out.contains("joined a swarm as a worker"), "{out}");
    eventually("the late worker serving the published port", || {
        let r = get_from(CLIENT, addr(&late, 8084), "/late")?;
        if r.status == 200 && replica_of(&r.body) == "web.1" {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    });
}

#[test]
fn a_used_port_is_refused_cluster_wide_and_a_foreign_holder_is_reported() {
    let swarm = Swarm::start("ports", 2, 1);
    let (m1, m2, w1) = (&swarm.managers[0], &swarm.managers[1], &swarm.workers[0]);
    // Another program holds the port on the worker only.
    let foreign = TcpListener::bind(addr(w1, 8085)).expect("bind the foreign listener");
    m1.create("web", "hello", &["--replicas", "2", "-p", "8085:80"]);
    running(m1, "web", 2);

    // The port belongs to one service across the swarm, whichever manager
    // is asked.
    let hello = swarmlet_e2e::guest("hello");
    let err = m2.fails(&[
        "service",
        "create",
        "--name",
        "other",
        "-p",
        "8085:80",
        &hello.to_string_lossy(),
    ]);
    assert!(
        err.contains("8085") && err.contains("web"),
        "the refusal names the port and its service: {err}"
    );

    // The worker reports why it does not serve it; the managers serve.
    let w_id = swarmlet_e2e::swarm::node_id(m1, &w1.name);
    eventually("the worker's port problem in node inspect", || {
        let v = inspect_node(m2, &w_id)?;
        let problems = &v["node"]["port_problems"];
        let hit = problems
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["port"] == 8085 && p["service_name"] == "web");
        if hit {
            Ok(())
        } else {
            Err(format!("{problems}"))
        }
    });
    let v = inspect_node(m1, &w_id).expect("inspect");
    let why = v["node"]["port_problems"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(why.to_lowercase().contains("in use"), "{why}");
    for m in &swarm.managers {
        eventually(&format!("{} serving 8085", m.name), || {
            let r = get_from(CLIENT, addr(m, 8085), "/")?;
            (r.status == 200)
                .then_some(())
                .ok_or(format!("{} {}", r.status, r.body))
        });
    }

    // Once the port is free the worker opens it and the report clears.
    drop(foreign);
    eventually("the worker serving 8085 once the port is free", || {
        let r = get_from(CLIENT, addr(w1, 8085), "/")?;
        (r.status == 200)
            .then_some(())
            .ok_or(format!("{} {}", r.status, r.body))
    });
    eventually("the port problem cleared", || {
        let v = inspect_node(m1, &w_id)?;
        match v["node"]["port_problems"].as_array() {
            Some(a) if a.is_empty() => Ok(()),
            None => Ok(()),
            _ => Err(format!("{}", v["node"]["port_problems"])),
        }
    });
}
