//! One published port: `listen::serve` (the node's listener limits) routing
//! every request through the mesh (HTTP ports), or the mesh's TCP accept
//! loop (`tcp.rs`, TCP ports). Dropping the `Listener` stops accepting,
//! frees the port and tells its connections to close after their current
//! request, so a keep-alive connection never reaches a removed service.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpSocket;
use tokio::sync::watch;

use super::{Mesh, MeshMode, Publish};

/// Pending connections the kernel queues for a published port.
const BACKLOG: u32 = 1024;

pub struct Listener {
    pub service_id: String,
    pub mode: MeshMode,
    accept: tokio::task::JoinHandle<()>,
    /// Dropped with the listener: its connections see the close signal.
    _closing: watch::Sender<bool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Stop accepting (the runtime drops the accept loop, and with it the
        // port, at once); open connections follow the close signal when
        // `_closing` is dropped right after this.
        self.accept.abort();
    }
}

impl Listener {
    pub fn bind(mesh: Arc<Mesh>, ip: IpAddr, p: &Publish) -> std::io::Result<Self> {
        let addr = SocketAddr::new(ip, p.port);
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // A burst of connections waits in the kernel instead of having its
        // SYNs dropped (std's bind uses a backlog of 128).
        let listener = socket.listen(BACKLOG)?;
        let service_id = p.service_id.clone();
        let sid: Arc<str> = service_id.clone().into();
        let (closing_tx, closing) = watch::channel(false);
        let accept = match p.mode {
            MeshMode::Tcp => tokio::spawn(super::tcp::accept_loop(mesh, listener, p.port, sid)),
            MeshMode::Http => {
                let service_name: Arc<str> = p.service_name.clone().into();
                let limits = mesh.limits.clone();
                let budget = mesh.budget.clone();
                tokio::spawn(crate::listen::serve(
                    format!("published port {}", p.port),
                    listener,
                    limits,
                    budget,
                    move |req| {
                        let mesh = mesh.clone();
                        let sid = sid.clone();
                        let name = service_name.clone();
                        async move { mesh.route(&sid, &name, req).await }
                    },
                    closing,
                ))
            }
        };
        Ok(Listener {
            service_id,
            mode: p.mode,
            accept,
            _closing: closing_tx,
        })
    }
}
