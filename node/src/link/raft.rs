//! Raft messages between managers over the mutual-TLS cluster port.
//!
//! `RaftLink` is the `RaftTransport` the raft driver sends through: one
//! queue and one sender task per peer, so a slow or dead peer delays only
//! its own messages. A batch goes out as one `POST /v1/raft/messages`
//! (protobuf messages, each prefixed by its length as a u32, big-endian).
//! A full queue or a failed send drops the messages: raft resends what
//! matters (appends are retried from the follower's progress, heartbeats
//! come every tick). Failures are not reported back to raft (raft-rs's
//! `report_unreachable` would make the leader probe instead of stream);
//! its own retransmission is what recovers.
//!
//! Architecture invariant: sending never blocks the raft driver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;

use super::AddressBook;
use crate::transport::{client::full, ClusterPort, Target};

/// Batches queued per peer before new ones are dropped.
const QUEUE: usize = 256;
/// Largest raft request body accepted (a snapshot carries the whole state).
pub const MAX_BODY: usize = 256 << 20;

pub struct RaftLink {
    port: Arc<ClusterPort>,
    book: Arc<AddressBook>,
    queues: Mutex<HashMap<u64, mpsc::Sender<Vec<Message>>>>,
    removed: Arc<tokio::sync::Notify>,
}

impl crate::raft::RaftTransport for RaftLink {
    fn send(&self, to: u64, msgs: Vec<Message>) {
        RaftLink::send(self, to, msgs)
    }
}

impl RaftLink {
    /// `removed` is notified when a manager refuses this node's messages
    /// because the swarm removed it (`REMOVED_HEADER`): a manager removed
    /// while it was down learns it on its first messages after a restart.
    pub fn new(
        port: Arc<ClusterPort>,
        book: Arc<AddressBook>,
        removed: Arc<tokio::sync::Notify>,
    ) -> Arc<RaftLink> {
        Arc::new(RaftLink {
            port,
            book,
            queues: Mutex::default(),
            removed,
        })
    }

    pub fn send(&self, to: u64, msgs: Vec<Message>) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let tx = queues.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(sender(
                to,
                rx,
                self.port.clone(),
                self.book.clone(),
                self.removed.clone(),
            ));
            tx
        });
        if tx.try_send(msgs).is_err() {
            tracing::debug!(to, "raft queue to peer full; dropping messages");
        }
    }
}

async fn sender(
    to: u64,
    mut rx: mpsc::Receiver<Vec<Message>>,
    port: Arc<ClusterPort>,
    book: Arc<AddressBook>,
    removed: Arc<tokio::sync::Notify>,
) {
    let mut failing = false;
    while let Some(mut batch) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        let Some(pool) = port.client() else {
            tracing::debug!(to, "no certificates yet; dropping raft messages");
            continue;
        };
        let Some(addr) = book.get(to) else {
            tracing::debug!(to, "no address for raft peer yet; dropping messages");
            continue;
        };
        let body = match encode(&batch) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(to, "encoding raft messages: {e}");
                continue;
            }
        };
        let result = pool
            .stream(
                &addr,
                &Target::Manager,
                http::Method::POST,
                "/v1/raft/messages",
                full(body),
            )
            .await;
        match result {
            Ok(r) if r.status().is_success() => {
                if failing {
                    tracing::info!(to, %addr, "raft peer reachable again");
                    failing = false;
                }
            }
            Ok(r) if r.headers().contains_key(crate::transport::REMOVED_HEADER) => {
                // The peer proved it is a manager (TLS, `Target::Manager`),
                // and the set of removed nodes it checked only grows by
                // committed raft entries.
                tracing::error!(to, %addr, "a manager says the swarm removed this node");
                removed.notify_one();
            }
            Ok(r) => {
                tracing::warn!(to, %addr, status = %r.status(), "raft peer refused messages");
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(to, %addr, "raft peer unreachable: {e}");
                    failing = true;
                }
                // Don't spin on a dead peer; what queued meanwhile is
                // stale anyway and raft sends fresh messages.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
            }
        }
    }
}

pub fn encode(msgs: &[Message]) -> Result<Bytes, protobuf::ProtobufError> {
    let mut out = BytesMut::new();
    for m in msgs {
        let b = m.write_to_bytes()?;
        out.put_u32(b.len() as u32);
        out.put_slice(&b);
    }
    Ok(out.freeze())
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated raft message batch")]
    Truncated,
    #[error("malformed raft message: {0}")]
    Malformed(#[from] protobuf::ProtobufError),
}

pub fn decode(mut body: Bytes) -> Result<Vec<Message>, DecodeError> {
    let mut msgs = Vec::new();
    while body.has_remaining() {
        if body.remaining() < 4 {
            return Err(DecodeError::Truncated);
        }
        let len = body.get_u32() as usize;
        if body.remaining() < len {
            return Err(DecodeError::Truncated);
        }
        let one = body.split_to(len);
        let mut m = Message::default();
        m.merge_from_bytes(&one)?;
        msgs.push(m);
    }
    Ok(msgs)
}
