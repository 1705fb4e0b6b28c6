//! `security.istio.io/v1`: AuthorizationPolicy and PeerAuthentication, with Istio's field names
//! and enum spellings. Every struct rejects unknown fields, as Istio's structural CRDs do.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::networking::WorkloadSelector;

/// Access control for workloads. `spec: {}` is valid and denies every request (ALLOW with no rule).
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    shortname = "ap",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    pub target_ref: Option<PolicyTargetReference>,
    pub target_refs: Vec<PolicyTargetReference>,
    /// `None` (absent) and `Some([])` differ: a DENY policy needs the field present.
    pub rules: Option<Vec<Rule>>,
    pub action: Option<AuthorizationAction>,
    pub provider: Option<ExtensionProvider>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PolicyTargetReference {
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

impl AuthorizationAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
            Self::Custom => "CUSTOM",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ExtensionProvider {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Rule {
    pub from: Option<Vec<RuleFrom>>,
    pub to: Option<Vec<RuleTo>>,
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RuleFrom {
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RuleTo {
    pub operation: Option<Operation>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub service_accounts: Vec<String>,
    pub not_service_accounts: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
    pub remote_ip_blocks: Vec<String>,
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<String>,
    pub not_ports: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

/// `when` keys a node agent evaluates; every other key needs the request (Istio's
/// `l4WhenAttributes`, with `remote.ip`, which is `source.ip` without a proxy in front).
pub const L4_CONDITION_KEYS: [&str; 6] = [
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

impl AuthorizationPolicySpec {
    /// When node agents enforce this policy (no `targetRefs`, ALLOW or DENY), the paths
    /// (`spec.rules[0].to[0].operation.paths`) of its attributes that only a request carries.
    pub fn http_attributes_at_node_agents(&self) -> Vec<String> {
        let action = self.action.unwrap_or_default();
        if !self.target_refs.is_empty()
            || self.target_ref.is_some()
            || !matches!(
                action,
                AuthorizationAction::Allow | AuthorizationAction::Deny
            )
        {
            return Vec::new();
        }
        self.rules
            .iter()
            .flatten()
            .enumerate()
            .flat_map(|(i, rule)| {
                rule.http_attributes()
                    .into_iter()
                    .map(move |attribute| format!("spec.rules[{i}].{attribute}"))
            })
            .collect()
    }
}

/// What node agents do with a policy's HTTP attributes ([`AuthorizationPolicySpec::http_attributes_at_node_agents`]).
pub fn http_attributes_at_node_agents(action: AuthorizationAction) -> String {
    let effect = if action == AuthorizationAction::Deny {
        "this DENY is enforced without them and refuses every connection its other conditions match"
    } else {
        "rules using them allow nothing at the node agents"
    };
    format!(
        "HTTP attributes, which node agents cannot evaluate: {effect}; attach the policy to a waypoint (targetRefs) to enforce it per request"
    )
}

impl Source {
    /// The fields set that only a request carries (what a node agent cannot evaluate).
    pub fn http_attributes(&self) -> Vec<&'static str> {
        [
            ("requestPrincipals", &self.request_principals),
            ("notRequestPrincipals", &self.not_request_principals),
        ]
        .into_iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(name, _)| name)
        .collect()
    }
}

impl Operation {
    /// The fields set that only a request carries (what a node agent cannot evaluate).
    pub fn http_attributes(&self) -> Vec<&'static str> {
        [
            ("hosts", &self.hosts),
            ("notHosts", &self.not_hosts),
            ("methods", &self.methods),
            ("notMethods", &self.not_methods),
            ("paths", &self.paths),
            ("notPaths", &self.not_paths),
        ]
        .into_iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(name, _)| name)
        .collect()
    }
}

impl Condition {
    /// Whether the condition needs the request (a key a node agent does not know).
    pub fn is_http_only(&self) -> bool {
        !L4_CONDITION_KEYS.contains(&self.key.as_str())
    }
}

impl Rule {
    /// The paths, relative to the rule (`to[0].operation.paths`, `when[1]`), of every
    /// attribute in it that only a request carries.
    pub fn http_attributes(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (i, from) in self.from.iter().flatten().enumerate() {
            for name in from.source.iter().flat_map(Source::http_attributes) {
                found.push(format!("from[{i}].source.{name}"));
            }
        }
        for (i, to) in self.to.iter().flatten().enumerate() {
            for name in to.operation.iter().flat_map(Operation::http_attributes) {
                found.push(format!("to[{i}].operation.{name}"));
            }
        }
        for (i, condition) in self.when.iter().enumerate() {
            if condition.is_http_only() {
                found.push(format!("when[{i}] ({})", condition.key));
            }
        }
        found
    }
}

/// Mutual TLS requirements of workloads.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    plural = "peerauthentications",
    shortname = "pa",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<MutualTls>,
    /// Keys are ports; Kubernetes stores them as strings (JSON object keys), YAML files often
    /// as integers: both are accepted.
    #[serde(deserialize_with = "port_keyed")]
    pub port_level_mtls: Option<BTreeMap<u32, MutualTls>>,
}

fn port_keyed<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<u32, MutualTls>>, D::Error> {
    /// A map key that is a port number, written as an integer or as a string.
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct PortKey(u32);

    impl<'de> Deserialize<'de> for PortKey {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = PortKey;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a port number")
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortKey, E> {
                    u32::try_from(v)
                        .map(PortKey)
                        .map_err(|_| E::custom(format!("port {v} is out of range")))
                }
                fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortKey, E> {
                    u32::try_from(v)
                        .map(PortKey)
                        .map_err(|_| E::custom(format!("port {v} is out of range")))
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortKey, E> {
                    v.parse()
                        .map(PortKey)
                        .map_err(|_| E::custom(format!("port key {v:?} is not a number")))
                }
            }
            deserializer.deserialize_any(Visitor)
        }
    }

    let map: Option<BTreeMap<PortKey, MutualTls>> = Option::deserialize(deserializer)?;
    Ok(map.map(|m| m.into_iter().map(|(k, v)| (k.0, v)).collect()))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct MutualTls {
    pub mode: Option<MtlsMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}
