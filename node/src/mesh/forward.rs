//! Sending a request to a replica on another node: `POST|GET|…
//! /v1/mesh/{service_id}{path}` on the node's cluster port, over the pooled
//! HTTP/2 mutual-TLS connection (`transport::Pool`, server name = node ID),
//! method, headers and body as the client sent them, marked with
//! `swarmlet-forwarded: <this node>`.
//!
//! A failure says whether the peer can have seen the request: only one it
//! never saw (no connection, a connection that closed before the request
//! left, a stream the peer refused unprocessed) may go to another replica.

use std::time::Duration;

use http::HeaderValue;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;

use super::headers::{mesh_path, FORWARDED_BY};
use super::table::Remote;
use crate::transport::client::OutBody;
use crate::transport::{Pool, Target};

/// Longest a connection to a peer may take: on a LAN a TLS handshake takes
/// milliseconds, so a node that does not answer within this is treated as
/// failing (and the request tried elsewhere) rather than waited for.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest the answer's head may take. The receiving node bounds the guest
/// itself (`--wasm-timeout`) and answers 504; this only catches a peer that
/// went silent (HTTP/2 pings on the connection notice a dead one sooner).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub enum Failure {
    /// The peer never saw the request: it may go to another replica.
    /// `conn`: the connection itself failed (the node leaves rotation for a
    /// while). `request`: the request, when it was given back whole.
    NotSent {
        reason: String,
        conn: bool,
        request: Option<Box<hyper::Request<OutBody>>>,
    },
    /// The request may have reached the replica.
    Failed { reason: String },
}

/// The pooled connection to `remote`'s node.
pub async fn connect(pool: &Pool, remote: &Remote) -> Result<SendRequest<OutBody>, String> {
    let target = Target::Node(remote.node_id.clone());
    match tokio::time::timeout(CONNECT_TIMEOUT, pool.connection(&remote.addr, &target)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no connection to {} within {CONNECT_TIMEOUT:?}",
            remote.addr
        )),
    }
}

/// The request to send to `remote` for a client request with this head.
pub fn request(
    remote: &Remote,
    service_id: &str,
    from_node: &HeaderValue,
    head: &Head,
    body: OutBody,
) -> hyper::Request<OutBody> {
    let mut req = hyper::Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.headers_mut() = head.headers.clone();
    req.headers_mut().insert(FORWARDED_BY, from_node.clone());
    let path = mesh_path(service_id, &head.uri);
    // HTTP/2 needs the absolute form (scheme + authority).
    if let Ok(uri) = http::Uri::builder()
        .scheme("https")
        .authority(remote.addr.as_str())
        .path_and_query(path)
        .build()
    {
        *req.uri_mut() = uri;
    }
    req
}

/// What of a client's request is sent again on a retry.
pub struct Head {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
}

impl Head {
    pub fn of<B>(req: &hyper::Request<B>) -> Head {
        Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }
}

/// Sends `req` on `conn` and waits for the answer's head.
pub async fn send(
    mut conn: SendRequest<OutBody>,
    req: hyper::Request<OutBody>,
) -> Result<hyper::Response<Incoming>, Failure> {
    if let Err(e) = conn.ready().await {
        return Err(Failure::NotSent {
            reason: format!("the connection closed: {e}"),
            conn: true,
            request: Some(Box::new(req)),
        });
    }
    match tokio::time::timeout(HEAD_TIMEOUT, conn.try_send_request(req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(mut e)) => {
            let request = e.take_message().map(Box::new);
            let error = e.into_error();
            match unprocessed(&error) {
                Some(conn) => Err(Failure::NotSent {
                    reason: error.to_string(),
                    conn,
                    request,
                }),
                None if request.is_some() => Err(Failure::NotSent {
                    reason: error.to_string(),
                    conn: true,
                    request,
                }),
                None => Err(Failure::Failed {
                    reason: error.to_string(),
                }),
            }
        }
        Err(_) => Err(Failure::Failed {
            reason: format!("no answer within {HEAD_TIMEOUT:?}"),
        }),
    }
}

/// Whether hyper's error says the peer did not process the request, and if
/// so whether the connection failed (`Some(true)`) or the peer only refused
/// the stream (`Some(false)`: REFUSED_STREAM, or a graceful GOAWAY that
/// excluded this stream, which RFC 9113 §8.7 guarantees it did not
/// process).
fn unprocessed(e: &hyper::Error) -> Option<bool> {
    if e.is_canceled() {
        return Some(true);
    }
    let h2 = std::error::Error::source(e)?.downcast_ref::<h2::Error>()?;
    let reason = h2.reason();
    if reason == Some(h2::Reason::REFUSED_STREAM)
        || (h2.is_go_away() && h2.is_remote() && reason == Some(h2::Reason::NO_ERROR))
    {
        return Some(false);
    }
    None
}
