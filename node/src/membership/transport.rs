//! chitchat's `Transport` over UDP with an HMAC-SHA256 tag on every datagram.
//!
//! chitchat ships a plain `UdpTransport`; its seam (`Transport::open` →
//! `Socket::{send, recv}` of whole `ChitchatMessage`s) is where we add
//! authentication, so the gossip state machine itself is chitchat's, unchanged.
//!
//! Wire format of one datagram:
//!
//! ```text
//! [ version: 1 byte = 1 ][ tag: 32 bytes ][ chitchat message bytes ]
//! tag = HMAC-SHA256(gossip key, "swarmlet-gossip-v1" || version || message)
//! ```
//!
//! A datagram that is too short, has another version or a tag that does not
//! verify (compared in constant time by the `hmac` crate) is dropped before
//! chitchat parses a byte of it, and counted in [`GossipStats`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::GossipKey;

type HmacSha256 = Hmac<Sha256>;

/// The one wire version; a later format gets a new number so a mixed
/// cluster drops (and counts) what it cannot read instead of misparsing it.
pub(crate) const WIRE_VERSION: u8 = 1;
/// Domain separation: the gossip key only ever tags gossip datagrams, so a
/// tag can never be replayed as a MAC of something else keyed the same way.
const DOMAIN: &[u8] = b"swarmlet-gossip-v1";
const TAG_LEN: usize = 32;
pub(crate) const HEADER_LEN: usize = 1 + TAG_LEN;
/// The largest UDP payload over IPv4. chitchat sizes its deltas for this
/// whole budget; our 33-byte header comes on top, so a message within 33
/// bytes of the limit cannot be sent (it is refused with an error that
/// chitchat logs). swarmlet's per-node state is a few hundred bytes, so a
/// cluster would need hundreds of nodes gossiping in one message to reach it.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// Counters of what the gossip socket dropped; shared with [`super::Membership`].
#[derive(Debug, Default)]
pub struct GossipStats {
    /// Datagrams whose MAC did not verify (forged, corrupted, another
    /// cluster's key, or too short to carry a tag).
    pub rejected_mac: AtomicU64,
    /// Datagrams with a valid MAC that chitchat could not parse (a peer
    /// running an incompatible version).
    pub malformed: AtomicU64,
    /// Authenticated datagrams accepted.
    pub accepted: AtomicU64,
}

impl GossipStats {
    pub fn rejected(&self) -> u64 {
        self.rejected_mac.load(Ordering::Relaxed)
    }
}

fn mac(key: &GossipKey) -> HmacSha256 {
    // HMAC accepts keys of any length; 32 bytes is never refused.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key.as_bytes())
        .expect("HMAC-SHA256 takes a key of any length");
    mac.update(DOMAIN);
    mac.update(&[WIRE_VERSION]);
    mac
}

/// Frames `message` for the wire: version, tag, message.
pub(crate) fn seal(key: &GossipKey, message: &[u8]) -> Vec<u8> {
    let mut m = mac(key);
    m.update(message);
    let tag = m.finalize().into_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + message.len());
    out.push(WIRE_VERSION);
    out.extend_from_slice(&tag);
    out.extend_from_slice(message);
    out
}

/// The message inside `datagram` if its tag verifies under `key`.
pub(crate) fn open<'a>(key: &GossipKey, datagram: &'a [u8]) -> Option<&'a [u8]> {
    if datagram.len() < HEADER_LEN || datagram[0] != WIRE_VERSION {
        return None;
    }
    let (tag, message) = datagram[1..].split_at(TAG_LEN);
    let mut m = mac(key);
    m.update(message);
    m.verify_slice(tag).ok()?;
    Some(message)
}

/// Opens authenticated UDP sockets for chitchat.
pub struct MacUdpTransport {
    key: GossipKey,
    stats: Arc<GossipStats>,
}

impl MacUdpTransport {
    pub fn new(key: GossipKey, stats: Arc<GossipStats>) -> Self {
        MacUdpTransport { key, stats }
    }
}

#[async_trait]
impl Transport for MacUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("binding {listen_addr}/udp for gossip"))?;
        Ok(Box::new(MacUdpSocket {
            socket,
            key: self.key.clone(),
            stats: self.stats.clone(),
            buf_recv: vec![0u8; MAX_UDP_PAYLOAD].into_boxed_slice(),
            buf_send: Vec::new(),
        }))
    }
}

struct MacUdpSocket {
    socket: tokio::net::UdpSocket,
    key: GossipKey,
    stats: Arc<GossipStats>,
    buf_recv: Box<[u8]>,
    buf_send: Vec<u8>,
}

/// Logs the 1st, 2nd, 4th, 8th, ... rejection: a flood of forged datagrams
/// must not become a flood of log lines; the counter has the exact number.
fn worth_logging(count: u64) -> bool {
    count.is_power_of_two()
}

#[async_trait]
impl Socket for MacUdpSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        self.buf_send.clear();
        msg.serialize(&mut self.buf_send);
        let datagram = seal(&self.key, &self.buf_send);
        anyhow::ensure!(
            datagram.len() <= MAX_UDP_PAYLOAD,
            "gossip message of {} bytes does not fit a UDP datagram with its MAC",
            datagram.len()
        );
        self.socket
            .send_to(&datagram, to)
            .await
            .with_context(|| format!("sending gossip to {to}"))?;
        Ok(())
    }

    /// Cancel-safe (chitchat `select!`s on it): the only await is
    /// `recv_from`, and a datagram is handled entirely after it returns.
    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.buf_recv).await {
                Ok(got) => got,
                // An ICMP "port unreachable" from an earlier send surfaces
                // here on some systems; it says nothing about this socket.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e).context("receiving gossip"),
            };
            let datagram = &self.buf_recv[..len];
            let Some(mut message) = open(&self.key, datagram) else {
                let n = self.stats.rejected_mac.fetch_add(1, Ordering::Relaxed) + 1;
                if worth_logging(n) {
                    tracing::warn!(%from, len, rejected_so_far = n,
                        "dropped a gossip datagram whose MAC does not verify (forged, corrupted, or another cluster's gossip key)");
                }
                continue;
            };
            match ChitchatMessage::deserialize(&mut message) {
                Ok(msg) => {
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    return Ok((from, msg));
                }
                Err(e) => {
                    let n = self.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                    if worth_logging(n) {
                        tracing::warn!(%from, error = %e, malformed_so_far = n,
                            "dropped an authenticated gossip datagram chitchat cannot parse (a peer on an incompatible version?)");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_message_opens_only_under_its_key() {
        let k1 = GossipKey::from_bytes([1; 32]);
        let k2 = GossipKey::from_bytes([2; 32]);
        let sealed = seal(&k1, b"hello");
        assert_eq!(open(&k1, &sealed), Some(&b"hello"[..]));
        assert_eq!(open(&k2, &sealed), None, "another key must not verify");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(open(&k1, &flipped), None, "a changed byte must not verify");
        assert_eq!(open(&k1, &sealed[..HEADER_LEN - 1]), None, "too short");
        let mut other_version = sealed;
        other_version[0] = 2;
        assert_eq!(open(&k1, &other_version), None, "unknown version");
    }
}
