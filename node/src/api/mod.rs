//! The HTTP/JSON API every client command talks to (on the local unix socket
//! `DATA_DIR/swarmlet.sock`, and on a manager's cluster port over mutual TLS
//! for client bundles), the cluster routes of joining, and the typed client
//! the CLI uses.

pub mod client;
mod containers;
mod error;
mod handlers;
mod images;
pub mod join;
mod leave;
pub mod logs;
mod nodes;
mod peers;
mod server;
mod upload;

pub use error::ApiError;
pub use server::route_cluster;
pub use server::{serve, ApiState, Listeners, REMOTE_REFUSED};

/// The cluster address this node advertises by default (`--advertise-addr`,
/// else the listen address, else the machine's one IPv4 address), as
/// `init` and `join` choose it.
pub fn advertise_addr(st: &ApiState) -> Result<std::net::SocketAddr, String> {
    handlers::advertise_for(st, st.advertise_addr.as_deref()).map_err(|e| e.message)
}
