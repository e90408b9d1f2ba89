//! What can go wrong running a container, each case saying what to do.

use std::path::PathBuf;

/// Errors of the container runtime. The variants a user can cause (a bad
/// command, a crashing container, bad limits) say what to change; the others
/// name the machine-side part that failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(
        "invalid task ID {id:?}: use letters, digits, '-', '_' or '.' (at most 64 characters)"
    )]
    InvalidId { id: String },

    #[error("container {id} already exists on this node: stop and remove it first")]
    AlreadyExists { id: String },

    #[error("no container {id} on this node")]
    NotFound { id: String },

    #[error("the container has no command: the image sets no ENTRYPOINT or CMD; give the service a command")]
    NoCommand,

    #[error("command {command:?} not found in the image: {why}; check the image's ENTRYPOINT/CMD (or the service's command) and that the image contains it")]
    CommandNotFound { command: String, why: String },

    #[error("user {user:?} not found in the image's /etc/passwd: use a numeric UID[:GID] or a user the image defines")]
    UnknownUser { user: String },

    #[error("image layer {path} is not a directory: the image store must unpack every layer before the container is prepared")]
    MissingLayer { path: PathBuf },

    #[error("invalid limit: {0}")]
    InvalidLimit(String),

    #[error("container {id} exited with {status}; last lines of its log:\n{log_tail}\nif it should keep running, fix the command or configuration in the image or the service")]
    Exited {
        id: String,
        status: ExitStatus,
        log_tail: String,
    },

    #[error("container {id} could not be created: {message}")]
    CreateFailed { id: String, message: String },

    #[error("`{tool}` is not installed: {hint}")]
    ToolMissing { tool: String, hint: String },

    #[error("container network: {0}")]
    Network(String),

    #[error("mounting the root filesystem of {id}: {why}")]
    Mount { id: String, why: String },

    #[error("containerd-shim-runc-v2 for {id}: {message}")]
    Shim { id: String, message: String },

    #[error("shim call {method} for {id}: {message}")]
    Rpc {
        id: String,
        method: &'static str,
        message: String,
    },

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("writing the OCI runtime spec: {0}")]
    Spec(String),
}

impl ContainerError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ContainerError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// How a container's main process ended, as the shim reports it: an exit
/// code, or 128 + the signal that killed it (the shell's and Docker's way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus(pub u32);

impl ExitStatus {
    /// The signal that killed the process, if it died of one.
    pub fn signal(self) -> Option<i32> {
        (self.0 > 128 && self.0 < 128 + 65).then(|| (self.0 - 128) as i32)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.signal() {
            Some(sig) => write!(f, "exit code {} (killed by signal {sig})", self.0),
            None => write!(f, "exit code {}", self.0),
        }
    }
}
