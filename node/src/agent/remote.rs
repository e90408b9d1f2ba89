//! On a worker: the dispatcher of a manager, over the cluster port
//! (`ClusterCall`, which the transport implements with mutual TLS).
//!
//! The source talks to one manager at a time. When a call to it fails (no
//! answer, or the manager says it cannot serve: no leader reachable), the
//! next call goes to the next manager in its list; the list is refreshed
//! from every status answer and, when `managers_file` is set, kept there so
//! a restarted worker finds the managers again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use swarmlet_proto::dispatcher::{
    Assignments, AssignmentsRequest, PortReport, Session, SessionRequest, Since, StatusAck,
    StatusReport,
};
use swarmlet_proto::TaskStatus;

use super::fetch;
use super::source::{AssignmentSource, SourceError, POLL_WAIT};
use crate::blobs::Blobs;
use crate::dispatcher::call::post;
use crate::dispatcher::{routes, CallError, ClusterCall};

/// A status call or heartbeat that takes longer than this counts as the
/// manager not answering (reports wait for a raft commit, hence not 1 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

struct Managers {
    list: Vec<String>,
    current: usize,
}

pub struct RemoteSource {
    call: Arc<dyn ClusterCall>,
    blobs: Arc<Blobs>,
    managers: Mutex<Managers>,
    heartbeat_ms: AtomicU64,
    managers_file: Option<PathBuf>,
}

impl RemoteSource {
    /// `managers`: cluster addresses to start from (the join answer's, or
    /// the ones `managers_file` kept).
    pub fn new(
        call: Arc<dyn ClusterCall>,
        blobs: Arc<Blobs>,
        managers: Vec<String>,
        managers_file: Option<PathBuf>,
    ) -> RemoteSource {
        RemoteSource {
            call,
            blobs,
            managers: Mutex::new(Managers {
                list: managers,
                current: 0,
            }),
            heartbeat_ms: AtomicU64::new(crate::dispatcher::HEARTBEAT_PERIOD.as_millis() as u64),
            managers_file,
        }
    }

    /// The managers kept in `path` by an earlier run, if any.
    pub fn load_managers(path: &std::path::Path) -> Vec<String> {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Managers> {
        self.managers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The manager calls go to now.
    pub fn current(&self) -> Option<String> {
        let m = self.lock();
        m.list.get(m.current).cloned()
    }

    pub fn managers(&self) -> Vec<String> {
        self.lock().list.clone()
    }

    /// `addr` failed: the next call goes to the next manager.
    fn failed(&self, addr: &str, why: &CallError) {
        let mut m = self.lock();
        if m.list.get(m.current).map(String::as_str) == Some(addr) && !m.list.is_empty() {
            m.current = (m.current + 1) % m.list.len();
            tracing::warn!(manager = %addr, next = %m.list[m.current], "the manager stopped answering ({why}); failing over");
        }
    }

    fn refresh(&self, managers: Vec<String>) {
        if managers.is_empty() {
            return;
        }
        let mut m = self.lock();
        if m.list == managers {
            return;
        }
        let current = m.list.get(m.current).cloned();
        m.current = current
            .and_then(|c| managers.iter().position(|a| *a == c))
            .unwrap_or(0);
        m.list = managers;
        if let Some(path) = &self.managers_file {
            let bytes = serde_json::to_vec(&m.list).unwrap_or_default();
            if let Err(e) = crate::fsutil::write_atomic(path, &bytes) {
                tracing::warn!("cannot keep the manager list: {e}");
            }
        }
    }

    /// One call to the current manager; a failure moves to the next one.
    async fn to_current<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, SourceError> {
        let Some(addr) = self.current() else {
            return Err(SourceError::Unavailable(
                "no manager address is known; join the swarm again".into(),
            ));
        };
        let result = match tokio::time::timeout(timeout, post(&*self.call, &addr, path, body)).await
        {
            Ok(r) => r,
            Err(_) => Err(CallError::Unreachable {
                addr: addr.clone(),
                reason: format!("no answer within {timeout:?}"),
            }),
        };
        result.map_err(|e| {
            match &e {
                // The manager answered but refuses this node: not its fault.
                CallError::Status { code, .. } if *code == 400 || *code == 403 => {}
                _ => self.failed(&addr, &e),
            }
            match e {
                CallError::Status { code: 400, .. } | CallError::Status { code: 403, .. } => {
                    SourceError::Refused(e.to_string())
                }
                e => SourceError::Unavailable(e.to_string()),
            }
        })
    }

    /// Opens a session with the first manager that answers (a hello that
    /// also tells the heartbeat period and the managers).
    pub async fn connect(&self) -> Result<Session, SourceError> {
        let tries = self.lock().list.len().max(1);
        let mut last = SourceError::Unavailable("no manager address is known".into());
        for _ in 0..tries {
            match self
                .to_current::<_, Session>(routes::SESSION, &SessionRequest {}, CALL_TIMEOUT)
                .await
            {
                Ok(s) => {
                    self.heartbeat_ms
                        .store(s.heartbeat_period_ms.max(10), Ordering::Relaxed);
                    self.refresh(s.managers.clone());
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl AssignmentSource for RemoteSource {
    fn assignments(&self, since: Option<Since>) -> BoxFuture<'_, Result<Assignments, SourceError>> {
        async move {
            let req = AssignmentsRequest {
                since,
                wait_ms: POLL_WAIT.as_millis() as u64,
            };
            self.to_current(routes::ASSIGNMENTS, &req, POLL_WAIT + CALL_TIMEOUT)
                .await
        }
        .boxed()
    }

    fn report(&self, updates: Vec<TaskStatus>) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            // A heartbeat that takes longer than a period is as good as lost.
            let timeout = if updates.is_empty() {
                self.heartbeat_period().max(Duration::from_millis(500))
            } else {
                CALL_TIMEOUT
            };
            let ack: StatusAck = self
                .to_current(routes::STATUS, &StatusReport { updates }, timeout)
                .await?;
            self.heartbeat_ms
                .store(ack.heartbeat_period_ms.max(10), Ordering::Relaxed);
            self.refresh(ack.managers);
            if !ack.refused.is_empty() {
                tracing::warn!(tasks = ?ack.refused, "the dispatcher refused reports about tasks that are not this node's");
            }
            Ok(())
        }
        .boxed()
    }

    fn report_ports(&self, report: PortReport) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            let _: serde_json::Value = self
                .to_current(routes::PORTS, &report, CALL_TIMEOUT)
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn fetch_component<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<(), SourceError>> {
        async move {
            // The current manager first, then the others.
            let mut addrs = self.managers();
            if let Some(c) = self.current() {
                addrs.retain(|a| *a != c);
                addrs.insert(0, c);
            }
            fetch::fetch(&*self.call, &addrs, digest, &self.blobs).await
        }
        .boxed()
    }

    fn heartbeat_period(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use swarmlet_proto::{Command, NodeRole, TaskState};

    use super::*;
    use crate::dispatcher::tests::{cluster, task};
    use crate::dispatcher::{Caller, Dispatcher, DispatcherConfig, DispatcherError};

    type Manager = (Arc<Dispatcher>, Arc<Blobs>);

    /// The cluster port without TLS: requests go, as JSON, to the route
    /// functions of the dispatcher registered under an address; an address
    /// that is not registered does not answer (a dead manager).
    struct Loopback {
        caller: Caller,
        managers: Mutex<HashMap<String, Manager>>,
        /// Managers that send other bytes than the digest names.
        lying: Mutex<Vec<String>>,
    }

    fn status(addr: &str, e: DispatcherError) -> CallError {
        CallError::Status {
            addr: addr.into(),
            code: e.status_code(),
            message: e.to_string(),
        }
    }

    impl ClusterCall for Loopback {
        fn post_json<'a>(
            &'a self,
            addr: &'a str,
            path: &'a str,
            body: serde_json::Value,
        ) -> BoxFuture<'a, Result<serde_json::Value, CallError>> {
            async move {
                let Some((d, _)) = self.managers.lock().unwrap().get(addr).cloned() else {
                    return Err(CallError::Unreachable {
                        addr: addr.into(),
                        reason: "connection refused".into(),
                    });
                };
                let c = &self.caller;
                let bad =
                    |e: serde_json::Error| status(addr, DispatcherError::BadRequest(e.to_string()));
                fn answer<T: serde::Serialize>(
                    addr: &str,
                    r: Result<T, DispatcherError>,
                ) -> Result<serde_json::Value, CallError> {
                    r.map(|v| serde_json::to_value(v).unwrap())
                        .map_err(|e| status(addr, e))
                }
                match path {
                    routes::SESSION => answer(
                        addr,
                        routes::session(&d, c, serde_json::from_value(body).map_err(bad)?).await,
                    ),
                    routes::ASSIGNMENTS => answer(
                        addr,
                        routes::assignments(&d, c, serde_json::from_value(body).map_err(bad)?)
                            .await,
                    ),
                    routes::STATUS => answer(
                        addr,
                        routes::status(&d, c, serde_json::from_value(body).map_err(bad)?).await,
                    ),
                    _ => panic!("no route {path}"),
                }
            }
            .boxed()
        }

        fn get_bytes<'a>(
            &'a self,
            addr: &'a str,
            path: &'a str,
        ) -> BoxFuture<'a, Result<Vec<u8>, CallError>> {
            async move {
                let Some((_, blobs)) = self.managers.lock().unwrap().get(addr).cloned() else {
                    return Err(CallError::Unreachable {
                        addr: addr.into(),
                        reason: "connection refused".into(),
                    });
                };
                let digest = path.strip_prefix(routes::BLOBS).unwrap();
                let mut bytes = routes::blob(&blobs, digest)
                    .await
                    .map_err(|e| status(addr, e))?;
                if self.lying.lock().unwrap().iter().any(|a| a == addr) {
                    bytes.push(0);
                }
                Ok(bytes)
            }
            .boxed()
        }
    }

    fn blobs(name: &str) -> (Arc<Blobs>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "swarmlet-remote-test-{}-{name}-{}",
            std::process::id(),
            crate::identity::random_id(6)
        ));
        (Arc::new(Blobs::open(&dir, 1 << 20).unwrap()), dir)
    }

    const A: &str = "127.13.0.1:2377";
    const B: &str = "127.13.0.3:2377";

    #[tokio::test]
    async fn a_worker_gets_assignments_reports_and_fails_over() {
        let c = cluster().await;
        let d = |id: &str| {
            Dispatcher::new(
                id.into(),
                c.store.clone(),
                c.raft.clone(),
                DispatcherConfig::default(),
                None,
            )
        };
        let (blobs_a, dir_a) = blobs("a");
        let (blobs_b, dir_b) = blobs("b");
        let (blobs_w, dir_w) = blobs("w");
        let net = Arc::new(Loopback {
            caller: Caller {
                node_id: "w".into(),
                role: NodeRole::Worker,
            },
            managers: Mutex::new(HashMap::from([
                (A.to_string(), (d("m"), blobs_a.clone())),
                (B.to_string(), (d("m2"), blobs_b.clone())),
            ])),
            lying: Mutex::new(Vec::new()),
        });
        let src = RemoteSource::new(net.clone(), blobs_w.clone(), vec![A.into()], None);
        let session = src.connect().await.unwrap();
        assert_eq!(session.node_id, "w");
        assert_eq!(src.managers(), [A, B], "the session tells all managers");

        let full = src.assignments(None).await.unwrap();
        assert!(full.full && full.tasks.is_empty());
        c.raft
            .propose(Command::CreateTasks {
                tasks: vec![task("tw", "w", 1)],
            })
            .await
            .unwrap();
        let since = Some(Since {
            session_id: full.session_id.clone(),
            seq: full.seq,
        });
        let next = src.assignments(since.clone()).await.unwrap();
        assert!(!next.full);
        assert_eq!(next.tasks[0].id, "tw");
        assert_eq!(next.services[0].spec.name, "web");

        let running = TaskStatus {
            task_id: "tw".into(),
            state: TaskState::Running,
            message: "running".into(),
            error: None,
            endpoint: None,
        };
        src.report(vec![running.clone()]).await.unwrap();
        assert_eq!(c.store.read().tasks["tw"].state, TaskState::Running);

        // Manager A dies: the call fails, the next goes to B.
        net.managers.lock().unwrap().remove(A);
        assert!(matches!(
            src.report(Vec::new()).await,
            Err(SourceError::Unavailable(_))
        ));
        assert_eq!(src.current().as_deref(), Some(B));
        src.report(vec![running]).await.unwrap();
        let from_b = src.assignments(since).await.unwrap();
        assert!(
            from_b.full,
            "another manager's session starts with everything"
        );
        assert_eq!(from_b.tasks.len(), 1);

        // Components come from a manager and are checked first.
        let digest = blobs_b.put(b"\0asm\x0d\x00\x01\x00 a component").unwrap();
        net.lying.lock().unwrap().push(B.to_string());
        let err = src.fetch_component(&digest.to_string()).await.unwrap_err();
        assert!(err.to_string().contains("digest"), "{err}");
        assert!(
            blobs_w.existing(&digest.to_string()).is_err(),
            "nothing stored"
        );
        net.lying.lock().unwrap().clear();
        src.fetch_component(&digest.to_string()).await.unwrap();
        blobs_w.verified(&digest.to_string()).unwrap();
        for dir in [dir_a, dir_b, dir_w] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
