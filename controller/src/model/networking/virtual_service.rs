//! VirtualService (`networking.istio.io`): every field of Istio's API, with its field names,
//! nesting, deprecated aliases and enum spellings.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Destination, Headers, Percent, StringMatch};
use crate::model::duration::DurationString;
use crate::model::schema::{self, IstioStatus};

/// The reserved gateway name that means "every proxy in the mesh" (`gateways`, and a match's
/// `gateways`).
pub const MESH_GATEWAY: &str = "mesh";

/// Routing rules for a set of hosts.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    plural = "virtualservices",
    shortname = "vs",
    category = "istio-io",
    category = "networking-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Gateways","type":"string","description":"The names of gateways and sidecars that should apply these routes","jsonPath":".spec.gateways"}"#,
    printcolumn = r#"{"name":"Hosts","type":"string","description":"The destination hosts to which traffic is being sent","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Age","type":"date","description":"CreationTimestamp is a timestamp representing the server time when this object was created.","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    pub tls: Vec<TlsRoute>,
    pub tcp: Vec<TcpRoute>,
    pub export_to: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    pub route: Vec<HttpRouteDestination>,
    pub redirect: Option<HttpRedirect>,
    pub direct_response: Option<HttpDirectResponse>,
    pub delegate: Option<Delegate>,
    pub rewrite: Option<HttpRewrite>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub timeout: Option<DurationString>,
    pub retries: Option<HttpRetry>,
    pub fault: Option<HttpFaultInjection>,
    pub mirror: Option<Destination>,
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated integer percentage; `mirrorPercentage` replaces it. Istio's CRD also takes
    /// the proto name `mirror_percent`.
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub mirror_percent: Option<u32>,
    #[serde(rename = "mirror_percent")]
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub mirror_percent_legacy: Option<u32>,
    pub mirror_percentage: Option<Percent>,
    pub cors_policy: Option<CorsPolicy>,
    pub headers: Option<Headers>,
}

impl HttpRoute {
    /// `mirrorPercent` under either of its spellings.
    pub fn mirror_percent(&self) -> Option<u32> {
        self.mirror_percent.or(self.mirror_percent_legacy)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMatchRequest {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: BTreeMap<String, StringMatch>,
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub port: Option<u32>,
    pub source_labels: BTreeMap<String, String>,
    pub gateways: Vec<String>,
    pub query_params: BTreeMap<String, StringMatch>,
    pub ignore_uri_case: bool,
    pub without_headers: BTreeMap<String, StringMatch>,
    pub source_namespace: Option<String>,
    pub stat_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["destination"]))]
pub struct HttpRouteDestination {
    pub destination: Option<Destination>,
    #[schemars(extend("format" = "int32"))]
    pub weight: Option<i32>,
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["destination"]))]
pub struct RouteDestination {
    pub destination: Option<Destination>,
    #[schemars(extend("format" = "int32"))]
    pub weight: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    FromProtocolDefault,
    FromRequestPort,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::one_of(s, &[&["port", "derivePort"]]))]
pub struct HttpRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub port: Option<u32>,
    pub derive_port: Option<RedirectPortSelection>,
    pub scheme: Option<String>,
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub redirect_code: Option<u32>,
    pub prefix_rewrite: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["status"]))]
pub struct HttpDirectResponse {
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub status: u32,
    pub body: Option<HttpBody>,
}

/// Exactly one of `string` or `bytes` (base64).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::one_of(s, &[&["string", "bytes"]]))]
pub struct HttpBody {
    pub string: Option<String>,
    #[schemars(extend("format" = "byte"))]
    pub bytes: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Delegate {
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RegexRewrite {
    #[serde(rename = "match")]
    pub pattern: String,
    pub rewrite: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRetry {
    #[schemars(extend("format" = "int32"))]
    pub attempts: i32,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub per_try_timeout: Option<DurationString>,
    pub retry_on: Option<String>,
    pub retry_remote_localities: Option<bool>,
    pub retry_ignore_previous_hosts: Option<bool>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub backoff: Option<DurationString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpFaultInjection {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::one_of(s, &[&["fixedDelay", "exponentialDelay"]]))]
pub struct FaultDelay {
    #[schemars(schema_with = "schema::duration_1ms")]
    pub fixed_delay: Option<DurationString>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub exponential_delay: Option<DurationString>,
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage.
    #[schemars(extend("format" = "int32"))]
    pub percent: Option<i32>,
}

/// Exactly one of `httpStatus`, `grpcStatus` or `http2Error`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::one_of(s, &[&["httpStatus", "grpcStatus", "http2Error"]]))]
pub struct FaultAbort {
    #[schemars(extend("format" = "int32"))]
    pub http_status: Option<i32>,
    pub grpc_status: Option<String>,
    pub http2_error: Option<String>,
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["destination"]))]
pub struct HttpMirrorPolicy {
    pub destination: Option<Destination>,
    pub percentage: Option<Percent>,
}

/// Istio's spellings of `corsPolicy.unmatchedPreflights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    Unspecified,
    Forward,
    Ignore,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated exact-match origins.
    pub allow_origin: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub max_age: Option<DurationString>,
    pub allow_credentials: Option<bool>,
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["match"]))]
pub struct TlsRoute {
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["sniHosts"]))]
pub struct TlsMatchAttributes {
    pub sni_hosts: Vec<String>,
    pub destination_subnets: Vec<String>,
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub port: Option<u32>,
    pub source_labels: BTreeMap<String, String>,
    pub gateways: Vec<String>,
    pub source_namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpRoute {
    #[serde(rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct L4MatchAttributes {
    pub destination_subnets: Vec<String>,
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub port: Option<u32>,
    /// Deprecated (never implemented by Istio).
    pub source_subnet: Option<String>,
    pub source_labels: BTreeMap<String, String>,
    pub gateways: Vec<String>,
    pub source_namespace: Option<String>,
}
