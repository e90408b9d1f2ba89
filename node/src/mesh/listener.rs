//! One published port: an accept loop serving HTTP/1.1 with keep-alive.
//! Dropping the `Listener` stops accepting and frees the port; connections
//! already accepted finish their current requests.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{Mesh, Publish};

pub struct Listener {
    pub service_id: String,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Listener {
    pub fn bind(mesh: Arc<Mesh>, ip: IpAddr, p: &Publish) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(SocketAddr::new(ip, p.port))?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let service_id = p.service_id.clone();
        let service_name: Arc<str> = p.service_name.clone().into();
        let sid: Arc<str> = service_id.clone().into();
        let accept = tokio::spawn(async move {
            loop {
                let (stream, _peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let mesh = mesh.clone();
                let sid = sid.clone();
                let name = service_name.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let mesh = mesh.clone();
                        let sid = sid.clone();
                        let name = name.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(mesh.route(&sid, &name, req).await)
                        }
                    });
                    if let Err(e) = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        tracing::debug!("mesh connection ended: {e}");
                    }
                });
            }
        });
        Ok(Listener { service_id, accept })
    }
}
