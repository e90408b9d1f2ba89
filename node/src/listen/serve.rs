//! The accept loop and the per-connection driver every listener uses.

use std::convert::Infallible;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::table::{Conn, Table};
use super::{Budget, Limits, Open};

/// A listening socket: TCP or unix.
pub trait Accept: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Resolves once `closing` says true or its sender is gone.
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `listener` with `handler` under `limits` until `closing` (then
/// each open connection finishes its current request and closes).
pub async fn serve<A, H, Fut, B>(
    what: String,
    listener: A,
    limits: Limits,
    budget: Arc<Budget>,
    handler: H,
    closing: watch::Receiver<bool>,
) where
    A: Accept,
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
            serve_conn(
                stream,
                conn,
                open,
                limits,
                handler.clone(),
                closing,
                Proto::Http1,
            )
        },
        closing,
    )
    .await
}

/// The accept loop: budget permit, accept with backoff, a slot in the
/// connection table, then `on_conn` drives the connection in its own task.
pub(super) async fn accept_loop<A, F, Fut>(
    what: String,
    listener: A,
    limits: Limits,
    budget: Arc<Budget>,
    on_conn: F,
    mut closing: watch::Receiver<bool>,
) where
    A: Accept,
    F: Fn(A::Stream, Conn, Open, Arc<Limits>, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let table = Table::new(limits.max_connections);
    let limits = Arc::new(limits);
    let mut backoff = Duration::ZERO;
    loop {
        // A permit of the node-wide budget first: when it is spent, new
        // connections wait in the kernel's backlog rather than failing accept.
        let permit = tokio::select! {
            p = budget.fds.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = closed(&mut closing) => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = closed(&mut closing) => return,
        };
        let stream = match accepted {
            Ok(s) => {
                backoff = Duration::ZERO;
                s
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ECONNABORTED…: retrying at once
                // would spin a core; wait longer each time (up to 1 s).
                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                tracing::warn!(listener = %what, "accept failed: {e}; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => continue,
                    _ = closed(&mut closing) => return,
                }
            }
        };
        let conn = tokio::select! {
            c = table.admit() => c,
            _ = closed(&mut closing) => return,
        };
        budget.conn_opened();
        let open = Open {
            budget: budget.clone(),
            _permit: permit,
        };
        tokio::spawn(on_conn(stream, conn, open, limits.clone(), closing.clone()));
    }
}

/// Which HTTP a connection speaks (TLS connections: what ALPN chose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proto {
    Http1,
    Http2,
}

/// What the driver of one connection watches. Times are milliseconds
/// since `born`.
struct Activity {
    born: Instant,
    /// Requests in flight.
    busy: AtomicU32,
    /// Bytes arrived since the connection last became idle (a request head
    /// is coming: hyper's header-read timeout governs it, not the idle one).
    heard: AtomicBool,
    /// Requests completed.
    served: AtomicU64,
    /// When the connection last became idle.
    idle_since: AtomicU64,
    /// Since when a write has been waiting for the client to read (+1; 0:
    /// no write waiting).
    write_blocked_since: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            born: Instant::now(),
            busy: AtomicU32::new(0),
            heard: AtomicBool::new(false),
            served: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn quiet(&self) -> bool {
        self.busy.load(Ordering::SeqCst) == 0 && !self.heard.load(Ordering::SeqCst)
    }

    /// Quiet for at least `d` since the last response.
    fn idle_for(&self, d: Duration) -> bool {
        self.quiet()
            && self
                .now()
                .saturating_sub(self.idle_since.load(Ordering::SeqCst))
                >= millis(d)
    }

    /// A write has waited at least `d` for the client to read.
    fn write_stalled_for(&self, d: Duration) -> bool {
        match self.write_blocked_since.load(Ordering::SeqCst) {
            0 => false,
            since => self.now().saturating_sub(since - 1) >= millis(d),
        }
    }

    fn note_write<T>(&self, r: &Poll<T>) {
        if r.is_pending() {
            if self.write_blocked_since.load(Ordering::Relaxed) == 0 {
                self.write_blocked_since
                    .store(self.now() + 1, Ordering::Relaxed);
            }
        } else if self.write_blocked_since.load(Ordering::Relaxed) != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) async fn serve_conn<S, H, Fut, B>(
    stream: S,
    conn: Conn,
    _open: Open,
    limits: Arc<Limits>,
    handler: H,
    closing: watch::Receiver<bool>,
    proto: Proto,
) where
    S: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send + 'static,
    H: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<B>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let fd = stream.as_raw_fd();
    let client = client_addr(fd);
    let evicted = conn.evicted.clone();
    let conn = Arc::new(conn);
    let act = Arc::new(Activity::new());
    let svc = {
        let act = act.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            if let Some(a) = client {
                req.extensions_mut().insert(super::ClientAddr(a));
            }
            let handler = handler.clone();
            let act = act.clone();
            let conn = conn.clone();
            async move {
                act.busy.fetch_add(1, Ordering::SeqCst);
                conn.busy();
                act.changed.notify_one();
                let done = Done { act, conn };
                let resp = handler(req).await;
                Ok::<_, Infallible>(resp.map(|inner| Guarded { inner, _done: done }))
            }
        })
    };
    let io = TokioIo::new(Watched {
        inner: stream,
        act: act.clone(),
        // HTTP/2 control frames (SETTINGS, PING) are not a request coming:
        // an h2 connection is idle whenever no stream is open.
        note_reads: proto == Proto::Http1,
    });
    match proto {
        Proto::Http1 => {
            let http = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_headers(limits.max_headers)
                .max_header_size(limits.max_header_size)
                .max_buf_size(limits.max_buf_size)
                .keep_alive(true)
                .serve_connection(io, svc);
            drive(http, fd, evicted, act, limits, closing, proto).await
        }
        Proto::Http2 => {
            let http =
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
                    .max_concurrent_streams(H2_MAX_STREAMS)
                    // A peer that vanished without a FIN is noticed by pings.
                    .keep_alive_interval(Some(limits.idle_timeout))
                    .keep_alive_timeout(limits.header_read_timeout)
                    .serve_connection(io, svc);
            drive(http, fd, evicted, act, limits, closing, proto).await
        }
    }
}

/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 256;

/// Drives one connection until it ends, is evicted, idles out or the
/// listener closes.
async fn drive<C>(
    http: C,
    fd: RawFd,
    evicted: Arc<tokio::sync::Notify>,
    act: Arc<Activity>,
    limits: Arc<Limits>,
    mut closing: watch::Receiver<bool>,
    proto: Proto,
) where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(http);
    // Close requested (the listener is closing) / hyper told to close after
    // the request in flight.
    let mut closing_asked = false;
    let mut shutting = false;
    // How often the timeouts below are checked.
    let tick = limits.idle_timeout.min(limits.send_timeout);
    loop {
        let served = act.served.load(Ordering::SeqCst);
        let changed = act.changed.notified();
        // A request in flight, or the first one of a new connection (hyper
        // serves it, then closes): graceful shutdown now. A request arriving
        // on an idle keep-alive connection: once it has started, since hyper
        // closes an idle connection at once.
        if closing_asked && !shutting && (act.busy.load(Ordering::SeqCst) > 0 || served == 0) {
            http.as_mut().graceful_shutdown();
            shutting = true;
        }
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = evicted.notified() => {
                tracing::debug!("connection evicted: the listener is full and it was idle the longest");
                return;
            }
            _ = closed(&mut closing), if !closing_asked => {
                if act.quiet() && !readable(fd) {
                    return;
                }
                closing_asked = true;
            }
            _ = tokio::time::sleep(tick) => {
                if act.idle_for(limits.idle_timeout) {
                    tracing::debug!("closing a keep-alive connection idle for {:?}", limits.idle_timeout);
                    if proto == Proto::Http2 && !shutting {
                        // GOAWAY: the peer's pool learns the connection is
                        // going, and a request racing it is refused as
                        // never processed (safe to retry), not cut.
                        http.as_mut().graceful_shutdown();
                        shutting = true;
                        continue;
                    }
                    return;
                }
                if act.write_stalled_for(limits.send_timeout) {
                    tracing::debug!("closing a connection whose client read nothing for {:?}", limits.send_timeout);
                    return;
                }
            }
            _ = changed => {}
        }
    }
}

/// The peer address of a TCP connection (`None` for a unix socket).
fn client_addr(fd: RawFd) -> Option<std::net::SocketAddr> {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is the open socket of the connection the caller drives;
    // the borrowed std stream is never dropped (ManuallyDrop), so it is not
    // closed here. getpeername on a unix socket fails and gives `None`.
    let borrowed = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    borrowed.peer_addr().ok()
}

/// Whether bytes wait unread on `fd` (a request hyper has not read yet).
fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd with a zero timeout; `fd` is owned by
    // the connection being driven by the caller, so it is open.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// Marks the end of a request when the response body is dropped (hyper drops
/// it once written, or when the connection dies).
struct Done {
    act: Arc<Activity>,
    conn: Arc<Conn>,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.act.heard.store(false, Ordering::SeqCst);
        self.act.idle_since.store(self.act.now(), Ordering::SeqCst);
        self.act.served.fetch_add(1, Ordering::SeqCst);
        self.act.busy.fetch_sub(1, Ordering::SeqCst);
        self.conn.idle();
        self.act.changed.notify_one();
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct Guarded<B> {
    inner: B,
    _done: Done,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's stream, noting when bytes arrive.
struct Watched<S> {
    inner: S,
    act: Arc<Activity>,
    note_reads: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.note_reads && buf.filled().len() > before {
            this.act.heard.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.act.note_write(&r);
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.act.note_write(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::AsyncWriteExt;

    /// Polls `f` every 20 ms, at most `n` times.
    async fn poll_until(n: usize, f: impl Fn() -> bool) -> bool {
        for _ in 0..n {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        f()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_stops_reading_its_response_is_cut_after_the_send_timeout() {
        let budget = Budget::new(1024);
        let mut limits = Limits::new(&budget, None);
        limits.send_timeout = Duration::from_millis(200);
        limits.idle_timeout = Duration::from_secs(600);
        let listener = tokio::net::TcpListener::bind("127.11.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        let (_closing_tx, closing) = watch::channel(false);
        // A 64 MiB response: far more than the socket buffers hold.
        let big = Bytes::from(vec![b'x'; 64 << 20]);
        tokio::spawn(serve(
            "test".to_string(),
            listener,
            limits,
            budget.clone(),
            move |_req| {
                let big = big.clone();
                async move { hyper::Response::new(Full::new(big)) }
            },
            closing,
        ));
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send a request");
        // The client never reads.
        assert!(
            poll_until(500, || budget.open() == 1).await,
            "the connection was never accepted"
        );
        assert!(
            poll_until(1500, || budget.open() == 0).await,
            "the daemon kept a connection whose client reads nothing"
        );
    }
}
