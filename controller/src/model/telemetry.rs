//! Telemetry (`telemetry.istio.io`, served as `v1alpha1`, the stored version, and `v1`, one
//! schema): every field of Istio's API (istio/api `telemetry/v1alpha1/telemetry.proto` and its
//! published CRD), Istio's field names and enum spellings. What the waypoints apply of it is in
//! `translate::waypoint::telemetry`; the rest is reported by `validation::not_applied`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::DurationString;
use super::schema::{self, IstioStatus};
use super::security::{PolicyTargetReference, WorkloadSelector, selection_rules};

/// How the workloads it selects report metrics, traces and access logs.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "telemetry.istio.io",
    version = "v1alpha1",
    kind = "Telemetry",
    plural = "telemetries",
    singular = "telemetry",
    shortname = "telemetry",
    category = "istio-io",
    category = "telemetry-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Age","type":"date","description":"CreationTimestamp is a timestamp representing the server time when this object was created.","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = selection_rules)]
pub struct TelemetrySpec {
    pub selector: Option<WorkloadSelector>,
    pub target_ref: Option<PolicyTargetReference>,
    #[schemars(length(max = 16))]
    pub target_refs: Vec<PolicyTargetReference>,
    pub tracing: Vec<Tracing>,
    pub metrics: Vec<Metrics>,
    pub access_logging: Vec<AccessLogging>,
}

impl TelemetrySpec {
    /// Istio's namespace-wide Telemetry (mesh-wide in the root namespace): neither a selector
    /// with labels nor a target.
    pub fn is_namespace_wide(&self) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
            && self.target_ref.is_none()
            && self.target_refs.is_empty()
    }

    /// `targetRef` and `targetRefs` together, as Istio reads them.
    pub fn targets(&self) -> impl Iterator<Item = &PolicyTargetReference> {
        self.target_ref.iter().chain(&self.target_refs)
    }
}

/// `WorkloadMode`: which side of a connection an entry applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    #[default]
    ClientAndServer,
    Client,
    Server,
}

impl WorkloadMode {
    /// Whether an entry with this mode (absent: both) applies to a proxy's server side, the
    /// side a waypoint's spans and access log are on.
    pub fn covers_server(mode: Option<WorkloadMode>) -> bool {
        mode != Some(WorkloadMode::Client)
    }

    /// Whether an entry with this mode (absent: both) applies to a proxy's client side, the
    /// side a gateway's spans and access log are on (istiod's gateway listener class).
    pub fn covers_client(mode: Option<WorkloadMode>) -> bool {
        mode != Some(WorkloadMode::Server)
    }
}

/// `ProviderRef`: an `extensionProviders[].name` of the mesh config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["name"]))]
pub struct ProviderRef {
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Tracing {
    #[serde(rename = "match")]
    pub match_: Option<TracingSelector>,
    pub providers: Vec<ProviderRef>,
    #[schemars(range(min = 0.0, max = 100.0))]
    pub random_sampling_percentage: Option<f64>,
    pub disable_span_reporting: Option<bool>,
    // A null tag is kept as `None` so validation can refuse it, as Istio does.
    pub custom_tags: BTreeMap<String, Option<CustomTag>>,
    pub use_request_id_for_trace_sampling: Option<bool>,
    pub enable_istio_tags: Option<bool>,
    pub disable_context_propagation: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TracingSelector {
    pub mode: Option<WorkloadMode>,
}

/// One custom span tag: exactly one source of its value (a protobuf oneof).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::one_of(s, &[&["literal", "environment", "header", "formatter"]]))]
pub struct CustomTag {
    pub literal: Option<TagValue>,
    pub environment: Option<TagSource>,
    pub header: Option<TagSource>,
    pub formatter: Option<TagValue>,
}

/// `Literal` and `Formatter`: a required value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["value"]))]
pub struct TagValue {
    #[schemars(length(min = 1))]
    pub value: String,
}

/// `Environment` and `RequestHeader`: a required name and a default value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["name"]))]
pub struct TagSource {
    #[schemars(length(min = 1))]
    pub name: String,
    pub default_value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Metrics {
    pub providers: Vec<ProviderRef>,
    pub overrides: Vec<MetricsOverrides>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub reporting_interval: Option<DurationString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MetricsOverrides {
    #[serde(rename = "match")]
    pub match_: Option<MetricSelector>,
    pub disabled: Option<bool>,
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::one_of(s, &[&["metric", "customMetric"]]))]
pub struct MetricSelector {
    pub metric: Option<IstioMetric>,
    #[schemars(length(min = 1))]
    pub custom_metric: Option<String>,
    pub mode: Option<WorkloadMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    AllMetrics,
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    TcpOpenedConnections,
    TcpClosedConnections,
    TcpSentBytes,
    TcpReceivedBytes,
    GrpcRequestMessages,
    GrpcResponseMessages,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = tag_override_rules)]
pub struct TagOverride {
    pub operation: Option<TagOperation>,
    pub value: Option<String>,
}

fn tag_override_rules(s: &mut schemars::Schema) {
    schema::cel(
        s,
        r#"((has(self.operation) ? self.operation : "") == "UPSERT") ? (self.value != "") : true"#,
        "value must be set when operation is UPSERT",
    );
    schema::cel(
        s,
        r#"((has(self.operation) ? self.operation : "") == "REMOVE") ? !has(self.value) : true"#,
        "value must not be set when operation is REMOVE",
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    Upsert,
    Remove,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessLogging {
    #[serde(rename = "match")]
    pub match_: Option<LogSelector>,
    pub providers: Vec<ProviderRef>,
    pub disabled: Option<bool>,
    pub filter: Option<LogFilter>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LogSelector {
    pub mode: Option<WorkloadMode>,
}

/// A CEL expression over the request's attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LogFilter {
    pub expression: Option<String>,
}
