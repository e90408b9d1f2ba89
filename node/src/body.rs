//! The HTTP body type the mesh answers with, and the plain-text responses
//! the node produces itself (errors), shared by the mesh and the runtimes.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response of the mesh carries this body.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A plain-text response produced by the node itself.
pub fn text_response(status: u16, text: impl Into<String>) -> hyper::Response<Body> {
    let body = Full::new(Bytes::from(text.into()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}
