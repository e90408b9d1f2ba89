//! `counter`: answers every request with the number of requests this
//! instance has served, counted in a static in the guest's own memory. With a
//! fresh instance per request it always answers 1; with instance reuse the
//! count grows, so a test can see from outside which one the host does.

use std::sync::atomic::{AtomicU64, Ordering};

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

static SERVED: AtomicU64 = AtomicU64::new(0);

struct Counter;

impl Guest for Counter {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let n = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let response = OutgoingResponse::new(Fields::new());
        let _ = response.set_status_code(200);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("stream is taken once");
        let _ = stream.blocking_write_and_flush(format!("{n}\n").as_bytes());
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}

wasi::http::proxy::export!(Counter);
