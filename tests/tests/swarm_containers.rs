//! Container services across a swarm (issue 11): nginx replicas spread over
//! the nodes answer through the published port of every node, the mesh
//! tunnelling TCP to containers on other nodes over the cluster port.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;
use swarmlet_e2e::registry::{Registry, CRASH, NGINX};
use swarmlet_e2e::swarm::{eventually, Swarm};
use swarmlet_e2e::{http_get, Node};

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Task ID → node hostname of the running tasks of `service`, once there are `n`.
fn running(node: &Node, service: &str, n: usize) -> BTreeMap<String, String> {
    let mut on = BTreeMap::new();
    eventually(&format!("{n} running tasks of {service}"), || {
        let out = node.cli(&["service", "ps", service, "--format", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        on = v
            .as_array()
            .ok_or("not a list")?
            .iter()
            .filter(|t| t["task"]["state"] == "running" && t["task"]["desired_state"] == "running")
            .map(|t| (text(&t["task"]["id"]), text(&t["node_name"])))
            .collect();
        if on.len() == n {
            Ok(())
        } else {
            Err(format!("{v:#}"))
        }
    });
    on
}

/// Hostnames (task IDs) of the nginx containers answering at `ip:port`.
fn hostnames(ip: IpAddr, port: u16, tries: usize) -> Result<BTreeSet<String>, String> {
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        let (status, body) = http_get(SocketAddr::new(ip, port), "/")?;
        let host = body
            .trim()
            .strip_prefix("hello from nginx on ")
            .filter(|_| status == 200)
            .ok_or_else(|| format!("{status}: {body:?}"))?;
        seen.insert(host.to_string());
    }
    Ok(seen)
}

#[test]
fn every_node_reaches_every_container() {
    let Some(reg) = Registry::start() else { return };
    let mut swarm = Swarm::start("ctswarm", 1, 2);
    let m1 = &swarm.managers[0];
    m1.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "-p",
        "8085:80",
        &reg.image(NGINX),
    ]);
    let placed = running(m1, "web", 3);
    let hosts: BTreeSet<&String> = placed.values().collect();
    assert_eq!(hosts.len(), 3, "spread one per node: {placed:?}");
    let want: BTreeSet<String> = placed.keys().cloned().collect();
    for node in swarm.nodes() {
        eventually(
            &format!("all containers through node {}", node.name),
            || {
                let seen = hostnames(IpAddr::V4(node.ip), 8085, 12)?;
                if seen == want {
                    Ok(())
                } else {
                    Err(format!("saw {seen:?}, want {want:?}"))
                }
            },
        );
    }

    // `service logs` on the manager gathers every node's task output (the
    // workers' over the cluster port), each line prefixed with its task and
    // node as Docker does.
    m1.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "crash",
        "--replicas",
        "3",
        &reg.image(CRASH),
    ]);
    eventually("the crashing service's output from all three nodes", || {
        let out = m1.cli(&["service", "logs", "crash"]);
        let logs = String::from_utf8_lossy(&out.stdout).into_owned();
        let nodes: BTreeSet<&str> = logs
            .lines()
            .filter(|l| l.contains("crash: exiting with code 1 at start"))
            .filter_map(|l| l.split('@').nth(1)?.split_whitespace().next())
            .collect();
        let want: BTreeSet<&str> = swarm.nodes().map(|n| n.name.as_str()).collect();
        if nodes == want && logs.lines().all(|l| l.starts_with("crash.")) {
            Ok(())
        } else {
            Err(format!("{logs}\n{}", String::from_utf8_lossy(&out.stderr)))
        }
    });
    m1.ok(&["service", "rm", "crash"]);

    // A worker dies: its replica runs elsewhere and the others serve it.
    let gone_host = swarm.workers[1].name.clone();
    swarm.workers[1].kill9();
    let m1 = &swarm.managers[0];
    let mut now = BTreeMap::new();
    eventually(
        "the dead worker's replica is replaced on a live node",
        || {
            now = running(m1, "web", 3);
            if now.values().all(|h| !h.contains(&gone_host)) {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    );
    let want: BTreeSet<String> = now.keys().cloned().collect();
    for node in [&swarm.managers[0], &swarm.workers[0]] {
        eventually(&format!("the new set through node {}", node.name), || {
            let seen = hostnames(IpAddr::V4(node.ip), 8085, 12)?;
            if seen == want {
                Ok(())
            } else {
                Err(format!("saw {seen:?}, want {want:?}"))
            }
        });
    }
}
