//! Changing a swarm's membership as an operator does: `node promote`,
//! `node demote`, `node rm` (with Docker's quorum and "node is not down"
//! refusals) and `leave`, each on real daemons joined over mutual TLS.

use swarmlet_e2e::swarm::{eventually, join, join_token, node_rows, NodeRow, Swarm};
use swarmlet_e2e::Node;

/// The row of `node ls` on `on` for the node named `name`.
fn row(on: &Node, name: &str) -> Result<NodeRow, String> {
    let rows = node_rows(on)?;
    rows.iter()
        .find(|r| r.hostname == name)
        .cloned()
        .ok_or_else(|| format!("no row for {name}: {rows:?}"))
}

fn wait_status(on: &Node, name: &str, status: &str) {
    eventually(&format!("{name} {status} on {}", on.name), || {
        let r = row(on, name)?;
        if r.status == status {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
}

#[test]
fn a_promoted_worker_becomes_a_manager_and_a_demoted_one_a_worker_again() {
    let swarm = Swarm::start("promote", 3, 1);
    let m1 = &swarm.managers[0];
    let w = &swarm.workers[0];
    // A worker answers no control-plane questions.
    let err = w.fails(&["service", "ls"]);
    assert!(err.contains("manager"), "{err}");

    let out = m1.ok(&["node", "promote", &w.name]);
    assert!(out.contains("promoted to a manager"), "{out}");
    for m in &swarm.managers {
        eventually(
            &format!("4 managers with {} Reachable on {}", w.name, m.name),
            || {
                let rows = node_rows(m)?;
                let managers = rows.iter().filter(|r| r.role == "manager").count();
                let r = row(m, &w.name)?;
                let ok = managers == 4
                    && r.status == "Ready"
                    && (r.manager_status == "Reachable" || r.manager_status == "Leader");
                if ok {
                    Ok(())
                } else {
                    Err(format!("{rows:?}"))
                }
            },
        );
    }
    // It answers as a manager now, from its own store (raft reached it).
    eventually(&format!("service ls and node ls on {}", w.name), || {
        let out = w.cli(&["service", "ls"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let rows = node_rows(w)?;
        if rows.len() == 4 && rows.iter().any(|r| r.is_self && r.hostname == w.name) {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    });
    // A write made on it is seen on the others.
    w.create("made-on-promoted", "hello", &["--replicas", "1"]);
    eventually("the service created on the promoted node on m1", || {
        let out = m1.ok(&["service", "ls"]);
        if out.contains("made-on-promoted") {
            Ok(())
        } else {
            Err(out)
        }
    });

    let out = m1.ok(&["node", "demote", &w.name]);
    assert!(out.contains("demoted"), "{out}");
    eventually(&format!("{} a Ready worker again", w.name), || {
        let rows = node_rows(m1)?;
        let managers = rows.iter().filter(|r| r.role == "manager").count();
        let r = row(m1, &w.name)?;
        if managers == 3 && r.role == "worker" && r.status == "Ready" && r.manager_status.is_empty()
        {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    });
    eventually(&format!("{} refusing manager calls again", w.name), || {
        let out = w.cli(&["service", "ls"]);
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && err.contains("manager") {
            Ok(())
        } else {
            Err(format!("{out:?}"))
        }
    });
    // The three managers left still write.
    m1.ok(&["service", "scale", "made-on-promoted=2", "--detach"]);
    eventually("2 running replicas after the demotion", || {
        let out = m1.ok(&["service", "ps", "made-on-promoted"]);
        if out.matches("Running").count() + out.matches("running").count() >= 2 {
            Ok(())
        } else {
            Err(format!("{out}\n{:?}", node_rows(m1)))
        }
    });
    swarm.wait_all_ready();
    // Demoting an already-worker node changes nothing and says so plainly.
    m1.ok(&["node", "demote", &w.name]);
    // The last manager rule: a worker cannot be removed while Ready either.
    let err = m1.fails(&["node", "rm", &w.name]);
    assert!(err.contains("not down"), "{err}");
}

#[test]
fn demote_and_rm_refuse_to_lose_quorum_and_a_removed_node_stays_out() {
    let mut swarm = Swarm::start("quorum", 3, 1);
    let w1 = swarm.workers[0].name.clone();

    // Killing m3 leaves 2 of 3 managers: demoting another would leave 1 of 2.
    let leader = swarm.leader();
    let (keep, victim) = if leader == 2 { (0, 1) } else { (leader, 2) };
    let victim_name = swarm.managers[victim].name.clone();
    let other = (0..3).find(|i| *i != keep && *i != victim).expect("third");
    let other_name = swarm.managers[other].name.clone();
    swarm.managers[victim].kill9();
    wait_status(&swarm.managers[keep], &victim_name, "Down");
    let err = swarm.managers[keep].fails(&["node", "demote", &other_name]);
    assert!(err.contains("quorum") && err.contains("--force"), "{err}");
    let err = swarm.managers[keep].fails(&["node", "rm", &other_name]);
    assert!(err.contains("not down"), "{err}");
    // Nothing changed.
    let rows = node_rows(&swarm.managers[keep]).expect("node ls");
    assert_eq!(
        rows.iter().filter(|r| r.role == "manager").count(),
        3,
        "{rows:?}"
    );
    swarm.managers[victim].spawn();
    swarm.wait_all_ready();

    // A Ready worker is not removed without --force ...
    let err = swarm.managers[0].fails(&["node", "rm", &w1]);
    assert!(err.contains("not down") && err.contains("leave"), "{err}");
    // ... a Down one is.
    swarm.workers[0].kill9();
    wait_status(&swarm.managers[0], &w1, "Down");
    let out = swarm.managers[0].ok(&["node", "rm", &w1]);
    assert!(out.contains(&w1), "{out}");
    for m in &swarm.managers {
        eventually(&format!("{w1} gone from node ls on {}", m.name), || {
            let rows = node_rows(m)?;
            if rows.iter().any(|r| r.hostname == w1) {
                Err(format!("{rows:?}"))
            } else {
                Ok(())
            }
        });
    }
    // Restarted, its certificate is refused: it does not come back.
    swarm.workers[0].spawn();
    let w = &swarm.workers[0];
    w.wait_until("the removed worker's calls refused as removed", || {
        w.log().contains("was removed from the swarm")
    });
    for m in &swarm.managers {
        let rows = node_rows(m).expect("node ls");
        assert!(!rows.iter().any(|r| r.hostname == w1), "{rows:?}");
        assert_eq!(rows.len(), 3, "{rows:?}");
    }
}

#[test]
fn a_worker_leaves_and_joins_again() {
    let swarm = Swarm::start("leave", 1, 1);
    let m = &swarm.managers[0];
    let w = &swarm.workers[0];
    let old_id = row(m, &w.name).expect("worker row").id;

    // The last manager does not leave without --force.
    let err = m.fails(&["leave"]);
    assert!(err.contains("last manager"), "{err}");
    assert!(err.contains("--force"), "{err}");

    // A joined worker is in a swarm, as a worker (docker info's words).
    let info = w.ok(&["info"]);
    assert!(
        info.contains("Swarm: active") && info.contains("Is Manager: false"),
        "{info}"
    );
    let out = w.ok(&["leave"]);
    assert!(out.contains("left the swarm"), "{out}");
    let err = w.fails(&["service", "ls"]);
    assert!(err.contains("not a swarm manager"), "{err}");
    w.wait_until("the worker out of the swarm in info", || {
        w.cli(&["info"]).status.success()
            && String::from_utf8_lossy(&w.cli(&["info"]).stdout).contains("Swarm: inactive")
    });
    wait_status(m, &w.name, "Down");
    // Leaving twice: nothing to leave.
    let err = w.fails(&["leave"]);
    assert!(err.contains("not part of a swarm"), "{err}");

    let out = join(w, &join_token(m, "worker"), m);
    assert!(out.contains("joined a swarm as a worker"), "{out}");
    eventually("the worker back as a new Ready node", || {
        let rows = node_rows(m)?;
        let fresh = rows
            .iter()
            .find(|r| r.hostname == w.name && r.id != old_id && r.status == "Ready");
        if rows.len() == 3 && fresh.is_some() {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    });
    // The old entry is Down and can now be removed.
    m.ok(&["node", "rm", &old_id]);
    eventually("two nodes left", || {
        let rows = node_rows(m)?;
        if rows.len() == 2 && rows.iter().all(|r| r.status == "Ready") {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    });
    // A service runs on the rejoined worker too.
    m.create("after-rejoin", "hello", &["--replicas", "2"]);
    eventually("2 running replicas", || {
        let out = m.ok(&["service", "ls"]);
        if out.contains("2/2") {
            Ok(())
        } else {
            Err(out)
        }
    });
}

#[test]
fn the_demoted_leader_hands_over_and_becomes_a_worker() {
    let swarm = Swarm::start("demoteleader", 3, 0);
    let leader = swarm.leader();
    let old = &swarm.managers[leader];
    let other = &swarm.managers[(leader + 1) % 3];
    let out = other.ok(&["node", "demote", &old.name]);
    assert!(out.contains("demoted"), "{out}");
    eventually(
        &format!("{} a Ready worker and a new leader", old.name),
        || {
            let rows = node_rows(other)?;
            let r = row(other, &old.name)?;
            let leaders = rows.iter().filter(|r| r.manager_status == "Leader").count();
            if r.role == "worker" && r.status == "Ready" && leaders == 1 {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        },
    );
    // The two managers left still change the swarm.
    other.create("after-leader-demotion", "hello", &["--replicas", "3"]);
    let err = old.fails(&["service", "ls"]);
    assert!(err.contains("manager"), "{err}");
}

#[test]
fn a_manager_removed_while_down_leaves_the_swarm_when_it_comes_back() {
    let mut swarm = Swarm::start("rmmgr", 3, 0);
    // One replica on every node (spread), each node publishing the port.
    swarm.managers[0].create("spread", "hello", &["--replicas", "3", "-p", "8080:80"]);
    let victim = if swarm.leader() == 2 { 1 } else { 2 };
    let name = swarm.managers[victim].name.clone();
    let keep = if victim == 0 { 1 } else { 0 };
    eventually("a replica answering on the victim", || {
        match swarm.managers[victim].get(8080, "/") {
            Ok((200, body)) if body.contains("hello") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    swarm.managers[victim].kill9();
    wait_status(&swarm.managers[keep], &name, "Down");
    // A blocking scale converges without waiting for the Down node's task,
    // which can never report that it stopped (as docker's progress display
    // ignores tasks on down nodes).
    let out = swarm.managers[keep].ok(&["service", "scale", "spread=4"]);
    assert!(out.contains("verify: Service converged"), "{out}");
    // Removed while it is down (a Down node needs no --force).
    let out = swarm.managers[keep].ok(&["node", "rm", &name]);
    assert!(out.contains(&name), "{out}");
    eventually("its replica replaced on the other two", || {
        let out = swarm.managers[keep].ok(&["service", "ls"]);
        if out.contains("4/4") {
            Ok(())
        } else {
            Err(out)
        }
    });

    // Back on its old data dir: its raft log still lists it as a manager
    // with a replica. Its peers refuse it as removed, and it leaves.
    swarm.managers[victim].spawn();
    let v = &swarm.managers[victim];
    v.wait_until("the removed manager to leave the swarm", || {
        v.log().contains("this node was removed from the swarm")
    });
    eventually("the removed manager out of any swarm", || {
        let out = v.cli(&["service", "ls"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() && err.contains("not a swarm manager") {
            Ok(())
        } else {
            Err(format!("{out:?}"))
        }
    });
    // Its stale replica no longer serves; the swarm still has 2 nodes and
    // 4 replicas.
    eventually("nothing served on the removed node's port", || {
        match v.get(8080, "/") {
            Err(_) => Ok(()),
            Ok(r) => Err(format!("still answered: {r:?}")),
        }
    });
    let rows = node_rows(&swarm.managers[keep]).expect("node ls");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.hostname != name), "{rows:?}");
    let out = swarm.managers[keep].ok(&["service", "ls"]);
    assert!(out.contains("4/4"), "{out}");
}
