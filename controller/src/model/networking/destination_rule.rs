//! DestinationRule (`networking.istio.io`): every field of Istio's API.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PortSelector, WorkloadSelector};
use crate::model::duration::DurationString;
use crate::model::schema::{self, IstioStatus};

/// Policies that apply to traffic for a service after routing.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    plural = "destinationrules",
    shortname = "dr",
    category = "istio-io",
    category = "networking-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Host","type":"string","description":"The name of a service from the service registry","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"Age","type":"date","description":"CreationTimestamp is a timestamp representing the server time when this object was created.","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["host"]))]
pub struct DestinationRuleSpec {
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
    pub export_to: Vec<String>,
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
    #[schemars(length(max = 4096))]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    pub tunnel: Option<TunnelSettings>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["name"]))]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

/// `simple` or `consistentHash` (a protobuf oneof).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::one_of(s, &[&["simple", "consistentHash"]]))]
pub struct LoadBalancerSettings {
    pub simple: Option<SimpleLb>,
    pub consistent_hash: Option<ConsistentHashLb>,
    pub locality_lb_setting: Option<LocalityLbSetting>,
    pub zone_aware_lb_setting: Option<ZoneAwareLbSetting>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub warmup_duration_secs: Option<DurationString>,
    pub warmup: Option<WarmupConfiguration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["duration"]))]
pub struct WarmupConfiguration {
    #[schemars(schema_with = "schema::duration_1ms")]
    pub duration: Option<DurationString>,
    #[schemars(extend("format" = "double"), range(min = 0, max = 100))]
    pub minimum_percent: Option<f64>,
    #[schemars(extend("format" = "double"), range(min = 0))]
    pub aggression: Option<f64>,
}

/// One hash key (`httpHeaderName`, `httpCookie`, `useSourceIp` or `httpQueryParameterName`)
/// and at most one of `ringHash` or `maglev`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::one_of(s, &[
    &["httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName"],
    &["ringHash", "maglev"],
]))]
pub struct ConsistentHashLb {
    pub http_header_name: Option<String>,
    pub http_cookie: Option<HttpCookie>,
    pub use_source_ip: Option<bool>,
    pub http_query_parameter_name: Option<String>,
    pub ring_hash: Option<RingHash>,
    pub maglev: Option<Maglev>,
    /// Deprecated; `ringHash.minimumRingSize` replaces it.
    #[schemars(range(min = 0))]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["name"]))]
pub struct HttpCookie {
    pub name: String,
    pub path: Option<String>,
    #[schemars(schema_with = "schema::duration")]
    pub ttl: Option<DurationString>,
    pub attributes: Vec<CookieAttribute>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["name"]))]
pub struct CookieAttribute {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RingHash {
    #[schemars(range(min = 0))]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Maglev {
    #[schemars(range(min = 0))]
    pub table_size: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityLbSetting {
    pub distribute: Vec<LocalityDistribute>,
    pub failover: Vec<LocalityFailover>,
    pub failover_priority: Vec<String>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ZoneAwareLbSetting {
    pub enabled: Option<bool>,
    pub failover: Vec<LocalityFailover>,
    pub failover_priority: Vec<String>,
    #[schemars(range(min = 1))]
    pub min_cluster_size: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityDistribute {
    pub from: String,
    pub to: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityFailover {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionPoolSettings {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpSettings {
    #[schemars(extend("format" = "int32"))]
    pub max_connections: Option<i32>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub connect_timeout: Option<DurationString>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub max_connection_duration: Option<DurationString>,
    /// `0s` disables the idle timeout (Istio's CRD has no rule here).
    #[schemars(schema_with = "schema::duration")]
    pub idle_timeout: Option<DurationString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpKeepalive {
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub probes: Option<u32>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub time: Option<DurationString>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub interval: Option<DurationString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    Default,
    DoNotUpgrade,
    Upgrade,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpSettings {
    #[schemars(extend("format" = "int32"))]
    pub http1_max_pending_requests: Option<i32>,
    #[schemars(extend("format" = "int32"))]
    pub http2_max_requests: Option<i32>,
    #[schemars(extend("format" = "int32"))]
    pub max_requests_per_connection: Option<i32>,
    #[schemars(extend("format" = "int32"))]
    pub max_retries: Option<i32>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub idle_timeout: Option<DurationString>,
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    pub use_client_protocol: Option<bool>,
    #[schemars(extend("format" = "int32"))]
    pub max_concurrent_streams: Option<i32>,
    pub http2_keep_alive: Option<Http2KeepAlive>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Http2KeepAlive {
    #[schemars(schema_with = "schema::duration_1ms")]
    pub interval: Option<DurationString>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub timeout: Option<DurationString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct OutlierDetection {
    pub split_external_local_origin_errors: Option<bool>,
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub consecutive_local_origin_failures: Option<u32>,
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub consecutive_gateway_errors: Option<u32>,
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub consecutive5xx_errors: Option<u32>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub interval: Option<DurationString>,
    #[schemars(schema_with = "schema::duration_1ms")]
    pub base_ejection_time: Option<DurationString>,
    #[schemars(extend("format" = "int32"))]
    pub max_ejection_percent: Option<i32>,
    #[schemars(extend("format" = "int32"))]
    pub min_health_percent: Option<i32>,
    /// Deprecated; `consecutive5xxErrors` / `consecutiveGatewayErrors` replace it.
    #[schemars(extend("format" = "int32"))]
    pub consecutive_errors: Option<i32>,
    #[schemars(inner(range(min = 100, max = 599)))]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

impl ClientTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "DISABLE",
            Self::Simple => "SIMPLE",
            Self::Mutual => "MUTUAL",
            Self::IstioMutual => "ISTIO_MUTUAL",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientTlsSettings {
    pub mode: Option<ClientTlsMode>,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub credential_name: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub sni: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub ca_crl: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = |s: &mut schemars::Schema| schema::required(s, &["targetHost", "targetPort"]))]
pub struct TunnelSettings {
    pub protocol: Option<String>,
    pub target_host: String,
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub target_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyProtocol {
    pub version: Option<ProxyProtocolVersion>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryBudget {
    #[schemars(extend("format" = "double"), range(min = 0, max = 100))]
    pub percent: Option<f64>,
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub min_retry_concurrency: Option<u32>,
    #[schemars(schema_with = "schema::duration")]
    pub budget_interval: Option<DurationString>,
}
