//! The outgoing side of the transport: a pool of one multiplexed HTTP/2
//! connection per (peer address, server name) over mutual TLS with the
//! node's certificate. A connection that closed (the peer restarted, or sent
//! GOAWAY after idling) is replaced on the next request; connects and
//! requests have their own timeouts.
//!
//! Written on hyper's `client::conn::http2` rather than hyper-util's legacy
//! pooled client because the pool key must include the TLS server name
//! (`swarmlet-manager` vs a node ID), which that client derives from the URI.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt as _, Shared};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use swarmlet_proto::api::ErrorBody;

use crate::pki::CertRole;

/// A request body the pool can send: bytes or a stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type OutBody = BoxBody<Bytes, BoxError>;

/// Which server the caller expects at the address; it decides the TLS
/// server name checked against the peer's certificate SANs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Any manager (`swarmlet-manager`): also checks it is a manager.
    Manager,
    /// This very node (its node ID).
    Node(String),
}

impl Target {
    fn server_name(&self) -> String {
        match self {
            Target::Manager => CertRole::Manager.server_name().to_string(),
            Target::Node(id) => id.clone(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no TLS connection to {addr} within {timeout:?}")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("TLS handshake with {addr} failed: {reason}")]
    Handshake { addr: String, reason: String },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("request to {addr} failed: {reason}")]
    Request { addr: String, reason: String },
    /// The peer answered with a non-2xx status; `message` is its error body.
    #[error("{message}")]
    Status { status: u16, message: String },
    #[error("unexpected answer from {addr}: {reason}")]
    Decode { addr: String, reason: String },
}

/// Timeouts of the pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

type Key = (String, String);

/// A connect in progress, shared by every request that wants the same
/// peer meanwhile (one TLS handshake, not one per request).
type Connecting = Shared<BoxFuture<'static, Result<SendRequest<OutBody>, TransportError>>>;

/// `id` tells one connection (or connect) from a later one for the same
/// key: an entry may be forgotten and a new connect started before an older
/// request or connect settles, which must then leave the new one alone.
enum Entry {
    Ready { id: u64, send: SendRequest<OutBody> },
    Connecting { id: u64, result: Connecting },
}

/// A connection handed to one request.
struct Conn {
    send: SendRequest<OutBody>,
    id: u64,
    /// It was pooled already (not made for this request or its burst).
    reused: bool,
}

/// The pooled client. Cheap to clone (shared connections).
#[derive(Clone)]
pub struct Pool {
    config: Arc<rustls::ClientConfig>,
    opts: PoolOptions,
    conns: Arc<Mutex<HashMap<Key, Entry>>>,
    next_connect: Arc<AtomicU64>,
}

impl Pool {
    /// `config`: from `transport::client_config(ca, Some(node cert, key), [h2])`.
    pub fn new(config: Arc<rustls::ClientConfig>, opts: PoolOptions) -> Pool {
        Pool {
            config,
            opts,
            conns: Arc::default(),
            next_connect: Arc::default(),
        }
    }

    /// A pool presenting the node's certificate.
    pub fn for_node(
        certs: &crate::pki::NodeCerts,
        opts: PoolOptions,
    ) -> Result<Pool, super::TlsError> {
        let config = super::client_config(
            &certs.ca_pem,
            Some((&certs.cert_pem, &certs.key_pem)),
            &[super::tls::ALPN_H2],
        )?;
        Ok(Pool::new(config, opts))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        // The map holds only handles; a panic mid-update leaves it usable.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn connect(
        &self,
        addr: &str,
        target: &Target,
    ) -> Result<SendRequest<OutBody>, TransportError> {
        let name = target.server_name();
        let server_name =
            ServerName::try_from(name.clone()).map_err(|e| TransportError::Connect {
                addr: addr.to_string(),
                reason: format!("bad server name {name:?}: {e}"),
            })?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let work = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
                TransportError::Connect {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                }
            })?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(server_name, tcp).await.map_err(|e| {
                TransportError::Handshake {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                }
            })?;
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .handshake::<_, OutBody>(TokioIo::new(tls))
                .await
                .map_err(|e| TransportError::Handshake {
                    addr: addr.to_string(),
                    reason: format!("HTTP/2: {e}"),
                })?;
            let a = addr.to_string();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(peer = %a, "cluster connection ended: {e}");
                }
            });
            Ok(send)
        };
        match tokio::time::timeout(self.opts.connect_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::ConnectTimeout {
                addr: addr.to_string(),
                timeout: self.opts.connect_timeout,
            }),
        }
    }

    /// The live connection to (addr, target), or a new one. Requests that
    /// find no connection share one connect (single flight): a burst of
    /// requests to a peer that just restarted makes one TLS handshake, and
    /// all of them get its result, error included. The connect runs in its
    /// own task, so it completes (and is pooled) even if every request that
    /// wanted it is cancelled.
    async fn conn(&self, addr: &str, target: &Target) -> Result<Conn, TransportError> {
        let key = (addr.to_string(), target.server_name());
        let (id, pending) = {
            let mut conns = self.lock();
            match conns.get(&key) {
                Some(Entry::Ready { id, send }) if !send.is_closed() => {
                    return Ok(Conn {
                        send: send.clone(),
                        id: *id,
                        reused: true,
                    })
                }
                Some(Entry::Connecting { id, result }) => (*id, result.clone()),
                _ => {
                    let id = self.next_connect.fetch_add(1, Ordering::Relaxed);
                    let result = self.spawn_connect(key.clone(), id, target.clone());
                    // Inserted before the task can take the lock to settle it.
                    conns.insert(
                        key,
                        Entry::Connecting {
                            id,
                            result: result.clone(),
                        },
                    );
                    (id, result)
                }
            }
        };
        pending.await.map(|send| Conn {
            send,
            id,
            reused: false,
        })
    }

    /// Connects in a task of its own; the task replaces its `Connecting`
    /// entry with the connection, or removes it on failure (unless the entry
    /// was forgotten or replaced meanwhile).
    fn spawn_connect(&self, key: Key, id: u64, target: Target) -> Connecting {
        let pool = self.clone();
        let (addr, key_name) = key.clone();
        let task = tokio::spawn(async move {
            let result = pool.connect(&key.0, &target).await;
            let mut conns = pool.lock();
            if matches!(conns.get(&key), Some(Entry::Connecting { id: mine, .. }) if *mine == id) {
                match &result {
                    Ok(s) => {
                        conns.insert(
                            key,
                            Entry::Ready {
                                id,
                                send: s.clone(),
                            },
                        );
                    }
                    Err(_) => {
                        conns.remove(&key);
                    }
                }
            }
            result
        });
        let (pool, key) = (self.clone(), (addr.clone(), key_name));
        async move {
            task.await.unwrap_or_else(|e| {
                // It ended without settling its entry (a panic): drop the
                // entry, so the next request connects anew.
                let mut conns = pool.lock();
                if matches!(conns.get(&key), Some(Entry::Connecting { id: mine, .. }) if *mine == id) {
                    conns.remove(&key);
                }
                Err(TransportError::Connect {
                    addr,
                    reason: format!("the connect task ended: {e}"),
                })
            })
        }
        .boxed()
        .shared()
    }

    /// The live HTTP/2 connection to (addr, target), or a new one, for a
    /// caller that drives its request itself: the mesh sends with hyper's
    /// `try_send_request` to learn whether a failed request left this node.
    pub async fn connection(
        &self,
        addr: &str,
        target: &Target,
    ) -> Result<SendRequest<OutBody>, TransportError> {
        self.conn(addr, target).await.map(|c| c.send)
    }

    /// Drops the pooled connection to (addr, target): the next request
    /// connects anew. A connect in progress is left to finish.
    pub fn drop_connection(&self, addr: &str, target: &Target) {
        let mut conns = self.lock();
        let key = (addr.to_string(), target.server_name());
        if matches!(conns.get(&key), Some(Entry::Ready { .. })) {
            conns.remove(&key);
        }
    }

    /// Drops the connection `id` if it is still the pooled one.
    fn forget(&self, addr: &str, target: &Target, id: u64) {
        let mut conns = self.lock();
        let key = (addr.to_string(), target.server_name());
        if matches!(conns.get(&key), Some(Entry::Ready { id: pooled, .. }) if *pooled == id) {
            conns.remove(&key);
        }
    }

    /// Sends one request (the URI is a path, e.g. `/v1/nodes`) and returns
    /// the response head with its streaming body; the per-request timeout
    /// covers the response head. A request that fails on a reused connection
    /// before the peer processed it (the connection had just closed) is
    /// retried once on a new one, when `retry` can rebuild its body.
    pub async fn send(
        &self,
        addr: &str,
        target: &Target,
        req: hyper::Request<OutBody>,
        retry: Option<&(dyn Fn() -> hyper::Request<OutBody> + Send + Sync)>,
    ) -> Result<hyper::Response<Incoming>, TransportError> {
        let mut c = self.conn(addr, target).await?;
        let req = with_authority(req, addr);
        match self.send_on(&mut c.send, addr, req).await {
            Err(SendFailure::NotProcessed(e)) => {
                self.forget(addr, target, c.id);
                match (c.reused, retry) {
                    (true, Some(rebuild)) => {
                        let mut c = self.conn(addr, target).await?;
                        self.send_on(&mut c.send, addr, with_authority(rebuild(), addr))
                            .await
                            .map_err(|f| f.into_error(addr))
                    }
                    _ => Err(SendFailure::NotProcessed(e).into_error(addr)),
                }
            }
            Err(f) => {
                if c.send.is_closed() {
                    self.forget(addr, target, c.id);
                }
                Err(f.into_error(addr))
            }
            Ok(r) => Ok(r),
        }
    }

    async fn send_on(
        &self,
        s: &mut SendRequest<OutBody>,
        addr: &str,
        req: hyper::Request<OutBody>,
    ) -> Result<hyper::Response<Incoming>, SendFailure> {
        let timeout = self.opts.request_timeout;
        let work = async {
            s.ready().await.map_err(SendFailure::NotProcessed)?;
            s.send_request(req).await.map_err(|e| {
                // hyper reports a request the peer refused before processing
                // (REFUSED_STREAM after GOAWAY) or never sent as canceled.
                if e.is_canceled() {
                    SendFailure::NotProcessed(e)
                } else {
                    SendFailure::Failed(e)
                }
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(SendFailure::TimedOut(TransportError::Timeout {
                addr: addr.to_string(),
                timeout,
            })),
        }
    }

    /// A JSON request; a non-2xx answer is `TransportError::Status` with the
    /// peer's message.
    pub async fn json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        target: &Target,
        method: http::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, TransportError> {
        let bytes = Bytes::from(match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| TransportError::Decode {
                addr: addr.to_string(),
                reason: format!("encoding the request: {e}"),
            })?,
            None => Vec::new(),
        });
        let build = || {
            let mut r = hyper::Request::new(full(bytes.clone()));
            *r.method_mut() = method.clone();
            *r.uri_mut() = http::Uri::try_from(path).unwrap_or_default();
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        };
        let resp = self.send(addr, target, build(), Some(&build)).await?;
        read_json(addr, resp, self.opts.request_timeout).await
    }

    pub async fn get_json<T: DeserializeOwned>(
        &self,
        addr: &str,
        target: &Target,
        path: &str,
    ) -> Result<T, TransportError> {
        self.json::<(), T>(addr, target, http::Method::GET, path, None)
            .await
    }

    pub async fn post_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        target: &Target,
        path: &str,
        body: &B,
    ) -> Result<T, TransportError> {
        self.json(addr, target, http::Method::POST, path, Some(body))
            .await
    }

    /// A request with a streaming body (e.g. raft messages, a blob); the
    /// answer's body streams too. Not retried.
    pub async fn stream(
        &self,
        addr: &str,
        target: &Target,
        method: http::Method,
        path: &str,
        body: OutBody,
    ) -> Result<hyper::Response<Incoming>, TransportError> {
        let mut r = hyper::Request::new(body);
        *r.method_mut() = method;
        *r.uri_mut() = http::Uri::try_from(path).map_err(|e| TransportError::Request {
            addr: addr.to_string(),
            reason: format!("bad path {path:?}: {e}"),
        })?;
        self.send(addr, target, r, None).await
    }
}

/// HTTP/2 needs an absolute URI (scheme + authority).
fn with_authority(mut req: hyper::Request<OutBody>, addr: &str) -> hyper::Request<OutBody> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    if let Ok(uri) = http::Uri::builder()
        .scheme("https")
        .authority(addr)
        .path_and_query(path)
        .build()
    {
        *req.uri_mut() = uri;
    }
    req
}

/// A byte body for `Pool::stream`/`send`.
pub fn full(bytes: impl Into<Bytes>) -> OutBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

enum SendFailure {
    NotProcessed(hyper::Error),
    Failed(hyper::Error),
    TimedOut(TransportError),
}

impl SendFailure {
    fn into_error(self, addr: &str) -> TransportError {
        match self {
            SendFailure::NotProcessed(e) | SendFailure::Failed(e) => TransportError::Request {
                addr: addr.to_string(),
                reason: e.to_string(),
            },
            SendFailure::TimedOut(e) => e,
        }
    }
}

/// Reads a JSON answer (non-2xx: the peer's `ErrorBody` message).
pub async fn read_json<T: DeserializeOwned>(
    addr: &str,
    resp: hyper::Response<Incoming>,
    timeout: Duration,
) -> Result<T, TransportError> {
    let status = resp.status().as_u16();
    let body = match tokio::time::timeout(timeout, resp.into_body().collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            return Err(TransportError::Request {
                addr: addr.to_string(),
                reason: format!("reading the answer: {e}"),
            })
        }
        Err(_) => {
            return Err(TransportError::Timeout {
                addr: addr.to_string(),
                timeout,
            })
        }
    };
    if !(200..300).contains(&status) {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(TransportError::Status { status, message });
    }
    serde_json::from_slice(&body).map_err(|e| TransportError::Decode {
        addr: addr.to_string(),
        reason: e.to_string(),
    })
}
