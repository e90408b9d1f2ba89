//! The headers and paths of the mesh: the client's address added by the node
//! the client connected to (`X-Forwarded-For`, `Forwarded`), the marker of a
//! node-to-node hop, and the `/v1/mesh/{service_id}{path}` route that
//! carries a forwarded request on the cluster port.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Set on a request one node forwards to another: the sender's node ID.
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("swarmlet-forwarded");
/// On a 503 of the receiving node: it has no replica of the service, so the
/// sender may try another node.
pub const NO_REPLICA: HeaderName = HeaderName::from_static("swarmlet-no-replica");
/// The cluster port's route for forwarded requests.
pub const MESH_PREFIX: &str = "/v1/mesh/";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Adds the client's address as the last hop: `X-Forwarded-For: existing,
/// ip` and `Forwarded: existing, for=ip;proto=http` (RFC 7239, an IPv6
/// address quoted in brackets). Drops a `swarmlet-forwarded` marker the
/// client sent: only nodes set it, on their own hop.
pub fn add_client(headers: &mut HeaderMap, client: Option<IpAddr>) {
    headers.remove(FORWARDED_BY);
    let Some(ip) = client else {
        return;
    };
    // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let xff = ip.to_string();
    let fwd = match ip {
        IpAddr::V4(_) => format!("for={ip};proto=http"),
        IpAddr::V6(_) => format!("for=\"[{ip}]\";proto=http"),
    };
    append(headers, X_FORWARDED_FOR, &xff);
    append(headers, http::header::FORWARDED, &fwd);
}

/// Appends `item` to the comma-separated list in `name` (every existing
/// field line joined into one, as RFC 9110 allows for list headers).
fn append(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut list = Vec::new();
    for v in headers.get_all(&name) {
        list.extend_from_slice(v.as_bytes());
        list.extend_from_slice(b", ");
    }
    list.extend_from_slice(item.as_bytes());
    match HeaderValue::from_bytes(&list) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            // An existing value that does not survive being joined (it
            // cannot: it was a valid value) is replaced rather than lost
            // silently with the client's address.
            if let Ok(v) = HeaderValue::from_str(item) {
                headers.insert(name, v);
            }
        }
    }
}

/// The path a request is forwarded on: `/v1/mesh/{service_id}` followed by
/// the original path and query (`/` when it had none).
pub fn mesh_path(service_id: &str, original: &http::Uri) -> String {
    let pq = original.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let pq = if pq.starts_with('/') { pq } else { "/" };
    format!("{MESH_PREFIX}{service_id}{pq}")
}

/// The service ID and the original path and query of a forwarded request's
/// path, or `None` when it is not a mesh path.
pub fn split_mesh_path(path_and_query: &str) -> Option<(&str, String)> {
    let rest = path_and_query.strip_prefix(MESH_PREFIX)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (service_id, original) = rest.split_at(end);
    if service_id.is_empty() {
        return None;
    }
    let original = match original.chars().next() {
        Some('/') => original.to_string(),
        Some(_) => format!("/{original}"),
        None => "/".to_string(),
    };
    Some((service_id, original))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn the_client_address_is_appended_to_what_the_client_sent() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        h.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        h.insert(FORWARDED_BY, HeaderValue::from_static("forged"));
        add_client(&mut h, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(
            values(&h, "x-forwarded-for"),
            ["10.0.0.1, 10.0.0.2, 192.0.2.7"]
        );
        assert_eq!(
            values(&h, "forwarded"),
            ["for=10.0.0.1, for=192.0.2.7;proto=http"]
        );
        assert!(h.get(FORWARDED_BY).is_none(), "a client cannot mark a hop");
    }

    #[test]
    fn a_first_hop_and_ipv6_clients() {
        let mut h = HeaderMap::new();
        add_client(&mut h, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(values(&h, "x-forwarded-for"), ["2001:db8::1"]);
        assert_eq!(
            values(&h, "forwarded"),
            ["for=\"[2001:db8::1]\";proto=http"]
        );
        let mut h = HeaderMap::new();
        add_client(&mut h, Some("::ffff:192.0.2.9".parse().unwrap()));
        assert_eq!(values(&h, "x-forwarded-for"), ["192.0.2.9"]);
        let mut h = HeaderMap::new();
        add_client(&mut h, None);
        assert!(h.is_empty(), "no address known, nothing invented");
    }

    #[test]
    fn mesh_paths_round_trip() {
        for original in ["/", "/probe", "/a/b?x=1&y=%20", "/?q", "/v1/mesh/x/y"] {
            let uri: http::Uri = original.parse().unwrap();
            let p = mesh_path("svc1", &uri);
            assert_eq!(
                split_mesh_path(&p),
                Some(("svc1", original.to_string())),
                "{p}"
            );
        }
        let abs: http::Uri = "http://example.com".parse().unwrap();
        assert_eq!(mesh_path("s", &abs), "/v1/mesh/s/");
        assert_eq!(split_mesh_path("/v1/mesh/s"), Some(("s", "/".into())));
        assert_eq!(
            split_mesh_path("/v1/mesh/s?a=1"),
            Some(("s", "/?a=1".into()))
        );
        assert_eq!(split_mesh_path("/v1/mesh/"), None);
        assert_eq!(split_mesh_path("/v1/services"), None);
    }
}
