//! Control-plane throughput, in process (no runtimes, no network):
//!
//! - raft: service-create proposals committed and applied per second on a
//!   real on-disk log (fsync per batch), one at a time and 64 in flight;
//! - orchestrator: tasks placed per second by `reconcile` for one service
//!   over many simulated nodes.
//!
//! `cargo run --release --example control_plane` prints a markdown table;
//! `scripts/bench.sh` includes it. `--quick` uses smaller counts.

use std::sync::Arc;
use std::time::Instant;

use swarmlet::orchestrator::reconcile;
use swarmlet::raft::{self, DiskStorage, RaftConfig};
use swarmlet::store::{State, Store};
use swarmlet_proto::{Availability, Command, Image, Node, NodeRole, Service, ServiceSpec};

fn service(i: usize, replicas: u64) -> Service {
    Service {
        id: format!("{i:025x}"),
        spec: ServiceSpec {
            name: format!("web-{i}"),
            replicas,
            image: Image::Wasm {
                digest: "sha256:00".into(),
                name: "x.wasm".into(),
                size: 1,
            },
            ports: vec![],
            limits: Default::default(),
            allow_outbound: Vec::new(),
            instance_reuse: 0,
            instance_concurrency: 0,
            env: vec![],
            stop_grace_period_ms: None,
        },
        version: 1,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

fn node(i: usize) -> Node {
    Node {
        id: format!("node{i:06}"),
        raft_id: i as u64 + 1,
        hostname: format!("pi{i}"),
        role: NodeRole::Worker,
        availability: Availability::Active,
        addr: String::new(),
        created_at_ms: 0,
        status: swarmlet_proto::NodeStatus::ready(),
        port_problems: Vec::new(),
    }
}

async fn raft_commits(n: usize, in_flight: usize) -> anyhow::Result<f64> {
    let dir = std::env::temp_dir().join(format!(
        "swarmlet-cp-bench-{}-{in_flight}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let storage = DiskStorage::open(&dir.join("raft.redb"))?;
    let store = Arc::new(Store::new());
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let (handle, _task) = raft::start(
        RaftConfig { id: 1 },
        storage,
        store.clone(),
        Some(State::default()),
        Arc::new(raft::NoTransport),
        stop,
    )?;
    let mut leader = handle.leadership();
    let _ = leader.wait_for(|l| *l).await;
    let started = Instant::now();
    let mut next = 0;
    while next < n {
        let batch: Vec<_> = (next..(next + in_flight).min(n))
            .map(|i| {
                handle.propose(Command::CreateService {
                    service: service(i, 1),
                })
            })
            .collect();
        next += batch.len();
        for r in futures::future::join_all(batch).await {
            r?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(store.read().services.len(), n);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(n as f64 / secs)
}

fn placements(nodes: usize, replicas: u64) -> f64 {
    let mut state = State::default();
    for i in 0..nodes {
        let n = node(i);
        state.nodes.insert(n.id.clone(), n);
    }
    let s = service(0, replicas);
    state.services.insert(s.id.clone(), s);
    let started = Instant::now();
    let commands = reconcile(&state, 1);
    let secs = started.elapsed().as_secs_f64();
    let placed: usize = commands
        .iter()
        .map(|c| match c {
            Command::CreateTasks { tasks } => tasks.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(placed as u64, replicas);
    placed as f64 / secs
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 300 } else { 2000 };
    println!("| control plane | figure |");
    println!("| --- | ---: |");
    for in_flight in [1, 64] {
        let rate = raft_commits(n, in_flight).await?;
        println!("| raft: service creates committed+applied/s, {in_flight} in flight ({n} total, fsync'd) | {rate:.0} |");
    }
    let cases: &[(usize, u64)] = if quick {
        &[(100, 10_000)]
    } else {
        &[(100, 10_000), (1_000, 100_000), (5_000, 1_000_000)]
    };
    for &(nodes, replicas) in cases {
        let rate = placements(nodes, replicas);
        println!(
            "| orchestrator: tasks placed/s, {replicas} replicas over {nodes} nodes | {rate:.0} |"
        );
    }
    Ok(())
}
