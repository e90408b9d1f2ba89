//! One loaded component (`WasmApp`) and how it serves a request: a fresh
//! instance per request, with the per-request host state (`Host`).

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::MAX_MEMORY;
use crate::body::{text_response, Body, BoxError};

/// Per-request host state.
pub(super) struct Host {
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

/// A loaded, pre-instantiated component, shared by all local replicas of a service.
pub struct WasmApp {
    pub(super) pre: ProxyPre<Host>,
    pub(super) timeout: Duration,
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
