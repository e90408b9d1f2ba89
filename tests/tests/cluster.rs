//! A real swarm: three managers and two workers, each its own daemon on its
//! own loopback address, joined with tokens over mutual TLS; then the
//! failures a swarm must survive (leader killed, worker killed, every node
//! restarted).

use swarmlet_e2e::swarm::{eventually, join_token, node_rows, Swarm};
use swarmlet_e2e::Node;

/// `service ps NAME --format json`: (node hostname, state, desired) per task.
fn tasks(node: &Node, service: &str) -> Result<Vec<(String, String, String)>, String> {
    let out = node.cli(&["service", "ps", service, "--format", "json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("service ps json: {e}"))?;
    Ok(v.as_array()
        .ok_or("not a list")?
        .iter()
        .map(|t| {
            (
                t["node_name"].as_str().unwrap_or_default().to_string(),
                t["task"]["state"].as_str().unwrap_or_default().to_string(),
                t["task"]["desired_state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect())
}

/// The hostnames running a task of `service`, once `n` tasks run.
fn running_on(node: &Node, service: &str, n: usize) -> Vec<String> {
    let mut on = Vec::new();
    eventually(&format!("{n} running tasks of {service}"), || {
        let t = tasks(node, service)?;
        on = t
            .iter()
            .filter(|(_, state, desired)| state == "running" && desired == "running")
            .map(|(host, _, _)| host.clone())
            .collect();
        if on.len() == n {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    });
    on
}

#[test]
fn five_nodes_join_and_every_manager_sees_them() {
    let swarm = Swarm::start("five", 3, 2);
    for m in &swarm.managers {
        let rows = node_rows(m).expect("node ls");
        assert_eq!(rows.len(), 5, "{rows:?}");
        let me: Vec<_> = rows.iter().filter(|r| r.is_self).collect();
        assert_eq!(
            me.len(),
            1,
            "one row marked as the answering node: {rows:?}"
        );
        assert_eq!(me[0].hostname, m.name, "{rows:?}");
        for w in &swarm.workers {
            let row = rows
                .iter()
                .find(|r| r.hostname == w.name)
                .expect("worker row");
            assert_eq!(row.role, "worker", "{rows:?}");
            assert_eq!(row.manager_status, "", "{rows:?}");
        }
        let table = m.ok(&["node", "ls"]);
        assert!(table.contains(" * "), "{table}");
        assert_eq!(table.matches("Leader").count(), 1, "{table}");
        assert_eq!(table.matches("Reachable").count(), 2, "{table}");
    }
    // A worker answers no control-plane questions.
    let err = swarm.workers[0].fails(&["node", "ls"]);
    assert!(err.contains("manager"), "{err}");

    // Wrong tokens add nothing, and each refusal says what is wrong.
    let stranger = Node::start("five-x");
    let good = join_token(&swarm.managers[0], "worker");
    let (head, secret) = good.rsplit_once('-').expect("token has a secret");
    let wrong_secret = format!("{head}-{}", "0".repeat(secret.len()));
    let err = stranger.fails(&[
        "join",
        "--token",
        &wrong_secret,
        &swarm.managers[1].cluster_addr(),
    ]);
    assert!(err.contains("secret"), "{err}");
    let parts: Vec<&str> = good.split('-').collect();
    let wrong_ca = format!(
        "{}-{}-{}-{}",
        parts[0],
        parts[1],
        "1".repeat(parts[2].len()),
        parts[3]
    );
    let err = stranger.fails(&[
        "join",
        "--token",
        &wrong_ca,
        &swarm.managers[0].cluster_addr(),
    ]);
    assert!(err.contains("CA"), "{err}");
    for m in &swarm.managers {
        assert_eq!(node_rows(m).expect("node ls").len(), 5, "nothing was added");
    }
}

#[test]
fn the_leader_dies_and_no_acknowledged_write_is_lost() {
    let mut swarm = Swarm::start("lead", 3, 0);
    let old = swarm.leader();
    // Acknowledged writes through every manager (followers forward).
    for (i, m) in swarm.managers.iter().enumerate() {
        m.create(&format!("s{i}"), "hello", &["--replicas", "2", "--detach"]);
    }
    swarm.managers[(old + 1) % 3].ok(&["service", "scale", "s0=3", "--detach"]);
    swarm.managers[old].kill9();
    let new = swarm.leader();
    assert_ne!(new, old);
    let survivor = (0..3)
        .find(|&i| i != old && i != new)
        .expect("a third manager");
    for i in [new, survivor] {
        let ls = swarm.managers[i].ok(&["service", "ls"]);
        for s in ["s0", "s1", "s2"] {
            assert!(ls.contains(s), "{s} missing after the leader died:\n{ls}");
        }
    }
    // Writes work on the survivors, through the follower too.
    swarm.managers[survivor].ok(&["service", "scale", "s1=1", "--detach"]);
    running_on(&swarm.managers[new], "s1", 1);
    running_on(&swarm.managers[new], "s0", 3);
    // The old leader comes back as a follower with everything.
    swarm.managers[old].spawn();
    eventually("the old leader to catch up", || {
        let ls = swarm.managers[old].ok(&["service", "ls"]);
        if ls.contains("s2") && ls.contains("1/1") {
            Ok(())
        } else {
            Err(ls)
        }
    });
}

#[test]
fn a_dead_workers_replicas_come_back_elsewhere() {
    let mut swarm = Swarm::start_with("dead", 1, 2, &["--node-down-after", "2s"]);
    let m = &swarm.managers[0];
    m.create("web", "hello", &["--replicas", "6"]);
    let before = running_on(m, "web", 6);
    let victim = &swarm.workers[0].name.clone();
    assert!(
        before.iter().any(|h| h == victim),
        "the scheduler put nothing on {victim}: {before:?}"
    );
    swarm.workers[0].kill9();
    let m = &swarm.managers[0];
    eventually(&format!("{victim} to be Down"), || {
        let rows = node_rows(m)?;
        match rows.iter().find(|r| &r.hostname == victim) {
            Some(r) if r.status == "Down" => Ok(()),
            _ => Err(format!("{rows:?}")),
        }
    });
    eventually("6 replicas running on live nodes", || {
        let on = running_on(m, "web", 6);
        if on.iter().any(|h| h == victim) {
            Err(format!("still counted on the dead node: {on:?}"))
        } else {
            Ok(())
        }
    });
    // The worker comes back: Ready again, and it runs nothing that moved away.
    swarm.workers[0].spawn();
    eventually(&format!("{victim} to be Ready"), || {
        let rows = node_rows(&swarm.managers[0])?;
        match rows.iter().find(|r| &r.hostname == victim) {
            Some(r) if r.status == "Ready" => Ok(()),
            _ => Err(format!("{rows:?}")),
        }
    });
    let on = running_on(&swarm.managers[0], "web", 6);
    assert_eq!(
        on.len(),
        6,
        "no duplicates after the node came back: {on:?}"
    );
}

#[test]
fn every_node_restarts_into_the_same_swarm() {
    let mut swarm = Swarm::start("again", 3, 2);
    swarm.managers[0].create("kept", "hello", &["--replicas", "3"]);
    for n in swarm.managers.iter_mut().chain(swarm.workers.iter_mut()) {
        n.kill9();
    }
    for n in swarm.managers.iter_mut().chain(swarm.workers.iter_mut()) {
        n.spawn();
    }
    swarm.wait_all_ready();
    let l = swarm.leader();
    running_on(&swarm.managers[l], "kept", 3);
}
