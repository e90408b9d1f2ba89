//! A manager cut off from the others by a real partition: three managers,
//! each a daemon in its own network namespace on one bridge
//! (`swarmlet_e2e::netns`), and a cut that silently drops everything
//! between one of them and the other two. The cut-off manager cannot
//! change desired state (its writes fail with an error that names the lost
//! leader/quorum, and return instead of hanging), the two others go on
//! accepting writes, and once healed the cut-off manager shows every write
//! made meanwhile and the swarm has one leader again.
//!
//! Needs root, iproute2 and nftables (skipped without them, failed under
//! `CI=true`).

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use swarmlet_e2e::netns::Network;
use swarmlet_e2e::swarm::{eventually, node_rows, Swarm};
use swarmlet_e2e::{guest, swarmlet_bin, Node};

/// A bound on one CLI call on a cut-off manager: far above the writer's
/// 8 s wait for a leader, far below "hangs forever".
const CLI_BOUND: Duration = Duration::from_secs(120);

/// Three managers, manager `i` in namespace `i` of `net`, joined into one
/// swarm with one leader.
fn swarm_in(net: &Network, prefix: &str) -> Swarm {
    let managers = (0..3)
        .map(|i| Node::start_in(net, i, &format!("{prefix}-m{}", i + 1)))
        .collect();
    Swarm::form(managers, Vec::new())
}

/// `service ls --format json` on `node`: desired replicas per service name.
fn desired(node: &Node) -> Result<BTreeMap<String, u64>, String> {
    let out = node.cli(&["service", "ls", "--format", "json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("service ls --format json printed no JSON: {e}"))?;
    Ok(v.as_array()
        .ok_or("service ls --format json: not a list")?
        .iter()
        .map(|s| {
            (
                s["service"]["spec"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                s["desired"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect())
}

/// Waits until `node` shows exactly the services and desired replicas of
/// `want`.
fn shows(node: &Node, want: &[(&str, u64)], what: &str) {
    let want: BTreeMap<String, u64> = want.iter().map(|(n, r)| (n.to_string(), *r)).collect();
    eventually(&format!("{what} on {}", node.name), || {
        let got = desired(node)?;
        if got == want {
            Ok(())
        } else {
            Err(format!("want {want:?}, got {got:?}"))
        }
    });
}

/// Runs the CLI on `node` with `args`, which must fail (on a manager that
/// cannot reach a quorum); returns its stderr. Fails the test if the CLI
/// does not return within `CLI_BOUND` (a hang), and says how long it took.
fn write_fails(node: &Node, args: &[&str]) -> String {
    let host = format!("unix://{}", node.socket().display());
    let mut child = Command::new(swarmlet_bin())
        .arg("-H")
        .arg(host)
        .args(args)
        .env_remove("SWARMLET_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run swarmlet cli");
    let started = Instant::now();
    let deadline = started + CLI_BOUND;
    while child.try_wait().expect("wait for the cli").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`swarmlet {}` on the cut-off manager {} did not return within {CLI_BOUND:?}: a write without a quorum hangs",
                args.join(" "),
                node.name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out: Output = child.wait_with_output().expect("cli output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "`swarmlet {}` on the cut-off {} returned after {:?}: {}",
        args.join(" "),
        node.name,
        started.elapsed(),
        stderr.trim()
    );
    assert!(
        !out.status.success(),
        "`swarmlet {}` succeeded on the cut-off manager {}:\n{}",
        args.join(" "),
        node.name,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("leader") || stderr.contains("quorum"),
        "the error on a cut-off manager should say it has no leader/quorum: {stderr}"
    );
    stderr
}

/// The leader as `node ls` on each of `managers` shows it, once they all
/// name the same one; returns its index in `swarm.managers`.
fn agreed_leader(swarm: &Swarm, managers: &[usize]) -> usize {
    let mut found = None;
    eventually(
        &format!(
            "managers {:?} to agree on one leader among themselves",
            managers
                .iter()
                .map(|&i| &swarm.managers[i].name)
                .collect::<Vec<_>>()
        ),
        || {
            let mut seen = Vec::new();
            for &i in managers {
                let rows = node_rows(&swarm.managers[i])?;
                let leaders: Vec<_> = rows
                    .iter()
                    .filter(|r| r.manager_status == "Leader")
                    .map(|r| r.hostname.clone())
                    .collect();
                if leaders.len() != 1 {
                    return Err(format!("{} shows {rows:?}", swarm.managers[i].name));
                }
                seen.push(leaders[0].clone());
            }
            seen.dedup();
            let [name] = seen.as_slice() else {
                return Err(format!("they name different leaders: {seen:?}"));
            };
            let Some(l) = swarm.managers.iter().position(|m| &m.name == name) else {
                return Err(format!("{name} is no manager of this swarm"));
            };
            if !managers.contains(&l) {
                return Err(format!("{name} is not among them"));
            }
            found = Some(l);
            Ok(())
        },
    );
    found.expect("a leader was agreed on")
}

/// A write on a healed manager: it succeeds, at the latest after the
/// retries a user makes when told to retry (503: an election under way).
fn writes_again(node: &Node, args: &[&str]) {
    eventually(
        &format!("`swarmlet {}` to succeed on {}", args.join(" "), node.name),
        || {
            let out = node.cli(args);
            if out.status.success() {
                Ok(())
            } else {
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                eprintln!("after the heal, {} answered: {}", node.name, err.trim());
                Err(err)
            }
        },
    );
}

fn hello_path() -> String {
    guest("hello").to_string_lossy().into_owned()
}

#[test]
fn a_cut_off_follower_cannot_change_desired_state_and_catches_up_when_healed() {
    let Some(net) = Network::create(3) else {
        return;
    };
    let swarm = swarm_in(&net, "pf");
    let leader = agreed_leader(&swarm, &[0, 1, 2]);
    let cut = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    swarm.managers[leader].create("web", "hello", &["--replicas", "2", "--detach"]);
    shows(
        &swarm.managers[cut],
        &[("web", 2)],
        "the service before the cut",
    );

    net.cut(cut);
    let m = &swarm.managers[cut];
    write_fails(m, &["service", "scale", "web=3", "--detach"]);
    let hello = hello_path();
    write_fails(
        m,
        &["service", "create", "--name", "cutoff", "--detach", &hello],
    );
    // The majority side goes on: through the leader and through the other
    // follower (forwarded).
    swarm.managers[leader].ok(&["service", "scale", "web=3", "--detach"]);
    swarm.managers[other].create("during", "hello", &["--replicas", "1", "--detach"]);
    let after = [("web", 3), ("during", 1)];
    shows(&swarm.managers[leader], &after, "the majority's writes");
    shows(&swarm.managers[other], &after, "the majority's writes");
    // The cut-off manager still shows what it had: its reads answer, and
    // nothing of its failed writes took effect.
    assert_eq!(
        desired(m).expect("service ls on the cut-off manager"),
        BTreeMap::from([("web".to_string(), 2)]),
        "the cut-off manager changed or learned desired state"
    );

    net.heal(cut);
    shows(m, &after, "the writes made during the cut, after the heal");
    agreed_leader(&swarm, &[0, 1, 2]);
    // And it writes again (forwarded to the leader).
    writes_again(m, &["service", "scale", "during=2", "--detach"]);
    for n in &swarm.managers {
        shows(
            n,
            &[("web", 3), ("during", 2)],
            "a write from the healed manager",
        );
    }
}

#[test]
fn a_cut_off_leader_loses_the_lead_and_catches_up_when_healed() {
    let Some(net) = Network::create(3) else {
        return;
    };
    let swarm = swarm_in(&net, "pl");
    let old = agreed_leader(&swarm, &[0, 1, 2]);
    swarm.managers[old].create("web", "hello", &["--replicas", "2", "--detach"]);
    for n in &swarm.managers {
        shows(n, &[("web", 2)], "the service before the cut");
    }

    net.cut(old);
    let rest: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = agreed_leader(&swarm, &rest);
    let survivor = rest
        .iter()
        .copied()
        .find(|&i| i != new)
        .expect("a third manager");
    // The old leader cannot commit anything alone.
    let m = &swarm.managers[old];
    write_fails(m, &["service", "scale", "web=5", "--detach"]);
    let hello = hello_path();
    write_fails(
        m,
        &["service", "create", "--name", "cutoff", "--detach", &hello],
    );
    // The two others elected a leader and accept writes, also forwarded.
    swarm.managers[new].ok(&["service", "scale", "web=3", "--detach"]);
    swarm.managers[survivor].create("during", "hello", &["--replicas", "1", "--detach"]);
    let after = [("web", 3), ("during", 1)];
    for &i in &rest {
        shows(&swarm.managers[i], &after, "the majority's writes");
    }
    assert_eq!(
        desired(m).expect("service ls on the cut-off manager"),
        BTreeMap::from([("web".to_string(), 2)]),
        "the cut-off old leader changed or learned desired state"
    );

    net.heal(old);
    shows(m, &after, "the writes made during the cut, after the heal");
    // One leader, the same on all three.
    agreed_leader(&swarm, &[0, 1, 2]);
    writes_again(m, &["service", "scale", "during=2", "--detach"]);
    for n in &swarm.managers {
        shows(
            n,
            &[("web", 3), ("during", 2)],
            "a write from the old leader",
        );
    }
}
