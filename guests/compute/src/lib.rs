//! `compute`: a compute-heavy handler for the benchmark. Per request it
//! builds 64 KiB of text in linear memory, parses it back into numbers and
//! hashes the bytes (FNV-1a, 4 passes), so that the cost of every memory
//! access (explicit bounds checks vs guard pages) shows in requests/s.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Compute;

const SIZE: usize = 64 << 10;

fn work(seed: u64) -> (u64, u64) {
    let mut text = Vec::with_capacity(SIZE + 32);
    let mut x = seed | 1;
    while text.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.extend_from_slice((x % 1_000_000).to_string().as_bytes());
        text.push(b',');
    }
    // Parse it back.
    let mut sum = 0u64;
    let mut n = 0u64;
    for &b in &text {
        if b == b',' {
            sum = sum.wrapping_add(n);
            n = 0;
        } else {
            n = n * 10 + u64::from(b - b'0');
        }
    }
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..4 {
        for &b in &text {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    (sum, h)
}

impl Guest for Compute {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let seed = request.path_with_query().map(|p| p.len() as u64).unwrap_or(1);
        let (sum, hash) = work(std::hint::black_box(seed));
        let text = format!("sum={sum} fnv={hash:016x}\n");
        let response = OutgoingResponse::new(Fields::new());
        let _ = response.set_status_code(200);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("stream is taken once");
        let _ = stream.blocking_write_and_flush(text.as_bytes());
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}

wasi::http::proxy::export!(Compute);
