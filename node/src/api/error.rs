//! API errors: a status code and a message that says what to do.

use crate::blobs::BlobError;
use crate::raft::ProposeError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }
    pub fn not_in_swarm() -> Self {
        Self::new(
            503,
            "this node is not a swarm manager. Use \"swarmlet init\" to create a single-node swarm on it",
        )
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match &e {
            ProposeError::Refused(StoreError::NoSuchService(_) | StoreError::NoSuchTask(_)) => {
                Self::not_found(e.to_string())
            }
            ProposeError::Refused(_) => Self::conflict(e.to_string()),
            ProposeError::NotLeader { .. } => Self::new(
                503,
                "this manager is not the raft leader right now; retry in a moment",
            ),
            ProposeError::Unknown { .. } => Self::new(503, e.to_string()),
            ProposeError::Stopped => Self::new(503, "the node is shutting down"),
            // 507 Insufficient Storage: the CLI prints the message as is.
            ProposeError::Unwritable {
                disk_full: true, ..
            } => Self::new(507, e.to_string()),
            ProposeError::Unwritable { .. } => Self::new(503, e.to_string()),
            ProposeError::Raft(_) => Self::new(500, e.to_string()),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::NotFound(_) => {
                Self::not_found(format!("{e}; upload it first (POST /v1/blobs)"))
            }
            BlobError::BadDigest(_)
            | BlobError::Empty
            | BlobError::NotWasm
            | BlobError::CoreModule
            | BlobError::Corrupt { .. } => Self::bad_request(e.to_string()),
            BlobError::TooLarge { .. } => Self::new(413, e.to_string()),
            BlobError::Busy(_) => Self::new(503, e.to_string()),
            BlobError::DiskFull { .. } => Self::new(507, e.to_string()),
            BlobError::Io { .. } => Self::new(500, e.to_string()),
        }
    }
}

impl From<crate::link::WriteError> for ApiError {
    fn from(e: crate::link::WriteError) -> Self {
        use crate::link::WriteError;
        match e {
            WriteError::Propose(p) => p.into(),
            WriteError::Remote { status, message } => Self::new(status, message),
            WriteError::RemoteFateUnknown(m) => Self::new(503, m),
            WriteError::RemoteAlreadyApplied => Self::conflict(e.to_string()),
            WriteError::NoLeader | WriteError::LeaderUnreachable { .. } => {
                Self::new(503, e.to_string())
            }
        }
    }
}
