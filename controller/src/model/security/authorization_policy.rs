//! AuthorizationPolicy (`security.istio.io`): every field of Istio's API.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PolicyTargetReference, WorkloadSelector, selection_rules};
use crate::model::schema::{self, IstioStatus};

/// Access control for workloads. `spec: {}` is valid and denies every request (ALLOW with no rule).
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    shortname = "ap",
    category = "istio-io",
    category = "security-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Action","type":"string","description":"The operation to take.","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Age","type":"date","description":"CreationTimestamp is a timestamp representing the server time when this object was created.","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = authorization_policy_rules)]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    pub target_ref: Option<PolicyTargetReference>,
    #[schemars(length(max = 16))]
    pub target_refs: Vec<PolicyTargetReference>,
    /// `None` (absent) and `Some([])` differ: a DENY policy needs the field present.
    #[schemars(length(max = 512))]
    pub rules: Option<Vec<Rule>>,
    pub action: Option<AuthorizationAction>,
    pub provider: Option<ExtensionProvider>,
}

fn authorization_policy_rules(schema: &mut schemars::Schema) {
    selection_rules(schema);
    schema::one_of(schema, &[&["provider"]]);
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
#[serde(rename_all = "camelCase", default)]
pub struct ExtensionProvider {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Rule {
    #[schemars(length(max = 512))]
    pub from: Option<Vec<RuleFrom>>,
    pub to: Option<Vec<RuleTo>>,
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RuleFrom {
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RuleTo {
    pub operation: Option<Operation>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::cel(s,
    "(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) && !has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true",
    "Cannot set serviceAccounts with namespaces or principals"))]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    #[schemars(length(max = 16), inner(length(max = 320)))]
    pub service_accounts: Vec<String>,
    #[schemars(length(max = 16), inner(length(max = 320)))]
    pub not_service_accounts: Vec<String>,
    pub trust_domains: Vec<String>,
    pub not_trust_domains: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
    pub remote_ip_blocks: Vec<String>,
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
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
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["key"]))]
pub struct Condition {
    pub key: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

/// `when` keys a node agent evaluates; every other key needs the request (Istio's
/// `l4WhenAttributes`, with `remote.ip`, which is `source.ip` without a proxy in front, and
/// `source.trustDomain`, which the peer's certificate carries as it carries the principal).
pub const L4_CONDITION_KEYS: [&str; 7] = [
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.trustDomain",
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
