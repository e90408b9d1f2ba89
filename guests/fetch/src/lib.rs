//! `fetch`: makes an outgoing `wasi:http` GET to the URL given in the query
//! (`/?url=http://host:port/path`, not percent-decoded) and answers 200 with
//! `status N` and the body it got, or 502 with `error: <ErrorCode>` when the
//! host refused or the request failed. For tests of the host's egress policy.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Fetch;

fn fetch(url: &str) -> Result<(u16, String), String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else {
        return Err(format!("url must start with http:// or https://: {url}"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    req.set_scheme(Some(&scheme)).map_err(|_| "bad scheme")?;
    req.set_authority(Some(authority)).map_err(|_| "bad authority")?;
    req.set_path_with_query(Some(path)).map_err(|_| "bad path")?;
    let body = req.body().map_err(|_| "body taken")?;
    OutgoingBody::finish(body, None).map_err(|e| format!("error: {e:?}"))?;
    let future = outgoing_handler::handle(req, None).map_err(|e: ErrorCode| format!("error: {e:?}"))?;
    let resp = loop {
        if let Some(r) = future.get() {
            break r
                .map_err(|_| "response taken twice".to_string())?
                .map_err(|e| format!("error: {e:?}"))?;
        }
        future.subscribe().block();
    };
    let status = resp.status();
    let body = resp.consume().map_err(|_| "body taken")?;
    let stream = body.stream().map_err(|_| "stream taken")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

impl Guest for Fetch {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let url = path.split_once("url=").map(|(_, u)| u).unwrap_or("");
        let (code, text) = match fetch(url) {
            Ok((status, body)) => (200, format!("status {status}\n{body}")),
            Err(e) => (502, format!("{e}\n")),
        };
        let response = OutgoingResponse::new(Fields::new());
        let _ = response.set_status_code(code);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("stream is taken once");
        let _ = stream.blocking_write_and_flush(text.as_bytes());
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}

wasi::http::proxy::export!(Fetch);
