//! The SPIFFE identity of a Kubernetes service account:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Validation follows the SPIFFE ID specification (lowercase trust domain of `[a-z0-9.-_]`, path
//! segments of `[A-Za-z0-9.-_]`, no empty, `.` or `..` segments, no query or fragment) and adds the
//! one path shape Istio uses. Anything else is refused with an error naming the faulty part.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME_PREFIX: &str = "spiffe://";
/// SPIFFE caps the trust domain at 255 bytes and the whole ID at 2048 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_ID_LEN: usize = 2048;

/// Which part of the path a segment error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSegment {
    Namespace,
    ServiceAccount,
}

impl fmt::Display for PathSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathSegment::Namespace => "namespace",
            PathSegment::ServiceAccount => "service account",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID {input:?} must start with the scheme \"spiffe://\"")]
    Scheme { input: String },
    #[error("SPIFFE ID is {len} bytes long, more than the {MAX_ID_LEN} allowed")]
    TooLong { len: usize },
    #[error("SPIFFE ID {input:?} must not carry a query or fragment")]
    QueryOrFragment { input: String },
    #[error("SPIFFE ID {input:?} has an empty trust domain")]
    EmptyTrustDomain { input: String },
    #[error("trust domain is {len} bytes long, more than the {MAX_TRUST_DOMAIN_LEN} allowed")]
    TrustDomainTooLong { len: usize },
    #[error(
        "trust domain {trust_domain:?} contains {character:?}; only lowercase letters, digits, '.', '-' and '_' are allowed (no port, no user info)"
    )]
    TrustDomainCharacter {
        trust_domain: String,
        character: char,
    },
    #[error("SPIFFE ID path {path:?} must have the shape /ns/<namespace>/sa/<service-account>")]
    PathShape { path: String },
    #[error("the {segment} segment of the SPIFFE ID is empty")]
    EmptySegment { segment: PathSegment },
    #[error("the {segment} segment {value:?} must not be '.' or '..'")]
    DotSegment { segment: PathSegment, value: String },
    #[error(
        "the {segment} segment {value:?} contains {character:?}; only letters, digits, '.', '-' and '_' are allowed"
    )]
    SegmentCharacter {
        segment: PathSegment,
        value: String,
        character: char,
    },
}

/// A workload identity: one per Kubernetes service account in a trust domain.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an identity from its parts, validating each of them.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        validate_trust_domain(&id.trust_domain)?;
        validate_segment(PathSegment::Namespace, &id.namespace)?;
        validate_segment(PathSegment::ServiceAccount, &id.service_account)?;
        let len = id.to_string().len();
        if len > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong { len });
        }
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The Istio principal: the ID without its `spiffe://` scheme, the form authorization
    /// policies are written in (`cluster.local/ns/default/sa/sleep`).
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// Whether this identity belongs to `trust_domain` (exact, case-sensitive: trust domains are
    /// lowercase by construction).
    pub fn is_in_trust_domain(&self, trust_domain: &str) -> bool {
        self.trust_domain == trust_domain
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME_PREFIX}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Debug shows the URI: it is what operators grep for, and it keeps rustls errors, which
/// format their causes with Debug, readable.
impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: input.len() });
        }
        // The scheme is case-sensitive in the SPIFFE spec: "SPIFFE://" is not a SPIFFE ID.
        let rest = input
            .strip_prefix(SCHEME_PREFIX)
            .ok_or_else(|| SpiffeIdError::Scheme {
                input: input.to_owned(),
            })?;
        if rest.contains(['?', '#']) {
            return Err(SpiffeIdError::QueryOrFragment {
                input: input.to_owned(),
            });
        }
        let (trust_domain, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        if trust_domain.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain {
                input: input.to_owned(),
            });
        }
        validate_trust_domain(trust_domain)?;

        let shape_error = || SpiffeIdError::PathShape {
            path: path.to_owned(),
        };
        let segments: Vec<&str> = path.split('/').collect();
        // `path` starts with '/', so the first piece is always empty.
        let ["", "ns", namespace, "sa", service_account] = segments.as_slice() else {
            return Err(shape_error());
        };
        validate_segment(PathSegment::Namespace, namespace)?;
        validate_segment(PathSegment::ServiceAccount, service_account)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: (*namespace).to_owned(),
            service_account: (*service_account).to_owned(),
        })
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn validate_trust_domain(trust_domain: &str) -> Result<(), SpiffeIdError> {
    if trust_domain.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain {
            input: trust_domain.to_owned(),
        });
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong {
            len: trust_domain.len(),
        });
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c);
    match trust_domain.chars().find(|c| !allowed(*c)) {
        Some(character) => Err(SpiffeIdError::TrustDomainCharacter {
            trust_domain: trust_domain.to_owned(),
            character,
        }),
        None => Ok(()),
    }
}

fn validate_segment(segment: PathSegment, value: &str) -> Result<(), SpiffeIdError> {
    if value.is_empty() {
        return Err(SpiffeIdError::EmptySegment { segment });
    }
    if value == "." || value == ".." {
        return Err(SpiffeIdError::DotSegment {
            segment,
            value: value.to_owned(),
        });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._".contains(c);
    match value.chars().find(|c| !allowed(*c)) {
        Some(character) => Err(SpiffeIdError::SegmentCharacter {
            segment,
            value: value.to_owned(),
            character,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_ids() {
        let cases = [
            (
                "spiffe://cluster.local/ns/default/sa/default",
                ("cluster.local", "default", "default"),
            ),
            (
                "spiffe://example.org/ns/bookinfo/sa/bookinfo-productpage",
                ("example.org", "bookinfo", "bookinfo-productpage"),
            ),
            (
                "spiffe://td_with-dash.9/ns/a.b/sa/Under_Score",
                ("td_with-dash.9", "a.b", "Under_Score"),
            ),
            ("spiffe://x/ns/n/sa/s", ("x", "n", "s")),
            (
                "spiffe://mesh.internal/ns/kube-system/sa/coredns",
                ("mesh.internal", "kube-system", "coredns"),
            ),
        ];
        for (input, (td, ns, sa)) in cases {
            let id: SpiffeId = input
                .parse()
                .unwrap_or_else(|e| panic!("{input} should parse: {e}"));
            assert_eq!(id.trust_domain(), td, "{input}");
            assert_eq!(id.namespace(), ns, "{input}");
            assert_eq!(id.service_account(), sa, "{input}");
            assert_eq!(id.to_string(), input, "display must round trip");
        }
    }

    #[test]
    fn rejects_invalid_ids_with_the_reason() {
        use PathSegment::*;
        use SpiffeIdError as E;
        let long_td = format!("spiffe://{}/ns/a/sa/b", "a".repeat(256));
        let long_id = format!("spiffe://td/ns/a/sa/{}", "b".repeat(2048));
        type ExpectedError = fn(&SpiffeIdError) -> bool;
        let cases: Vec<(&str, ExpectedError)> = vec![
            ("", |e| matches!(e, E::Scheme { .. })),
            ("cluster.local/ns/a/sa/b", |e| matches!(e, E::Scheme { .. })),
            ("https://cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::Scheme { .. })
            }),
            ("SPIFFE://cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::Scheme { .. })
            }),
            ("spiffe:/cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::Scheme { .. })
            }),
            ("spiffe:///ns/a/sa/b", |e| {
                matches!(e, E::EmptyTrustDomain { .. })
            }),
            ("spiffe://Cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::TrustDomainCharacter { character: 'C', .. })
            }),
            ("spiffe://cluster.local:8080/ns/a/sa/b", |e| {
                matches!(e, E::TrustDomainCharacter { character: ':', .. })
            }),
            ("spiffe://user@cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::TrustDomainCharacter { character: '@', .. })
            }),
            (&long_td, |e| {
                matches!(e, E::TrustDomainTooLong { len: 256 })
            }),
            (&long_id, |e| matches!(e, E::TooLong { .. })),
            ("spiffe://cluster.local", |e| {
                matches!(e, E::PathShape { .. })
            }),
            ("spiffe://cluster.local/", |e| {
                matches!(e, E::PathShape { .. })
            }),
            ("spiffe://cluster.local/ns/a", |e| {
                matches!(e, E::PathShape { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b/", |e| {
                matches!(e, E::PathShape { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b/extra", |e| {
                matches!(e, E::PathShape { .. })
            }),
            ("spiffe://cluster.local/namespace/a/sa/b", |e| {
                matches!(e, E::PathShape { .. })
            }),
            ("spiffe://cluster.local//ns/a/sa/b", |e| {
                matches!(e, E::PathShape { .. })
            }),
            ("spiffe://cluster.local/ns//sa/b", |e| {
                matches!(e, E::EmptySegment { segment: Namespace })
            }),
            ("spiffe://cluster.local/ns/a/sa/", |e| {
                matches!(
                    e,
                    E::EmptySegment {
                        segment: ServiceAccount
                    }
                )
            }),
            ("spiffe://cluster.local/ns/../sa/b", |e| {
                matches!(
                    e,
                    E::DotSegment {
                        segment: Namespace,
                        ..
                    }
                )
            }),
            ("spiffe://cluster.local/ns/a/sa/.", |e| {
                matches!(
                    e,
                    E::DotSegment {
                        segment: ServiceAccount,
                        ..
                    }
                )
            }),
            ("spiffe://cluster.local/ns/a b/sa/b", |e| {
                matches!(
                    e,
                    E::SegmentCharacter {
                        segment: Namespace,
                        character: ' ',
                        ..
                    }
                )
            }),
            ("spiffe://cluster.local/ns/a/sa/b%2F", |e| {
                matches!(
                    e,
                    E::SegmentCharacter {
                        segment: ServiceAccount,
                        character: '%',
                        ..
                    }
                )
            }),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", |e| {
                matches!(e, E::QueryOrFragment { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b#frag", |e| {
                matches!(e, E::QueryOrFragment { .. })
            }),
            ("spiffe://cluster.local/ns/ä/sa/b", |e| {
                matches!(
                    e,
                    E::SegmentCharacter {
                        character: 'ä', ..
                    }
                )
            }),
        ];
        assert!(cases.len() >= 15);
        for (input, expected) in cases {
            match input.parse::<SpiffeId>() {
                Ok(id) => panic!("{input:?} must be rejected, parsed as {id}"),
                Err(error) => {
                    assert!(expected(&error), "{input:?}: unexpected error {error:?}");
                    assert!(!error.to_string().is_empty());
                }
            }
        }
    }

    #[test]
    fn new_validates_parts() {
        assert!(SpiffeId::new("cluster.local", "default", "sleep").is_ok());
        assert_eq!(
            SpiffeId::new("cluster.local", "", "sleep"),
            Err(SpiffeIdError::EmptySegment {
                segment: PathSegment::Namespace
            })
        );
        assert!(matches!(
            SpiffeId::new("CLUSTER", "a", "b"),
            Err(SpiffeIdError::TrustDomainCharacter { .. })
        ));
        assert!(matches!(
            SpiffeId::new("cluster.local", "a", "b/c"),
            Err(SpiffeIdError::SegmentCharacter { character: '/', .. })
        ));
    }

    #[test]
    fn serde_uses_the_uri_string() {
        let id = SpiffeId::new("cluster.local", "default", "sleep").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://cluster.local/ns/default/sa/sleep\"");
        let back: SpiffeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        let error = serde_json::from_str::<SpiffeId>("\"spiffe://cluster.local/ns/a\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("/ns/<namespace>/sa/<service-account>"),
            "{error}"
        );
    }

    #[test]
    fn trust_domain_check() {
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        assert!(id.is_in_trust_domain("cluster.local"));
        assert!(!id.is_in_trust_domain("cluster.local2"));
    }

    /// Policies name peers by principal; certificates, the agents' store and the waypoint's
    /// configuration by URI: one type parses and prints both.
    #[test]
    fn principals_and_uris_of_one_identity() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/sleep"
            .parse()
            .unwrap();
        assert_eq!(
            id,
            SpiffeId::new("cluster.local", "default", "sleep").unwrap()
        );
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        for bad in [
            "cluster.local/ns/default/sa/sleep",
            "http://x/ns/a/sa/b",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe://td/ns/a/sa/b/extra",
            "spiffe:///ns/a/sa/b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }
}
