//! One loaded component (`WasmApp`) and how it serves a request. A
//! `wasi:http/incoming-handler@0.2` (WASIp2) component is served here: a
//! fresh instance per request (or, with `--instance-reuse N`, one instance
//! for up to N requests one after another), with the per-instance host state
//! (`Host`): the service's egress policy and its memory limits. A
//! `wasi:http/service@0.3` (WASIp3) component is served by `p3.rs`, with the
//! same host state and guarantees.
//!
//! Architecture invariant: a request's guest runs only while someone waits
//! for it: if the client goes away before the response head, the guest's
//! call is dropped (cancelled) and its instance freed. Once the head is sent
//! the guest may finish streaming its body, bounded by the request timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use swarmlet_proto::ServiceSpec;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::AbortOnDropHandle;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::egress::{incoming_hops, Egress, EgressPolicy, MAX_HOPS};
use super::limits::{InstanceLimiter, MemoryBudget};
use super::p3::P3App;
use super::MAX_MEMORY;
use crate::body::{text_response, Body, BoxError};

/// How long a request waits for room (a concurrency slot, instance memory)
/// before it is answered 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);

/// Most idle instances kept per replica for `--instance-reuse`.
const IDLE_MAX: usize = 16;

/// How a service's requests are served, from its spec.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// The service's name, for the log.
    pub service: Arc<str>,
    /// `--limit-memory`: an instance's linear memory cap.
    pub memory_limit: Option<usize>,
    /// `--allow-outbound`.
    pub egress: Arc<EgressPolicy>,
    /// `--instance-reuse`: requests one instance serves (0 and 1: one).
    pub instance_reuse: u32,
    /// `--instance-concurrency`: requests one (WASIp3) instance serves at
    /// the same time (0 and 1: one).
    pub instance_concurrency: u32,
    /// Lines per second the service's guests and failures may log.
    pub log: Arc<super::LogBudget>,
}

impl ServiceSettings {
    pub fn from_spec(spec: &ServiceSpec) -> Self {
        // Validated when the service was created; a list that no longer
        // parses (an older node's rules) denies everything rather than more.
        let egress = EgressPolicy::parse(&spec.allow_outbound).unwrap_or_else(|e| {
            tracing::warn!(service = %spec.name, "denying all outgoing requests: {e}");
            EgressPolicy::default()
        });
        ServiceSettings {
            service: spec.name.as_str().into(),
            memory_limit: spec.limits.memory_bytes.map(|b| b as usize),
            egress: Arc::new(egress),
            instance_reuse: spec.instance_reuse,
            instance_concurrency: spec.instance_concurrency,
            log: super::LogBudget::of_service(&spec.name),
        }
    }
}

/// Per-instance host state.
pub(super) struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub(super) limiter: InstanceLimiter,
    pub(super) egress: Egress,
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
            hooks: &mut self.egress,
        }
    }
}

/// An instance between requests (`--instance-reuse`).
struct Idle {
    store: Store<Host>,
    proxy: Proxy,
    served: u32,
}

/// A loaded, pre-instantiated component, shared by all local replicas of a service.
pub struct WasmApp(Kind);

enum Kind {
    /// `wasi:http/incoming-handler@0.2`.
    P2(Arc<P2App>),
    /// `wasi:http/service@0.3`.
    P3(P3App),
}

/// A WASIp2 component: an instance per request, or reused one after another.
pub(super) struct P2App {
    pre: ProxyPre<Host>,
    timeout: Duration,
    budget: Arc<MemoryBudget>,
    /// Idle instances by replica name (`--instance-reuse` only).
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl WasmApp {
    pub(super) fn p2(pre: ProxyPre<Host>, timeout: Duration, budget: Arc<MemoryBudget>) -> Self {
        WasmApp(Kind::P2(Arc::new(P2App {
            pre,
            timeout,
            budget,
            idle: Mutex::new(HashMap::new()),
        })))
    }

    pub(super) fn p3(app: P3App) -> Self {
        WasmApp(Kind::P3(app))
    }

    /// Whether this is a WASIp3 (`wasi:http/service@0.3`) component.
    pub fn is_p3(&self) -> bool {
        matches!(self.0, Kind::P3(_))
    }

    /// Serves one request. `replica` names the replica (the guest sees it as
    /// `SWARMLET_TASK_NAME`); `permit` is the service's concurrency slot,
    /// held until the guest is done.
    pub async fn handle(
        &self,
        replica: &str,
        settings: &ServiceSettings,
        permit: OwnedSemaphorePermit,
        req: hyper::Request<Incoming>,
    ) -> hyper::Response<Body> {
        let hops = incoming_hops(req.headers());
        if hops >= MAX_HOPS {
            tracing::warn!(service = %settings.service, hops, "request loop: refusing a request that passed through {hops} guests");
            return text_response(
                508,
                format!("request loop: this request already passed through {hops} wasm guests\n"),
            );
        }
        match &self.0 {
            Kind::P2(app) => app.handle(replica, settings, permit, req, hops).await,
            Kind::P3(app) => app.handle(replica, settings, permit, req, hops).await,
        }
    }
}

/// A store for one instance of `replica` of the service `settings` describe.
pub(super) fn new_store(
    engine: &wasmtime::Engine,
    budget: &Arc<MemoryBudget>,
    replica: &str,
    settings: &ServiceSettings,
) -> Store<Host> {
    let wasi = WasiCtx::builder()
        .env("SWARMLET_TASK_NAME", replica)
        .stderr(super::guest_log::GuestStderr {
            service: settings.service.clone(),
            replica: replica.into(),
            budget: settings.log.clone(),
        })
        .build();
    let mut store = Store::new(
        engine,
        Host {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter: InstanceLimiter::new(
                settings.memory_limit.unwrap_or(MAX_MEMORY),
                budget.clone(),
            ),
            egress: Egress {
                service: settings.service.clone(),
                policy: settings.egress.clone(),
                hops: 0,
            },
        },
    );
    store.limiter_async(|host| &mut host.limiter);
    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
    store
}

impl P2App {
    fn new_store(&self, replica: &str, settings: &ServiceSettings) -> Store<Host> {
        new_store(self.pre.engine(), &self.budget, replica, settings)
    }

    fn take_idle(&self, replica: &str) -> Option<Idle> {
        self.idle.lock().ok()?.get_mut(replica)?.pop()
    }

    fn put_idle(&self, replica: String, idle: Idle) {
        // An idle instance keeps its memory: not when others may need it.
        if self.budget.used() > self.budget.limit() / 4 * 3 {
            return;
        }
        if let Ok(mut map) = self.idle.lock() {
            let list = map.entry(replica).or_default();
            if list.len() < IDLE_MAX {
                list.push(idle);
            }
        }
    }

    /// Serves one request that passed through `hops` guests before.
    async fn handle(
        self: &Arc<Self>,
        replica: &str,
        settings: &ServiceSettings,
        permit: OwnedSemaphorePermit,
        req: hyper::Request<Incoming>,
        hops: u32,
    ) -> hyper::Response<Body> {
        let reuse = settings.instance_reuse > 1;
        let reused = if reuse { self.take_idle(replica) } else { None };
        let (mut store, proxy, served) = match reused {
            Some(i) => (i.store, Some(i.proxy), i.served),
            None => {
                // A fresh instance needs at least its first page of memory.
                if !self.budget.wait_for_room(64 << 10, QUEUE_WAIT).await {
                    tracing::warn!(service = %settings.service, "instance memory budget full: answering 503");
                    return text_response(
                        503,
                        "the node's instance memory budget is in use by other requests; try again later\n",
                    );
                }
                (self.new_store(replica, settings), None, 0)
            }
        };
        store.set_epoch_deadline(1);
        store.data_mut().egress.hops = hops;

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
        let app = self.clone();
        let timeout = self.timeout;
        let keep_for = reuse.then(|| (replica.to_string(), settings.instance_reuse));
        // The guest runs in its own task so it may keep streaming the body
        // after the response head is sent; the timeout bounds all of it.
        let task = tokio::spawn(async move {
            let _permit = permit;
            let run = async {
                let proxy = match proxy {
                    Some(p) => p,
                    None => app.pre.instantiate_async(&mut store).await?,
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await?;
                Ok::<_, wasmtime::Error>(proxy)
            };
            match tokio::time::timeout(timeout, run).await {
                Ok(Ok(proxy)) => {
                    if let Some((replica, max)) = keep_for {
                        if served + 1 < max {
                            let idle = Idle {
                                store,
                                proxy,
                                served: served + 1,
                            };
                            app.put_idle(replica, idle);
                        }
                    }
                    Ok(())
                }
                Ok(Err(_)) if store.data().limiter.denied_by_budget() => {
                    Err(GuestFailure::OverBudget)
                }
                Ok(Err(e)) if e.is::<wasmtime::PoolConcurrencyLimitError>() => {
                    Err(GuestFailure::NodeFull(e.to_string()))
                }
                Ok(Err(e)) => Err(GuestFailure::Failed(describe(&e))),
                Err(_) => Err(GuestFailure::TimedOut(timeout)),
            }
        });
        // The guest's call is cancelled when the request is dropped (its
        // client went away) before the guest answered.
        let guard = AbortOnDropHandle::new(task);
        match receiver.await {
            Ok(Ok(resp)) => {
                // The head is out: let the guest finish its body.
                drop(guard.detach());
                resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync())
            }
            Ok(Err(code)) => {
                text_response(502, format!("guest answered with an error: {code:?}\n"))
            }
            Err(_) => {
                let failure = match guard.await {
                    Ok(Ok(())) => {
                        GuestFailure::Failed("guest returned without setting a response".into())
                    }
                    Ok(Err(f)) => f,
                    Err(e) => GuestFailure::Failed(format!("guest task aborted: {e}")),
                };
                failure.respond(settings, replica)
            }
        }
    }
}

/// One line saying why a guest call failed: the trap if there was one (the
/// full wasm backtrace goes to the debug log only).
pub(super) fn describe(e: &wasmtime::Error) -> String {
    tracing::debug!("guest error: {e:?}");
    match e.downcast_ref::<wasmtime::Trap>() {
        // A trap's own text starts "wasm trap: ".
        Some(trap) => trap.to_string(),
        None => e.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum GuestFailure {
    #[error("wasm guest timed out after {0:?}")]
    TimedOut(Duration),
    #[error("wasm guest failed: {0}")]
    Failed(String),
    #[error("the node's instance memory budget is in use by other requests; try again later")]
    OverBudget,
    #[error("this node runs as many wasm instances as it can ({0}); try again later")]
    NodeFull(String),
}

impl GuestFailure {
    /// The client's answer for a guest that did not answer (logged once):
    /// 504 for a timeout, 503 when the node had no room, else 500.
    pub(super) fn respond(
        self,
        settings: &ServiceSettings,
        replica: &str,
    ) -> hyper::Response<Body> {
        super::guest_log::warn(
            &settings.log,
            &settings.service,
            replica,
            format_args!("wasm request failed: {self}"),
        );
        let status = match self {
            GuestFailure::TimedOut(_) => 504,
            GuestFailure::OverBudget | GuestFailure::NodeFull(_) => 503,
            GuestFailure::Failed(_) => 500,
        };
        text_response(status, format!("{self}\n"))
    }
}
