//! What every listener of the node shares: the API socket, the cluster port
//! and every published port are served by `serve::serve` with the same limits.
//!
//! - hyper http1 with a timer: a **header-read timeout** (a slow or silent
//!   client is dropped), at most `max_headers` headers and `max_header_size`
//!   bytes of head (431), a bounded read buffer;
//! - an **idle keep-alive timeout**, built here (`serve.rs`): hyper 1 has no
//!   keep-alive timeout of its own (its header-read timer restarts when a
//!   connection waits for its next request, so it bounds idle time only as long
//!   as a slow head may take); and a **send timeout**: a response that waits
//!   30 s for a client that reads nothing closes its connection (a connection
//!   with a request in flight is never evicted, so this bounds how long one
//!   can be held);
//! - a **cap on connections per listener** (`table.rs`); when it is full a new
//!   connection evicts the connection that has been idle (or still reading its
//!   head) the longest instead of being refused, as nginx reuses keep-alive
//!   connections: slowloris connections are by construction the ones that
//!   never get a request in, so they are the ones that go, and a normal client
//!   is still answered. When every connection has a request in flight, new
//!   ones wait in the kernel's backlog until one finishes;
//! - one **file-descriptor budget** for all listeners (`Budget`), derived from
//!   `RLIMIT_NOFILE` (raised to its hard limit at start-up): an accept loop
//!   takes a permit before accepting, so the node never runs out of fds;
//! - accept errors (EMFILE, ENFILE, ENOBUFS…) back off exponentially instead
//!   of spinning;
//! - a **close signal per listener**: closing a listener (a port unpublished,
//!   daemon shutdown) stops accepting and lets each connection finish its
//!   current request (hyper's `graceful_shutdown`), then closes it. `Budget`
//!   counts the open connections so the daemon can wait for them to drain.

mod serve;
mod table;
mod tls;
mod unix;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use serve::{serve, Accept};
pub use tls::{serve_tls, TlsSwitch};
pub use unix::{bind_socket, socket_group, SocketError};

/// File descriptors kept for everything that is not a connection: the raft
/// file, blobs, compile cache, listeners, wasmtime, stdio.
const FD_RESERVE: usize = 256;

/// The address of the client at the other end of a request's TCP
/// connection, put in each request's extensions by `serve` (the mesh turns
/// it into `X-Forwarded-For` / `Forwarded`). Absent on the unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest a client may take to send a request head, counted from when
    /// the connection is ready for it (accept, or the end of the previous response).
    pub header_read_timeout: Duration,
    /// Longest a keep-alive connection may wait, silent, for its next request.
    pub idle_timeout: Duration,
    /// Longest a response may wait for the client to read (a client that
    /// stops reading would otherwise hold its connection, never idle, forever).
    pub send_timeout: Duration,
    pub max_headers: usize,
    /// Bytes of request line + headers.
    pub max_header_size: usize,
    /// hyper's read/write buffer (at least 8192).
    pub max_buf_size: usize,
    /// Open connections on one listener.
    pub max_connections: usize,
}

impl Limits {
    /// The defaults, with `max_connections` (per listener) if given, else
    /// derived from the fd budget: a quarter of it, at most 1024 (nginx's
    /// worker_connections is of that order), so a few listeners under attack
    /// at once still leave room for the others.
    pub fn new(budget: &Budget, max_connections: Option<usize>) -> Limits {
        let derived = (budget.connections() / 4).clamp(16, 1024);
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(30),
            max_headers: 100,
            max_header_size: 32 << 10,
            max_buf_size: 64 << 10,
            max_connections: max_connections.unwrap_or(derived).max(1),
        }
    }
}

/// The node-wide connection budget and the count of open connections.
pub struct Budget {
    fds: Arc<tokio::sync::Semaphore>,
    total: usize,
    open: AtomicUsize,
    drained: tokio::sync::Notify,
}

impl Budget {
    /// A budget of `fd_limit - FD_RESERVE` connections (at least 64).
    pub fn new(fd_limit: usize) -> Arc<Budget> {
        let total = fd_limit.saturating_sub(FD_RESERVE).max(64);
        Arc::new(Budget {
            fds: Arc::new(tokio::sync::Semaphore::new(total)),
            total,
            open: AtomicUsize::new(0),
            drained: tokio::sync::Notify::new(),
        })
    }

    /// How many connections all listeners together may hold.
    pub fn connections(&self) -> usize {
        self.total
    }

    /// Connections open right now, on every listener.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn conn_opened(&self) {
        self.open.fetch_add(1, Ordering::SeqCst);
    }

    fn conn_closed(&self) {
        if self.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drained.notify_waiters();
        }
    }

    /// `n` places of the budget, for a listener with its own accept loop
    /// (the mesh's TCP ports take two: the client's and the replica's
    /// connection). `None` once the budget is closed.
    pub async fn reserve(&self, n: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.fds.clone().acquire_many_owned(n).await.ok()
    }

    /// Counts a connection accepted with `permit` (from `reserve`) as open
    /// until the returned guard is dropped.
    pub fn opened(self: &Arc<Self>, permit: tokio::sync::OwnedSemaphorePermit) -> Open {
        self.conn_opened();
        Open {
            budget: self.clone(),
            _permit: permit,
        }
    }

    /// Waits until no connection is open (after every listener was closed).
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One open connection's share of the budget; released on drop.
pub struct Open {
    budget: Arc<Budget>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.budget.conn_closed();
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the default soft limit,
/// often 1024, is far below what a node serving many clients needs) and
/// returns the limit now in force.
pub fn raise_fd_limit() -> std::io::Result<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = lim.rlim_max;
        }
    }
    // RLIM_INFINITY is u64::MAX: any budget larger than memory allows is moot.
    Ok(usize::try_from(lim.rlim_cur)
        .unwrap_or(usize::MAX)
        .min(1 << 20))
}
