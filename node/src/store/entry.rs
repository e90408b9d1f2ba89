//! The raft log's entry format, versioned on its own.
//!
//! An entry is `{"v":1,"entry":<Envelope>}`. The version belongs to the log,
//! not to the API: an API body can change without changing what is on disk,
//! and a future entry format gets `v: 2` while `decode` keeps reading v1.
//! Entries written before the format had a version (a bare `Envelope`) are
//! read as version 0.

use serde::{Deserialize, Serialize};
use swarmlet_proto::Envelope;

/// The version `encode` writes.
pub const ENTRY_VERSION: u32 = 1;

#[derive(Serialize)]
struct Versioned<'a> {
    v: u32,
    entry: &'a Envelope,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AnyVersion {
    V1 { v: u32, entry: Envelope },
    V0(Envelope),
}

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("not a swarmlet log entry: {0}")]
    Unreadable(#[from] serde_json::Error),
    #[error("log entry format version {0} is newer than this swarmlet reads ({ENTRY_VERSION}); upgrade this node's swarmlet")]
    TooNew(u32),
}

pub fn encode(entry: &Envelope) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Versioned {
        v: ENTRY_VERSION,
        entry,
    })
}

pub fn decode(bytes: &[u8]) -> Result<Envelope, EntryError> {
    match serde_json::from_slice::<AnyVersion>(bytes) {
        Ok(AnyVersion::V1 { v, entry }) if v <= ENTRY_VERSION => Ok(entry),
        Ok(AnyVersion::V1 { v, .. }) => Err(EntryError::TooNew(v)),
        Ok(AnyVersion::V0(entry)) => Ok(entry),
        // The untagged error says nothing useful; report the envelope's.
        Err(e) => Err(match serde_json::from_slice::<Envelope>(bytes) {
            Err(inner) => inner.into(),
            Ok(_) => e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmlet_proto::Command;

    fn env() -> Envelope {
        Envelope {
            proposal_id: 3,
            at_ms: 9,
            command: Command::RemoveService {
                service_id: "s".into(),
            },
        }
    }

    #[test]
    fn round_trip_and_old_entries_still_read() {
        let bytes = encode(&env()).unwrap();
        assert!(bytes.starts_with(br#"{"v":1,"#));
        assert_eq!(decode(&bytes).unwrap(), env());
        let old = serde_json::to_vec(&env()).unwrap();
        assert_eq!(decode(&old).unwrap(), env());
    }

    #[test]
    fn a_newer_format_is_refused_saying_so() {
        let bytes = br#"{"v":7,"entry":{"proposal_id":0,"at_ms":0,"command":{"op":"remove_service","service_id":"s"}}}"#;
        let e = decode(bytes).unwrap_err();
        assert!(e.to_string().contains("upgrade"), "{e}");
        assert!(decode(b"{garbage").is_err());
    }
}
