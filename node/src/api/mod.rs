//! The HTTP/JSON API every client command talks to (on the local unix socket
//! `DATA_DIR/swarmlet.sock` only: the cluster port refuses it until mutual
//! TLS), and the typed client the CLI uses.

pub mod client;
mod error;
mod handlers;
mod nodes;
pub mod join;
mod server;

pub use error::ApiError;
pub use server::route_cluster;
pub use server::{serve, ApiState, Listeners, REMOTE_REFUSED};
