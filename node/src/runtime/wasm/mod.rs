//! wasmtime: compiles `wasi:http` components once per digest (cached on
//! disk), pre-instantiates them, and serves each HTTP request in a fresh
//! instance, as `wasmtime serve -Scli` does. A component is either WASIp2
//! (`wasi:http/proxy`, exporting `wasi:http/incoming-handler@0.2`) or WASIp3
//! (`wasi:http/service@0.3`, exporting an async `wasi:http/handler`), told
//! apart by its exports before it is compiled.
//!
//! Two engines, one per world: `engine.rs` builds the node's engine from
//! `EngineSettings` (isolation and an instance allocator sized for the
//! machine's address space), without the component model's concurrency;
//! WASIp3 components run on a second engine with the same isolation plus
//! that concurrency, whose task bookkeeping on every host call would
//! otherwise slow every WASIp2 request too. `compile.rs`
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
mod guest_log;
mod limits;
mod p3;
mod task;

pub use app::{ServiceSettings, WasmApp, QUEUE_WAIT};
pub use compile::{child_main, CHILD_COMMAND};
pub use egress::EgressPolicy;
pub use engine::{gib, Allocator, EngineSettings, Isolation};
pub use guest_log::LogBudget;
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

/// An engine and the linker for the components it runs.
struct Side {
    engine: Engine,
    settings: EngineSettings,
    linker: Linker<Host>,
}

/// The node's wasm runtime: an engine per `wasi:http` world; components
/// compiled for them are cached by digest.
pub struct WasmRuntime {
    /// WASIp2 components (the node's engine, reported by `swarmlet info`).
    p2: Side,
    /// WASIp3 components: built when the first one is compiled or loaded
    /// (a node that serves none keeps neither the engine nor its linker).
    p3: std::sync::OnceLock<Side>,
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
        // Components built from Rust import wasi:cli too (std's environment),
        // so link all of WASI p2 and then HTTP, as `wasmtime serve -Scli`.
        let p2_linker = |engine: &Engine| -> Result<Linker<Host>, WasmError> {
            let mut linker = Linker::new(engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
                .map_err(engine_err)?;
            Ok(linker)
        };
        let p2 = Side {
            linker: p2_linker(&engine)?,
            engine,
            settings,
        };
        compile::open_cache_dir(&cache_dir).map_err(|source| WasmError::Io {
            path: cache_dir.display().to_string(),
            source,
        })?;
        Ok(Arc::new(WasmRuntime {
            p2,
            p3: std::sync::OnceLock::new(),
            cache_dir,
            loaded: Mutex::new(HashMap::new()),
            preparing: Mutex::new(HashMap::new()),
            compiles: AtomicU64::new(0),
            timeout,
            budget: MemoryBudget::new(MemoryBudget::default_limit()),
        }))
    }

    /// How the node's (WASIp2) engine was built (for `swarmlet info`).
    pub fn settings(&self) -> &EngineSettings {
        &self.p2.settings
    }

    /// The engine and linker of `world`'s components.
    fn side(&self, world: HttpWorld) -> Result<&Side, WasmError> {
        match world {
            HttpWorld::P2 => Ok(&self.p2),
            HttpWorld::P3 => {
                if let Some(side) = self.p3.get() {
                    return Ok(side);
                }
                // Two first WASIp3 components at once may both build one;
                // the first one set is kept (the other's epoch thread ends
                // with its engine).
                let side = self.p3_side()?;
                Ok(self.p3.get_or_init(|| side))
            }
        }
    }

    /// The WASIp3 engine: the node's isolation plus the component model's
    /// concurrency, linking what WASIp2 components get plus WASIp3 (0.3
    /// interfaces have their own names, so a component may import both, as
    /// Rust's std for wasip2 makes a WASIp3 component do).
    fn p3_side(&self) -> Result<Side, WasmError> {
        let (engine, settings) = engine::build_concurrent(&self.p2.settings)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(engine_err)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(engine_err)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(engine_err)?;
        tracing::info!(
            "wasm engine for WASIp3 components: {}",
            settings.describe_allocator()
        );
        Ok(Side {
            engine,
            settings,
            linker,
        })
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
        let world = world_of(bytes)?;
        let component = self.compile_cached(digest, world, bytes)?;
        self.pre(world, component).map(|p| p.world())
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
        let bytes = std::fs::read(blob).map_err(|source| WasmError::Io {
            path: blob.display().to_string(),
            source,
        })?;
        let world = world_of(&bytes)?;
        let component = self.compile_cached(digest, world, &bytes)?;
        drop(bytes);
        let app = Arc::new(match self.pre(world, component)? {
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
        crate::heap::trim();
    }

    fn digest_lock(&self, digest: &str) -> Arc<Mutex<()>> {
        let mut preparing = lock(&self.preparing);
        // Locks nobody holds or waits for are dropped here.
        preparing.retain(|_, l| Arc::strong_count(l) > 1);
        preparing.entry(digest.to_string()).or_default().clone()
    }

    /// Links the component of `world` on that world's engine.
    fn pre(&self, world: HttpWorld, component: Component) -> Result<Pre, WasmError> {
        let instance_pre = self
            .side(world)?
            .linker
            .instantiate_pre(&component)
            .map_err(|e| WasmError::Link(format!("{e:#}")))?;
        let not_proxy = |e: wasmtime::Error| WasmError::NotProxy(format!("{e:#}"));
        match world {
            HttpWorld::P3 => ServicePre::new(instance_pre)
                .map(Pre::P3)
                .map_err(not_proxy),
            HttpWorld::P2 => ProxyPre::new(instance_pre).map(Pre::P2).map_err(not_proxy),
        }
    }

    /// The compiled component: from the cache if its artifact is intact and
    /// made by this engine, else compiled (in a child process) and cached.
    /// The caller holds the digest's lock.
    fn compile_cached(
        &self,
        digest: &str,
        world: HttpWorld,
        wasm: &[u8],
    ) -> Result<Component, WasmError> {
        let side = self.side(world)?;
        let cached = self.artifact_path(digest);
        match deserialize(&side.engine, &cached) {
            Ok(c) => return Ok(c),
            Err(CacheMiss::Absent) => {}
            Err(e) => {
                tracing::warn!(%digest, "compiled artifact {}: {e}; recompiling", cached.display())
            }
        }
        tracing::info!(%digest, bytes = wasm.len(), world = world.name(), "compiling component");
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let component = match compile::compile_in_child(&side.settings, wasm, &cached) {
            ChildOutcome::Done => deserialize(&side.engine, &cached)
                .map_err(|e| engine_err(format!("the artifact just compiled is {e}")))?,
            ChildOutcome::Refused(e) => return Err(e),
            ChildOutcome::Unavailable(why) => {
                tracing::warn!(%digest, "{why}; compiling in the daemon");
                let component = Component::from_binary(&side.engine, wasm)
                    .map_err(|e| WasmError::NotComponent(format!("{e:#}")))?;
                if let Err(e) = compile::cache(&component, &cached) {
                    tracing::warn!(%digest, "could not cache the compiled component: {e}");
                }
                component
            }
        };
        crate::heap::trim();
        Ok(component)
    }
}

fn deserialize(engine: &Engine, path: &Path) -> Result<Component, CacheMiss> {
    let artifact = compile::read_artifact(path)?;
    // SAFETY: the bytes were written by `Component::serialize` (this node's
    // compile child or itself) into its own data dir, and their checksum
    // matches; wasmtime refuses an artifact made by another version or
    // configuration (the other world's engine included).
    unsafe { Component::deserialize(engine, &artifact) }
        .map_err(|e| CacheMiss::Damaged(format!("not loadable: {e}")))
}

/// Which world a component serves, from its own (top-level) exports: a
/// `wasi:http/handler@0.3` export makes it WASIp3; anything else is tried
/// as WASIp2, whose linking says what is missing.
fn world_of(wasm: &[u8]) -> Result<HttpWorld, WasmError> {
    use wasmparser::{Parser, Payload};
    if !wasm.starts_with(b"\0asm") {
        return Err(WasmError::NotWasm);
    }
    // Nested modules and components have their own exports: only depth 0
    // counts.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        // A malformed file is the compiler's to describe.
        let Ok(payload) = payload else { break };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports.into_iter().flatten() {
                    if export.name.name.starts_with("wasi:http/handler@0.3") {
                        return Ok(HttpWorld::P3);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(HttpWorld::P2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn the_world_is_told_by_the_components_own_exports() {
        let top = wat::parse_str(
            r#"(component
                (instance $i)
                (export "wasi:http/handler@0.3.0-rc-2025-09-16" (instance $i)))"#,
        )
        .unwrap();
        assert_eq!(world_of(&top).unwrap(), HttpWorld::P3);
        // The same export inside a nested component is not the component's.
        let nested = wat::parse_str(
            r#"(component
                (component
                    (instance $i)
                    (export "wasi:http/handler@0.3.0-rc-2025-09-16" (instance $i))))"#,
        )
        .unwrap();
        assert_eq!(world_of(&nested).unwrap(), HttpWorld::P2);
        assert!(matches!(world_of(b"not wasm"), Err(WasmError::NotWasm)));
        // A file cut before its exports is left to the compiler to describe.
        assert_eq!(world_of(&top[..12]).unwrap(), HttpWorld::P2);
        for (file, world) in [("hello", HttpWorld::P2), ("hello-p3", HttpWorld::P3)] {
            let path = format!("{}/../guests/out/{file}.wasm", env!("CARGO_MANIFEST_DIR"));
            let wasm = std::fs::read(&path).expect("guests/out (guests/build.sh)");
            assert_eq!(world_of(&wasm).unwrap(), world, "{file}");
        }
    }

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
