use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;

const SPIFFE_SCHEME: &str = "spiffe://";

/// The authenticated identity of a peer, from the URI SAN of its certificate
/// (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerIdentity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl PeerIdentity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        PeerIdentity {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// Parses `spiffe://td/ns/x/sa/y`; the scheme is required, as in a certificate.
    pub fn parse_spiffe(uri: &str) -> Result<Self, PolicyError> {
        let invalid = |reason| PolicyError::InvalidSpiffeId {
            id: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix(SPIFFE_SCHEME)
            .ok_or_else(|| invalid("missing spiffe:// scheme"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(PeerIdentity::new(td, ns, sa))
            }
            _ => Err(invalid(
                "expected <trust domain>/ns/<namespace>/sa/<service account>",
            )),
        }
    }

    /// The Istio principal: the SPIFFE id without its `spiffe://` scheme, which is the form
    /// authorization policies are written in (`cluster.local/ns/default/sa/sleep`).
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SPIFFE_SCHEME}{}", self.principal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_spiffe_ids() {
        let id = PeerIdentity::parse_spiffe("spiffe://cluster.local/ns/default/sa/sleep").unwrap();
        assert_eq!(id, PeerIdentity::new("cluster.local", "default", "sleep"));
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        for bad in [
            "cluster.local/ns/default/sa/sleep",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe://td/ns/a/sa/b/extra",
            "spiffe:///ns/a/sa/b",
        ] {
            assert!(PeerIdentity::parse_spiffe(bad).is_err(), "{bad}");
        }
    }
}
