//! Wire types shared by the swarmlet API, raft log entries and (later)
//! node-to-node RPC. Everything here is plain serde data: no IO, no clocks.

pub mod api;
pub mod command;
pub mod digest;
pub mod model;

pub use command::{Command, Envelope};
pub use digest::{BadDigest, Digest};
pub use model::*;

/// The range Docker Swarm assigns published ports from when none is given.
pub const DYNAMIC_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;
