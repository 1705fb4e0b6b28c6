//! A proxy's tracing, access logging and metric overrides ([`metrics`]): the mesh config's
//! default OpenTelemetry provider and
//! sampling (`defaultProviders.tracing`, `defaultConfig.tracing.sampling`), overridden by the
//! Telemetry resources that apply to the proxy in Istio's order (istiod's
//! `Telemetries.applicableTelemetries`): the root namespace's namespace-wide one (mesh-wide),
//! then the proxy's namespace's, then those of its namespace that bind it, each by creation
//! time. A waypoint is bound by targetRefs naming it (a selector never binds a waypoint, as in
//! Istio) and reads the server side's entries; a gateway's pod by a selector matching its
//! labels or a targetRef to the Gateway API Gateway it serves, and reads the client side's, as
//! istiod configures a gateway's listeners. Each service a waypoint serves gets its own result
//! as istiod computes it for that service's filter chain (`applicableTelemetries(proxy, svc)`):
//! the service's namespace's namespace-wide Telemetry joins when it is not the waypoint's, and
//! a Telemetry whose targetRefs name the Service (or ServiceEntry) binds; it is sent with the
//! service only when it differs from the waypoint's own. The provider's `service` is resolved
//! to the endpoints of that Service as Envoy's cluster for it would be; a provider whose
//! service the registry does not have is skipped ([`collector`]).

pub use self::collector::collector_warnings;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use weft_istio::labels::{CANONICAL_NAME_LABELS, GATEWAY_NAME};
use weft_proto::waypoint as wp;

use super::super::resolve::{self, namespace_of};
use super::{Compiler, age_key};
use crate::mesh_config::{MeshTracing, OtlpGrpc, OtlpHttp, TracingProvider};
use crate::model::Telemetry;
use crate::model::networking::ServiceEntry;
use crate::model::security::PolicyTargetReference;
use crate::model::telemetry::{AccessLogging, CustomTag, TagSource, Tracing, WorkloadMode};

/// A service a waypoint serves as istiod's policy matcher knows it: a Kubernetes Service, or
/// a ServiceEntry (each of its hosts), by the object's name and namespace.
#[derive(Clone, Copy, Debug)]
pub(super) struct ServedObject<'s> {
    /// A ServiceEntry (istiod's `External` registry) rather than a Service (`Kubernetes`).
    pub(super) entry: bool,
    pub(super) name: &'s str,
    pub(super) namespace: &'s str,
}

impl<'s> ServedObject<'s> {
    pub(super) fn service(service: &'s Service) -> Self {
        ServedObject {
            entry: false,
            name: resolve::name_of(&service.metadata),
            namespace: namespace_of(&service.metadata),
        }
    }

    pub(super) fn entry(entry: &'s ServiceEntry) -> Self {
        ServedObject {
            entry: true,
            name: resolve::name_of(&entry.metadata),
            namespace: namespace_of(&entry.metadata),
        }
    }

    /// Whether `target`, a targetRef of a Telemetry in `namespace`, names this object, as
    /// istiod's `ShouldAttachPolicy` attaches a Service- or ServiceEntry-targeted policy at a
    /// waypoint: same name, the policy in the service's namespace, and the kind of its
    /// registry.
    fn targeted_by(self, target: &PolicyTargetReference, namespace: &str) -> bool {
        let group = target.group.as_deref().unwrap_or("");
        let kind = if self.entry {
            target.kind == "ServiceEntry" && group == "networking.istio.io"
        } else {
            target.kind == "Service" && (group.is_empty() || group == "core")
        };
        kind && target.name == self.name && namespace == self.namespace
    }
}

/// The proxy Telemetry is applied to.
#[derive(Clone, Copy)]
pub(super) enum TelemetryProxy<'p> {
    /// The waypoint being compiled: its spans and access log are the server side's. This is
    /// what applies to traffic addressed to no service it serves (a workload's own address).
    Waypoint,
    /// The waypoint, for the traffic addressed to one service it serves (istiod's filter chain
    /// of that service at a waypoint, built with the service): the server side's too.
    WaypointService(ServedObject<'p>),
    /// A gateway's pod: its spans and access log are the client side's (istiod's gateway
    /// listener class takes the client spec).
    Gateway(&'p Pod),
}

impl TelemetryProxy<'_> {
    /// Whether an entry of this `match.mode` (absent: both sides) applies to this proxy.
    fn covers(self, mode: Option<WorkloadMode>) -> bool {
        match self {
            TelemetryProxy::Waypoint | TelemetryProxy::WaypointService(_) => {
                WorkloadMode::covers_server(mode)
            }
            TelemetryProxy::Gateway(_) => WorkloadMode::covers_client(mode),
        }
    }
}

impl<'a> Compiler<'a, '_> {
    /// The Telemetry resources that apply to `proxy`, the weakest first: each overrides what
    /// comes before it. For a waypoint's service, istiod's order with a service: the root
    /// namespace's and the waypoint's namespace-wide ones, then the service's namespace's when
    /// it is another, and then the binding ones are looked for in the service's namespace (so
    /// a Telemetry attached to the waypoint's Gateway does not reach a service of another
    /// namespace, as in istiod).
    fn applicable_telemetries(&self, proxy: TelemetryProxy<'_>) -> Vec<&'a Telemetry> {
        let root = self.settings.root_namespace.as_str();
        let own = self.waypoint.namespace.as_str();
        let in_namespace = |namespace: &str| {
            let mut telemetries: Vec<&'a Telemetry> = self
                .index
                .telemetries
                .values()
                .filter(|t| namespace_of(&t.metadata) == namespace)
                .collect();
            telemetries.sort_by(|a, b| age_key(&a.metadata).cmp(&age_key(&b.metadata)));
            telemetries
        };
        let namespace_wide = |telemetries: &[&'a Telemetry]| {
            telemetries
                .iter()
                .copied()
                .find(|t| t.spec.is_namespace_wide())
        };
        let mut applicable = Vec::new();
        applicable.extend(namespace_wide(&in_namespace(root)));
        let mut scope = in_namespace(own);
        if own != root {
            applicable.extend(namespace_wide(&scope));
        }
        if let TelemetryProxy::WaypointService(service) = proxy
            && service.namespace != own
        {
            // Not compared with the root namespace: istiod layers a root-namespace service's
            // namespace-wide Telemetry in again here, after the waypoint's.
            scope = in_namespace(service.namespace);
            applicable.extend(namespace_wide(&scope));
        }
        applicable.extend(
            scope
                .into_iter()
                .filter(|t| !t.spec.is_namespace_wide() && self.binds(t, proxy)),
        );
        applicable
    }

    /// Whether a Telemetry that is not namespace-wide, in the proxy's namespace (for a
    /// waypoint's service, the service's), binds it.
    fn binds(&self, telemetry: &Telemetry, proxy: TelemetryProxy<'_>) -> bool {
        let own = self.waypoint.namespace.as_str();
        match proxy {
            // Attached to the whole waypoint (its Gateway, or the waypoint GatewayClass from
            // the root namespace): `bound_services` answers an empty list for those.
            TelemetryProxy::Waypoint => self.binds_whole_waypoint(telemetry),
            TelemetryProxy::WaypointService(service) => {
                let namespace = namespace_of(&telemetry.metadata);
                telemetry
                    .spec
                    .targets()
                    .any(|target| service.targeted_by(target, namespace))
                    || self.binds_whole_waypoint(telemetry)
            }
            // Istio's policy matcher for a proxy that is no waypoint: targetRefs, when given,
            // decide alone (a Gateway API Gateway, by the gateway-name label of its pod);
            // otherwise the selector's labels must all be the pod's.
            TelemetryProxy::Gateway(pod) => {
                if telemetry.spec.targets().next().is_some() {
                    let Some(gateway) = resolve::label(&pod.metadata, GATEWAY_NAME) else {
                        return false;
                    };
                    telemetry.spec.targets().any(|target| {
                        target.kind == "Gateway"
                            && target.group.as_deref() == Some("gateway.networking.k8s.io")
                            && target.name == gateway
                            && target.namespace.as_deref().is_none_or(|ns| ns == own)
                    })
                } else {
                    telemetry.spec.selector.as_ref().is_some_and(|selector| {
                        !selector.match_labels.is_empty()
                            && resolve::selects(
                                &selector.match_labels,
                                &resolve::labels(&pod.metadata),
                            )
                    })
                }
            }
        }
    }

    /// Whether a Telemetry's targetRefs attach it to the whole waypoint: its Gateway (from the
    /// waypoint's namespace) or the waypoint GatewayClass (from the root namespace).
    fn binds_whole_waypoint(&self, telemetry: &Telemetry) -> bool {
        self.bound_services(
            telemetry.spec.targets(),
            namespace_of(&telemetry.metadata),
            &[],
        )
        .is_some_and(|services| services.is_empty())
    }

    /// The tracing, access logging and metric overrides of the traffic addressed to
    /// `service`, when they are not the `waypoint`'s own: istiod builds each service's filter
    /// chain at a waypoint with the Telemetry that applies with the service
    /// (`Telemetries.Tracing(proxy, svc)`, `AccessLogging(.., svc)`, `HTTPFilters(.., svc)`).
    pub(super) fn service_telemetry(
        &self,
        service: ServedObject<'_>,
        waypoint: &wp::ServiceTelemetry,
    ) -> Option<wp::ServiceTelemetry> {
        let telemetry = self.telemetry(TelemetryProxy::WaypointService(service));
        (telemetry != *waypoint).then_some(telemetry)
    }

    /// Everything the applicable Telemetry resources set for `proxy`: its tracing, access
    /// logging and metric overrides.
    pub(super) fn telemetry(&self, proxy: TelemetryProxy<'_>) -> wp::ServiceTelemetry {
        let (access_log_disabled, access_logs) = self.access_logs(proxy);
        wp::ServiceTelemetry {
            tracing: self.tracing(proxy),
            access_log_disabled,
            metric_overrides: self.metric_overrides(proxy),
            access_logs,
        }
    }

    /// The overrides of Istio's request metrics for the proxy's side (istiod's
    /// `mergeMetrics`, then the side the proxy's listeners report: a waypoint's server side,
    /// a gateway's client side).
    pub(super) fn metric_overrides(&self, proxy: TelemetryProxy<'_>) -> Vec<wp::MetricOverride> {
        let telemetries = self.applicable_telemetries(proxy);
        metrics::merge_metrics(telemetries.iter().flat_map(|t| &t.spec.metrics), |mode| {
            proxy.covers(mode)
        })
    }

    /// The tracing section of the proxy's configuration; `None` when no provider applies
    /// (trace headers then pass untouched, as Envoy without a tracer leaves them).
    pub(super) fn tracing(&self, proxy: TelemetryProxy<'_>) -> Option<wp::Tracing> {
        let mesh = self.settings.mesh.tracing();
        let telemetries = self.applicable_telemetries(proxy);
        let entries = telemetries
            .iter()
            .flat_map(|t| &t.spec.tracing)
            .filter(|e| proxy.covers(e.match_.as_ref().and_then(|m| m.mode)));
        let merged = merge_tracing(&mesh, entries);
        let provider = merged.provider?;
        // A provider whose collector is not in the registry configures no tracer, as istiod's
        // `configureFromProviderConfig` fails for it (`pilot/pkg/networking/core/tracing.go`).
        let collector = self
            .collector(collector::OPENTELEMETRY, &provider.service, provider.port)
            .ok()?;
        // Istio's service name for a proxy: `<canonical service>.<namespace>`; a waypoint's
        // canonical service is its Gateway's name, a gateway's comes from its pod's labels.
        let canonical_service = match proxy {
            TelemetryProxy::Waypoint | TelemetryProxy::WaypointService(_) => String::new(),
            TelemetryProxy::Gateway(pod) => canonical_service(pod),
        };
        let shown = if canonical_service.is_empty() {
            self.waypoint.name.as_str()
        } else {
            canonical_service.as_str()
        };
        Some(wp::Tracing {
            provider: provider.name.clone(),
            collector,
            random_sampling_percentage: merged.sampling,
            disable_span_reporting: merged.disabled,
            service_name: format!("{shown}.{}", self.waypoint.namespace),
            canonical_service,
            custom_tags: custom_tags(merged.custom_tags),
            http: provider.http.as_ref().map(otlp_http),
            grpc: provider.grpc.as_ref().map(otlp_grpc),
        })
    }

    /// The proxy's access logs: whether none is written, and those written when not Weft's
    /// default line ([`access_log::access_logs`]).
    pub(super) fn access_logs(&self, proxy: TelemetryProxy<'_>) -> (bool, Vec<wp::AccessLog>) {
        let mesh = self.settings.mesh.access_logging();
        let telemetries = self.applicable_telemetries(proxy);
        let entries: Vec<&[AccessLogging]> = telemetries
            .iter()
            .map(|t| t.spec.access_logging.as_slice())
            .filter(|entries| !entries.is_empty())
            .collect();
        access_log::access_logs(
            &mesh,
            &entries,
            |mode| proxy.covers(mode),
            |kind, service, port| self.collector(kind, service, port).ok(),
        )
    }

    /// The collector of a provider's `service` ([`collector::lookup`]): `ip:port` of each
    /// ready pod behind its Service, or `host:port` for the waypoint to resolve (a
    /// ServiceEntry host, a Service port not declared or no ready pod); an error when the
    /// registry has no such service, and the provider is then skipped and counted under
    /// `kind`, istiod's label of its kind (`provider_lookup_cluster_failures`).
    fn collector(
        &self,
        kind: &'static str,
        service: &str,
        port: u16,
    ) -> Result<Vec<String>, collector::CollectorLookupError> {
        let found = collector::lookup(&self.services, self.index.service_entries.values(), service)
            .inspect_err(|_| self.settings.provider_lookup_failures.failed(kind))?;
        let service = match found {
            collector::CollectorHost::Service(service) => service,
            collector::CollectorHost::Entry(host) => return Ok(vec![format!("{host}:{port}")]),
        };
        let host = resolve::hostname(service, self.settings);
        let Some(service_port) = resolve::service_ports(service)
            .iter()
            .find(|p| i64::from(p.port) == i64::from(port))
        else {
            return Ok(vec![format!("{host}:{port}")]);
        };
        let mut endpoints: Vec<String> = self
            .index
            .pods
            .values()
            .filter(|pod| resolve::service_selects(service, pod) && resolve::pod_healthy(pod))
            .filter_map(|pod| {
                let target = resolve::target_port(service_port, pod)?;
                let ip = resolve::pod_ips(pod).into_iter().next()?;
                Some(std::net::SocketAddr::new(ip, u16::try_from(target).ok()?).to_string())
            })
            .collect();
        endpoints.sort();
        if endpoints.is_empty() {
            endpoints.push(format!("{host}:{port}"));
        }
        Ok(endpoints)
    }
}

/// A provider's `http`, as istiod writes Envoy's `OpenTelemetryConfig.http_service`.
fn otlp_http(http: &OtlpHttp) -> wp::OtlpHttp {
    wp::OtlpHttp {
        path: http.path.clone(),
        timeout: Some(proto_duration(http.timeout)),
        headers: otlp_headers(&http.headers),
    }
}

/// A provider's `grpc`, as istiod writes Envoy's `OpenTelemetryConfig.grpc_service` `timeout`
/// and `initial_metadata`.
fn otlp_grpc(grpc: &OtlpGrpc) -> wp::OtlpGrpc {
    wp::OtlpGrpc {
        timeout: grpc.timeout.map(proto_duration),
        initial_metadata: otlp_headers(&grpc.metadata),
    }
}

fn proto_duration(duration: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

fn otlp_headers(headers: &[(String, String)]) -> Vec<wp::OtlpHttpHeader> {
    headers
        .iter()
        .map(|(name, value)| wp::OtlpHttpHeader {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

/// The proxy's side's tracing after every applicable entry (already filtered by `match.mode`),
/// as istiod's `Telemetries.Tracing` merges them.
#[derive(Debug, PartialEq)]
struct MergedTracing<'m, 't> {
    provider: Option<&'m TracingProvider>,
    sampling: f64,
    disabled: bool,
    /// The `customTags` of the last entry that sets any.
    custom_tags: Option<&'t BTreeMap<String, Option<CustomTag>>>,
}

/// Starts from the mesh's default provider and sampling; each entry replaces what it sets: its
/// first provider (one the mesh does not declare as OpenTelemetry leaves none: no spans, as
/// istiod disables a tracer it cannot find), `randomSamplingPercentage`,
/// `disableSpanReporting`, and `customTags` whole (istiod's shallow merge: a narrower
/// Telemetry's tags replace a wider one's, they are not added to them).
fn merge_tracing<'m, 't>(
    mesh: &'m MeshTracing,
    entries: impl Iterator<Item = &'t Tracing>,
) -> MergedTracing<'m, 't> {
    let mut merged = MergedTracing {
        provider: mesh.provider.as_ref(),
        sampling: mesh.sampling,
        disabled: false,
        custom_tags: None,
    };
    for entry in entries {
        if let Some(first) = entry.providers.first() {
            merged.provider = mesh.provider_named(&first.name);
        }
        if let Some(disabled) = entry.disable_span_reporting {
            merged.disabled = disabled;
        }
        if let Some(percentage) = entry.random_sampling_percentage {
            merged.sampling = percentage;
        }
        // An empty map is no map: YAML cannot tell `customTags: {}` from its absence here.
        if !entry.custom_tags.is_empty() {
            merged.custom_tags = Some(&entry.custom_tags);
        }
    }
    merged
}

/// The merged `customTags` as the waypoint applies them, by name. Validation has refused a
/// null tag or one with two sources; a `formatter` tag carries its substitution format, which
/// the waypoint parses (refusing one it cannot) as Envoy does.
fn custom_tags(tags: Option<&BTreeMap<String, Option<CustomTag>>>) -> Vec<wp::CustomTag> {
    let source = |s: &TagSource| wp::TagFromName {
        name: s.name.clone(),
        default_value: s.default_value.clone(),
    };
    tags.into_iter()
        .flatten()
        .filter_map(|(name, tag)| {
            let tag = tag.as_ref()?;
            let r#type = if let Some(literal) = &tag.literal {
                wp::custom_tag::Type::Literal(literal.value.clone())
            } else if let Some(environment) = &tag.environment {
                wp::custom_tag::Type::Environment(source(environment))
            } else if let Some(header) = &tag.header {
                wp::custom_tag::Type::Header(source(header))
            } else if let Some(formatter) = &tag.formatter {
                // istiod's `buildCustomTagsFromProvider`: Envoy's `CustomTag.value`.
                wp::custom_tag::Type::Formatter(formatter.value.clone())
            } else {
                return None;
            };
            Some(wp::CustomTag {
                tag: name.clone(),
                r#type: Some(r#type),
            })
        })
        .collect()
}

/// Istio's `CanonicalService(labels, workloadName)` for a gateway's pod: the first canonical
/// name label, else its workload's name.
fn canonical_service(pod: &Pod) -> String {
    let labels = resolve::labels(&pod.metadata);
    CANONICAL_NAME_LABELS
        .iter()
        .find_map(|k| labels.get(*k))
        .cloned()
        .unwrap_or_else(|| resolve::workload_name(pod))
}

mod access_log;
mod collector;
mod grpc_als;
mod metrics;
mod otel_als;

#[cfg(test)]
mod tests;
