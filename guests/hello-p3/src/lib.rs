//! `hello-p3`: a WASIp3 (`wasi:http/service@0.3.0`) guest that makes the
//! host's instance reuse observable. Every answer is
//! `hello-p3 from {replica} instance-requests={n} in-flight={k}`: `n` counts
//! the requests this instance has accepted (a static in its own memory, so a
//! fresh instance per request always says 1) and `k` the requests it is
//! serving at the moment it answers (more than 1 only when the host runs
//! several requests in one instance at the same time).
//!
//! `?sleep=MS` first awaits a host timer (`wasi:clocks` `wait-for`), which
//! suspends only this request's task, so requests overlap in one instance;
//! `?trap=1` traps (a panic is an abort in wasm) and `?alloc=MB` fills that
//! many MiB of memory, both after the sleep if given with it.

use std::sync::atomic::{AtomicU32, Ordering};

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_future, wit_stream};

static ACCEPTED: AtomicU32 = AtomicU32::new(0);
static IN_FLIGHT: AtomicU32 = AtomicU32::new(0);

struct HelloP3;

/// The value of `key` in a query string `a=1&b=2`.
fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn replica() -> String {
    wasip3::cli::environment::get_environment()
        .into_iter()
        .find(|(k, _)| k == "SWARMLET_TASK_NAME")
        .map(|(_, v)| v)
        .unwrap_or_else(|| "unknown".into())
}

impl wasip3::exports::http::handler::Guest for HelloP3 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let n = ACCEPTED.fetch_add(1, Ordering::Relaxed) + 1;
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        let path = request.get_path_with_query().unwrap_or_default();
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        if let Some(ms) = param(query, "sleep").and_then(|v| v.parse::<u64>().ok()) {
            wasip3::clocks::monotonic_clock::wait_for(ms.saturating_mul(1_000_000)).await;
        }
        if param(query, "trap").is_some() {
            panic!("hello-p3 asked to trap");
        }
        if let Some(mb) = param(query, "alloc").and_then(|v| v.parse::<usize>().ok()) {
            let block = vec![1u8; mb << 20];
            std::hint::black_box(&block);
        }
        let k = IN_FLIGHT.load(Ordering::Relaxed);
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        let text = format!(
            "hello-p3 from {} instance-requests={n} in-flight={k}\n",
            replica()
        );

        let (mut body_tx, body_rx) = wit_stream::new();
        let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(Fields::new(), Some(body_rx), trailers_rx);
        drop(trailers_tx);
        // The body is written after the response is returned (the host reads
        // it then), in a task of its own.
        wasip3::spawn(async move {
            let _ = body_tx.write_all(text.into_bytes()).await;
        });
        Ok(response)
    }
}

wasip3::http::service::export!(HelloP3);
