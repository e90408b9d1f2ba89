//! Wire types shared by the swarmlet API, raft log entries and (later)
//! node-to-node RPC. Everything here is plain serde data: no IO, no clocks.

pub mod api;
pub mod cluster;
pub mod command;
pub mod digest;
pub mod dispatcher;
pub mod model;

pub use command::{Command, Envelope, TaskStatus};
pub use digest::{BadDigest, Digest};
pub use model::*;

/// The range Docker Swarm assigns published ports from when none is given.
pub const DYNAMIC_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Docker's rule for service names: letters, digits, '-', '_' and '.',
/// starting with a letter or digit, at most 63 characters. Such a name is
/// also safe in a URL path and a file name; IDs follow it too.
pub fn valid_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && name.len() <= 63
}

/// What a refused service name is told.
pub const SERVICE_NAME_RULE: &str =
    "use letters, digits, '-', '_' and '.', starting with a letter or digit, at most 63 characters";
