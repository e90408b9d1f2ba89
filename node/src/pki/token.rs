//! Join tokens: `SWMTKN-1-<CA digest>-<secret>`, as Docker Swarm's. The
//! digest (base36 SHA-256 of the CA certificate's DER, 50 characters) lets
//! the joining node check it talks to the right cluster *before* it sends
//! the secret (25 base36 characters, ~129 bits), which says the role.

use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use swarmlet_proto::cluster::JoinTokens;
use swarmlet_proto::NodeRole;

use super::PkiError;

const PREFIX: &str = "SWMTKN";
const VERSION: &str = "1";
const DIGEST_LEN: usize = 50;
const SECRET_LEN: usize = 25;
const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Why a token is refused. Each says which part is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed join token: {0}; a token looks like SWMTKN-1-<50 characters>-<25 characters>; copy it again from \"swarmlet swarm join-token worker\" on a manager")]
    Malformed(String),
    #[error("the join token's CA digest does not match the CA certificate of the manager at {manager}: this token is for another swarm, or something between you and the manager is impersonating it; nothing was sent. Check the address and copy the token again from \"swarmlet swarm join-token\" on a manager")]
    WrongCaDigest { manager: String },
    #[error("the join token's secret is wrong: it matches no current token of this swarm; copy it again from \"swarmlet swarm join-token worker|manager\" on a manager")]
    WrongSecret,
    #[error("the join token was rotated away (it was this swarm's {role} token before \"swarmlet swarm join-token --rotate {role}\"); get the current one with \"swarmlet swarm join-token {role}\" on a manager")]
    Rotated { role: String },
}

/// A parsed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub ca_digest: String,
    pub secret: String,
}

impl Token {
    pub fn new(ca_digest: &str, secret: &str) -> Token {
        Token {
            ca_digest: ca_digest.to_string(),
            secret: secret.to_string(),
        }
    }

    pub fn parse(s: &str) -> Result<Token, TokenError> {
        let s = s.trim();
        let parts: Vec<&str> = s.split('-').collect();
        let [prefix, version, digest, secret] = parts.as_slice() else {
            return Err(TokenError::Malformed(format!(
                "it has {} '-'-separated parts, not 4",
                parts.len()
            )));
        };
        if *prefix != PREFIX {
            return Err(TokenError::Malformed(format!(
                "it does not start with {PREFIX}-"
            )));
        }
        if *version != VERSION {
            return Err(TokenError::Malformed(format!(
                "token version {version:?} is not supported (only {VERSION})"
            )));
        }
        let base36 = |p: &str| p.bytes().all(|b| ALPHABET.contains(&b));
        if digest.len() != DIGEST_LEN || !base36(digest) {
            return Err(TokenError::Malformed(format!(
                "the CA digest must be {DIGEST_LEN} characters 0-9a-z, got {} characters",
                digest.len()
            )));
        }
        if secret.len() != SECRET_LEN || !base36(secret) {
            return Err(TokenError::Malformed(format!(
                "the secret must be {SECRET_LEN} characters 0-9a-z, got {} characters",
                secret.len()
            )));
        }
        Ok(Token::new(digest, secret))
    }

    /// Checks the digest of the CA certificate the manager handed out. The
    /// joiner calls this before it sends anything secret.
    pub fn check_ca(&self, ca_pem: &str, manager: &str) -> Result<(), TokenError> {
        match ca_digest(ca_pem) {
            Ok(d) if eq_ct(d.as_bytes(), self.ca_digest.as_bytes()) => Ok(()),
            _ => Err(TokenError::WrongCaDigest {
                manager: manager.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", self.ca_digest, self.secret)
    }
}

/// Base36 SHA-256 of the CA certificate's DER, left-padded to 50 characters.
pub fn ca_digest(ca_pem: &str) -> Result<String, PkiError> {
    let der = super::cert_der(ca_pem)?;
    Ok(base36(&Sha256::digest(der.as_ref()), DIGEST_LEN))
}

/// A fresh token secret.
pub fn new_secret() -> String {
    let mut rng = rand::thread_rng();
    (0..SECRET_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..36)] as char)
        .collect()
}

/// The manager's check of a token against the store: the role it grants,
/// or which part is wrong.
pub fn verify_token(
    token: &Token,
    ca_pem: &str,
    tokens: &JoinTokens,
) -> Result<NodeRole, TokenError> {
    let digest = ca_digest(ca_pem).map_err(|_| TokenError::WrongSecret)?;
    if !eq_ct(digest.as_bytes(), token.ca_digest.as_bytes()) {
        return Err(TokenError::WrongCaDigest {
            manager: "this manager".to_string(),
        });
    }
    for role in [NodeRole::Worker, NodeRole::Manager] {
        if eq_ct(tokens.current(role).as_bytes(), token.secret.as_bytes()) {
            return Ok(role);
        }
    }
    if let Some(r) = tokens
        .retired
        .iter()
        .find(|r| eq_ct(r.secret.as_bytes(), token.secret.as_bytes()))
    {
        let role = match r.role {
            NodeRole::Manager => "manager",
            NodeRole::Worker => "worker",
        };
        return Err(TokenError::Rotated {
            role: role.to_string(),
        });
    }
    Err(TokenError::WrongSecret)
}

/// Compares without an early exit, so the time taken says nothing about how
/// much of a guessed secret was right. (A few lines; not worth a crate.)
fn eq_ct(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Big-endian bytes in base36, left-padded with '0' to `width`. Written
/// here (repeated division of a byte vector): 20 lines, no crate needed.
fn base36(bytes: &[u8], width: usize) -> String {
    let mut n: Vec<u8> = bytes.to_vec();
    let mut out = Vec::new();
    while n.iter().any(|&b| b != 0) {
        let mut rem: u32 = 0;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        out.push(ALPHABET[rem as usize]);
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_of_known_values() {
        assert_eq!(base36(&[0], 3), "000");
        assert_eq!(base36(&[35], 1), "z");
        assert_eq!(base36(&[1, 0], 1), "74"); // 256 = 7*36 + 4
                                              // The largest SHA-256 fits in 50 characters.
        assert_eq!(base36(&[0xff; 32], 50).len(), 50);
    }

    #[test]
    fn a_token_round_trips_and_each_bad_part_is_named() {
        let t = Token::new(&"a".repeat(50), &new_secret());
        assert_eq!(Token::parse(&t.to_string()), Ok(t.clone()));
        assert_eq!(Token::parse(&format!(" {t}\n")), Ok(t.clone()));
        for bad in [
            "",
            "SWMTKN-1-abc",
            "XWMTKN-1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-aaaaaaaaaaaaaaaaaaaaaaaaa",
            "SWMTKN-2-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-aaaaaaaaaaaaaaaaaaaaaaaaa",
            "SWMTKN-1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-aaaaaaaaaaaaaaaaaaaaaaaaa",
            "SWMTKN-1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-AAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(
                matches!(Token::parse(bad), Err(TokenError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
