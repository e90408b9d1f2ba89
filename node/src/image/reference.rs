//! Image references, parsed and normalised as Docker does: `nginx:1.27` is
//! `docker.io/library/nginx:1.27`, `127.0.0.1:5000/web:v1` names a registry
//! by its host and port, a bare name means `:latest`, and `@sha256:…` pins a
//! digest. The grammar and the normalisation are oci-spec's
//! (`distribution::Reference`, a port of Docker's `reference` package).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use oci_client::Reference;

use super::error::ImageError;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef(Reference);

impl ImageRef {
    pub fn parse(input: &str) -> Result<ImageRef, ImageError> {
        let bad = |reason: String| ImageError::BadReference {
            input: input.to_string(),
            reason,
        };
        if input.trim() != input {
            return Err(bad("it has leading or trailing spaces".into()));
        }
        let r = Reference::from_str(input).map_err(|e| bad(e.to_string()))?;
        if let Some(digest) = r.digest() {
            check_digest(digest).map_err(bad)?;
        }
        Ok(ImageRef(r))
    }

    /// `docker.io`, `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// `library/nginx`.
    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// `docker.io/library/nginx` (registry and repository).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// `docker.io/library/nginx:1.27`, the name a tag is listed under; None
    /// for a reference by digest only.
    pub fn tagged_name(&self) -> Option<String> {
        self.tag().map(|t| format!("{}:{t}", self.name()))
    }

    /// The same repository, pinned to `digest` (the tag dropped), as the
    /// manager pins a service's image: `docker.io/library/nginx@sha256:…`.
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef(Reference::with_digest(
            self.registry().to_string(),
            self.repository().to_string(),
            digest.to_string(),
        ))
    }

    /// The host part of the registry, without the port.
    pub fn registry_host(&self) -> &str {
        registry_host(self.registry())
    }

    /// True for a registry Docker talks plain HTTP to without being told:
    /// one on a loopback address (127.0.0.0/8, ::1) or `localhost`.
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_registry(self.registry())
    }

    pub(crate) fn oci(&self) -> &Reference {
        &self.0
    }
}

/// The reference grammar accepts any hex digits; registries (and the OCI
/// image spec) take only lowercase ones of the algorithm's length, and an
/// uppercase digest reached the registry as a 500. Refused here instead.
fn check_digest(digest: &str) -> Result<(), String> {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("", digest));
    let len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        other => {
            return Err(format!(
                "unsupported digest algorithm {other:?}: use sha256"
            ))
        }
    };
    if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "a {algorithm} digest is {len} lowercase hex digits after \"{algorithm}:\""
        ));
    }
    Ok(())
}

/// `127.0.0.1:5000` → `127.0.0.1`; `[::1]:5000` → `::1`.
pub fn registry_host(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// See [`ImageRef::is_loopback_registry`].
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = registry_host(registry);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

impl fmt::Display for ImageRef {
    /// The fully qualified form: `docker.io/library/nginx:1.27`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ImageRef {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn docker_hub_short_names_are_normalised() {
        let r = ImageRef::parse("nginx:1.27").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx:1.27");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/nginx");
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest");
        let r = ImageRef::parse("myuser/app:2").unwrap();
        assert_eq!(r.to_string(), "docker.io/myuser/app:2");
        assert!(!r.is_loopback_registry());
    }

    #[test]
    fn registry_with_port_and_digest() {
        let r = ImageRef::parse("127.0.0.1:5000/web:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "web");
        assert_eq!(r.tag(), Some("v1"));
        assert!(r.is_loopback_registry());
        let r = ImageRef::parse(&format!("127.0.4.1:5000/team/web@{D}")).unwrap();
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.tag(), None);
        assert_eq!(r.tagged_name(), None);
        assert!(r.is_loopback_registry());
        let r = ImageRef::parse(&format!("nginx:1.27@{D}")).unwrap();
        assert_eq!(r.tag(), Some("1.27"));
        assert_eq!(
            r.with_digest(D).to_string(),
            format!("docker.io/library/nginx@{D}")
        );
        assert!(ImageRef::parse("localhost:5000/x")
            .unwrap()
            .is_loopback_registry());
        assert!(ImageRef::parse("localhost/x")
            .unwrap()
            .is_loopback_registry());
        assert!(!ImageRef::parse("10.0.0.1:5000/x")
            .unwrap()
            .is_loopback_registry());
        assert!(!ImageRef::parse("registry.example.com/x")
            .unwrap()
            .is_loopback_registry());
    }

    #[test]
    fn malformed_references_say_how_to_write_one() {
        for bad in [
            "",
            "Nginx:1",
            "nginx:",
            "nginx@sha256:abc",
            "nginx@sha256:1111111111111111111111111111111111111111111111111111111111111ABC",
            "nginx@sha256:11111111111111111111111111111111111111111111111111111111111111111",
            " nginx",
            "a//b",
            "nginx:bad tag",
        ] {
            let err = ImageRef::parse(bad).expect_err(bad);
            assert!(
                matches!(err, ImageError::BadReference { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("e.g. nginx:1.27"), "{err}");
        }
    }
}
