//! The HTTP/JSON API every client command talks to (on the local unix socket
//! `DATA_DIR/swarmlet.sock`, and on a manager's cluster port over mutual TLS
//! for client bundles), the cluster routes of joining, and the typed client
//! the CLI uses.

pub mod client;
mod error;
mod handlers;
pub mod join;
mod leave;
mod nodes;
mod peers;
mod server;

pub use error::ApiError;
pub use server::route_cluster;
pub use server::{serve, ApiState, Listeners, REMOTE_REFUSED};
