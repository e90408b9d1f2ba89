//! The one thing the dispatcher and the remote agent need from the
//! node-to-node transport: a request to another node's cluster port. The
//! lead implements it over the mutual-TLS client (`transport`); this module
//! does not know about TLS.

use futures::future::BoxFuture;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// No answer: refused, reset, timed out, TLS failure.
    #[error("{addr} did not answer: {reason}")]
    Unreachable { addr: String, reason: String },
    /// An answer that is not a success; `message` is the body's `message`.
    #[error("{addr} answered {code}: {message}")]
    Status {
        addr: String,
        code: u16,
        message: String,
    },
    /// A success whose body does not read as the expected type.
    #[error("{addr} sent an answer that does not read: {reason}")]
    BadAnswer { addr: String, reason: String },
}

/// A client for the cluster port of other nodes (`addr` = `IP:PORT` as in
/// `Node.addr`). Implementations should not retry; callers do, and decide
/// when to try another manager.
pub trait ClusterCall: Send + Sync + 'static {
    /// `POST path` with a JSON body; the JSON answer of a 2xx.
    fn post_json<'a>(
        &'a self,
        addr: &'a str,
        path: &'a str,
        body: serde_json::Value,
    ) -> BoxFuture<'a, Result<serde_json::Value, CallError>>;

    /// `GET path`; the bytes of a 2xx answer.
    fn get_bytes<'a>(
        &'a self,
        addr: &'a str,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Vec<u8>, CallError>>;
}

/// `post_json` with typed bodies.
pub async fn post<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    call: &dyn ClusterCall,
    addr: &str,
    path: &str,
    body: &Req,
) -> Result<Resp, CallError> {
    let body = serde_json::to_value(body).map_err(|e| CallError::BadAnswer {
        addr: addr.to_string(),
        reason: format!("encoding the request: {e}"),
    })?;
    let answer = call.post_json(addr, path, body).await?;
    serde_json::from_value(answer).map_err(|e| CallError::BadAnswer {
        addr: addr.to_string(),
        reason: e.to_string(),
    })
}
