//! Typed client of the API, over the local unix socket, or (`with_tls`,
//! `-H IP --tls DIR`) over mutual TLS to a manager's cluster port with a
//! client bundle. A TCP address without a bundle is refused before any
//! connection.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use swarmlet_proto::api::ErrorBody;

use crate::transport::client::OutBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the swarmlet daemon at {host} ({reason}).\n\
         Is the daemon running? Start it with \"swarmlet daemon\", or point at its socket \
         with -H unix:///path/to/swarmlet.sock (or SWARMLET_HOST)"
    )]
    Unreachable { host: String, reason: String },
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("talking to {host}: {reason}")]
    Protocol { host: String, reason: String },
    #[error("invalid host {0:?}: use unix:///path/to/swarmlet.sock")]
    BadHost(String),
    #[error(
        "remote control of a swarmlet node needs a TLS client certificate, so {0} was not contacted.\n\
         Pass --tls DIR (or SWARMLET_TLS=DIR) with a client bundle written by \
         \"swarmlet swarm ca --client-bundle DIR\" on a manager, or run the command on the node \
         itself, where it talks to the daemon's unix socket: \
         e.g. ssh NODE swarmlet service ls (or -H unix:///path/to/swarmlet.sock)"
    )]
    RemoteNeedsTls(String),
    #[error("the client bundle in {dir} cannot be used: {reason}")]
    BadBundle { dir: String, reason: String },
    #[error("cannot connect to the manager at {addr} over TLS ({reason}); check the address, and that the client bundle is from this swarm")]
    TlsUnreachable { addr: String, reason: String },
}

/// One request on a fresh connection (the CLI makes a handful per command).
async fn send_on<S>(
    stream: S,
    req: hyper::Request<OutBody>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    send.send_request(req).await
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    display: String,
    /// `-H IP:PORT --tls DIR`: the manager's cluster port and the mutual
    /// TLS config made of the client bundle (else the unix socket).
    tls: Option<(String, std::sync::Arc<rustls::ClientConfig>)>,
}

impl Client {
    /// `unix:///path`. `tcp://…`, `IP:PORT` and `IP` are refused with the
    /// reason (remote control needs TLS).
    pub fn new(host: &str) -> Result<Self, ClientError> {
        let Some(p) = host.strip_prefix("unix://") else {
            let h = host.strip_prefix("tcp://").unwrap_or(host);
            if h.is_empty() || h.contains('/') {
                return Err(ClientError::BadHost(host.to_string()));
            }
            let addr = if h.parse::<std::net::IpAddr>().is_ok() || !h.contains(':') {
                format!("{h}:2377")
            } else {
                h.to_string()
            };
            return Err(ClientError::RemoteNeedsTls(addr));
        };
        if p.is_empty() {
            return Err(ClientError::BadHost(host.to_string()));
        }
        Ok(Client {
            socket: PathBuf::from(p),
            display: host.to_string(),
            tls: None,
        })
    }

    /// `-H IP[:PORT] --tls DIR`: the client API of a manager's cluster port
    /// (default port 2377) over mutual TLS with the client bundle in `dir`
    /// (`ca.pem`, `cert.pem`, `key.pem`). The manager is checked to be one
    /// (server name `swarmlet-manager`) of the bundle's cluster.
    pub fn with_tls(host: &str, dir: &std::path::Path) -> Result<Self, ClientError> {
        let h = host.strip_prefix("tcp://").unwrap_or(host);
        if h.is_empty() || h.contains('/') || h.starts_with("unix:") {
            return Err(ClientError::BadHost(host.to_string()));
        }
        let addr = if h.parse::<std::net::IpAddr>().is_ok() || !h.contains(':') {
            format!("{h}:2377")
        } else {
            h.to_string()
        };
        let bad = |reason: String| ClientError::BadBundle {
            dir: dir.display().to_string(),
            reason,
        };
        let bundle = crate::pki::load_client_bundle(dir).map_err(|e| bad(e.to_string()))?;
        let config = crate::transport::client_config(
            &bundle.ca_pem,
            Some((&bundle.cert_pem, &bundle.key_pem)),
            &[b"http/1.1"],
        )
        .map_err(|e| bad(e.to_string()))?;
        Ok(Client {
            socket: PathBuf::new(),
            display: format!("{addr} (TLS)"),
            tls: Some((addr, config)),
        })
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
        content_type: &str,
        key: &str,
    ) -> Result<(u16, Bytes), ClientError> {
        let resp = self
            .send_streaming(
                method,
                path,
                Full::new(body).map_err(|never| match never {}).boxed(),
                content_type,
                key,
            )
            .await?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol {
                host: self.display.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        Ok((status, bytes))
    }

    /// One request whose body and answer both stream.
    async fn send_streaming(
        &self,
        method: http::Method,
        path: &str,
        body: OutBody,
        content_type: &str,
        key: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
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
            .header("idempotency-key", key)
            .body(body)
            .map_err(|e| ClientError::Protocol {
                host: self.display.clone(),
                reason: e.to_string(),
            })?;
        let resp = if let Some((addr, config)) = &self.tls {
            let tls_err = |reason: String| ClientError::TlsUnreachable {
                addr: addr.clone(),
                reason,
            };
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| tls_err(e.to_string()))?;
            let name = rustls::pki_types::ServerName::try_from(
                crate::pki::CertRole::Manager.server_name(),
            )
            .map_err(|e| tls_err(e.to_string()))?;
            let s = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| tls_err(format!("TLS handshake: {e}")))?;
            send_on(s, req).await.map_err(proto)?
        } else {
            let s = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(unreachable)?;
            send_on(s, req).await.map_err(proto)?
        };
        Ok(resp)
    }

    /// A request whose answer is read as it arrives (`service logs -f`,
    /// `image pull`'s progress); a non-2xx answer is `ClientError::Api`.
    pub async fn stream(
        &self,
        method: http::Method,
        path: &str,
        body: OutBody,
        content_type: &str,
    ) -> Result<hyper::body::Incoming, ClientError> {
        let key = crate::identity::random_id(32);
        let resp = self
            .send_streaming(method, path, body, content_type, &key)
            .await?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp.into_body());
        }
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(ClientError::Api { status, message })
    }

    /// The JSON answer to a request with a streamed body (`image import`).
    pub async fn post_stream<T: DeserializeOwned>(
        &self,
        path: &str,
        body: OutBody,
    ) -> Result<T, ClientError> {
        let bytes = self
            .stream(http::Method::POST, path, body, "application/octet-stream")
            .await?
            .collect()
            .await
            .map_err(|e| ClientError::Protocol {
                host: self.display.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            host: self.display.clone(),
            reason: format!("unexpected answer: {e}"),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
        ct: &str,
    ) -> Result<T, ClientError> {
        // One key per request, kept for its retry: a write whose fate the
        // manager could not learn (a leader change, a manager cut off) is
        // sent once more with the same key, and the swarm applies it once.
        let key = crate::identity::random_id(32);
        let (mut status, mut bytes) = self
            .send(method.clone(), path, body.clone(), ct, &key)
            .await?;
        if status == 503 && method != http::Method::GET && fate_unknown(&bytes) {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            (status, bytes) = self.send(method, path, body, ct, &key).await?;
        }
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

/// Whether a 503 says the write may or may not have been applied.
fn fate_unknown(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("may or may not have been applied")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_host_is_refused_with_the_tls_reason_before_connecting() {
        for host in ["10.0.0.5", "10.0.0.5:2377", "tcp://10.0.0.5:2377", "node1"] {
            let err = Client::new(host).expect_err(host).to_string();
            assert!(
                err.contains("needs a TLS client certificate"),
                "{host}: {err}"
            );
            assert!(err.contains("ssh NODE swarmlet"), "{host}: {err}");
        }
        assert!(Client::new("unix:///run/swarmlet.sock").is_ok());
        assert!(matches!(
            Client::new("unix://"),
            Err(ClientError::BadHost(_))
        ));
    }
}
