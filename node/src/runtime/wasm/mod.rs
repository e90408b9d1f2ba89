//! wasmtime: compiles `wasi:http/proxy` components once per digest (cached on
//! disk), pre-instantiates them, and serves each HTTP request in a fresh
//! instance, as `wasmtime serve -Scli` does.
//!
//! The engine uses the pooling allocator with memories, tables and stacks kept
//! resident and `PAGEMAP_SCAN` resets: ../shared/GUESTS.md measured 2.8× the
//! default's requests/s here, because resetting an instance otherwise costs
//! TLB-shootdown IPIs from `madvise`.
//!
//! It also turns off signals-based traps (so explicit bounds checks, no guard
//! pages). With virtual-memory bounds checks every instantiation `mprotect`s
//! the memory a guest grew back to `PROT_NONE` and the guest's first
//! `memory.grow` makes it accessible again: two more TLB shootdowns per
//! request. `perf` showed them as the largest remaining cost; without them
//! `hello` went from ~23k to ~34k requests/s here. Explicit bounds checks
//! cost compute-heavy guests some speed; per-request instantiation is what
//! dominates an HTTP handler.
//!
//! Architecture invariant: a guest can fail only its own request. Traps,
//! timeouts and pool exhaustion become 5xx responses; nothing a guest does
//! reaches the node's control plane.

mod app;
mod egress;
mod engine;
mod limits;

pub use app::{ServiceSettings, WasmApp, QUEUE_WAIT};
pub use egress::EgressPolicy;
pub use limits::MemoryBudget;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::Host;
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Linear memory a single instance may grow to.
pub const MAX_MEMORY: usize = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("not a WebAssembly file (it does not start with the \\0asm header); swarmlet runs wasi:http/proxy components")]
    NotWasm,
    #[error("not a WebAssembly component ({0}); build it as a component, e.g. cargo build --target wasm32-wasip2")]
    NotComponent(String),
    #[error("the component cannot run here: {0}")]
    Link(String),
    #[error("the component is not a wasi:http/proxy component (it does not export wasi:http/incoming-handler): {0}")]
    NotProxy(String),
    #[error("wasm engine: {0}")]
    Engine(String),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// One engine per node; components compiled for it are cached by digest.
pub struct WasmRuntime {
    engine: Engine,
    linker: Linker<Host>,
    cache_dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<WasmApp>>>,
    timeout: Duration,
    budget: Arc<MemoryBudget>,
}

fn engine_err(e: impl std::fmt::Display) -> WasmError {
    WasmError::Engine(e.to_string())
}

impl WasmRuntime {
    /// `cache_dir` holds compiled components; `timeout` bounds one request.
    pub fn new(cache_dir: PathBuf, timeout: Duration) -> Result<Arc<Self>, WasmError> {
        let engine = engine::build()?;
        let mut linker = Linker::new(&engine);
        // Components built from Rust import wasi:cli too (std's environment),
        // so link all of WASI p2 and then HTTP, as `wasmtime serve -Scli`.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(engine_err)?;
        std::fs::create_dir_all(&cache_dir).map_err(|source| WasmError::Io {
            path: cache_dir.display().to_string(),
            source,
        })?;
        Ok(Arc::new(WasmRuntime {
            engine,
            linker,
            cache_dir,
            loaded: Mutex::new(HashMap::new()),
            timeout,
            budget: MemoryBudget::new(MemoryBudget::default_limit()),
        }))
    }

    /// The node-wide budget for all instances' linear memory.
    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Checks that `bytes` is a `wasi:http/proxy` component this node can
    /// serve, compiling it (and caching the result under `digest`).
    pub fn validate(&self, digest: &str, bytes: &[u8]) -> Result<(), WasmError> {
        self.prepare(digest, || Ok(bytes.to_vec())).map(|_| ())
    }

    /// The loaded component for `digest`, compiling `blob` on first use.
    pub fn load(&self, digest: &str, blob: &Path) -> Result<Arc<WasmApp>, WasmError> {
        self.prepare(digest, || {
            std::fs::read(blob).map_err(|source| WasmError::Io {
                path: blob.display().to_string(),
                source,
            })
        })
    }

    /// Deletes the compiled artifact of a component that is gone.
    pub fn forget_artifact(&self, digest: &str) {
        let _ = std::fs::remove_file(self.artifact_path(digest));
    }

    /// Where the compiled artifact of `digest` is cached.
    fn artifact_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.cache_dir.join(format!("{hex}.cwasm"))
    }

    /// Forgets a component no local replica uses any more.
    pub fn unload(&self, digest: &str) {
        if let Ok(mut loaded) = self.loaded.lock() {
            loaded.remove(digest);
        }
    }

    fn prepare(
        &self,
        digest: &str,
        bytes: impl FnOnce() -> Result<Vec<u8>, WasmError>,
    ) -> Result<Arc<WasmApp>, WasmError> {
        if let Some(app) = self.loaded.lock().ok().and_then(|l| l.get(digest).cloned()) {
            return Ok(app);
        }
        let component = self.compile_cached(digest, bytes)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| WasmError::Link(format!("{e:#}")))?;
        let pre = ProxyPre::new(instance_pre).map_err(|e| WasmError::NotProxy(format!("{e:#}")))?;
        let app = Arc::new(WasmApp::new(pre, self.timeout, self.budget.clone()));
        if let Ok(mut loaded) = self.loaded.lock() {
            loaded.insert(digest.to_string(), app.clone());
        }
        Ok(app)
    }

    fn compile_cached(
        &self,
        digest: &str,
        bytes: impl FnOnce() -> Result<Vec<u8>, WasmError>,
    ) -> Result<Component, WasmError> {
        let cached = self.artifact_path(digest);
        if cached.exists() {
            // SAFETY: the file was written by `Component::serialize` of this
            // node into its own data dir; wasmtime checks that it was made by
            // the same version and configuration and refuses it otherwise.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::info!(%digest, "recompiling component, cached artifact unusable: {e}")
                }
            }
        }
        let bytes = bytes()?;
        if !bytes.starts_with(b"\0asm") {
            return Err(WasmError::NotWasm);
        }
        let component = Component::from_binary(&self.engine, &bytes)
            .map_err(|e| WasmError::NotComponent(format!("{e:#}")))?;
        match component.serialize() {
            Ok(art) => {
                let tmp = cached.with_extension("tmp");
                if let Err(e) =
                    std::fs::write(&tmp, art).and_then(|_| std::fs::rename(&tmp, &cached))
                {
                    tracing::warn!(%digest, "could not cache the compiled component: {e}");
                }
            }
            Err(e) => tracing::warn!(%digest, "could not serialize the compiled component: {e}"),
        }
        Ok(component)
    }
}
