//! The cluster's PKI: the root CA created at `init` (ECDSA P-256, kept in the
//! raft store), node certificates signed from a CSR (the key is generated on
//! the node and never leaves it), client bundles for an operator's CLI, join
//! tokens, and the certificate files under `DATA_DIR/certs/`.
//!
//! Names (CLUSTER.md): CA = CN `swarmlet-ca`, O = cluster ID. Node cert:
//! CN = node ID, OU = `swarmlet-manager` | `swarmlet-worker`, O = cluster ID,
//! DNS SANs = the role name and the node ID. Client cert: OU `swarmlet-client`.
//!
//! Not done: certificate renewal (node certificates are valid for
//! `NODE_CERT_VALIDITY`, 90 days; Swarm renews them automatically) and CA
//! rotation.

mod ca;
mod files;
mod names;
mod token;

pub use ca::{create_ca, new_csr, Ca, NodeKey, CA_VALIDITY, NODE_CERT_VALIDITY};
pub use files::{
    certs_dir, load_client_bundle, load_node_certs, save_node_certs, write_client_bundle, NodeCerts,
};
pub use names::{cert_identity, CertIdentity, CertKind, CertRole};
pub use token::{ca_digest, new_secret, verify_token, Token, TokenError};

/// What can go wrong creating, signing or reading certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a key or certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(#[source] rcgen::Error),
    #[error("the CSR names node {got:?}, but the request is for node {expected:?}")]
    CsrNodeMismatch { expected: String, got: String },
    #[error("the cluster CA in the store does not load: {0}")]
    BadCa(String),
    #[error("the certificate does not parse: {0}")]
    BadCert(String),
    #[error("{path}: {reason}")]
    File {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(transparent)]
    Write(#[from] crate::fsutil::WriteError),
}

/// The first PEM certificate in `pem` as DER.
pub fn cert_der(pem: &str) -> Result<rustls::pki_types::CertificateDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::BadCert(format!("not a PEM certificate ({e})")))
}

/// The PEM private key in `pem` as DER.
pub fn key_der(pem: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::BadCert(format!("not a PEM private key ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmlet_proto::cluster::{JoinTokens, RetiredSecret};
    use swarmlet_proto::NodeRole;

    const NODE: &str = "0123456789abcdef012345678";

    #[test]
    fn a_node_cert_names_the_node_role_and_cluster_and_chains_to_the_ca() {
        let ca = create_ca("cluster1").expect("CA");
        let key = new_csr(NODE).expect("csr");
        let signer = Ca::load(&ca).expect("load CA");
        let cert = signer
            .sign_node(&key.csr_pem, NODE, CertRole::Worker, "cluster1")
            .expect("sign");
        let der = cert_der(&cert).expect("der");
        let id = cert_identity(der.as_ref()).expect("identity");
        assert_eq!(
            id,
            CertIdentity {
                kind: CertKind::Node {
                    node_id: NODE.into(),
                    role: CertRole::Worker
                },
                cluster_id: "cluster1".into()
            }
        );
        // The chain and the SANs, as a TLS client checks them.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der(&ca.cert_pem).unwrap()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier as _;
        let now = rustls::pki_types::UnixTime::now();
        for name in ["swarmlet-worker", NODE] {
            let sn = rustls::pki_types::ServerName::try_from(name).unwrap();
            assert!(
                verifier
                    .verify_server_cert(&der, &[], &sn, &[], now)
                    .is_ok(),
                "{name}"
            );
        }
        let sn = rustls::pki_types::ServerName::try_from("swarmlet-manager").unwrap();
        assert!(
            verifier
                .verify_server_cert(&der, &[], &sn, &[], now)
                .is_err(),
            "a worker cert must not pass as a manager"
        );
    }

    #[test]
    fn a_csr_for_another_node_or_garbage_is_refused() {
        let ca = Ca::load(&create_ca("c").unwrap()).unwrap();
        let key = new_csr(NODE).unwrap();
        assert!(matches!(
            ca.sign_node(
                &key.csr_pem,
                "ffffffffffffffffffffffff0",
                CertRole::Manager,
                "c"
            ),
            Err(PkiError::CsrNodeMismatch { .. })
        ));
        assert!(matches!(
            ca.sign_node("not a csr", NODE, CertRole::Manager, "c"),
            Err(PkiError::BadCsr(_))
        ));
        // A CSR whose signature does not match its key.
        let tampered = key.csr_pem.replacen('A', "B", 1);
        assert!(ca
            .sign_node(&tampered, NODE, CertRole::Manager, "c")
            .is_err());
    }

    #[test]
    fn a_client_bundle_cert_is_a_client() {
        let ca = Ca::load(&create_ca("c9").unwrap()).unwrap();
        let (cert, key) = ca.issue_client("c9").unwrap();
        assert!(key_der(&key).is_ok());
        let id = cert_identity(cert_der(&cert).unwrap().as_ref()).unwrap();
        assert_eq!(id.kind, CertKind::Client);
        assert_eq!(id.cluster_id, "c9");
    }

    #[test]
    fn tokens_are_verified_part_by_part() {
        let ca = create_ca("c").unwrap();
        let other = create_ca("c").unwrap();
        let digest = ca_digest(&ca.cert_pem).unwrap();
        assert_eq!(digest.len(), 50);
        assert_ne!(digest, ca_digest(&other.cert_pem).unwrap());
        let tokens = JoinTokens {
            worker: new_secret(),
            manager: new_secret(),
            retired: vec![RetiredSecret {
                role: NodeRole::Worker,
                secret: "0000000000000000000000000".into(),
                rotated_at_ms: 1,
            }],
        };
        let t = |secret: &str| Token::parse(&Token::new(&digest, secret).to_string()).unwrap();
        assert_eq!(
            verify_token(&t(&tokens.worker), &ca.cert_pem, &tokens),
            Ok(NodeRole::Worker)
        );
        assert_eq!(
            verify_token(&t(&tokens.manager), &ca.cert_pem, &tokens),
            Ok(NodeRole::Manager)
        );
        assert_eq!(
            verify_token(&t("0000000000000000000000000"), &ca.cert_pem, &tokens),
            Err(TokenError::Rotated {
                role: "worker".into()
            })
        );
        assert_eq!(
            verify_token(&t("zzzzzzzzzzzzzzzzzzzzzzzzz"), &ca.cert_pem, &tokens),
            Err(TokenError::WrongSecret)
        );
        // The joiner's check, before it sends the secret.
        let good = t(&tokens.worker);
        assert!(good.check_ca(&ca.cert_pem, "m").is_ok());
        assert!(matches!(
            good.check_ca(&other.cert_pem, "m"),
            Err(TokenError::WrongCaDigest { .. })
        ));
        assert!(matches!(
            verify_token(&good, &other.cert_pem, &tokens),
            Err(TokenError::WrongCaDigest { .. })
        ));
    }

    #[test]
    fn node_certs_are_saved_private_and_load_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir =
            std::env::temp_dir().join(format!("swarmlet-pki-{}", crate::identity::random_id(8)));
        assert!(load_node_certs(&dir).unwrap().is_none());
        let ca = create_ca("c").unwrap();
        let key = new_csr(NODE).unwrap();
        let cert = Ca::load(&ca)
            .unwrap()
            .sign_node(&key.csr_pem, NODE, CertRole::Manager, "c")
            .unwrap();
        let certs = NodeCerts {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert,
            key_pem: key.key_pem,
        };
        save_node_certs(&dir, &certs).unwrap();
        for f in ["ca.crt", "node.crt", "node.key"] {
            let mode = std::fs::metadata(dir.join("certs").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let back = load_node_certs(&dir).unwrap().unwrap();
        assert_eq!(back.cert_pem, certs.cert_pem);
        // A damaged file is named.
        std::fs::write(dir.join("certs/node.crt"), "garbage").unwrap();
        let e = load_node_certs(&dir).unwrap_err().to_string();
        assert!(e.contains("node.crt"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
