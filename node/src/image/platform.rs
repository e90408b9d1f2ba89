//! The node's platform (`linux/amd64`, `linux/arm64` on a Raspberry Pi) and
//! the choice of an image index entry for it, as containerd's `platforms`
//! matcher does: same OS and architecture; a variant, when the node has one,
//! must match (arm64's `v8` is the default and may be left out).

use std::fmt;

use oci_client::manifest::ImageIndexEntry;

/// An OS/architecture[/variant] triple in OCI's (Go's) spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "riscv64" => ("riscv64", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// `linux/arm64`, `linux/arm/v7`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let architecture = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next().map(str::to_string);
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant,
        })
    }

    /// Whether an image built for `os/arch/variant` runs here.
    pub fn accepts(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        if self.os != os || self.architecture != arch {
            return false;
        }
        match (self.variant.as_deref(), variant) {
            (None, _) | (_, None) => true,
            (Some(a), Some(b)) => a == b,
        }
    }

    /// The digest of the index entry for this platform (an exact variant
    /// before one without), or the platforms the index has.
    pub fn choose(&self, entries: &[ImageIndexEntry]) -> Result<String, Vec<String>> {
        let mut fallback = None;
        for e in entries {
            let Some(p) = &e.platform else { continue };
            let (os, arch) = (p.os.to_string(), p.architecture.to_string());
            if self.accepts(&os, &arch, p.variant.as_deref()) {
                if p.variant.as_deref() == self.variant.as_deref() {
                    return Ok(e.digest.clone());
                }
                fallback.get_or_insert_with(|| e.digest.clone());
            }
        }
        if let Some(d) = fallback {
            return Ok(d);
        }
        Err(entries
            .iter()
            .filter_map(|e| e.platform.as_ref())
            // BuildKit's attestation manifests say unknown/unknown.
            .filter(|p| p.os.to_string() != "unknown")
            .map(|p| {
                let mut s = format!("{}/{}", p.os, p.architecture);
                if let Some(v) = &p.variant {
                    s.push('/');
                    s.push_str(v);
                }
                s
            })
            .collect())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: &str, platform: &str) -> ImageIndexEntry {
        let p = Platform::parse(platform).unwrap();
        serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": 1,
            "platform": {"os": p.os, "architecture": p.architecture, "variant": p.variant},
        }))
        .unwrap()
    }

    #[test]
    fn chooses_the_node_platform_or_names_what_there_is() {
        let index = [
            entry("sha256:amd", "linux/amd64"),
            entry("sha256:arm7", "linux/arm/v7"),
            entry("sha256:arm64", "linux/arm64/v8"),
            entry("sha256:att", "unknown/unknown"),
        ];
        let amd = Platform::parse("linux/amd64").unwrap();
        assert_eq!(amd.choose(&index), Ok("sha256:amd".into()));
        let pi = Platform::parse("linux/arm64").unwrap();
        assert_eq!(pi.choose(&index), Ok("sha256:arm64".into()));
        let pi32 = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(pi32.choose(&index), Ok("sha256:arm7".into()));
        let only_arm = [
            entry("sha256:arm64", "linux/arm64"),
            entry("sha256:att", "unknown/unknown"),
        ];
        assert_eq!(amd.choose(&only_arm), Err(vec!["linux/arm64".to_string()]));
    }

    #[test]
    fn host_platform_is_in_oci_spelling() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(h.to_string(), "linux/amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(h.to_string(), "linux/arm64");
    }
}
