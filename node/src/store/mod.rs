//! The replicated state machine: nodes, services and tasks.
//!
//! Architecture invariant: the store changes only by applying committed raft
//! entries, in log order, and applying is a pure function of the current state
//! and the entry (timestamps come from the entry, never from the local clock).
//! Readers take a cheap read lock and subscribe to `changes()` to learn that
//! something was applied.

pub mod entry;
mod state;

pub use state::{Lookup, State, StoreError};

use std::sync::{RwLock, RwLockReadGuard};

use swarmlet_proto::Envelope;
use tokio::sync::watch;

/// The state machine and a change counter others can wait on.
pub struct Store {
    state: RwLock<State>,
    changes: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        Store {
            state: RwLock::new(State::default()),
            changes: watch::channel(0).0,
        }
    }

    /// Applies one committed entry. An `Err` means the command was refused
    /// (e.g. a duplicate name) and changed nothing; it is deterministic, so
    /// every replica refuses it alike.
    pub fn apply(&self, entry: &Envelope) -> Result<(), StoreError> {
        let result = self.write().apply(entry);
        if result.is_ok() {
            self.changes.send_modify(|v| *v += 1);
        }
        result
    }

    /// Replaces the whole state (from a raft snapshot).
    pub fn restore(&self, state: State) {
        *self.write() = state;
        self.changes.send_modify(|v| *v += 1);
    }

    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        // A poisoned lock means a panic while applying; the state is still the
        // last fully applied one because `apply` validates before mutating.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts applied changes; `changes()` wakes when it moves.
    pub fn version(&self) -> u64 {
        *self.changes.borrow()
    }

    /// A receiver that wakes whenever an entry or snapshot was applied.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn snapshot_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&*self.read())
    }
}
