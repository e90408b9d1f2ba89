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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::body::{text_response, Body, BoxError};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// How often the epoch advances: guests yield to the scheduler this often,
/// so a spinning guest neither blocks a worker thread nor outlives its timeout.
const EPOCH_TICK: Duration = Duration::from_millis(10);
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

/// Per-request host state.
struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

/// One engine per node; components compiled for it are cached by digest.
pub struct WasmRuntime {
    engine: Engine,
    linker: Linker<Host>,
    cache_dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<WasmApp>>>,
    timeout: Duration,
}

/// A loaded, pre-instantiated component, shared by all local replicas of a service.
pub struct WasmApp {
    pre: ProxyPre<Host>,
    timeout: Duration,
}

fn engine_err(e: impl std::fmt::Display) -> WasmError {
    WasmError::Engine(e.to_string())
}

impl WasmRuntime {
    /// `cache_dir` holds compiled components; `timeout` bounds one request.
    pub fn new(cache_dir: PathBuf, timeout: Duration) -> Result<Arc<Self>, WasmError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(1 << 20)
            .async_stack_keep_resident(1 << 20)
            .max_memory_size(MAX_MEMORY);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            // See the module doc: no mprotect per request.
            .signals_based_traps(false)
            .memory_guard_size(0)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(engine_err)?;
        let mut linker = Linker::new(&engine);
        // Components built from Rust import wasi:cli too (std's environment),
        // so link all of WASI p2 and then HTTP, as `wasmtime serve -Scli`.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(engine_err)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| WasmError::Engine(format!("starting the epoch thread: {e}")))?;
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
        }))
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
        let app = Arc::new(WasmApp {
            pre,
            timeout: self.timeout,
        });
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

impl WasmApp {
    /// Serves one request in a fresh instance. `replica` names the replica
    /// (the guest sees it as `SWARMLET_TASK_NAME`); `memory_limit` caps the
    /// instance's linear memory (`--limit-memory`): a guest that grows past
    /// it sees `memory.grow` fail, as on a full machine.
    pub async fn handle(
        &self,
        replica: &str,
        memory_limit: Option<usize>,
        req: hyper::Request<Incoming>,
    ) -> hyper::Response<Body> {
        let wasi = WasiCtx::builder()
            .env("SWARMLET_TASK_NAME", replica)
            .inherit_stderr()
            .build();
        let mut store = Store::new(
            self.pre.engine(),
            Host {
                wasi,
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                limits: StoreLimitsBuilder::new()
                    .memory_size(memory_limit.unwrap_or(MAX_MEMORY))
                    .build(),
            },
        );
        store.limiter(|host| &mut host.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));

        let (sender, receiver) = tokio::sync::oneshot::channel();
        let (req_res, out_res) = {
            let mut http = store.data_mut().http();
            (
                http.new_incoming_request(Scheme::Http, req),
                http.new_response_outparam(sender),
            )
        };
        let (req, out) = match (req_res, out_res) {
            (Ok(r), Ok(o)) => (r, o),
            (Err(e), _) | (_, Err(e)) => return text_response(400, format!("bad request: {e}\n")),
        };
        let pre = self.pre.clone();
        let timeout = self.timeout;
        // The guest runs in its own task so it may keep streaming the body
        // after the response head is sent; the timeout bounds all of it.
        let task = tokio::spawn(async move {
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            match tokio::time::timeout(timeout, run).await {
                Ok(r) => r.map_err(|e| GuestFailure::Failed(describe(&e))),
                Err(_) => Err(GuestFailure::TimedOut(timeout)),
            }
        });
        match receiver.await {
            Ok(Ok(resp)) => resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
            Ok(Err(code)) => {
                text_response(502, format!("guest answered with an error: {code:?}\n"))
            }
            Err(_) => {
                let failure = match task.await {
                    Ok(Ok(())) => {
                        GuestFailure::Failed("guest returned without setting a response".into())
                    }
                    Ok(Err(f)) => f,
                    Err(e) => GuestFailure::Failed(format!("guest task aborted: {e}")),
                };
                tracing::warn!(%replica, "wasm request failed: {failure}");
                match failure {
                    GuestFailure::TimedOut(_) => text_response(504, format!("{failure}\n")),
                    GuestFailure::Failed(_) => text_response(500, format!("{failure}\n")),
                }
            }
        }
    }
}

/// One line saying why a guest call failed: the trap if there was one (the
/// full wasm backtrace goes to the debug log only).
fn describe(e: &wasmtime::Error) -> String {
    tracing::debug!("guest error: {e:?}");
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("wasm trap: {trap}"),
        None => e.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
enum GuestFailure {
    #[error("wasm guest timed out after {0:?}")]
    TimedOut(Duration),
    #[error("wasm guest failed: {0}")]
    Failed(String),
}
