//! Gossip membership across a real swarm (3 managers + 1 worker, each its
//! own daemon on its own loopback address, gossiping on IP:7946/udp): what
//! nodes gossip reaches every manager, datagrams without the swarm's MAC are
//! dropped and counted, and a silent manager is called Unreachable by gossip
//! before the dispatcher would mark it Down.

use std::net::UdpSocket;

use swarmlet_e2e::swarm::{eventually, info_json, inspect_node, node_id, node_rows, Swarm};

/// `--node-down-after 120s`: the dispatcher keeps a killed node `Ready` for
/// two minutes, so a manager shown `Unreachable` while still `Ready` was
/// judged by gossip alone.
const ARGS: &[&str] = &["--node-down-after", "120s"];

#[test]
fn gossip_spreads_platforms_rejects_forgeries_and_notices_a_dead_manager() {
    let mut swarm = Swarm::start_with("gossip", 3, 1, ARGS);
    let worker = &swarm.workers[0];
    let worker_id = node_id(&swarm.managers[0], &worker.name);

    // Every manager learns the worker's platform from the worker's gossip
    // (the store never holds it).
    for m in &swarm.managers {
        eventually(
            &format!(
                "{}'s node inspect to show the worker's gossiped platform",
                m.name
            ),
            || {
                let v = inspect_node(m, &worker_id)?;
                let g = &v["gossip"];
                if g["os"] == std::env::consts::OS
                    && g["arch"] == std::env::consts::ARCH
                    && g["liveness"] == "live"
                    && g["cpus"].as_u64().unwrap_or(0) >= 1
                    && g["addr"] == format!("{}:7946", worker.ip)
                {
                    Ok(())
                } else {
                    Err(v.to_string())
                }
            },
        );
    }

    // Every node gossips and knows all four, live.
    for n in swarm.nodes() {
        eventually(&format!("{} to gossip with 4 live members", n.name), || {
            let g = info_json(n)?["gossip"].clone();
            if g["running"] == true
                && g["addr"] == format!("{}:7946", n.ip)
                && g["members"] == 4
                && g["live"] == 4
            {
                Ok(())
            } else {
                Err(g.to_string())
            }
        });
    }
    let text = swarm.managers[1].ok(&["info"]);
    assert!(
        text.contains(&format!("Gossip: {}:7946 (udp)", swarm.managers[1].ip))
            && text.contains("Members: 4 (4 live)"),
        "{text}"
    );

    // Datagrams without the swarm's MAC: garbage, and a well-framed one
    // (wire version 1, a 32-byte tag) whose tag is wrong.
    let target = &swarm.managers[1];
    let before = info_json(target).expect("info")["gossip"]["rejected_datagrams"]
        .as_u64()
        .expect("a rejected-datagram count");
    let sock = UdpSocket::bind((worker.ip, 0)).expect("bind a UDP socket");
    let to = format!("{}:7946", target.ip);
    sock.send_to(b"not gossip at all", &to)
        .expect("send garbage");
    let mut forged = vec![1u8];
    forged.extend_from_slice(&[0xAB; 32]);
    forged.extend_from_slice(b"\x00a chitchat message from someone without the key");
    sock.send_to(&forged, &to).expect("send a forged datagram");
    eventually("the two forged datagrams to be counted as dropped", || {
        let g = info_json(target)?["gossip"].clone();
        match g["rejected_datagrams"].as_u64() {
            Some(n) if n >= before + 2 => Ok(()),
            _ => Err(format!("before: {before}, now: {g}")),
        }
    });
    let g = info_json(target).expect("info")["gossip"].clone();
    assert_eq!(
        g["members"], 4,
        "a forged datagram changed the members: {g}"
    );
    let rows = node_rows(target).expect("node ls");
    assert_eq!(rows.len(), 4, "{rows:?}");

    // Kill a manager that does not lead: the survivors' gossip calls it
    // Unreachable while the dispatcher (120 s grace) still says Ready.
    let leader = swarm.leader();
    let victim = (0..3).find(|i| *i != leader).expect("a follower");
    let victim_name = swarm.managers[victim].name.clone();
    swarm.managers[victim].kill9();
    for m in swarm.managers.iter().filter(|m| m.pid().is_some()) {
        eventually(
            &format!(
                "{} to show the killed manager {victim_name} Unreachable",
                m.name
            ),
            || {
                let rows = node_rows(m)?;
                let row = rows
                    .iter()
                    .find(|r| r.hostname == victim_name)
                    .ok_or(format!("{victim_name} is not listed: {rows:?}"))?;
                if row.manager_status == "Unreachable" {
                    assert_eq!(
                        row.status, "Ready",
                        "the dispatcher marked {victim_name} Down first; gossip did not decide"
                    );
                    Ok(())
                } else {
                    Err(format!("{row:?}"))
                }
            },
        );
        let g = info_json(m).expect("info")["gossip"].clone();
        assert_eq!(g["live"], 3, "{}: {g}", m.name);
    }

    // Restarts: the manager (key from its raft store) and the worker (key
    // from swarm.json) gossip again, and everyone sees all four live.
    swarm.managers[victim].spawn();
    swarm.workers[0].sigterm();
    swarm.workers[0].spawn();
    for n in swarm.nodes() {
        eventually(
            &format!(
                "{} to gossip with 4 live members after the restarts",
                n.name
            ),
            || {
                let g = info_json(n)?["gossip"].clone();
                if g["running"] == true && g["members"] == 4 && g["live"] == 4 {
                    Ok(())
                } else {
                    Err(g.to_string())
                }
            },
        );
    }
    for m in &swarm.managers {
        eventually(
            &format!("{} to show {victim_name} Reachable again", m.name),
            || {
                let rows = node_rows(m)?;
                match rows.iter().find(|r| r.hostname == victim_name) {
                    Some(r) if r.manager_status == "Reachable" || r.manager_status == "Leader" => {
                        Ok(())
                    }
                    _ => Err(format!("{rows:?}")),
                }
            },
        );
    }

    // A gossip port someone else holds stops the daemon at start, saying
    // which address and which flag; freed, the node starts and gossips.
    let w = &mut swarm.workers[0];
    w.sigterm();
    let squatter = UdpSocket::bind((w.ip, 7946)).expect("take the worker's gossip port");
    let stderr = w.refuses_to_start(&[]);
    assert!(
        stderr.contains(&format!("{}:7946", w.ip)) && stderr.contains("--gossip-addr"),
        "{stderr}"
    );
    drop(squatter);
    w.spawn();
    eventually("the worker to gossip again once its port is free", || {
        let g = info_json(&swarm.workers[0])?["gossip"].clone();
        if g["running"] == true && g["live"] == 4 {
            Ok(())
        } else {
            Err(g.to_string())
        }
    });
}
