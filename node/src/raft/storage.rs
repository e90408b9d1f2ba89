//! Durable raft storage: the log, hard state, conf state and the latest
//! snapshot, in one redb file under the data dir.
//!
//! raft-rs asks its `Storage` for entries synchronously and often, so the log
//! is mirrored in raft-rs's own `MemStorage` (bounded by compaction) and every
//! change is first committed to disk (redb fsyncs on commit) and only then
//! applied to the mirror: what raft sees is always what survives `kill -9`.
//! `MemStorage` is the same mirror without the file, for the simulation.
//!
//! Architecture invariant: only this module reads or writes the raft files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
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
        source: crate::store::entry::EntryError,
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

/// The durable raft state as the core reads it: what was persisted, and
/// nothing else. Two implementations: `DiskStorage` (redb, the daemon) and
/// `MemStorage` (memory, the tests and the simulation, where a "crash" keeps
/// exactly what was persisted). Writes are called by the shell (the driver's
/// disk thread, the simulation), never by the sans-IO core; each returns only
/// once the change is durable, and only then is it visible to raft.
pub trait RaftStorage: Storage + Clone + Send + Sync + 'static {
    /// Appends entries (replacing any conflicting suffix) and the hard state.
    fn append(&self, ents: &[Entry], hs: Option<&HardState>) -> Result<(), StorageError>;
    /// Records a newer commit index (from a `LightReady`).
    fn set_commit(&self, commit: u64) -> Result<(), StorageError>;
    /// Installs a snapshot received from the leader (or written at bootstrap).
    fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StorageError>;
    fn set_conf_state(&self, cs: ConfState) -> Result<(), StorageError>;
    /// Takes a snapshot of the applied state `data` at `index` and drops
    /// the log up to it.
    fn compact(&self, index: u64, data: Vec<u8>) -> Result<(), StorageError>;
    fn conf_state(&self) -> ConfState;
    /// The index of the latest snapshot (entries up to it are compacted away).
    fn snapshot_index(&self) -> u64;
    /// The data of the latest snapshot (the serialized store), if any.
    fn snapshot_data(&self) -> Option<Vec<u8>>;
    /// True (once) after raft asked for a snapshot this storage could not
    /// give with the state in it: the shell should compact soon.
    fn take_snapshot_wanted(&self) -> bool;
    /// Names the storage in error messages (the raft file's path).
    fn describe(&self) -> String;

    /// True once a conf state was written: the node belongs to a cluster.
    fn is_initialized(&self) -> bool {
        !self.conf_state().voters.is_empty() || !self.conf_state().learners.is_empty()
    }
}

/// The in-memory view both storages share: raft-rs's `MemStorage` for the
/// log (bounded by compaction) and the latest snapshot *with its data*
/// (raft-rs's keeps metadata only). Cheap to clone; clones share.
#[derive(Clone, Default)]
pub struct Mirror {
    mem: raft::storage::MemStorage,
    snapshot: Arc<RwLock<Snapshot>>,
    snapshot_wanted: Arc<AtomicBool>,
}

impl Mirror {
    fn append(&self, ents: &[Entry], hs: Option<&HardState>) -> Result<(), StorageError> {
        let mut core = self.mem.wl();
        core.append(ents)?;
        if let Some(hs) = hs {
            core.set_hardstate(hs.clone());
        }
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.mem.rl().hard_state().clone()
    }

    fn set_conf_state(&self, cs: ConfState) {
        self.mem.wl().set_conf_state(cs);
    }

    /// The hard state after installing `snap` (for the durable write).
    fn hard_state_with(&self, snap: &Snapshot) -> HardState {
        let mut hs = self.hard_state();
        hs.term = hs.term.max(snap.get_metadata().term);
        hs.commit = hs.commit.max(snap.get_metadata().index);
        hs
    }

    fn apply_snapshot(&self, snap: &Snapshot, hs: HardState) -> Result<(), StorageError> {
        let mut core = self.mem.wl();
        // raft-rs refuses a snapshot older than its first index; ours
        // replaces the whole log, as the disk write did.
        *core = Default::default();
        core.apply_snapshot(snap.clone())?;
        core.set_hardstate(hs);
        drop(core);
        if let Ok(mut s) = self.snapshot.write() {
            *s = snap.clone();
        }
        Ok(())
    }

    fn compaction_snapshot(&self, index: u64, data: Vec<u8>) -> Result<Snapshot, StorageError> {
        let term = self.mem.term(index)?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state());
        Ok(snap)
    }

    fn compact(&self, snap: Snapshot) -> Result<(), StorageError> {
        // Keep the entry at `index` in memory: MemStorage has no way to move
        // its snapshot metadata without dropping every entry, and with an
        // empty entry list it would report the *old* snapshot's index as
        // the last index. On disk the snapshot carries it instead.
        self.mem.wl().compact(snap.get_metadata().index)?;
        if let Ok(mut s) = self.snapshot.write() {
            *s = snap;
        }
        Ok(())
    }

    fn conf_state(&self) -> ConfState {
        self.mem
            .initial_state()
            .map(|s| s.conf_state)
            .unwrap_or_default()
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot
            .read()
            .map(|s| s.get_metadata().index)
            .unwrap_or(0)
    }

    fn snapshot_data(&self) -> Option<Vec<u8>> {
        let s = self.snapshot.read().ok()?;
        (!s.get_data().is_empty()).then(|| s.get_data().to_vec())
    }

    fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::SeqCst)
    }
}

impl Storage for Mirror {
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

    /// The latest snapshot, always with the store's state in it. Without
    /// one recent enough (none taken yet), raft is told to try later and the
    /// shell is asked to compact, which writes one from the applied store:
    /// a follower never receives an empty state.
    ///
    /// A snapshot whose configuration does not name the receiver (taken
    /// before it joined) is refused by it, so that one is not offered either.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let snap = self
            .snapshot
            .read()
            .map_err(|_| raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable))?
            .clone();
        let cs = snap.get_metadata().get_conf_state();
        let names_receiver = cs.voters.contains(&to) || cs.learners.contains(&to);
        if snap.get_data().is_empty()
            || snap.get_metadata().index < request_index
            || !names_receiver
        {
            self.snapshot_wanted.store(true, Ordering::SeqCst);
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap)
    }
}

/// In-memory storage for tests and the simulation: "durable" is what was
/// written here; a simulated crash drops the core and keeps this.
#[derive(Clone, Default)]
pub struct MemStorage {
    mirror: Mirror,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }
}

impl RaftStorage for MemStorage {
    fn append(&self, ents: &[Entry], hs: Option<&HardState>) -> Result<(), StorageError> {
        self.mirror.append(ents, hs)
    }
    fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        let mut hs = self.mirror.hard_state();
        hs.commit = commit;
        self.mirror.append(&[], Some(&hs))
    }
    fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StorageError> {
        let hs = self.mirror.hard_state_with(snap);
        self.mirror.apply_snapshot(snap, hs)
    }
    fn set_conf_state(&self, cs: ConfState) -> Result<(), StorageError> {
        self.mirror.set_conf_state(cs);
        Ok(())
    }
    fn compact(&self, index: u64, data: Vec<u8>) -> Result<(), StorageError> {
        let snap = self.mirror.compaction_snapshot(index, data)?;
        self.mirror.compact(snap)
    }
    fn conf_state(&self) -> ConfState {
        self.mirror.conf_state()
    }
    fn snapshot_index(&self) -> u64 {
        self.mirror.snapshot_index()
    }
    fn snapshot_data(&self) -> Option<Vec<u8>> {
        self.mirror.snapshot_data()
    }
    fn take_snapshot_wanted(&self) -> bool {
        self.mirror.take_snapshot_wanted()
    }
    fn describe(&self) -> String {
        "the in-memory raft log".into()
    }
}

/// Delegates raft-rs's reads to the mirror.
macro_rules! storage_via_mirror {
    ($t:ty) => {
        impl Storage for $t {
            fn initial_state(&self) -> raft::Result<RaftState> {
                self.mirror().initial_state()
            }
            fn entries(
                &self,
                low: u64,
                high: u64,
                max_size: impl Into<Option<u64>>,
                context: GetEntriesContext,
            ) -> raft::Result<Vec<Entry>> {
                self.mirror().entries(low, high, max_size, context)
            }
            fn term(&self, idx: u64) -> raft::Result<u64> {
                self.mirror().term(idx)
            }
            fn first_index(&self) -> raft::Result<u64> {
                self.mirror().first_index()
            }
            fn last_index(&self) -> raft::Result<u64> {
                self.mirror().last_index()
            }
            fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
                self.mirror().snapshot(request_index, to)
            }
        }
    };
}
storage_via_mirror!(MemStorage);
storage_via_mirror!(DiskStorage);

impl MemStorage {
    fn mirror(&self) -> &Mirror {
        &self.mirror
    }
}

/// The raft file. Cheap to clone (the driver and its disk thread share it).
#[derive(Clone)]
pub struct DiskStorage {
    inner: Arc<DiskInner>,
}

struct DiskInner {
    path: PathBuf,
    /// `None` after a write failed with an IO error: redb refuses every later
    /// call on that handle (`PreviousIo`), so the next write opens the file
    /// afresh (redb then recovers its last committed transaction).
    db: Mutex<Option<Database>>,
    mirror: Mirror,
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

        let mirror = Mirror::default();
        let mut snapshot = Snapshot::default();
        {
            let rtx = db.begin_read()?;
            let meta = rtx.open_table(META)?;
            let entries = rtx.open_table(ENTRIES)?;
            let mut core = mirror.mem.wl();
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
        if let Ok(mut s) = mirror.snapshot.write() {
            *s = snapshot;
        }
        Ok(DiskStorage {
            inner: Arc::new(DiskInner {
                path: path.to_path_buf(),
                db: Mutex::new(Some(db)),
                mirror,
            }),
        })
    }

    fn mirror(&self) -> &Mirror {
        &self.inner.mirror
    }

    /// True once a conf state was written: the node belongs to a cluster.
    pub fn is_initialized(&self) -> bool {
        RaftStorage::is_initialized(self)
    }

    /// The raft file, for messages.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` in one write transaction and commits it (redb fsyncs).
    /// After an IO error the handle is dropped and the next call reopens the
    /// file, so a disk that was full and has space again works again.
    fn transact(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut slot = self.inner.db.lock().unwrap_or_else(|e| e.into_inner());
        let db = match slot.take() {
            Some(db) => db,
            None => open_db(&self.inner.path)?,
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
}

/// Every change is first committed to disk (redb fsyncs on commit) and only
/// then applied to the mirror: what raft sees is what survives `kill -9`.
impl RaftStorage for DiskStorage {
    fn set_conf_state(&self, cs: ConfState) -> Result<(), StorageError> {
        self.transact(|tx| {
            tx.open_table(META)?
                .insert(CONF_STATE, encode(&cs).as_slice())?;
            Ok(())
        })?;
        self.mirror().set_conf_state(cs);
        Ok(())
    }

    fn append(&self, ents: &[Entry], hs: Option<&HardState>) -> Result<(), StorageError> {
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
        self.mirror().append(ents, hs)
    }

    fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        let mut hs = self.mirror().hard_state();
        hs.commit = commit;
        self.append(&[], Some(&hs))
    }

    fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StorageError> {
        let hs = self.mirror().hard_state_with(snap);
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
        self.mirror().apply_snapshot(snap, hs)
    }

    fn compact(&self, index: u64, data: Vec<u8>) -> Result<(), StorageError> {
        let snap = self.mirror().compaction_snapshot(index, data)?;
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
        self.mirror().compact(snap)
    }

    fn conf_state(&self) -> ConfState {
        self.mirror().conf_state()
    }

    fn snapshot_index(&self) -> u64 {
        self.mirror().snapshot_index()
    }

    fn snapshot_data(&self) -> Option<Vec<u8>> {
        self.mirror().snapshot_data()
    }

    fn take_snapshot_wanted(&self) -> bool {
        self.mirror().take_snapshot_wanted()
    }

    fn describe(&self) -> String {
        self.inner.path.display().to_string()
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
