//! The dispatcher on a real single-voter raft log (in a temp dir).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use swarmlet_proto::dispatcher::{AssignmentsRequest, Since, StatusReport};
use swarmlet_proto::{
    Availability, Command, DesiredState, Image, Node, NodeRole, NodeStatus, PortConfig, Service,
    ServiceSpec, Task, TaskState, TaskStatus,
};
use tokio::sync::watch;

use super::*;
use crate::raft::{self, DiskStorage, RaftConfig};
use crate::store::State;

pub(crate) struct TestCluster {
    pub store: Arc<Store>,
    pub raft: RaftHandle,
    _stop: watch::Sender<bool>,
    dir: PathBuf,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn node(id: &str, raft_id: u64, role: NodeRole) -> Node {
    Node {
        id: id.into(),
        raft_id,
        hostname: id.into(),
        role,
        availability: Availability::Active,
        addr: format!("127.13.0.{raft_id}:2377"),
        created_at_ms: 0,
        status: NodeStatus::ready(),
        port_problems: Vec::new(),
    }
}

/// A wasm service `id` named `name` publishing `ports`.
pub(crate) fn service(id: &str, name: &str, replicas: u64, ports: Vec<PortConfig>) -> Service {
    Service {
        id: id.into(),
        spec: ServiceSpec {
            name: name.into(),
            replicas,
            image: Image::Wasm {
                digest: format!("sha256:{}", "0".repeat(64)),
                name: "w.wasm".into(),
                size: 1,
            },
            ports,
            limits: Default::default(),
            allow_outbound: vec![],
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

pub(crate) fn task(id: &str, node: &str, slot: u64) -> Task {
    Task {
        id: id.into(),
        service_id: "s".into(),
        service_name: "web".into(),
        slot,
        service_version: 1,
        node_id: Some(node.into()),
        desired_state: DesiredState::Running,
        state: TaskState::Assigned,
        message: String::new(),
        error: None,
        created_at_ms: 0,
        updated_at_ms: 0,
        endpoint: None,
    }
}

/// Manager `m` (raft 1, the leader) and worker `w`, one service `s`.
pub(crate) async fn cluster() -> TestCluster {
    let dir = std::env::temp_dir().join(format!(
        "swarmlet-dispatcher-test-{}-{}",
        std::process::id(),
        crate::identity::random_id(8)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut state = State {
        cluster_id: Some("c".into()),
        ..Default::default()
    };
    state
        .nodes
        .insert("m".into(), node("m", 1, NodeRole::Manager));
    state
        .nodes
        .insert("w".into(), node("w", 2, NodeRole::Worker));
    state
        .nodes
        .insert("m2".into(), node("m2", 3, NodeRole::Manager));
    state
        .services
        .insert("s".into(), service("s", "web", 2, vec![]));
    let store = Arc::new(Store::new());
    let (stop_tx, stop) = watch::channel(false);
    let storage = DiskStorage::open(&dir.join("raft.redb")).unwrap();
    let (raft, _task) = raft::start(
        RaftConfig { id: 1 },
        storage,
        store.clone(),
        Some(state),
        Arc::new(raft::NoTransport),
        stop,
    )
    .unwrap();
    let mut l = raft.leadership();
    tokio::time::timeout(Duration::from_secs(30), l.wait_for(|x| *x))
        .await
        .expect("the single voter never became leader")
        .unwrap();
    TestCluster {
        store,
        raft,
        _stop: stop_tx,
        dir,
    }
}

fn worker() -> Caller {
    Caller {
        node_id: "w".into(),
        role: NodeRole::Worker,
    }
}

fn since(a: &Assignments) -> Option<Since> {
    Some(Since {
        session_id: a.session_id.clone(),
        seq: a.seq,
    })
}

#[tokio::test]
async fn long_poll_answers_full_then_changes_then_times_out_empty() {
    let c = cluster().await;
    let d = Dispatcher::new(
        "m".into(),
        c.store.clone(),
        c.raft.clone(),
        DispatcherConfig::default(),
        None,
    );
    let w = worker();
    let first = d
        .assignments(
            &w,
            AssignmentsRequest {
                since: None,
                wait_ms: 10_000,
            },
        )
        .await
        .unwrap();
    assert!(first.full && first.tasks.is_empty(), "{first:?}");

    // A poll from the last answer waits; a task for the manager does not
    // wake it with anything, a task for the worker does.
    let poll = {
        let (d, w, since) = (d.clone(), w.clone(), since(&first));
        tokio::spawn(async move {
            d.assignments(
                &w,
                AssignmentsRequest {
                    since,
                    wait_ms: 20_000,
                },
            )
            .await
        })
    };
    c.raft
        .propose(Command::CreateTasks {
            tasks: vec![task("tm", "m", 1)],
        })
        .await
        .unwrap();
    c.raft
        .propose(Command::CreateTasks {
            tasks: vec![task("tw", "w", 2)],
        })
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("the long poll did not answer after the worker got a task")
        .unwrap()
        .unwrap();
    assert!(!second.full);
    assert_eq!(
        second
            .tasks
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        ["tw"],
        "only the worker's own task: {second:?}"
    );
    assert_eq!(second.services.len(), 1, "with its service");
    assert_ne!(second.seq, first.seq);

    // Nothing changes for the worker: an empty answer after the wait.
    let third = d
        .assignments(
            &w,
            AssignmentsRequest {
                since: since(&second),
                wait_ms: 100,
            },
        )
        .await
        .unwrap();
    assert!(!third.full && third.tasks.is_empty() && third.services.is_empty());

    // The task is moved away (desired shutdown) and then ends.
    c.raft
        .propose(Command::SetDesiredState {
            task_ids: vec!["tw".into()],
            desired: DesiredState::Shutdown,
        })
        .await
        .unwrap();
    let fourth = d
        .assignments(
            &w,
            AssignmentsRequest {
                since: since(&third),
                wait_ms: 10_000,
            },
        )
        .await
        .unwrap();
    assert_eq!(fourth.tasks.len(), 1);
    assert_eq!(fourth.tasks[0].desired_state, DesiredState::Shutdown);

    // An answer the agent never got (or another manager's) means: all.
    let stale = d
        .assignments(
            &w,
            AssignmentsRequest {
                since: since(&second),
                wait_ms: 10_000,
            },
        )
        .await
        .unwrap();
    assert!(stale.full);
    assert_eq!(stale.tasks.len(), 1);
    let other = d
        .assignments(
            &w,
            AssignmentsRequest {
                since: Some(Since {
                    session_id: "another manager".into(),
                    seq: stale.seq,
                }),
                wait_ms: 10_000,
            },
        )
        .await
        .unwrap();
    assert!(other.full);
}

#[tokio::test]
async fn status_from_a_node_about_another_nodes_task_is_refused() {
    let c = cluster().await;
    let d = Dispatcher::new(
        "m".into(),
        c.store.clone(),
        c.raft.clone(),
        DispatcherConfig::default(),
        None,
    );
    c.raft
        .propose(Command::CreateTasks {
            tasks: vec![task("tm", "m", 1), task("tw", "w", 2)],
        })
        .await
        .unwrap();
    let running = |id: &str| TaskStatus {
        task_id: id.into(),
        state: TaskState::Running,
        message: "running".into(),
        error: None,
        endpoint: None,
    };
    let ack = d
        .status(
            &worker(),
            StatusReport {
                updates: vec![running("tm"), running("tw"), running("gone")],
            },
        )
        .await
        .unwrap();
    assert_eq!(ack.accepted, 1);
    assert_eq!(ack.refused, ["tm"]);
    assert_eq!(ack.managers, ["127.13.0.1:2377", "127.13.0.3:2377"]);
    let state_of = |id: &str| c.store.read().tasks[id].state;
    assert_eq!(state_of("tw"), TaskState::Running);
    assert_eq!(
        state_of("tm"),
        TaskState::Assigned,
        "the worker cannot change the manager's task"
    );
    let stranger = Caller {
        node_id: "x".into(),
        role: NodeRole::Worker,
    };
    assert!(matches!(
        d.status(&stranger, StatusReport::default()).await,
        Err(DispatcherError::UnknownNode(_))
    ));
    assert_eq!(
        d.forwarded(&worker(), Default::default()),
        Err(DispatcherError::NotManager),
        "a worker cannot vouch for other nodes"
    );
}

#[tokio::test]
async fn a_silent_node_is_marked_down_and_ready_again() {
    let c = cluster().await;
    let d = Dispatcher::new(
        "m".into(),
        c.store.clone(),
        c.raft.clone(),
        DispatcherConfig {
            node_down_after: Duration::from_millis(300),
        },
        None,
    );
    let (_stop_tx, stop) = watch::channel(false);
    tokio::spawn(run(d.clone(), stop));
    let state_of = |n: &str| c.store.read().nodes[n].status.state;
    let wait = |what: &'static str, want: swarmlet_proto::NodeState| {
        let mut changes = c.store.changes();
        let store = c.store.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), async {
                while store.read().nodes["w"].status.state != want {
                    let _ = changes.changed().await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the worker was never marked {what}"));
        }
    };
    wait("Down", swarmlet_proto::NodeState::Down).await;
    assert_eq!(state_of("m"), swarmlet_proto::NodeState::Ready);
    assert!(c.store.read().nodes["w"]
        .status
        .message
        .contains("heartbeat failure"));
    // The worker's agent heartbeats again.
    let beating = {
        let d = d.clone();
        tokio::spawn(async move {
            loop {
                d.heartbeat("w").unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    wait("Ready", swarmlet_proto::NodeState::Ready).await;
    beating.abort();
}
