//! swarmlet: Docker Swarm mode as one small binary. The `swarmlet` binary
//! (`main.rs`) is a thin wrapper around `cli::run`; the library exists so
//! benchmarks and tests can drive the parts directly. ARCHITECTURE.md at the
//! repository root is the map.

pub mod agent;
pub mod api;
pub mod blobs;
pub mod body;
pub mod cli;
pub mod daemon;
pub mod dispatcher;
pub mod fault;
pub mod fsutil;
pub mod gossip;
pub mod heap;
pub mod identity;
pub mod image;
pub mod link;
pub mod listen;
pub mod membership;
pub mod mesh;
pub mod netutil;
pub mod orchestrator;
pub mod pki;
pub mod raft;
pub mod roles;
pub mod runtime;
pub mod store;
pub mod transport;
