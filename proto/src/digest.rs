//! `Digest`: the content address of a blob, `sha256:<64 lowercase hex>`.
//!
//! Every digest that comes from a request is parsed into this type once, at
//! the edge, so the rest of the node compares canonical strings only (an
//! uppercase digest once made garbage collection delete a live service's
//! blob) and a digest can never name a path.

use std::fmt;

/// A digest that is not `sha256:` followed by 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadDigest(pub String);

impl fmt::Display for BadDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.chars().take(100).collect();
        write!(
            f,
            "{shown:?} is not a digest of the form sha256:<64 hex digits>"
        )
    }
}

impl std::error::Error for BadDigest {}

/// `sha256:<64 lowercase hex digits>`, always canonical.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>` (hex in either case) into the canonical
    /// lowercase form; anything else, including anything path-like, is refused.
    pub fn parse(s: &str) -> Result<Digest, BadDigest> {
        let hex = s
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| BadDigest(s.to_string()))?;
        Ok(Digest(format!("sha256:{}", hex.to_ascii_lowercase())))
    }

    /// The digest of a SHA-256 hash value.
    pub fn from_sha256(hash: &[u8; 32]) -> Digest {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in hash {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 lowercase hex digits (a safe file name).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Digest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_canonical_and_never_paths() {
        let upper = format!("sha256:{}", "AB".repeat(32));
        let d = Digest::parse(&upper).unwrap();
        assert_eq!(d.as_str(), format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(d.hex(), "ab".repeat(32));
        assert_eq!(Digest::from_sha256(&[0xab; 32]), d);
        for bad in [
            "sha256:../../etc/passwd",
            "../blobs/sha256/x",
            "",
            "sha256:",
            "md5:00",
            &format!("sha256:{}/", "a".repeat(63)),
            &format!("SHA256:{}", "a".repeat(64)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
