//! Per-layer progress of a pull or import, for a CLI to draw Docker-style
//! lines (`a1b2c3d4e5f6: Downloading [=====>   ] 1.2MB/3.4MB`).

/// One event about one layer. `layer` is the layer's blob digest (what
/// Docker shows, shortened), `index` its position (0 = bottom) of `count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub layer: String,
    pub index: usize,
    pub count: usize,
    pub state: LayerState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerState {
    /// The store has it already: nothing to fetch.
    AlreadyExists,
    /// Fetching (and unpacking as it arrives): bytes so far of `total`
    /// (the manifest's size; None when unknown, as in an archive).
    Downloading { done: u64, total: Option<u64> },
    /// Digests checked, the layer is in the store.
    Complete,
}

/// Where progress goes: a callback (a channel's `send` fits).
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// A progress sink that drops everything.
pub fn ignore(_: Progress) {}
