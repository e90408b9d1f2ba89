//! `hello`: answers every request with 200 and a line naming the replica
//! that served it (from the `SWARMLET_TASK_NAME` environment variable the
//! host sets per replica) and echoing the request path. The request's
//! `x-forwarded-for` and `forwarded` headers come back as the response
//! headers `x-seen-forwarded-for` and `x-seen-forwarded`, so a test can see
//! which client address the guest was given.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Hello;

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let replica = std::env::var("SWARMLET_TASK_NAME").unwrap_or_else(|_| "unknown".to_string());
        let body_text = format!("hello from {replica} path={path}\n");

        let seen = request.headers();
        let mut list = vec![("content-type".to_string(), b"text/plain".to_vec())];
        for (from, to) in [
            ("x-forwarded-for", "x-seen-forwarded-for"),
            ("forwarded", "x-seen-forwarded"),
        ] {
            for value in seen.get(&from.to_string()) {
                list.push((to.to_string(), value));
            }
        }
        drop(seen);
        let headers = Fields::from_list(&list).expect("copied header values are valid");
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(200);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("stream is taken once");
        let _ = stream.blocking_write_and_flush(body_text.as_bytes());
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}

wasi::http::proxy::export!(Hello);
