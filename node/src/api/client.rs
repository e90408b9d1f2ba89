//! Typed client of the API, over the local unix socket or TCP.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use swarmlet_proto::api::ErrorBody;

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the swarmlet daemon at {host} ({reason}).\n\
         Is the daemon running? Start it with \"swarmlet daemon\", or point at another node \
         with -H IP:PORT or SWARMLET_HOST=unix:///path/to/swarmlet.sock"
    )]
    Unreachable { host: String, reason: String },
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("talking to {host}: {reason}")]
    Protocol { host: String, reason: String },
    #[error("invalid host {0:?}: use unix:///path/to/swarmlet.sock, IP:PORT or IP")]
    BadHost(String),
}

/// One request on a fresh connection (the CLI makes a handful per command).
async fn send_on<S>(
    stream: S,
    req: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    send.send_request(req).await
}

#[derive(Debug, Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(String),
}

#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    display: String,
}

impl Client {
    /// `unix:///path`, `tcp://IP:PORT`, `IP:PORT` or `IP` (port 2377).
    pub fn new(host: &str) -> Result<Self, ClientError> {
        let target = if let Some(p) = host.strip_prefix("unix://") {
            Target::Unix(PathBuf::from(p))
        } else {
            let h = host.strip_prefix("tcp://").unwrap_or(host);
            if h.is_empty() || h.contains('/') {
                return Err(ClientError::BadHost(host.to_string()));
            }
            if h.parse::<std::net::IpAddr>().is_ok() || !h.contains(':') {
                Target::Tcp(format!("{h}:2377"))
            } else {
                Target::Tcp(h.to_string())
            }
        };
        let display = match &target {
            Target::Unix(p) => format!("unix://{}", p.display()),
            Target::Tcp(a) => a.clone(),
        };
        Ok(Client { target, display })
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(u16, Bytes), ClientError> {
        let unreachable = |e: std::io::Error| ClientError::Unreachable {
            host: self.display.clone(),
            reason: e.to_string(),
        };
        let proto = |e: hyper::Error| ClientError::Protocol {
            host: self.display.clone(),
            reason: e.to_string(),
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "swarmlet")
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| ClientError::Protocol {
                host: self.display.clone(),
                reason: e.to_string(),
            })?;
        let resp = match &self.target {
            Target::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(unreachable)?;
                send_on(s, req).await.map_err(proto)?
            }
            Target::Tcp(a) => {
                // A host that drops packets would otherwise hang the CLI for minutes.
                let connect =
                    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(a));
                let s = connect
                    .await
                    .map_err(|_| {
                        unreachable(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no answer within 5s",
                        ))
                    })?
                    .map_err(unreachable)?;
                send_on(s, req).await.map_err(proto)?
            }
        };
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(proto)?.to_bytes();
        Ok((status, bytes))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
        ct: &str,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.send(method, path, body, ct).await?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api { status, message });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            host: self.display.clone(),
            reason: format!("unexpected answer: {e}"),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(http::Method::GET, path, Bytes::new(), "application/json")
            .await
    }

    pub async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).unwrap_or_default();
        self.call(http::Method::POST, path, body.into(), "application/json")
            .await
    }

    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        self.call(
            http::Method::POST,
            path,
            body.into(),
            "application/octet-stream",
        )
        .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(http::Method::DELETE, path, Bytes::new(), "application/json")
            .await
    }
}
