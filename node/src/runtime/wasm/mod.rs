//! wasmtime: compiles `wasi:http` components once per digest (cached on
//! disk), pre-instantiates them, and serves each HTTP request in a fresh
//! instance, as `wasmtime serve -Scli` does. A component is either WASIp2
//! (`wasi:http/proxy`, exporting `wasi:http/incoming-handler@0.2`) or WASIp3
//! (`wasi:http/service@0.3`, exporting an async `wasi:http/handler`), told
//! apart when it is loaded; both link all of WASI (p2 and p3) and HTTP.
//!
//! `engine.rs` builds the one engine from `EngineSettings` (isolation and an
//! instance allocator sized for the machine's address space); `compile.rs`
//! compiles in a child process and keeps the on-disk cache; `app.rs` serves
//! a WASIp2 request, `p3.rs` a WASIp3 one (several at once per instance with
//! `--instance-concurrency`); `task.rs` makes it a task `Runtime` for the agent.
//!
//! Architecture invariant: a guest can fail only its own request. Traps,
//! timeouts and pool exhaustion become 5xx responses; nothing a guest does
//! reaches the node's control plane.

mod app;
mod compile;
mod egress;
mod engine;
mod limits;
mod p3;
mod task;

pub use app::{ServiceSettings, WasmApp, QUEUE_WAIT};
pub use compile::{child_main, CHILD_COMMAND};
pub use egress::EgressPolicy;
pub use engine::{gib, Allocator, EngineSettings, Isolation};
pub use limits::MemoryBudget;
pub use p3::{DEFAULT_CONCURRENT_REUSE, MAX_INSTANCE_CONCURRENCY};
pub use task::{Components, WasmTasks};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use app::Host;
use compile::{CacheMiss, ChildOutcome};
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

/// Linear memory a single instance may grow to.
pub const MAX_MEMORY: usize = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("not a WebAssembly file (it does not start with the \\0asm header); swarmlet runs wasi:http components (wasi:http/proxy@0.2 or wasi:http/service@0.3)")]
    NotWasm,
    #[error("not a WebAssembly component ({0}); build it as a component, e.g. cargo build --target wasm32-wasip2")]
    NotComponent(String),
    #[error("the component cannot run here: {0}")]
    Link(String),
    #[error("the component is neither a wasi:http/proxy@0.2 component (it does not export wasi:http/incoming-handler@0.2) nor a wasi:http/service@0.3 one (nor wasi:http/handler@0.3): {0}")]
    NotProxy(String),
    #[error("wasm engine: {0}")]
    Engine(String),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Which `wasi:http` world a component serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpWorld {
    /// WASIp2: `wasi:http/proxy`, exporting `wasi:http/incoming-handler@0.2`.
    P2,
    /// WASIp3: `wasi:http/service@0.3`, exporting `wasi:http/handler@0.3`.
    P3,
}

impl HttpWorld {
    pub fn name(self) -> &'static str {
        match self {
            HttpWorld::P2 => "WASIp2 (wasi:http/proxy@0.2)",
            HttpWorld::P3 => "WASIp3 (wasi:http/service@0.3)",
        }
    }
}

/// A linked component, ready to instantiate.
enum Pre {
    P2(ProxyPre<Host>),
    P3(ServicePre<Host>),
}

impl Pre {
    fn world(&self) -> HttpWorld {
        match self {
            Pre::P2(_) => HttpWorld::P2,
            Pre::P3(_) => HttpWorld::P3,
        }
    }
}

/// One engine per node; components compiled for it are cached by digest.
pub struct WasmRuntime {
    engine: Engine,
    settings: EngineSettings,
    linker: Linker<Host>,
    cache_dir: PathBuf,
    /// Components local replicas use. Only `load` adds to it.
    loaded: Mutex<HashMap<String, Arc<WasmApp>>>,
    /// One lock per digest being prepared: a second caller waits for the
    /// first one's compile and then reads its artifact.
    preparing: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Components compiled (not loaded from the cache) since start-up.
    compiles: AtomicU64,
    timeout: Duration,
    budget: Arc<MemoryBudget>,
}

fn engine_err(e: impl std::fmt::Display) -> WasmError {
    WasmError::Engine(e.to_string())
}

/// A lock whose holder panicked still guards consistent data here (a map).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WasmRuntime {
    /// `cache_dir` holds compiled components; `timeout` bounds one request.
    pub fn new(
        cache_dir: PathBuf,
        timeout: Duration,
        isolation: Isolation,
    ) -> Result<Arc<Self>, WasmError> {
        let (engine, settings) = engine::build(isolation)?;
        let mut linker = Linker::new(&engine);
        // Components built from Rust import wasi:cli too (std's environment),
        // so link all of WASI p2 and then HTTP, as `wasmtime serve -Scli`;
        // and the same for WASIp3 (0.3 interfaces have their own names, so
        // a component may import both, as Rust's std for wasip2 makes a
        // WASIp3 component do).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(engine_err)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(engine_err)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(engine_err)?;
        compile::open_cache_dir(&cache_dir).map_err(|source| WasmError::Io {
            path: cache_dir.display().to_string(),
            source,
        })?;
        Ok(Arc::new(WasmRuntime {
            engine,
            settings,
            linker,
            cache_dir,
            loaded: Mutex::new(HashMap::new()),
            preparing: Mutex::new(HashMap::new()),
            compiles: AtomicU64::new(0),
            timeout,
            budget: MemoryBudget::new(MemoryBudget::default_limit()),
        }))
    }

    /// How the engine was built (for `swarmlet info`).
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The node-wide budget for all instances' linear memory.
    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Checks that `bytes` is a `wasi:http` component this node can serve,
    /// compiling it (and caching the artifact under `digest`), and says
    /// which world it serves. The component is not kept in memory: a
    /// refused `service create` leaves nothing loaded, and an accepted one
    /// is loaded by its replicas.
    pub fn validate(&self, digest: &str, bytes: &[u8]) -> Result<HttpWorld, WasmError> {
        if let Some(app) = lock(&self.loaded).get(digest) {
            return Ok(if app.is_p3() {
                HttpWorld::P3
            } else {
                HttpWorld::P2
            });
        }
        let prepare = self.digest_lock(digest);
        let _held = lock(&prepare);
        let component = self.compile_cached(digest, || Ok(bytes.to_vec()))?;
        self.pre(component).map(|p| p.world())
    }

    /// The loaded component for `digest`, compiling `blob` on first use.
    pub fn load(&self, digest: &str, blob: &Path) -> Result<Arc<WasmApp>, WasmError> {
        if let Some(app) = lock(&self.loaded).get(digest).cloned() {
            return Ok(app);
        }
        let prepare = self.digest_lock(digest);
        let _held = lock(&prepare);
        if let Some(app) = lock(&self.loaded).get(digest).cloned() {
            return Ok(app);
        }
        let component = self.compile_cached(digest, || {
            std::fs::read(blob).map_err(|source| WasmError::Io {
                path: blob.display().to_string(),
                source,
            })
        })?;
        let app = Arc::new(match self.pre(component)? {
            Pre::P2(pre) => WasmApp::p2(pre, self.timeout, self.budget.clone()),
            Pre::P3(pre) => WasmApp::p3(p3::P3App::new(pre, self.timeout, self.budget.clone())),
        });
        lock(&self.loaded).insert(digest.to_string(), app.clone());
        Ok(app)
    }

    /// The component `digest` if it is loaded (never compiles or waits).
    pub fn loaded(&self, digest: &str) -> Option<Arc<WasmApp>> {
        lock(&self.loaded).get(digest).cloned()
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
        lock(&self.loaded).remove(digest);
        trim_heap();
    }

    fn digest_lock(&self, digest: &str) -> Arc<Mutex<()>> {
        let mut preparing = lock(&self.preparing);
        // Locks nobody holds or waits for are dropped here.
        preparing.retain(|_, l| Arc::strong_count(l) > 1);
        preparing.entry(digest.to_string()).or_default().clone()
    }

    /// Links the component and tells a `wasi:http/service@0.3` (WASIp3)
    /// from a `wasi:http/proxy` (WASIp2) one.
    fn pre(&self, component: Component) -> Result<Pre, WasmError> {
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| WasmError::Link(format!("{e:#}")))?;
        if let Ok(pre) = ServicePre::new(instance_pre.clone()) {
            return Ok(Pre::P3(pre));
        }
        ProxyPre::new(instance_pre)
            .map(Pre::P2)
            .map_err(|e| WasmError::NotProxy(format!("{e:#}")))
    }

    /// The compiled component: from the cache if its artifact is intact and
    /// made by this engine, else compiled (in a child process) and cached.
    /// The caller holds the digest's lock.
    fn compile_cached(
        &self,
        digest: &str,
        bytes: impl FnOnce() -> Result<Vec<u8>, WasmError>,
    ) -> Result<Component, WasmError> {
        let cached = self.artifact_path(digest);
        match self.deserialize(&cached) {
            Ok(c) => return Ok(c),
            Err(CacheMiss::Absent) => {}
            Err(e) => {
                tracing::warn!(%digest, "compiled artifact {}: {e}; recompiling", cached.display())
            }
        }
        let wasm = bytes()?;
        if !wasm.starts_with(b"\0asm") {
            return Err(WasmError::NotWasm);
        }
        tracing::info!(%digest, bytes = wasm.len(), "compiling component");
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let component = match compile::compile_in_child(&self.settings, &wasm, &cached) {
            ChildOutcome::Done => self
                .deserialize(&cached)
                .map_err(|e| engine_err(format!("the artifact just compiled is {e}")))?,
            ChildOutcome::Refused(e) => return Err(e),
            ChildOutcome::Unavailable(why) => {
                tracing::warn!(%digest, "{why}; compiling in the daemon");
                let component = Component::from_binary(&self.engine, &wasm)
                    .map_err(|e| WasmError::NotComponent(format!("{e:#}")))?;
                if let Err(e) = compile::cache(&component, &cached) {
                    tracing::warn!(%digest, "could not cache the compiled component: {e}");
                }
                component
            }
        };
        drop(wasm);
        trim_heap();
        Ok(component)
    }

    fn deserialize(&self, path: &Path) -> Result<Component, CacheMiss> {
        let artifact = compile::read_artifact(path)?;
        // SAFETY: the bytes were written by `Component::serialize` (this
        // node's compile child or itself) into its own data dir, and their
        // checksum matches; wasmtime refuses an artifact made by another
        // version or configuration.
        unsafe { Component::deserialize(&self.engine, &artifact) }
            .map_err(|e| CacheMiss::Damaged(format!("not loadable: {e}")))
    }
}

/// Gives freed heap back to the system (glibc keeps it otherwise): loading
/// a component allocates and frees megabytes once.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn validation_compiles_once_per_digest_and_keeps_nothing_loaded() {
        let dir = std::env::temp_dir().join(format!("swarmlet-wasm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let wasm = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../guests/out/hello.wasm"
        ))
        .expect("guests/out/hello.wasm (guests/build.sh)");
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&wasm)));
        // A write a crash interrupted left its temp file.
        let stale = dir.join("cache").join(".x.cwasm.tmp-1-00");
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, b"partial").unwrap();
        let rt = WasmRuntime::new(
            dir.join("cache"),
            Duration::from_secs(1),
            Isolation::default(),
        )
        .unwrap();
        assert!(!stale.exists(), "stale temp file removed at start-up");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("cache"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| rt.validate(&digest, &wasm).unwrap());
            }
        });
        assert_eq!(rt.compiles.load(Ordering::Relaxed), 1);
        assert!(lock(&rt.loaded).is_empty(), "validation loads nothing");
        assert!(matches!(
            rt.validate("sha256:00", b"junk"),
            Err(WasmError::NotWasm)
        ));

        // Replicas load what validation cached, without compiling again.
        let blob = dir.join("blob");
        std::fs::write(&blob, &wasm).unwrap();
        rt.load(&digest, &blob).unwrap();
        assert_eq!(rt.compiles.load(Ordering::Relaxed), 1);
        assert_eq!(lock(&rt.loaded).len(), 1);
        assert_eq!(rt.validate(&digest, &wasm).unwrap(), HttpWorld::P2);

        // A WASIp3 component is told apart when it is validated and loaded.
        let p3 = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../guests/out/hello-p3.wasm"
        ))
        .expect("guests/out/hello-p3.wasm (guests/build.sh)");
        let p3_digest = format!("sha256:{}", hex::encode(Sha256::digest(&p3)));
        assert_eq!(rt.validate(&p3_digest, &p3).unwrap(), HttpWorld::P3);
        let p3_blob = dir.join("p3-blob");
        std::fs::write(&p3_blob, &p3).unwrap();
        assert!(rt.load(&p3_digest, &p3_blob).unwrap().is_p3());
        assert!(!rt.loaded(&digest).unwrap().is_p3());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
