//! Where a guest's outgoing `wasi:http` requests may go.
//!
//! A service lists what it may call (`--allow-outbound`, patterns as Spin's
//! `allowed_outbound_hosts`: `scheme://host[:port]`, `*` for any scheme, host
//! or port, `*.example.com` for its subdomains); everything else is denied.
//! Even an allowed pattern never reaches this node itself (loopback,
//! link-local, unspecified, multicast or any address of this machine's
//! interfaces, so neither the API nor a published port) unless the pattern
//! names that address literally (`http://127.0.0.1:8080`, `http://[::1]:80`)
//! or is `localhost` for loopback: a wildcard or a DNS name that resolves
//! there is refused, since the check is made on the resolved address; and
//! plain-http requests are sent to exactly the address that was checked.
//!
//! wasmtime-wasi-http's default `send_request` connects anywhere; this is its
//! `WasiHttpHooks::send_request`, which checks and then hands the request to
//! `default_send_request` with bounded timeouts.
//!
//! Architecture invariant: a guest's outgoing request reaches only what its
//! service's allow list names; a denial is `HttpRequestDenied` for the guest
//! and a warning naming the service in the node's log.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Longest a guest's outgoing request may take to connect (name lookup included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest it may wait for the response head, and between body chunks.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("invalid --allow-outbound {0:?}: {1}; use scheme://host[:port], e.g. https://api.example.com, http://10.0.0.5:8080, https://*.example.com or *://*:*")]
    Invalid(String, &'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.example.com`: stored as `.example.com`.
    Subdomains(String),
    /// A name or an IP address, lowercase, IPv6 without brackets.
    Exact(String),
}

/// One `--allow-outbound` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowed {
    /// `None`: any of http and https.
    scheme: Option<&'static str>,
    host: HostPattern,
    /// `None`: any port.
    port: Option<u16>,
}

/// A service's allow list, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allowed: Vec<Allowed>,
}

impl EgressPolicy {
    /// Parses `--allow-outbound` entries; the first bad one is the error.
    pub fn parse(patterns: &[String]) -> Result<Self, PatternError> {
        let allowed = patterns
            .iter()
            .map(|p| parse_pattern(p))
            .collect::<Result<_, _>>()?;
        Ok(EgressPolicy { allowed })
    }

    /// Whether `scheme://host:port` is allowed, and if so whether some
    /// matching entry names this node's or a loopback address itself (an IP
    /// literal, or `localhost`), which is what makes them reachable.
    fn check(&self, scheme: &str, host: &str, port: u16) -> Option<Named> {
        let mut found = None;
        for a in &self.allowed {
            if a.scheme.is_some_and(|s| s != scheme) || a.port.is_some_and(|p| p != port) {
                continue;
            }
            let named = match &a.host {
                HostPattern::Any => Named::ByWildcard,
                HostPattern::Subdomains(suffix) if host.ends_with(suffix.as_str()) => {
                    Named::ByWildcard
                }
                HostPattern::Subdomains(_) => continue,
                HostPattern::Exact(h) if h == host => {
                    if h == "localhost" || h.parse::<IpAddr>().is_ok() {
                        Named::Literally
                    } else {
                        Named::ByName
                    }
                }
                HostPattern::Exact(_) => continue,
            };
            if named == Named::Literally {
                return Some(named);
            }
            found = Some(named);
        }
        found
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    /// By its IP address, or `localhost`: may be internal.
    Literally,
    /// By a DNS name: what it resolves to must not be internal.
    ByName,
    ByWildcard,
}

fn parse_pattern(p: &str) -> Result<Allowed, PatternError> {
    let bad = |why| PatternError::Invalid(p.to_string(), why);
    let (scheme, rest) = p.split_once("://").ok_or_else(|| bad("it has no scheme"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Some("http"),
        "https" => Some("https"),
        "*" => None,
        _ => {
            return Err(bad(
                "guests make HTTP requests only, so the scheme is http, https or *",
            ))
        }
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('@') {
        return Err(bad(
            "it names a path or user; give only scheme://host[:port]",
        ));
    }
    // Split host and port; an IPv6 host is in brackets.
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("an unclosed '['"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("the bracketed host is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            a => Some(a.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, port)) => (h.to_string(), Some(port)),
            None => (rest.to_string(), None),
        }
    };
    let host = host.to_ascii_lowercase();
    let host = if host == "*" {
        HostPattern::Any
    } else if let Some(domain) = host.strip_prefix("*.") {
        check_name(domain).map_err(bad)?;
        HostPattern::Subdomains(format!(".{domain}"))
    } else {
        if host.parse::<IpAddr>().is_err() {
            check_name(&host).map_err(bad)?;
        }
        HostPattern::Exact(host)
    };
    let port = match (port, scheme) {
        (Some("*"), _) => None,
        (Some(n), _) => match n.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(bad("the port is not a number from 1 to 65535 or *")),
        },
        (None, Some("http")) => Some(80),
        (None, Some("https")) => Some(443),
        (None, _) => return Err(bad("with scheme * give a port, or * for any port")),
    };
    Ok(Allowed { scheme, host, port })
}

fn check_name(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err("the host is not a DNS name, an IP address, * or *.domain")
    }
}

/// Addresses a guest must not reach unless its allow list names the host:
/// this machine (loopback, unspecified, its interfaces' addresses) and what
/// is never a remote server (link-local, multicast, broadcast).
fn is_internal(ip: IpAddr, local: &[IpAddr]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let special = match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
        }
    };
    special || local.contains(&ip)
}

/// The addresses of this machine's network interfaces.
///
/// Read with `getifaddrs(3)` through libc (already a dependency) rather than
/// a crate: a dozen lines, and asked only when a guest makes a request.
fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we only read and then
    // free with freeifaddrs; every `ifa_addr` is checked for null and read as
    // the sockaddr type its family says.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            tracing::warn!(
                "cannot list this machine's addresses: {}",
                std::io::Error::last_os_error()
            );
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

/// Why a guest's request was refused (for the node's log).
#[derive(Debug, thiserror::Error)]
enum Denied {
    #[error("the URL has no host")]
    NoHost,
    #[error("scheme {0} is not http or https")]
    Scheme(String),
    #[error("{0} is not in the service's --allow-outbound list")]
    NotAllowed(String),
    #[error("{0} is this node or a local address ({1}); only an --allow-outbound entry naming that address (or localhost) reaches it")]
    Internal(String, IpAddr),
    #[error("{0} did not resolve: {1}")]
    Resolve(String, String),
}

/// The `wasi:http` hooks of one request's instance: the service's egress policy.
pub(super) struct Egress {
    pub(super) service: Arc<str>,
    pub(super) policy: Arc<EgressPolicy>,
    /// How many guests the request being served has passed through
    /// (`swarmlet-hops` of the incoming request).
    pub(super) hops: u32,
}

/// Counts the guests a request chain has passed through on its way here: set
/// by the host on every outgoing request (the guest cannot choose it), so a
/// guest allowed to call this node (itself, by a literal allow entry) cannot
/// fan one request out without bound.
pub const HOPS_HEADER: &str = "swarmlet-hops";
/// A request that has passed through this many guests is refused (508).
pub const MAX_HOPS: u32 = 8;

/// The `swarmlet-hops` of an incoming request (0 when absent or malformed).
pub(super) fn incoming_hops(headers: &http::HeaderMap) -> u32 {
    headers
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>
    {
        let policy = self.policy.clone();
        let service = self.service.clone();
        request.headers_mut().insert(
            HOPS_HEADER,
            http::HeaderValue::from(self.hops.saturating_add(1)),
        );
        Box::new(async move {
            let target = request.uri().to_string();
            match resolve_allowed(&policy, &mut request).await {
                Ok(()) => {}
                Err(why) => {
                    tracing::warn!(%service, %target, "outgoing request denied: {why}");
                    return Err(HttpError::HttpRequestDenied);
                }
            }
            let options = bounded(options);
            let (res, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                res.map(http_body_util::BodyExt::boxed_unsync),
                Box::new(io) as IoFuture,
            ))
        })
    }
}

/// The guest's timeouts, but never longer than the node's.
fn bounded(options: Option<RequestOptions>) -> RequestOptions {
    let o = options.unwrap_or_default();
    let cap = |t: Option<Duration>, max: Duration| Some(t.map_or(max, |t| t.min(max)));
    RequestOptions {
        connect_timeout: cap(o.connect_timeout, CONNECT_TIMEOUT),
        first_byte_timeout: cap(o.first_byte_timeout, FIRST_BYTE_TIMEOUT),
        between_bytes_timeout: cap(o.between_bytes_timeout, FIRST_BYTE_TIMEOUT),
    }
}

/// Checks `request` against `policy` and the resolved address. A plain-http
/// request is pointed at the checked address (its `Host` header keeps the
/// name), so a second lookup cannot send it elsewhere; an https request keeps
/// its name for certificate verification, which a rebinding to an internal
/// address would then have to pass.
async fn resolve_allowed(
    policy: &EgressPolicy,
    request: &mut http::Request<WasiBody>,
) -> Result<(), Denied> {
    let uri = request.uri().clone();
    let https = match uri.scheme() {
        Some(s) if *s == Scheme::HTTP => false,
        Some(s) if *s == Scheme::HTTPS => true,
        other => {
            return Err(Denied::Scheme(
                other.map(|s| s.to_string()).unwrap_or_default(),
            ))
        }
    };
    let host = uri.host().ok_or(Denied::NoHost)?.to_ascii_lowercase();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let scheme = if https { "https" } else { "http" };
    let shown = format!("{scheme}://{}", uri.authority().map_or("", |a| a.as_str()));
    let named = policy
        .check(scheme, &host, port)
        .ok_or_else(|| Denied::NotAllowed(shown.clone()))?;

    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        .map_err(|_| Denied::Resolve(host.clone(), "timed out".into()))?
        .map_err(|e| Denied::Resolve(host.clone(), e.to_string()))?
        .collect(),
    };
    let local = local_addresses();
    let mut first_internal = None;
    let chosen = addrs.iter().find(|a| {
        // `localhost` is named literally, but only for loopback.
        let named_here = named == Named::Literally && (host != "localhost" || a.ip().is_loopback());
        if named_here || !is_internal(a.ip(), &local) {
            return true;
        }
        first_internal.get_or_insert(a.ip());
        false
    });
    let Some(chosen) = chosen else {
        return Err(match first_internal {
            Some(ip) => Denied::Internal(shown, ip),
            None => Denied::Resolve(host, "no address".into()),
        });
    };
    if !https && host.parse::<IpAddr>().is_err() {
        let authority: Authority = chosen
            .to_string()
            .parse()
            .map_err(|e: http::uri::InvalidUri| Denied::Resolve(host.clone(), e.to_string()))?;
        let mut parts = uri.into_parts();
        parts.authority = Some(authority);
        if let Ok(pinned) = http::Uri::from_parts(parts) {
            *request.uri_mut() = pinned;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(p: &[&str]) -> EgressPolicy {
        EgressPolicy::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn patterns_as_spin_writes_them() {
        let p = policy(&[
            "https://api.example.com",
            "http://*.corp.test:8080",
            "*://10.0.0.5:*",
        ]);
        assert_eq!(
            p.check("https", "api.example.com", 443),
            Some(Named::ByName)
        );
        assert_eq!(
            p.check("http", "api.example.com", 443),
            None,
            "scheme differs"
        );
        assert_eq!(
            p.check("https", "api.example.com", 8443),
            None,
            "default port only"
        );
        assert_eq!(
            p.check("http", "a.b.corp.test", 8080),
            Some(Named::ByWildcard)
        );
        assert_eq!(p.check("http", "corp.test", 8080), None, "subdomains only");
        assert_eq!(p.check("https", "10.0.0.5", 1234), Some(Named::Literally));
        assert_eq!(policy(&[]).check("https", "example.com", 443), None);
        assert_eq!(
            policy(&["*://*:*"]).check("http", "127.0.0.1", 2377),
            Some(Named::ByWildcard)
        );
        assert_eq!(
            policy(&["http://[::1]:80"]).check("http", "::1", 80),
            Some(Named::Literally)
        );
        assert_eq!(
            policy(&["http://localhost:8080"]).check("http", "localhost", 8080),
            Some(Named::Literally)
        );
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        for bad in [
            "api.example.com",
            "ftp://example.com",
            "https://example.com/path",
            "*://example.com",
            "http://example.com:99999",
            "http://exa mple.com",
            "http://[::1",
        ] {
            let e = EgressPolicy::parse(&[bad.to_string()]).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn the_node_itself_is_internal() {
        let local: Vec<IpAddr> = vec!["192.168.1.7".parse().unwrap()];
        for ip in [
            "127.0.0.1",
            "127.15.0.3",
            "0.0.0.0",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "192.168.1.7",
        ] {
            assert!(is_internal(ip.parse().unwrap(), &local), "{ip}");
        }
        for ip in ["192.168.1.8", "93.184.216.34", "2001:db8::1"] {
            assert!(!is_internal(ip.parse().unwrap(), &local), "{ip}");
        }
        assert!(local_addresses().iter().any(|a| a.is_loopback()));
    }
}
