//! `faulty`: a guest that misbehaves on demand, for tests of the host's
//! isolation. `/trap` traps (a panic is an abort in wasm), `/spin` loops
//! forever, `/sleep` sleeps for a minute, `/alloc?mb=N` fills N MiB of
//! memory; anything else answers 200 "ok".

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Faulty;

impl Guest for Faulty {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        match path.as_str() {
            "/trap" => panic!("faulty guest asked to trap"),
            "/spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/sleep" => std::thread::sleep(std::time::Duration::from_secs(60)),
            p if p.starts_with("/alloc?mb=") => {
                let mb: usize = p["/alloc?mb=".len()..].parse().unwrap_or(0);
                let block = vec![1u8; mb << 20];
                std::hint::black_box(&block);
            }
            _ => {}
        }
        let response = OutgoingResponse::new(Fields::new());
        let _ = response.set_status_code(200);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("stream is taken once");
        let _ = stream.blocking_write_and_flush(b"ok\n");
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}

wasi::http::proxy::export!(Faulty);
