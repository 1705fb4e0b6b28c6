use std::fmt;

use serde::{Deserialize, Serialize};

/// HTTP status of a request refused by L7 authorization (Envoy's RBAC filter).
pub const ACCESS_DENIED_STATUS: u16 = 403;
/// Body of that response, byte for byte what Istio's proxies send.
pub const ACCESS_DENIED_BODY: &str = "RBAC: access denied";

/// Whether an authorization policy grants or refuses what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyAction {
    Allow,
    Deny,
}

/// `namespace/name` of a policy, for logs, metrics and the deny reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Outcome of an authorization evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Decision {
    Allow,
    Deny(DenyReason),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Why a connection or request was refused; maps to the access log's `rbac_access_denied`
/// response flag and its matched policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DenyReason {
    /// A DENY policy matched.
    DeniedBy(PolicyRef),
    /// ALLOW policies apply to the target but none matched.
    NoAllowPolicyMatched,
    /// The request path has no normalized form (L7 only); the waypoint answers 400.
    InvalidPath,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::DeniedBy(policy) => write!(f, "denied by policy {policy}"),
            DenyReason::NoAllowPolicyMatched => f.write_str("allow policies exist, none matched"),
            DenyReason::InvalidPath => f.write_str("request path cannot be normalized"),
        }
    }
}
