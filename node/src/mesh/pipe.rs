//! Moving the bytes of a TCP connection: socket to socket (a local
//! replica), or socket to an HTTP/2 stream and back (a tunnel to another
//! node). Each direction half-closes its far end when its near end did
//! (a client that shuts down its write side still gets the answer); an
//! error on either side ends both; a connection with no byte in either
//! direction for the idle timeout is closed.
//!
//! Written here rather than with `tokio::io::copy_bidirectional` because
//! that has no idle timeout and cannot drive an HTTP/2 body.

use std::future::Future as _;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::health::now_ms;
use crate::body::BoxError;

/// Bytes read from a socket at a time.
const CHUNK: usize = 16 << 10;

/// When a connection last moved a byte (`now_ms`), shared by its directions.
#[derive(Default)]
pub struct Activity(AtomicU64);

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity(AtomicU64::new(now_ms())))
    }

    fn touch(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            let deadline = self.0.load(Ordering::Relaxed).saturating_add(idle);
            let now = now_ms();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(deadline - now)).await;
        }
    }
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their write side.
    Done,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A read or write failed (a reset, a broken stream).
    Failed(String),
}

/// Copies `a` ⇄ `b` until both directions ended, one failed, or nothing
/// moved for `idle`.
pub async fn sockets(a: TcpStream, b: TcpStream, idle: Duration) -> End {
    let activity = Activity::new();
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let both = async {
        tokio::try_join!(
            copy(&mut ar, &mut bw, &activity),
            copy(&mut br, &mut aw, &activity)
        )
    };
    tokio::select! {
        r = both => match r {
            Ok(_) => End::Done,
            Err(e) => End::Failed(e.to_string()),
        },
        _ = activity.idle_for(idle) => End::Idle,
    }
}

/// One direction: read until EOF, writing everything, then half-close.
async fn copy(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    activity: &Activity,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // Half-close: the other side still may answer.
            let _ = to.shutdown().await;
            return Ok(());
        }
        activity.touch();
        to.write_all(&buf[..n]).await?;
    }
}

/// Copies an HTTP/2 stream's body into `to`, then half-closes it.
pub async fn body_to_socket(
    mut body: Incoming,
    to: &mut OwnedWriteHalf,
    activity: &Activity,
) -> Result<(), String> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the tunnel broke: {e}"))?;
        if let Ok(data) = frame.into_data() {
            activity.touch();
            to.write_all(&data)
                .await
                .map_err(|e| format!("writing to the socket: {e}"))?;
        }
    }
    let _ = to.shutdown().await;
    Ok(())
}

/// Drives one end of a tunnel: `incoming` (the far side's bytes) into
/// `to`, while a `SocketBody` reading the same socket sends the other way
/// (`other_gone` resolves when hyper dropped it). Ends when both are done;
/// a failure or `idle` without a byte shuts the socket down, which ends the
/// other direction too.
pub async fn drive(
    incoming: Incoming,
    mut to: OwnedWriteHalf,
    other_gone: Gone,
    activity: &Activity,
    idle: Duration,
) -> End {
    let fd = fd_of(&to);
    let this_way = async {
        let r = body_to_socket(incoming, &mut to, activity).await;
        if r.is_err() {
            shutdown_both(fd);
        }
        r
    };
    let both = async {
        let (r, _) = tokio::join!(this_way, other_gone);
        r
    };
    let end = tokio::select! {
        r = both => match r {
            Ok(()) => End::Done,
            Err(e) => End::Failed(e),
        },
        _ = activity.idle_for(idle) => {
            shutdown_both(fd);
            End::Idle
        }
    };
    drop(to);
    end
}

/// The descriptor `shutdown_both` takes (valid while `s` lives).
pub fn fd_of(s: &OwnedWriteHalf) -> RawFd {
    s.as_ref().as_raw_fd()
}

/// Shuts a socket down both ways (an idle or broken connection): a read
/// pending on it (an HTTP/2 body reading it) ends at once. The caller
/// keeps the socket open while calling this.
pub fn shutdown_both(fd: RawFd) {
    // SAFETY: shutdown(2) on a descriptor the caller keeps open; it does
    // not close it, only ends its streams.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// An HTTP/2 body read straight from a socket (no task or channel in
/// between). `gated`: it waits until `open` hands it the socket — a tunnel
/// reads nothing from its client before the far node connected to the
/// replica, so a failed connect can go to another replica with no byte lost.
pub struct SocketBody {
    state: State,
    buf: BytesMut,
    activity: Arc<Activity>,
    /// Dropped with the body: tells the connection's driver this
    /// direction is over.
    _gone: tokio::sync::oneshot::Sender<()>,
}

/// Resolves once its body was dropped (hyper is done with it).
pub type Gone = tokio::sync::oneshot::Receiver<()>;

enum State {
    Waiting(tokio::sync::oneshot::Receiver<OwnedReadHalf>),
    Reading(OwnedReadHalf),
    Done,
}

impl SocketBody {
    pub fn reading(from: OwnedReadHalf, activity: Arc<Activity>) -> (SocketBody, Gone) {
        let (gone_tx, gone) = tokio::sync::oneshot::channel();
        let body = SocketBody {
            state: State::Reading(from),
            buf: BytesMut::new(),
            activity,
            _gone: gone_tx,
        };
        (body, gone)
    }

    /// A body that reads once the returned sender gives it the socket (or
    /// ends empty if the sender is dropped).
    pub fn gated(
        activity: Arc<Activity>,
    ) -> (
        tokio::sync::oneshot::Sender<OwnedReadHalf>,
        SocketBody,
        Gone,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (gone_tx, gone) = tokio::sync::oneshot::channel();
        let body = SocketBody {
            state: State::Waiting(rx),
            buf: BytesMut::new(),
            activity,
            _gone: gone_tx,
        };
        (tx, body, gone)
    }
}

impl hyper::body::Body for SocketBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Waiting(rx) => match Pin::new(rx).poll(cx) {
                    Poll::Ready(Ok(r)) => this.state = State::Reading(r),
                    Poll::Ready(Err(_)) => {
                        this.state = State::Done;
                        return Poll::Ready(None);
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Reading(r) => {
                    if this.buf.capacity() < CHUNK {
                        this.buf.reserve(CHUNK);
                    }
                    let spare = this.buf.spare_capacity_mut();
                    let mut rb = ReadBuf::uninit(spare);
                    return match Pin::new(r).poll_read(cx, &mut rb) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            this.state = State::Done;
                            Poll::Ready(Some(Err(e.into())))
                        }
                        Poll::Ready(Ok(())) => {
                            let n = rb.filled().len();
                            if n == 0 {
                                this.state = State::Done;
                                return Poll::Ready(None);
                            }
                            // SAFETY: poll_read initialised the first n
                            // bytes of the spare capacity.
                            unsafe { this.buf.set_len(n) };
                            this.activity.touch();
                            Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))))
                        }
                    };
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_for_resolves_only_after_a_quiet_period() {
        let a = Activity::new();
        let quiet = Duration::from_millis(50);
        let started = now_ms();
        a.idle_for(quiet).await;
        assert!(now_ms() >= started + 50, "resolved before the quiet period");
    }
}
