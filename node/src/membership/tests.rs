//! Real UDP gossip between real chitchat instances on 127.14.0.x (this
//! area's loopback range); each test has its own addresses so they run in
//! parallel.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use swarmlet_proto::model::{Availability, NodeRole};

use super::transport::{open, seal};
use super::*;

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 14, 0, last), DEFAULT_GOSSIP_PORT))
}

fn key(byte: u8) -> GossipKey {
    GossipKey::from_bytes([byte; 32])
}

fn config(last: u8, seeds: &[u8], key: GossipKey) -> MembershipConfig {
    let mut info = NodeInfo::new(
        if last.is_multiple_of(2) {
            NodeRole::Worker
        } else {
            NodeRole::Manager
        },
        format!("127.14.0.{last}:2377"),
    );
    info.labels.insert("n".into(), last.to_string());
    MembershipConfig {
        node_id: format!("node{last:0>21}"),
        info,
        bind_addr: addr(last),
        advertise_addr: None,
        seeds: seeds.iter().map(|s| addr(*s)).collect(),
        key,
        cluster_id: "c-test".into(),
        tuning: Tuning::default(),
    }
}

async fn start(last: u8, seeds: &[u8], key: GossipKey) -> Membership {
    match Membership::start(config(last, seeds, key)).await {
        Ok(m) => m,
        Err(e) => panic!("starting gossip on 127.14.0.{last}: {e}"),
    }
}

/// Polls `check` every 100 ms, at most 600 times (a bound, not a timing
/// claim); fails naming what never happened.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    for _ in 0..600 {
        if let Some(v) = check() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

/// One datagram at the middle socket; a bound (not a timing claim) so a
/// lost datagram fails the test instead of hanging it.
async fn recv(socket: &tokio::net::UdpSocket, buf: &mut [u8]) -> (usize, SocketAddr) {
    match tokio::time::timeout(Duration::from_secs(60), socket.recv_from(buf)).await {
        Ok(Ok(got)) => got,
        Ok(Err(e)) => panic!("receiving at the middle socket: {e}"),
        Err(_) => panic!("never happened: a gossip datagram reached the middle socket"),
    }
}

fn find<'a>(members: &'a [Member], node_id: &str) -> Option<&'a Member> {
    members.iter().find(|m| m.node_id == node_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_see_each_others_fields_and_updates() {
    let a = start(1, &[], key(7)).await;
    let b = start(2, &[1], key(7)).await;
    let c = start(3, &[1], key(7)).await;
    let nodes = [&a, &b, &c];
    eventually("every node sees all three live", || {
        nodes
            .iter()
            .all(|n| n.members().iter().filter(|m| m.is_live()).count() == 3)
            .then_some(())
    })
    .await;

    // Each sees the others' gossiped fields exactly as they set them.
    for n in nodes {
        let members = n.members();
        for last in 1..=3u8 {
            let expected = config(last, &[], key(7));
            let m = find(&members, &expected.node_id).expect("listed");
            assert_eq!(
                m.info,
                expected.info,
                "fields of node {last} as seen by {}",
                n.self_id().node_id
            );
            assert_eq!(m.gossip_addr, addr(last));
            assert_eq!(m.is_self, m.node_id == n.self_id().node_id);
        }
    }
    let b_seen_by_a = find(&a.members(), &b.self_id().node_id)
        .cloned()
        .expect("b listed");
    assert_eq!(b_seen_by_a.info.role, NodeRole::Worker);
    assert_eq!(b_seen_by_a.info.addr, "127.14.0.2:2377");
    assert_eq!(b_seen_by_a.info.platform, Platform::current());
    assert!(b_seen_by_a.info.resources.cpus >= 1);

    // An update spreads, and a watcher is told.
    let mut watch_a = a.watch();
    watch_a.mark_unchanged();
    b.update_self(|info| info.availability = Availability::Drain)
        .await;
    let b_id = b.self_id().node_id.clone();
    eventually("a and c see b drained", || {
        [&a, &c]
            .iter()
            .all(|n| {
                find(&n.members(), &b_id).map(|m| m.info.availability) == Some(Availability::Drain)
            })
            .then_some(())
    })
    .await;
    assert!(
        watch_a.has_changed().unwrap_or(false),
        "a's watch was not notified of b's change"
    );
    assert_eq!(
        a.rejected_datagrams(),
        0,
        "no datagram of the cluster was refused"
    );

    for n in [a, b, c] {
        n.shutdown().await.expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_is_seen_dead() {
    let a = start(4, &[], key(7)).await;
    let b = start(5, &[4], key(7)).await;
    let c = start(6, &[4], key(7)).await;
    eventually("a and b see all three live", || {
        [&a, &b]
            .iter()
            .all(|n| n.members().iter().filter(|m| m.is_live()).count() == 3)
            .then_some(())
    })
    .await;
    let c_id = c.self_id().node_id.clone();
    c.shutdown().await.expect("clean shutdown");
    let stopped = std::time::Instant::now();
    eventually("a and b see c dead", || {
        [&a, &b]
            .iter()
            .all(|n| find(&n.members(), &c_id).map(|m| m.liveness) == Some(Liveness::Dead))
            .then_some(())
    })
    .await;
    // Measured, not asserted (the machine may be loaded): the module doc
    // expects ~8 gossip intervals once rhythms are learnt, more right
    // after start while the 600 ms prior still weighs.
    eprintln!(
        "c seen dead by a and b {:?} after it stopped",
        stopped.elapsed()
    );
    // The others are still live for each other.
    for n in [&a, &b] {
        let live: Vec<_> = n
            .members()
            .into_iter()
            .filter(|m| m.is_live())
            .map(|m| m.node_id)
            .collect();
        assert_eq!(
            live.len(),
            2,
            "live members as seen by {}: {live:?}",
            n.self_id().node_id
        );
    }
}

/// A man in the middle: node b (right key) seeds only a plain UDP socket
/// we hold, so its SYN (whose digest names b) lands with us. Re-tagged with
/// another key, a (right key) drops it, counts it and learns nothing; the
/// untouched original makes a answer and learn b, so the forged one would
/// have mattered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datagram_with_a_wrong_mac_is_dropped_and_adds_no_member() {
    let a = start(7, &[], key(7)).await;
    let middle = tokio::net::UdpSocket::bind(addr(9))
        .await
        .expect("bind the middle socket");
    let b = start(8, &[9], key(7)).await;
    let b_id = b.self_id().node_id.clone();

    let mut buf = vec![0u8; 65_535];
    let (len, from) = recv(&middle, &mut buf).await;
    assert_eq!(from, addr(8));
    let genuine = buf[..len].to_vec();
    let message = open(&key(7), &genuine).expect("b's datagram carries a valid MAC");
    b.shutdown().await.expect("clean shutdown");

    let knows_b = |m: &Membership| {
        let chitchat = m.chitchat.try_lock();
        chitchat.map(|c| c.node_states().keys().any(|id| id.node_id == b_id))
    };

    // Forged: the same message tagged with another cluster's key.
    let forged = seal(&key(8), message);
    let before = a.rejected_datagrams();
    middle.send_to(&forged, addr(7)).await.expect("send forged");
    eventually("a counts the forged datagram", || {
        (a.rejected_datagrams() > before).then_some(())
    })
    .await;
    assert_eq!(a.rejected_datagrams(), before + 1);
    let known = eventually("a's state is readable", || knows_b(&a).ok()).await;
    assert!(!known, "a forged datagram added b to a's cluster state");
    assert!(find(&a.members(), &b_id).is_none());

    // Genuine: a accepts it, learns of b and answers the sender.
    middle
        .send_to(&genuine, addr(7))
        .await
        .expect("send genuine");
    eventually("a learns of b from the genuine datagram", || {
        knows_b(&a).ok().filter(|k| *k)
    })
    .await;
    // (b's last SYNs, sent before it stopped, may be queued ahead.)
    let mut answered = false;
    for _ in 0..50 {
        let (len, from) = recv(&middle, &mut buf).await;
        if from == addr(7) {
            assert!(
                open(&key(7), &buf[..len]).is_some(),
                "a's answer is tagged with the cluster key"
            );
            answered = true;
            break;
        }
    }
    assert!(answered, "a never answered the genuine SYN");
    assert_eq!(
        a.rejected_datagrams(),
        before + 1,
        "the genuine datagram was not counted as rejected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_key_never_joins() {
    let a = start(10, &[], key(7)).await;
    let b = start(11, &[10], key(7)).await;
    let outsider = start(12, &[10, 11], key(9)).await;
    eventually("a and b see each other", || {
        [&a, &b]
            .iter()
            .all(|n| n.members().iter().filter(|m| m.is_live()).count() == 2)
            .then_some(())
    })
    .await;
    // The outsider keeps trying (it gossips to its seeds every round); wait
    // until both have refused several of its datagrams, and it refused
    // theirs if any reached it.
    eventually("a and b refuse 5 datagrams each from the outsider", || {
        (a.rejected_datagrams() >= 5 && b.rejected_datagrams() >= 5).then_some(())
    })
    .await;
    let outsider_id = outsider.self_id().node_id.clone();
    for n in [&a, &b] {
        let members = n.members();
        assert!(
            find(&members, &outsider_id).is_none(),
            "the outsider joined {}: {members:?}",
            n.self_id().node_id
        );
        assert_eq!(members.len(), 2);
        let states = n.chitchat.lock().await;
        assert!(
            !states
                .node_states()
                .keys()
                .any(|id| id.node_id == outsider_id),
            "the outsider is in {}'s cluster state",
            n.self_id().node_id
        );
    }
    let alone = outsider.members();
    assert_eq!(alone.len(), 1, "the outsider learnt of others: {alone:?}");
    assert!(alone[0].is_self);
}

#[tokio::test]
async fn bad_configs_are_refused_with_what_to_do() {
    let mut c = config(13, &[], key(7));
    c.bind_addr = "0.0.0.0:7946".parse().unwrap();
    let e = Membership::start(c)
        .await
        .err()
        .expect("an unspecified advertise address is refused");
    assert!(e.to_string().contains("--gossip-addr"), "{e}");

    assert!(GossipKey::from_hex("abcd").is_err());
    let k = GossipKey::generate();
    assert_eq!(GossipKey::from_hex(&k.to_hex()).unwrap(), k);
    assert_eq!(
        format!("{k:?}"),
        "GossipKey(..)",
        "the key never shows in logs"
    );

    let _held = start(14, &[], key(7)).await;
    let e = Membership::start(config(14, &[], key(7)))
        .await
        .err()
        .expect("a port in use is refused");
    assert!(matches!(e, MembershipError::Bind { .. }), "{e}");
}
