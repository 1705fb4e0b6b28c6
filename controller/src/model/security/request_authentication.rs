//! RequestAuthentication (`security.istio.io`): every field of Istio's API.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PolicyTargetReference, WorkloadSelector, selection_rules};
use crate::model::duration::DurationString;
use crate::model::schema::{self, IstioStatus};

/// Which JWTs a workload accepts; requests carrying an invalid one are refused.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "RequestAuthentication",
    plural = "requestauthentications",
    shortname = "ra",
    category = "istio-io",
    category = "security-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = selection_rules)]
pub struct RequestAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub target_ref: Option<PolicyTargetReference>,
    #[schemars(length(max = 16))]
    pub target_refs: Vec<PolicyTargetReference>,
    #[schemars(length(max = 4096))]
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::cel(s,
    "(has(self.jwksUri) ? 1 : 0) + (has(self.jwks_uri) ? 1 : 0) + (has(self.jwks) ? 1 : 0) <= 1",
    "only one of jwks or jwksUri can be set"))]
pub struct JwtRule {
    #[schemars(length(min = 1))]
    pub issuer: Option<String>,
    #[schemars(inner(length(min = 1)))]
    pub audiences: Vec<String>,
    #[schemars(length(min = 1, max = 2048), extend("x-kubernetes-validations" = [{"rule": "url(self).getScheme() in [\"http\", \"https\"]", "message": "url must have scheme http:// or https://"}]))]
    pub jwks_uri: Option<String>,
    /// The proto name of `jwksUri`, which Istio's CRD also takes.
    #[serde(rename = "jwks_uri")]
    #[schemars(length(min = 1, max = 2048), extend("x-kubernetes-validations" = [{"rule": "url(self).getScheme() in [\"http\", \"https\"]", "message": "url must have scheme http:// or https://"}]))]
    pub jwks_uri_legacy: Option<String>,
    pub jwks: Option<String>,
    pub from_headers: Vec<JwtHeader>,
    #[schemars(inner(length(min = 1)))]
    pub from_params: Vec<String>,
    #[schemars(inner(length(min = 1)))]
    pub from_cookies: Vec<String>,
    pub output_payload_to_header: Option<String>,
    pub forward_original_token: Option<bool>,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    #[schemars(length(max = 64), inner(length(min = 1)))]
    pub space_delimited_claims: Vec<String>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub timeout: Option<DurationString>,
}

impl JwtRule {
    /// `jwksUri` under either of its spellings.
    pub fn jwks_uri(&self) -> Option<&str> {
        self.jwks_uri.as_deref().or(self.jwks_uri_legacy.as_deref())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["name"]))]
pub struct JwtHeader {
    #[schemars(length(min = 1))]
    pub name: String,
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["header", "claim"]))]
pub struct ClaimToHeader {
    #[schemars(length(min = 1), regex(pattern = "^[-_A-Za-z0-9]+$"))]
    pub header: String,
    #[schemars(length(min = 1))]
    pub claim: String,
}
