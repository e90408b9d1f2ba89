//! Where the other managers are: raft ID → cluster address, kept from the
//! store's nodes (and, on a manager that just joined and has no store yet,
//! from its join answer).

use std::collections::HashMap;
use std::sync::RwLock;

/// raft ID → cluster address of every manager this node knows.
#[derive(Default)]
pub struct AddressBook(RwLock<HashMap<u64, String>>);

impl AddressBook {
    pub fn get(&self, raft_id: u64) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&raft_id)
            .cloned()
    }

    pub fn set(&self, raft_id: u64, addr: String) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(raft_id, addr);
    }
}
