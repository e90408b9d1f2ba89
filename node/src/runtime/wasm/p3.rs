//! Serving a WASIp3 (`wasi:http/service@0.3`) component, whose handler is an
//! async function: one instance may serve several requests at the same time
//! (`--instance-concurrency N`), each a component-model task of its own.
//!
//! The scheduling is wasmtime-wasi-http's `handler::ProxyHandler` (what
//! `wasmtime serve` runs): per replica, a queue of requests and workers, each
//! worker one instance that accepts requests while `WorkerState` says so and
//! exits when it has served its total (`--instance-reuse`, 128 by default
//! when concurrent as in `wasmtime serve`, else 1) or sat idle. This file is
//! the swarmlet side of it: the same `Host` store as WASIp2 (memory limit and
//! node budget, egress policy and hop count, `SWARMLET_TASK_NAME`), and the
//! guarantees of `app.rs` mapped onto the handler's hooks:
//!
//! - a request's deadline (`on_request_start`'s future) is the request
//!   timeout or its client going away, whichever comes first; an expired
//!   request answers 504 (or nothing, to a client that is gone) and its
//!   instance takes no new requests and is dropped once the others are done
//!   or expired (wasmtime 48 cannot cancel one task of an instance, so the
//!   expired task runs on until then, bounded by the timeout);
//! - the service's concurrency slot is held by that deadline future (until
//!   the response head or expiry) and by the response body (until it is
//!   sent), so a slot is free only when neither the guest nor the client
//!   needs it;
//! - a new instance waits for room in the node's memory budget like a WASIp2
//!   one (503 if none comes); a growth the budget denies answers 503;
//! - a trap ends the instance: its requests answer 500, the next request
//!   gets a new instance.
//!
//! Architecture invariant: nothing here changes the WASIp2 path; a WASIp3
//! instance is only ever reached through its replica's `ProxyHandler`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, InstantiationError, Proxy, ProxyHandler, ShouldAccept,
    TrapOrPanicError, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

use super::app::{describe, new_store, GuestFailure, Host, ServiceSettings, QUEUE_WAIT};
use super::limits::MemoryBudget;
use super::lock;
use crate::body::{Body, BoxError};

/// Requests one instance serves in all when it serves them concurrently
/// and the service set no `--instance-reuse` (`wasmtime serve`'s default).
pub const DEFAULT_CONCURRENT_REUSE: u32 = 128;
/// The most `--instance-concurrency` a service may ask for.
pub const MAX_INSTANCE_CONCURRENCY: u32 = 256;
/// An instance that has served no request for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A loaded WASIp3 component, shared by all local replicas of a service.
pub(crate) struct P3App {
    pre: ServicePre<Host>,
    timeout: Duration,
    budget: Arc<MemoryBudget>,
    /// Each replica's handler: its queue and its instances.
    replicas: Mutex<HashMap<String, ProxyHandler<Replica>>>,
}

impl P3App {
    pub(super) fn new(pre: ServicePre<Host>, timeout: Duration, budget: Arc<MemoryBudget>) -> Self {
        P3App {
            pre,
            timeout,
            budget,
            replicas: Mutex::new(HashMap::new()),
        }
    }

    /// The handler of `replica`, made anew when the service's settings
    /// changed (instances of the old one finish what they accepted).
    fn handler(&self, replica: &str, settings: &ServiceSettings) -> ProxyHandler<Replica> {
        let mut replicas = lock(&self.replicas);
        if let Some(h) = replicas.get(replica) {
            if h.state().serves(settings) {
                return h.clone();
            }
        }
        // Handlers without a live instance hold nothing worth keeping (and
        // a replica that is gone never asks again): forget them.
        replicas.retain(|_, h| Arc::strong_count(&h.state().live) > 1);
        let handler = ProxyHandler::new(Replica {
            pre: self.pre.clone(),
            name: replica.into(),
            settings: settings.clone(),
            timeout: self.timeout,
            budget: self.budget.clone(),
            live: Arc::new(()),
        });
        replicas.insert(replica.to_string(), handler.clone());
        handler
    }

    /// Serves one request that passed through `hops` guests before.
    pub(super) async fn handle(
        &self,
        replica: &str,
        settings: &ServiceSettings,
        permit: OwnedSemaphorePermit,
        req: hyper::Request<Incoming>,
        hops: u32,
    ) -> hyper::Response<Body> {
        let handler = self.handler(replica, settings);
        let permit = Arc::new(permit);
        // Dropped with this future: the client went away.
        let (_here, gone) = oneshot::channel::<()>();
        let over_budget = Arc::new(OnceLock::new());
        let data = RequestData {
            hops,
            permit: permit.clone(),
            gone,
            over_budget: over_budget.clone(),
        };
        let req = req.map(|body| body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync());
        let deadline = tokio::time::Instant::now() + self.timeout;
        // The guest's own deadline starts when an instance accepts the
        // request; this one also bounds the wait for an instance.
        let failure = match tokio::time::timeout_at(deadline, handler.handle(data, req)).await {
            Ok(Ok(resp)) => {
                return resp.map(|body| {
                    Bounded {
                        body,
                        deadline: Box::pin(tokio::time::sleep_until(deadline)),
                        timeout: self.timeout,
                        _permit: permit,
                    }
                    .boxed_unsync()
                })
            }
            Ok(Err(e)) => {
                let denied = over_budget
                    .get()
                    .is_some_and(|f: &Arc<AtomicBool>| f.load(Ordering::Relaxed));
                classify(&e, denied, self.timeout)
            }
            Err(_) => GuestFailure::TimedOut(self.timeout),
        };
        failure.respond(settings, replica)
    }
}

/// Why `ProxyHandler::handle` failed, as the response will say it.
fn classify(e: &wasmtime::Error, over_budget: bool, timeout: Duration) -> GuestFailure {
    if e.is::<ExpirationError>() {
        return GuestFailure::TimedOut(timeout);
    }
    if let Some(i) = e.downcast_ref::<InstantiationError<RequestData>>() {
        if i.error.is::<NoRoom>() {
            return GuestFailure::OverBudget;
        }
        if i.error.is::<wasmtime::PoolConcurrencyLimitError>() {
            return GuestFailure::NodeFull(i.error.to_string());
        }
        return GuestFailure::Failed(format!("instantiating: {}", describe(&i.error)));
    }
    if over_budget {
        return GuestFailure::OverBudget;
    }
    if e.is::<TrapOrPanicError>() {
        // The trap ends the instance (and its store) before its requests
        // hear why; `Worker::drop` logs it.
        return GuestFailure::Failed(
            "its instance trapped (the node's log says why; with --instance-concurrency, any request that instance was serving may have caused it)".into(),
        );
    }
    GuestFailure::Failed(describe(e))
}

/// A new instance found no room in the node's memory budget.
#[derive(Debug, thiserror::Error)]
#[error("the node's instance memory budget is in use by other requests")]
struct NoRoom;

/// What a request brings to the instance that accepts it.
struct RequestData {
    hops: u32,
    /// The service's concurrency slot (shared with the response body).
    permit: Arc<OwnedSemaphorePermit>,
    /// Resolves when the request's `handle` future is dropped.
    gone: oneshot::Receiver<()>,
    /// Set to the instance's budget-denial flag when one accepts it.
    over_budget: Arc<OnceLock<Arc<AtomicBool>>>,
}

/// One replica's `HandlerState`: how its instances are made and retired.
struct Replica {
    pre: ServicePre<Host>,
    name: Arc<str>,
    settings: ServiceSettings,
    timeout: Duration,
    budget: Arc<MemoryBudget>,
    /// One clone per live instance (worker).
    live: Arc<()>,
}

impl Replica {
    /// Whether this handler was made for `settings` (the service's spec may
    /// have changed since).
    fn serves(&self, s: &ServiceSettings) -> bool {
        let mine = &self.settings;
        mine.instance_reuse == s.instance_reuse
            && mine.instance_concurrency == s.instance_concurrency
            && mine.memory_limit == s.memory_limit
            && mine.service == s.service
            && (Arc::ptr_eq(&mine.egress, &s.egress) || mine.egress == s.egress)
    }

    /// Requests one instance serves at the same time, and in all.
    fn limits(&self) -> (usize, usize) {
        let concurrency = self.settings.instance_concurrency.max(1);
        let total = match self.settings.instance_reuse {
            0 if concurrency > 1 => DEFAULT_CONCURRENT_REUSE,
            n => n.max(1),
        };
        (concurrency as usize, total as usize)
    }
}

impl HandlerState for Replica {
    type StoreData = Host;
    type WorkerExpiration = Expiry;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<Host, Expiry, Worker>> {
        // A fresh instance needs at least its first page of memory.
        if !self.budget.wait_for_room(64 << 10, QUEUE_WAIT).await {
            tracing::warn!(service = %self.settings.service, "instance memory budget full: answering 503");
            return Err(wasmtime::Error::new(NoRoom));
        }
        let mut store = new_store(self.pre.engine(), &self.budget, &self.name, &self.settings);
        store.set_epoch_deadline(1);
        let over_budget = store.data_mut().limiter.denial_flag();
        let service = tokio::time::timeout(self.timeout, self.pre.instantiate_async(&mut store))
            .await
            .map_err(|_| {
                wasmtime::format_err!("instantiation took longer than {:?}", self.timeout)
            })??;
        let (concurrency, total) = self.limits();
        let retiring = Arc::new(AtomicBool::new(false));
        Ok(Instance {
            store,
            proxy: Proxy::P3(service),
            view: <Host as WasiHttpView>::http,
            expiration: Expiry {
                timeout: self.timeout,
                budget: self.budget.clone(),
                retiring: retiring.clone(),
                sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            },
            state: Worker {
                service: self.settings.service.clone(),
                log: self.settings.log.clone(),
                concurrency,
                total,
                timeout: self.timeout,
                over_budget,
                retiring,
                _live: self.live.clone(),
            },
        })
    }
}

/// When an instance is dropped: a request it holds past the timeout, or
/// idleness (sooner when the node's memory budget runs short), or, once one
/// of its requests expired, as soon as no request waits for a response head.
///
/// Why not later: wasmtime-wasi-http 48's `ProxyHandler` wakes one waiting
/// worker per queued request (`Notify::notify_one`), and a worker that has
/// stopped accepting still holds its waiter, swallowing the wake-up until it
/// is dropped; left to linger for the timeout, such an instance held new
/// requests in the queue for that long although other instances were free
/// (seen in the e2e test of a timeout).
struct Expiry {
    timeout: Duration,
    budget: Arc<MemoryBudget>,
    /// Set when a request of this instance expired.
    retiring: Arc<AtomicBool>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiry {
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let me = self.get_mut();
        if status != WorkerStatus::Requests && me.retiring.load(Ordering::Relaxed) {
            return Poll::Ready(());
        }
        let limit = match status {
            WorkerStatus::Idle => {
                // An idle instance keeps its memory: not when others may need it.
                if me.budget.used() > me.budget.limit() / 4 * 3 {
                    return Poll::Ready(());
                }
                IDLE_TIMEOUT
            }
            WorkerStatus::Requests | WorkerStatus::PostReturn => me.timeout,
        };
        let Some(deadline) = start.checked_add(limit) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if me.sleep.deadline() != deadline {
            me.sleep.as_mut().reset(deadline);
        }
        me.sleep.as_mut().poll(cx)
    }
}

/// One instance's `WorkerState`.
struct Worker {
    service: Arc<str>,
    log: Arc<super::LogBudget>,
    concurrency: usize,
    total: usize,
    timeout: Duration,
    over_budget: Arc<AtomicBool>,
    /// Shared with its `Expiry`.
    retiring: Arc<AtomicBool>,
    _live: Arc<()>,
}

impl WorkerState for Worker {
    type StoreData = Host;
    type RequestData = RequestData;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.total {
            ShouldAccept::Never
        } else if concurrent >= self.concurrency {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, Host>,
        data: RequestData,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        // Outgoing requests of a concurrent instance cannot be told apart by
        // the request they serve: they carry the highest hop count the
        // instance has seen, so a loop through it still ends at MAX_HOPS.
        let egress = &mut store.data_mut().egress;
        egress.hops = egress.hops.max(data.hops);
        let _ = data.over_budget.set(self.over_budget.clone());
        let (timeout, permit, gone) = (self.timeout, data.permit, data.gone);
        let retiring = self.retiring.clone();
        // Dropped unfinished when the guest answers in time.
        Box::pin(async move {
            let _permit = permit;
            // Ends at the timeout, or when the client is gone (the sender
            // is dropped): either way the request has expired.
            let _ = tokio::time::timeout(timeout, gone).await;
            retiring.store(true, Ordering::Relaxed);
        })
    }

    fn drop(&self, store: Store<Host>, result: wasmtime::Result<()>) {
        match result {
            Err(e) if e.is::<wasmtime::Trap>() => {
                tracing::debug!("guest error: {e:?}");
                let trap = e.downcast_ref::<wasmtime::Trap>().map(|t| t.to_string());
                super::guest_log::warn(
                    &self.log,
                    &self.service,
                    "",
                    format_args!("wasm instance trapped: {}", trap.unwrap_or_default()),
                )
            }
            // Expired (timed out), or its host side failed.
            Err(e) => tracing::debug!(service = %self.service, "wasm instance ended: {e:#}"),
            Ok(()) => {}
        }
        drop(store);
    }
}

/// A WASIp3 response body, bounded by the request's deadline, holding the
/// service's concurrency slot until it is sent (or dropped).
struct Bounded {
    body: WasiBody,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    _permit: Arc<OwnedSemaphorePermit>,
}

impl hyper::body::Body for Bounded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        match Pin::new(&mut me.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                Poll::Ready(frame.map(|f| f.map_err(|e| Box::new(e) as BoxError)))
            }
            Poll::Pending => match me.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                    "wasm guest timed out after {:?} sending its body",
                    me.timeout
                )
                .into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
