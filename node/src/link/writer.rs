//! Writes go to the leader. A manager that is not the leader hands the
//! proposal to the leader over the cluster port (`POST /v1/raft/propose`,
//! managers only) and answers its client once the entry is applied here
//! too, so the client reads its own write from this manager next.
//!
//! Client writes carry an idempotency key (`Command::Idempotent`): when a
//! leader change leaves a proposal's fate unknown it is proposed again with
//! the same key, and the store applies it at most once.
//!
//! Architecture invariant: a forwarded proposal is proposed by the receiver
//! only if it leads; it is never forwarded twice (no loops).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use swarmlet_proto::Command;
use tokio::time::Instant;

use std::sync::Arc;

use super::AddressBook;
use crate::raft::{ProposeError, RaftHandle};
use crate::store::StoreError;
use crate::transport::{ClusterPort, Target};

/// How long a write waits for a leader (an election takes 1–2 s).
const LEADER_WAIT: Duration = Duration::from_secs(8);
/// The least a forward is given, also when the deadline is nearly up.
const MIN_FORWARD_WAIT: Duration = Duration::from_secs(1);
/// How long a forwarded write waits to be applied on this manager too.
const LOCAL_APPLY_WAIT: Duration = Duration::from_secs(5);
/// How often a write whose fate was unknown is proposed again.
const UNKNOWN_RETRIES: usize = 3;

pub const PROPOSE_PATH: &str = "/v1/raft/propose";

tokio::task_local! {
    /// The `Idempotency-Key` of the client request being served, if it
    /// sent one (set by the API router around the handler).
    pub static CLIENT_KEY: String;
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProposeRequest {
    pub command: Command,
}

/// Always 200: the outcome of a forwarded proposal.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProposeReply {
    pub index: Option<u64>,
    pub error: Option<RemoteError>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteError {
    pub kind: RemoteErrorKind,
    /// The HTTP status the client API answers with.
    pub status: u16,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteErrorKind {
    NotLeader,
    Unknown,
    AlreadyApplied,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// The leader refused or failed it; `status` is what the client gets.
    #[error("{message}")]
    Remote { status: u16, message: String },
    /// The leader lost leadership while this write was pending.
    #[error("{0}")]
    RemoteFateUnknown(String),
    /// The leader had applied this very write (same key) before.
    #[error("this change was already applied")]
    RemoteAlreadyApplied,
    #[error("no raft leader was elected within {LEADER_WAIT:?}; the swarm has lost its quorum of managers (check \"swarmlet node ls\" and bring managers back), or an election is under way — retry")]
    NoLeader,
    /// A leader was known but no forward to it got an answer in time (a
    /// partition, a dead connection): the write may still commit there.
    #[error("the raft leader at {addr} did not answer within {LEADER_WAIT:?} ({why}): this manager may be cut off from the other managers (check \"swarmlet node ls\" on another manager); the change may or may not have been applied, check before retrying")]
    LeaderUnreachable { addr: String, why: String },
}

/// Proposes through whichever manager leads. Cheap to share.
pub struct Writer {
    pub raft: RaftHandle,
    pub book: Arc<AddressBook>,
    pub port: Arc<ClusterPort>,
}

impl WriteError {
    /// The store had applied this very write (same key) before, here or
    /// on the leader.
    fn already_applied(&self) -> bool {
        matches!(
            self,
            WriteError::Propose(ProposeError::Refused(StoreError::AlreadyApplied(_)))
                | WriteError::RemoteAlreadyApplied
        )
    }

    /// A leader change left the write's fate unknown, here or on the leader.
    fn fate_unknown(&self) -> bool {
        matches!(
            self,
            WriteError::Propose(ProposeError::Unknown { .. }) | WriteError::RemoteFateUnknown(_)
        )
    }
}

impl Writer {
    /// Proposes `command` through the leader and returns its log index once
    /// it is applied on this manager.
    pub async fn propose(&self, command: Command) -> Result<u64, WriteError> {
        let deadline = Instant::now() + LEADER_WAIT;
        // The last forward that may have reached the leader without an
        // answer: (leader address, why).
        let mut unanswered: Option<(String, String)> = None;
        loop {
            let leader = match self.raft.propose(command.clone()).await {
                Ok(o) => return Ok(o.index),
                Err(ProposeError::NotLeader { leader }) => leader,
                Err(e) => return Err(e.into()),
            };
            if let Some(addr) = leader.and_then(|id| self.book.get(id)) {
                // Bounded by the write's own deadline: a request on a
                // connection a partition silently broke would otherwise
                // wait for the pool's request timeout or keep-alive (20-30 s).
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .max(MIN_FORWARD_WAIT);
                let answer = tokio::time::timeout(wait, self.forward(&addr, &command))
                    .await
                    .unwrap_or_else(|_| Err(Forwarded::Retry("its connection went silent".into())));
                match answer {
                    Ok(index) => {
                        let _ =
                            tokio::time::timeout(LOCAL_APPLY_WAIT, self.raft.wait_applied(index))
                                .await;
                        return Ok(index);
                    }
                    Err(Forwarded::Retry(why)) => {
                        tracing::debug!(%addr, "forwarding a write: {why}; retrying");
                        unanswered = Some((addr, why));
                    }
                    // An earlier forward without an answer did apply it.
                    Err(Forwarded::Failed(WriteError::RemoteAlreadyApplied))
                        if unanswered.is_some() =>
                    {
                        return Ok(self.raft.applied_index());
                    }
                    Err(Forwarded::Failed(e)) => return Err(e),
                }
            }
            if Instant::now() >= deadline {
                return Err(match unanswered {
                    Some((addr, why)) => WriteError::LeaderUnreachable { addr, why },
                    None => WriteError::NoLeader,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client's write: applied at most once even when a leader change
    /// makes this manager propose it again.
    pub async fn propose_once(&self, command: Command) -> Result<u64, WriteError> {
        // The client's own key when it sent one (then a retry of the same
        // request, even a new connection's, applies once and answers as
        // the first did), else one for this request.
        let client_key = CLIENT_KEY.try_with(|k| k.clone()).ok();
        let wrapped = Command::Idempotent {
            key: client_key
                .clone()
                .unwrap_or_else(|| crate::identity::random_id(32)),
            command: Box::new(command),
        };
        let retried_by_client = client_key.is_some();
        let mut tries = 0;
        loop {
            match self.propose(wrapped.clone()).await {
                Ok(i) => return Ok(i),
                Err(e) if e.already_applied() && (tries > 0 || retried_by_client) => {
                    return Ok(self.raft.applied_index())
                }
                Err(e) if e.fate_unknown() && tries < UNKNOWN_RETRIES => {
                    tries += 1;
                    tracing::info!("a write's fate was unknown after a leader change; proposing it again with the same key");
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn forward(&self, addr: &str, command: &Command) -> Result<u64, Forwarded> {
        let pool = self
            .port
            .client()
            .ok_or_else(|| Forwarded::Retry("this node has no certificate yet".into()))?;
        let reply: ProposeReply = pool
            .post_json(
                addr,
                &Target::Manager,
                PROPOSE_PATH,
                &ProposeRequest {
                    command: command.clone(),
                },
            )
            .await
            .map_err(|e| Forwarded::Retry(e.to_string()))?;
        match (reply.index, reply.error) {
            (Some(i), _) => Ok(i),
            (None, Some(e)) => match e.kind {
                RemoteErrorKind::NotLeader => Err(Forwarded::Retry(e.message)),
                RemoteErrorKind::Unknown => {
                    Err(Forwarded::Failed(WriteError::RemoteFateUnknown(e.message)))
                }
                RemoteErrorKind::AlreadyApplied => {
                    Err(Forwarded::Failed(WriteError::RemoteAlreadyApplied))
                }
                RemoteErrorKind::Other => Err(Forwarded::Failed(WriteError::Remote {
                    status: e.status,
                    message: e.message,
                })),
            },
            (None, None) => Err(Forwarded::Retry("the leader sent an empty answer".into())),
        }
    }
}

enum Forwarded {
    Retry(String),
    Failed(WriteError),
}

/// The leader's side of `POST /v1/raft/propose`.
pub async fn serve(raft: &RaftHandle, req: ProposeRequest) -> ProposeReply {
    match raft.propose(req.command).await {
        Ok(o) => ProposeReply {
            index: Some(o.index),
            error: None,
        },
        Err(e) => {
            let kind = match &e {
                ProposeError::NotLeader { .. } => RemoteErrorKind::NotLeader,
                ProposeError::Unknown { .. } => RemoteErrorKind::Unknown,
                ProposeError::Refused(StoreError::AlreadyApplied(_)) => {
                    RemoteErrorKind::AlreadyApplied
                }
                _ => RemoteErrorKind::Other,
            };
            let api = crate::api::ApiError::from(e);
            ProposeReply {
                index: None,
                error: Some(RemoteError {
                    kind,
                    status: api.status,
                    message: api.message,
                }),
            }
        }
    }
}
