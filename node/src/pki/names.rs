//! Who a certificate names: CN, OU and O as the cluster assigns them.

use swarmlet_proto::NodeRole;

use super::PkiError;

pub const CA_CN: &str = "swarmlet-ca";
pub const OU_MANAGER: &str = "swarmlet-manager";
pub const OU_WORKER: &str = "swarmlet-worker";
pub const OU_CLIENT: &str = "swarmlet-client";

/// A node certificate's role (its OU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertRole {
    Manager,
    Worker,
}

impl CertRole {
    pub fn ou(self) -> &'static str {
        match self {
            CertRole::Manager => OU_MANAGER,
            CertRole::Worker => OU_WORKER,
        }
    }
    /// The DNS SAN every certificate of this role carries (and the server
    /// name a client asks for when it must reach a manager).
    pub fn server_name(self) -> &'static str {
        self.ou()
    }
}

impl From<NodeRole> for CertRole {
    fn from(r: NodeRole) -> Self {
        match r {
            NodeRole::Manager => CertRole::Manager,
            NodeRole::Worker => CertRole::Worker,
        }
    }
}

impl From<CertRole> for NodeRole {
    fn from(r: CertRole) -> Self {
        match r {
            CertRole::Manager => NodeRole::Manager,
            CertRole::Worker => NodeRole::Worker,
        }
    }
}

/// What kind of holder a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKind {
    Node { node_id: String, role: CertRole },
    Client,
}

/// The identity a (chain-verified) certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub kind: CertKind,
    pub cluster_id: String,
}

/// Reads CN/OU/O of a certificate. Only the names are read; the chain must
/// have been verified already (the TLS handshake does it).
pub fn cert_identity(der: &[u8]) -> Result<CertIdentity, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::BadCert(e.to_string()))?;
    let subject = cert.subject();
    let one = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>,
               what: &str|
     -> Result<String, PkiError> {
        it.next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
            .ok_or_else(|| PkiError::BadCert(format!("the certificate has no {what}")))
    };
    let ou = one(&mut subject.iter_organizational_unit(), "OU (role)")?;
    let cluster_id = one(&mut subject.iter_organization(), "O (cluster ID)")?;
    let cn = one(&mut subject.iter_common_name(), "CN")?;
    let kind = match ou.as_str() {
        OU_MANAGER => CertKind::Node {
            node_id: cn,
            role: CertRole::Manager,
        },
        OU_WORKER => CertKind::Node {
            node_id: cn,
            role: CertRole::Worker,
        },
        OU_CLIENT => CertKind::Client,
        other => {
            return Err(PkiError::BadCert(format!(
                "unknown role OU {other:?} in the certificate"
            )))
        }
    };
    Ok(CertIdentity { kind, cluster_id })
}
