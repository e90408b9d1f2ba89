//! Creating the cluster CA and signing certificates with it (rcgen).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use swarmlet_proto::cluster::CaMaterial;

use super::names::{CertRole, CA_CN, OU_CLIENT};
use super::PkiError;

/// How long the cluster CA is valid (Swarm's default is 20 years too).
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long a node or client certificate is valid. Renewal is not done yet:
/// a node must re-join before this runs out.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates start an hour in the past, so a node whose clock is a little
/// behind the signer's accepts them at once.
const BACKDATE: Duration = Duration::from_secs(3600);

fn validity(params: &mut CertificateParams, for_how_long: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + for_how_long;
}

fn gen(e: rcgen::Error) -> PkiError {
    PkiError::Generate(e)
}

/// Creates the cluster's root CA: ECDSA P-256, CN `swarmlet-ca`, O = cluster ID.
pub fn create_ca(cluster_id: &str) -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key).map_err(gen)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A node's private key and the CSR for it. The key stays on the node.
pub struct NodeKey {
    pub key_pem: String,
    pub csr_pem: String,
}

/// Generates a node key (ECDSA P-256) and a CSR naming the node ID.
pub fn new_csr(node_id: &str) -> Result<NodeKey, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(gen)?;
    Ok(NodeKey {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem().map_err(gen)?,
    })
}

/// The CA loaded for signing.
pub struct Ca {
    material: CaMaterial,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    pub fn load(material: &CaMaterial) -> Result<Ca, PkiError> {
        let key =
            KeyPair::from_pem(&material.key_pem).map_err(|e| PkiError::BadCa(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&material.cert_pem, key)
            .map_err(|e| PkiError::BadCa(e.to_string()))?;
        Ok(Ca {
            material: material.clone(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.material.cert_pem
    }

    /// Signs a node certificate for the public key in `csr_pem` (its
    /// signature is checked: the requester holds the key). Only the key is
    /// taken from the CSR; every name is the cluster's: CN = `node_id`,
    /// OU = the role, O = `cluster_id`, DNS SANs = role name + node ID.
    pub fn sign_node(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: CertRole,
        cluster_id: &str,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        // The CN the joiner put in its CSR must be its own node ID: a CSR made
        // for another node is a mistake worth refusing loudly.
        let asked_cn = match csr.params.distinguished_name.get(&DnType::CommonName) {
            Some(rcgen::DnValue::Utf8String(s)) => Some(s.clone()),
            Some(rcgen::DnValue::PrintableString(s)) => Some(s.as_str().to_string()),
            Some(rcgen::DnValue::Ia5String(s)) => Some(s.as_str().to_string()),
            Some(other) => Some(format!("{other:?}")),
            None => None,
        };
        if let Some(cn) = asked_cn.filter(|cn| cn != node_id) {
            return Err(PkiError::CsrNodeMismatch {
                expected: node_id.to_string(),
                got: cn,
            });
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationalUnitName, role.ou());
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(role.server_name().try_into().map_err(gen)?),
            SanType::DnsName(node_id.try_into().map_err(gen)?),
        ];
        leaf_usages(&mut params);
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(gen)?;
        Ok(signed.pem())
    }

    /// A client certificate and key (OU `swarmlet-client`) for an operator's
    /// CLI: a client bundle. The key is generated here, on the manager, as
    /// `docker swarm ca` / UCP client bundles do; it is handed out once.
    pub fn issue_client(&self, cluster_id: &str) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("client-{}", crate::identity::random_id(12)),
        );
        dn.push(DnType::OrganizationalUnitName, OU_CLIENT);
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        leaf_usages(&mut params);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).map_err(gen)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn leaf_usages(params: &mut CertificateParams) {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(params, NODE_CERT_VALIDITY);
}
