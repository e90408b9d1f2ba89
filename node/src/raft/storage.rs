//! Durable raft storage: the log, hard state, conf state and the latest
//! snapshot, in one redb file under the data dir.
//!
//! raft-rs asks its `Storage` for entries synchronously and often, so the log
//! is mirrored in raft-rs's own `MemStorage` (bounded by compaction) and every
//! change is first committed to disk (redb fsyncs on commit) and only then
//! applied to the mirror: what raft sees is always what survives `kill -9`.
//!
//! Architecture invariant: only this module reads or writes the raft files.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage};
use redb::{Database, ReadableTable, TableDefinition};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
const SNAPSHOT: &str = "snapshot";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open {path}: {source}. If the file is damaged, restore it from a backup, or move it away to start a new swarm with \"swarmlet init\" (its services are then lost)")]
    Open {
        path: String,
        source: Box<redb::DatabaseError>,
    },
    #[error("raft storage: {0}")]
    Db(Box<redb::Error>),
    #[error("{path} holds a corrupt record ({key}: {source}); the swarm state cannot be read. Restore the file from a backup, or move it away to start a new swarm with \"swarmlet init\" (its services are then lost)")]
    Corrupt {
        path: String,
        key: String,
        source: Box<protobuf::ProtobufError>,
    },
    #[error("raft storage: {0}")]
    Raft(Box<raft::Error>),
    #[error("{path} holds a {what} this swarmlet cannot read ({source}). The daemon stops rather than run on a partial state: start the swarmlet version that wrote it, restore the file from a backup, or move it away to start a new swarm with \"swarmlet init\" (its services are then lost)")]
    UnreadableState {
        path: String,
        what: String,
        source: serde_json::Error,
    },
    #[error("{path} is damaged ({detail}); the swarm state cannot be read. Restore the file from a backup, or move it away to start a new swarm with \"swarmlet init\" (its services are then lost)")]
    Damaged { path: String, detail: String },
    #[error("serializing the swarm state: {0}")]
    Encode(serde_json::Error),
}

impl StorageError {
    /// The disk refused a write or read: a condition that can pass (a full
    /// disk gets space again), unlike a corrupt record.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            StorageError::Db(e) => match e.as_ref() {
                redb::Error::Io(io) => Some(io),
                _ => None,
            },
            _ => None,
        }
    }

    /// True when the write failed for IO reasons, including redb's refusal
    /// to touch a database handle after an earlier IO error.
    pub fn is_io(&self) -> bool {
        matches!(self, StorageError::Db(e) if matches!(e.as_ref(), redb::Error::Io(_) | redb::Error::PreviousIo))
    }

    /// True when the disk (or the quota) under the data dir is full.
    pub fn is_disk_full(&self) -> bool {
        self.io_error()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|c| c == libc::ENOSPC || c == libc::EDQUOT)
    }
}

impl From<raft::Error> for StorageError {
    fn from(e: raft::Error) -> Self {
        StorageError::Raft(Box::new(e))
    }
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self { StorageError::Db(Box::new(e.into())) }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub struct DiskStorage {
    path: PathBuf,
    /// `None` after a write failed with an IO error: redb refuses every later
    /// call on that handle (`PreviousIo`), so the next write opens the file
    /// afresh (redb then recovers its last committed transaction).
    db: Mutex<Option<Database>>,
    mem: MemStorage,
    /// The latest snapshot including its data (raft-rs's MemStorage keeps
    /// metadata only); handed to raft when a follower needs it.
    snapshot: RwLock<Snapshot>,
}

fn decode<M: protobuf::Message>(path: &Path, key: &str, bytes: &[u8]) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(|source| StorageError::Corrupt {
        path: path.display().to_string(),
        key: key.to_string(),
        source: Box::new(source),
    })
}

fn encode<M: protobuf::Message>(m: &M) -> Vec<u8> {
    // Encoding a well-formed in-memory message cannot fail.
    m.write_to_bytes().unwrap_or_default()
}

impl DiskStorage {
    /// Opens (or creates) the raft file and loads it into memory.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let db = open_db(path)?;
        // Create the tables only once: a start must not need to write (on a
        // full disk the node still starts, serves, and refuses changes).
        let rtx = db.begin_read()?;
        let has_tables = rtx.open_table(ENTRIES).is_ok() && rtx.open_table(META).is_ok();
        drop(rtx);
        if !has_tables {
            let tx = db.begin_write()?;
            {
                tx.open_table(ENTRIES)?;
                tx.open_table(META)?;
            }
            tx.commit()?;
        }

        let mem = MemStorage::new();
        let mut snapshot = Snapshot::default();
        {
            let rtx = db.begin_read()?;
            let meta = rtx.open_table(META)?;
            let entries = rtx.open_table(ENTRIES)?;
            let mut core = mem.wl();
            if let Some(v) = meta.get(SNAPSHOT)? {
                snapshot = decode(path, SNAPSHOT, v.value())?;
                core.apply_snapshot(snapshot.clone())?;
            }
            if let Some(v) = meta.get(CONF_STATE)? {
                core.set_conf_state(decode(path, CONF_STATE, v.value())?);
            }
            let mut ents = Vec::new();
            for row in entries.range(snapshot.get_metadata().index + 1..)? {
                let (k, v) = row?;
                ents.push(decode::<Entry>(
                    path,
                    &format!("entry {}", k.value()),
                    v.value(),
                )?);
            }
            core.append(&ents)?;
            if let Some(v) = meta.get(HARD_STATE)? {
                core.set_hardstate(decode(path, HARD_STATE, v.value())?);
            }
        }
        Ok(DiskStorage {
            path: path.to_path_buf(),
            db: Mutex::new(Some(db)),
            mem,
            snapshot: RwLock::new(snapshot),
        })
    }

    /// The raft file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one write transaction and commits it (redb fsyncs).
    /// After an IO error the handle is dropped and the next call reopens the
    /// file, so a disk that was full and has space again works again.
    fn transact(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut slot = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let db = match slot.take() {
            Some(db) => db,
            None => open_db(&self.path)?,
        };
        let result = (|| -> Result<(), StorageError> {
            let tx = db.begin_write()?;
            f(&tx)?;
            tx.commit()?;
            Ok(())
        })();
        match &result {
            Err(e) if e.is_io() => drop(db),
            _ => *slot = Some(db),
        }
        result
    }

    /// True once a conf state was written: the node belongs to a cluster.
    pub fn is_initialized(&self) -> bool {
        self.mem
            .initial_state()
            .map(|s| !s.conf_state.voters.is_empty())
            .unwrap_or(false)
    }

    pub fn conf_state(&self) -> ConfState {
        self.mem
            .initial_state()
            .map(|s| s.conf_state)
            .unwrap_or_default()
    }

    /// The index of the latest snapshot (entries up to it are compacted away).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot
            .read()
            .map(|s| s.get_metadata().index)
            .unwrap_or(0)
    }

    pub fn set_conf_state(&self, cs: ConfState) -> Result<(), StorageError> {
        self.transact(|tx| {
            tx.open_table(META)?
                .insert(CONF_STATE, encode(&cs).as_slice())?;
            Ok(())
        })?;
        self.mem.wl().set_conf_state(cs);
        Ok(())
    }

    /// Appends entries (replacing any conflicting suffix) and the hard state,
    /// durably, in one transaction.
    pub fn append(&self, ents: &[Entry], hs: Option<&HardState>) -> Result<(), StorageError> {
        if ents.is_empty() && hs.is_none() {
            return Ok(());
        }
        self.transact(|tx| {
            let mut table = tx.open_table(ENTRIES)?;
            if let Some(first) = ents.first() {
                let stale: Vec<u64> = table
                    .range(first.index..)?
                    .map(|r| r.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()?;
                for k in stale {
                    table.remove(k)?;
                }
                for e in ents {
                    table.insert(e.index, encode(e).as_slice())?;
                }
            }
            if let Some(hs) = hs {
                tx.open_table(META)?
                    .insert(HARD_STATE, encode(hs).as_slice())?;
            }
            Ok(())
        })?;
        let mut core = self.mem.wl();
        core.append(ents)?;
        if let Some(hs) = hs {
            core.set_hardstate(hs.clone());
        }
        Ok(())
    }

    /// Records a newer commit index (from a `LightReady`).
    pub fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        let mut hs = self.mem.rl().hard_state().clone();
        hs.commit = commit;
        self.append(&[], Some(&hs))
    }

    /// Installs a snapshot received from the leader (or written at bootstrap).
    pub fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StorageError> {
        let index = snap.get_metadata().index;
        let mut hs = self.mem.rl().hard_state().clone();
        hs.term = hs.term.max(snap.get_metadata().term);
        hs.commit = hs.commit.max(index);
        self.transact(|tx| {
            let mut table = tx.open_table(ENTRIES)?;
            let all: Vec<u64> = table
                .iter()?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for k in all {
                table.remove(k)?;
            }
            let mut meta = tx.open_table(META)?;
            meta.insert(SNAPSHOT, encode(snap).as_slice())?;
            meta.insert(
                CONF_STATE,
                encode(snap.get_metadata().get_conf_state()).as_slice(),
            )?;
            meta.insert(HARD_STATE, encode(&hs).as_slice())?;
            Ok(())
        })?;
        self.mem.wl().apply_snapshot(snap.clone())?;
        if let Ok(mut s) = self.snapshot.write() {
            *s = snap.clone();
        }
        Ok(())
    }

    /// Takes a snapshot of the applied state at `index` and drops the log up
    /// to it.
    pub fn compact(&self, index: u64, data: Vec<u8>) -> Result<(), StorageError> {
        let term = self.mem.term(index)?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state());
        self.transact(|tx| {
            let mut table = tx.open_table(ENTRIES)?;
            let old: Vec<u64> = table
                .range(..=index)?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for k in old {
                table.remove(k)?;
            }
            tx.open_table(META)?
                .insert(SNAPSHOT, encode(&snap).as_slice())?;
            Ok(())
        })?;
        // Keep the entry at `index` in memory: MemStorage has no way to move
        // its snapshot metadata without dropping every entry, and with an
        // empty entry list it would report the *old* snapshot's index as
        // the last index. On disk the snapshot carries it instead.
        self.mem.wl().compact(index)?;
        if let Ok(mut s) = self.snapshot.write() {
            *s = snap;
        }
        Ok(())
    }

    /// The data of the latest snapshot (the serialized store), if any.
    pub fn snapshot_data(&self) -> Option<Vec<u8>> {
        let s = self.snapshot.read().ok()?;
        (!s.get_data().is_empty()).then(|| s.get_data().to_vec())
    }
}

/// Creates a new raft file whole or not at all: built under a temp name,
/// then renamed into place (and the directory fsynced). A daemon killed
/// while redb writes a new file's first pages would otherwise leave a
/// `raft.redb` that can never be opened again, on a node that never ran
/// `init`.
fn create_db(path: &Path) -> Result<(), StorageError> {
    remove_stale_temps(path);
    let tmp = crate::fsutil::temp_path(path);
    let build = || -> Result<(), StorageError> {
        let db = Database::create(&tmp).map_err(|source| StorageError::Open {
            path: tmp.display().to_string(),
            source: Box::new(source),
        })?;
        let tx = db.begin_write()?;
        {
            tx.open_table(ENTRIES)?;
            tx.open_table(META)?;
        }
        tx.commit()?;
        drop(db);
        crate::fault::point("raft.before_create_rename");
        std::fs::rename(&tmp, path)
            .and_then(|_| crate::fsutil::sync_parent(path))
            .map_err(|io| StorageError::Db(Box::new(redb::Error::Io(io))))
    };
    let result = build();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes temp files an interrupted `create_db` left beside `path`.
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn open_db(path: &Path) -> Result<Database, StorageError> {
    if !path.exists() {
        create_db(path)?;
    }
    // redb asserts on some damaged files instead of returning an error; a
    // damaged raft file must stop the daemon with a message, not a panic.
    let opened = std::panic::catch_unwind(|| Database::create(path)).map_err(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "redb could not read it".into());
        StorageError::Damaged {
            path: path.display().to_string(),
            detail,
        }
    })?;
    opened.map_err(|source| match source {
        // An IO error (e.g. a full disk while redb repairs the file) can
        // pass; keep it classifiable.
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
            StorageError::Db(Box::new(redb::Error::Io(io)))
        }
        source => StorageError::Open {
            path: path.display().to_string(),
            source: Box::new(source),
        },
    })
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let snap = self
            .snapshot
            .read()
            .map_err(|_| raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable))?
            .clone();
        if snap.get_metadata().index < request_index {
            return self.mem.snapshot(request_index, to);
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry {
            index,
            term,
            ..Default::default()
        };
        e.set_data(data.to_vec().into());
        e
    }

    #[test]
    fn survives_reopen_and_compaction() {
        let dir = std::env::temp_dir().join(format!("swarmlet-storage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("raft.redb");
        {
            let s = DiskStorage::open(&path).unwrap();
            assert!(!s.is_initialized());
            s.set_conf_state(ConfState::from((vec![7], vec![])))
                .unwrap();
            let hs = HardState {
                term: 2,
                commit: 3,
                ..Default::default()
            };
            s.append(
                &[entry(1, 1, b"a"), entry(2, 2, b"b"), entry(3, 2, b"c")],
                Some(&hs),
            )
            .unwrap();
            // A conflicting suffix replaces what was there.
            s.append(&[entry(3, 2, b"C"), entry(4, 2, b"d")], None)
                .unwrap();
            s.compact(2, b"state@2".to_vec()).unwrap();
        }
        let s = DiskStorage::open(&path).unwrap();
        assert!(s.is_initialized());
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.last_index().unwrap(), 4);
        let ents = s
            .entries(3, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(ents[0].get_data(), b"C");
        assert_eq!(s.snapshot_data().as_deref(), Some(&b"state@2"[..]));
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 3);
        // Compacting everything keeps last_index where the log ends.
        s.compact(4, b"state@4".to_vec()).unwrap();
        assert_eq!(s.last_index().unwrap(), 4);
        drop(s);
        let s = DiskStorage::open(&path).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (5, 4));
        assert_eq!(s.snapshot_data().as_deref(), Some(&b"state@4"[..]));
        assert_eq!(s.conf_state().voters, vec![7]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
