//! The cluster port: the same accept loop and limits as every listener,
//! plus TLS. Until the node has certificates (not in a swarm) it serves
//! plain HTTP/1 with the `plain` handler (a 403 saying why); once a TLS
//! config is installed (`init`, `join`, restart of a node in a swarm) every
//! new connection must complete a TLS 1.3 handshake within
//! `handshake_timeout`, after which it speaks HTTP/2 or HTTP/1.1 as ALPN
//! chose, and each request carries the caller's identity (what `identify`
//! made of its verified client certificate) as a request extension.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::body::{Body, Incoming};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

use super::serve::{accept_loop, serve_conn, Proto};
use super::{Budget, Limits};

/// The TLS server config the cluster port uses for new connections; `None`:
/// plain HTTP (the node is not in a swarm). Swapped at runtime.
pub type TlsSwitch = Arc<ArcSwapOption<rustls::ServerConfig>>;

#[allow(clippy::too_many_arguments)]
pub async fn serve_tls<P, I, PH, PFut, PB, H, Fut, B>(
    what: String,
    listener: tokio::net::TcpListener,
    limits: Limits,
    budget: Arc<Budget>,
    tls: TlsSwitch,
    handshake_timeout: Duration,
    identify: I,
    plain: PH,
    handler: H,
    closing: watch::Receiver<bool>,
) where
    P: Clone + Send + Sync + 'static,
    I: Fn(Option<&CertificateDer<'_>>) -> Result<P, String> + Clone + Send + Sync + 'static,
    PH: Fn(hyper::Request<Incoming>) -> PFut + Clone + Send + Sync + 'static,
    PFut: Future<Output = hyper::Response<PB>> + Send + 'static,
    PB: Body + Unpin + Send + 'static,
    PB::Data: Send,
    PB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    H: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<B>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    accept_loop(
        what,
        listener,
        limits,
        budget,
        move |stream, conn, open, limits, closing| {
            let tls = tls.load_full();
            let identify = identify.clone();
            let plain = plain.clone();
            let handler = handler.clone();
            async move {
                let Some(config) = tls else {
                    return serve_conn(stream, conn, open, limits, plain, closing, Proto::Http1)
                        .await;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let evicted = conn.evicted.clone();
                let stream = tokio::select! {
                    r = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)) => match r {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!("cluster port: TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("cluster port: no TLS handshake within {handshake_timeout:?}");
                            return;
                        }
                    },
                    _ = evicted.notified() => return,
                };
                let (_, session) = stream.get_ref();
                let proto = if session.alpn_protocol() == Some(b"h2") {
                    Proto::Http2
                } else {
                    Proto::Http1
                };
                let peer = match identify(session.peer_certificates().and_then(|c| c.first())) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!("cluster port: refused a peer: {e}");
                        return;
                    }
                };
                let with_peer = move |mut req: hyper::Request<Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    handler(req)
                };
                serve_conn(stream, conn, open, limits, with_peer, closing, proto).await
            }
        },
        closing,
    )
    .await
}
