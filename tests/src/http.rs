//! An HTTP/1.1 client for tests that need more than `http_get`: response
//! headers, and a client bound to a chosen source address (so the address
//! the guest sees can be told apart from the nodes' own).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` to `addr` from `source` (any port), `Connection: close`.
pub fn get_from(source: Ipv4Addr, addr: SocketAddr, path: &str) -> Result<Reply, String> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("socket: {e}"))?;
    s.bind(&SockAddr::from(SocketAddr::new(source.into(), 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    s.connect_timeout(&SockAddr::from(addr), Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(s.into(), addr, request.as_bytes(), Duration::from_secs(30))
}

/// Sends `request` (a whole HTTP/1.1 request asking `Connection: close`) on
/// `s`, connected to `addr`, and reads the answer until the server closes.
pub fn exchange(
    mut s: TcpStream,
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<Reply, String> {
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(request).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response from {addr}: {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    Ok(Reply {
        status,
        headers,
        body: if chunked {
            crate::dechunk(body)
        } else {
            body.to_string()
        },
    })
}
