//! The harness gives every daemon it starts its own container bridge and
//! subnet (`--bridge`, `--bridge-cidr`), kept across restarts, once the
//! daemon offers those flags (`swarmlet_e2e::bridges_enabled`).

use swarmlet_e2e::{bridges_enabled, Node};

/// The daemon's command line, as the kernel has it.
fn cmdline(node: &Node) -> Vec<String> {
    let pid = node.pid().expect("daemon running");
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .expect("the daemon's cmdline")
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

#[test]
fn each_daemon_gets_its_own_bridge_and_subnet() {
    let mut a = Node::start("bra");
    let b = Node::start("brb");
    if !bridges_enabled() {
        assert!(a.bridge.is_none() && b.bridge.is_none());
        assert_eq!(flag(&cmdline(&a), "--bridge"), None);
        eprintln!("SKIPPED: this swarmlet has no --bridge-cidr (no container runtime)");
        return;
    }
    let (ba, bb) = (a.bridge.clone().unwrap(), b.bridge.clone().unwrap());
    assert_ne!(ba.name, bb.name);
    assert_ne!(ba.cidr, bb.cidr);
    assert!(ba.name.len() <= 15, "{}", ba.name);
    for (node, br) in [(&a, &ba), (&b, &bb)] {
        let args = cmdline(node);
        assert_eq!(flag(&args, "--bridge"), Some(br.name.clone()));
        assert_eq!(flag(&args, "--bridge-cidr"), Some(br.cidr.clone()));
    }
    // A restarted daemon keeps its bridge (its containers' network).
    a.kill9();
    a.spawn();
    assert_eq!(flag(&cmdline(&a), "--bridge"), Some(ba.name));
}
