//! The mesh config's tracing: `extensionProviders[].opentelemetry`, the default
//! tracing provider (`defaultProviders.tracing`) and sampling (`defaultConfig.tracing.sampling`).

use std::time::Duration;

use serde::Deserialize;

use super::MeshConfigError;
use crate::validation::duration_at_least_ms;

/// An OTLP/HTTP export's deadline when `http.timeout` is unset (Istio's `HttpService.timeout`
/// default).
pub const DEFAULT_OTLP_HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// Istio's sampling when the mesh config sets none (`PILOT_TRACE_SAMPLING`'s default): 1%.
pub const DEFAULT_TRACE_SAMPLING: f64 = 1.0;

/// The tracing the mesh config asks of every proxy, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshTracing {
    /// The default provider, when it is an OpenTelemetry one.
    pub provider: Option<TracingProvider>,
    /// Every OpenTelemetry provider declared, which a Telemetry resource may name.
    pub providers: Vec<TracingProvider>,
    /// `defaultConfig.tracing.sampling`, else Istio's 1%; over 100 reads as 1, as Istio reads it.
    pub sampling: f64,
}

impl MeshTracing {
    /// The OpenTelemetry provider of this name, as Istio's `fetchProvider` finds one (names
    /// compare without case).
    pub fn provider_named(&self, name: &str) -> Option<&TracingProvider> {
        self.providers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }
}

impl Default for MeshTracing {
    fn default() -> Self {
        Self {
            provider: None,
            providers: Vec::new(),
            sampling: DEFAULT_TRACE_SAMPLING,
        }
    }
}

/// An OpenTelemetry extension provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingProvider {
    pub name: String,
    /// Where it is declared (`extensionProviders[i].opentelemetry`), for warnings.
    pub field: String,
    /// `hostname`, or `namespace/hostname` as Istio allows.
    pub service: String,
    pub port: u16,
    /// `http`: spans go over OTLP/HTTP; `None`: over OTLP/gRPC.
    pub http: Option<OtlpHttp>,
    /// `grpc`: the OTLP/gRPC export's deadline and metadata (unset with `http`, which Istio
    /// refuses beside it).
    pub grpc: Option<OtlpGrpc>,
}

/// `extensionProviders[].opentelemetry.grpc`, resolved: how istiod fills Envoy's
/// `OpenTelemetryConfig.grpc_service` beyond its cluster (`timeout`, `initial_metadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpGrpc {
    /// `timeout`: each export's deadline; `None`: the waypoint's own.
    pub timeout: Option<Duration>,
    /// `initialMetadata`, each value resolved as `http.headers` values are, names lowercase.
    pub metadata: Vec<(String, String)>,
}

/// `extensionProviders[].opentelemetry.http`, resolved: how istiod fills Envoy's
/// `OpenTelemetryConfig.http_service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpHttp {
    /// The request path, `/`-rooted (Istio joins `path` to the host: `v1/traces` and
    /// `/v1/traces` are the same, an empty one is `/`).
    pub path: String,
    /// `timeout`, else [`DEFAULT_OTLP_HTTP_TIMEOUT`].
    pub timeout: Duration,
    /// `headers`, each value resolved (`envName` read from the controller's environment, as
    /// istiod reads its own; unset reads as empty).
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ProxyTracing {
    /// Percentage, 0.0 to 100.0; 0 means unset (Istio's reading).
    sampling: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct DefaultProviders {
    tracing: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ExtensionProvider {
    name: String,
    opentelemetry: Option<OpenTelemetryProvider>,
}

/// `extensionProviders[].opentelemetry`: an OTLP collector.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct OpenTelemetryProvider {
    /// `[namespace/]hostname` of the collector's service.
    service: String,
    port: u32,
    /// Set for OTLP over HTTP; absent: OTLP over gRPC.
    http: Option<HttpService>,
    /// The OTLP/gRPC export's settings.
    grpc: Option<GrpcService>,
}

/// Istio's `ExtensionProvider.GrpcService`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct GrpcService {
    /// A duration as Istio writes one (`10s`, `500ms`).
    timeout: Option<String>,
    initial_metadata: Vec<HttpHeader>,
}

/// Istio's `ExtensionProvider.HttpService`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct HttpService {
    path: String,
    /// A duration as Istio writes one (`10s`, `500ms`).
    timeout: Option<String>,
    headers: Vec<HttpHeader>,
}

/// Istio's `ExtensionProvider.HttpHeader`: a name and a value or an environment variable.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct HttpHeader {
    name: String,
    value: Option<String>,
    env_name: Option<String>,
}

/// `http` of the provider at `path` checked and resolved; an error names the field.
fn otlp_http(
    http: &HttpService,
    path: &str,
    field: &impl Fn(&str, String) -> MeshConfigError,
) -> Result<OtlpHttp, MeshConfigError> {
    let timeout = match &http.timeout {
        None => DEFAULT_OTLP_HTTP_TIMEOUT,
        Some(timeout) => duration_at_least_ms(&timeout.as_str().into())
            .map_err(|reason| field(&format!("{path}.timeout"), reason))?,
    };
    if http
        .path
        .chars()
        .any(|c| c.is_ascii_control() || c == ' ' || c == '?' || c == '#')
    {
        return Err(field(
            &format!("{path}.path"),
            format!("{:?} is not a URL path", http.path),
        ));
    }
    let headers = headers(&http.headers, &format!("{path}.headers"), field)?;
    Ok(OtlpHttp {
        path: format!("/{}", http.path.trim_start_matches('/')),
        timeout,
        headers,
    })
}

/// `grpc` of the provider at `path` checked and resolved; an error names the field.
fn otlp_grpc(
    grpc: &GrpcService,
    path: &str,
    field: &impl Fn(&str, String) -> MeshConfigError,
) -> Result<OtlpGrpc, MeshConfigError> {
    let timeout = grpc
        .timeout
        .as_ref()
        .map(|timeout| {
            duration_at_least_ms(&timeout.as_str().into())
                .map_err(|reason| field(&format!("{path}.timeout"), reason))
        })
        .transpose()?;
    Ok(OtlpGrpc {
        timeout,
        metadata: headers(
            &grpc.initial_metadata,
            &format!("{path}.initialMetadata"),
            field,
        )?,
    })
}

/// Istio's `HttpHeader` list at `path` (`http.headers`, `grpc.initialMetadata`): each name an
/// HTTP header name (kept lowercase, as Envoy sends it), each value one `value` or the
/// controller's environment variable `envName` (unset reads as empty, as istiod reads its
/// own), an HTTP header value.
fn headers(
    declared: &[HttpHeader],
    path: &str,
    field: &impl Fn(&str, String) -> MeshConfigError,
) -> Result<Vec<(String, String)>, MeshConfigError> {
    let mut headers = Vec::with_capacity(declared.len());
    for (i, header) in declared.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if http::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
            return Err(field(
                &format!("{at}.name"),
                format!("{:?} is not an HTTP header name", header.name),
            ));
        }
        let value = match (&header.value, &header.env_name) {
            (Some(_), Some(_)) => {
                return Err(field(&at, "sets both value and envName".into()));
            }
            (Some(value), None) => value.clone(),
            (None, Some(name)) => std::env::var(name).unwrap_or_default(),
            (None, None) => String::new(),
        };
        if http::HeaderValue::from_str(&value).is_err() {
            return Err(field(
                &format!("{at}.value"),
                format!("the value of {:?} is not an HTTP header value", header.name),
            ));
        }
        headers.push((header.name.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

/// A provider's `service` (`[namespace/]hostname`, trimmed) and `port`, each checked as
/// Istio's `ValidateExtensionProvider*` checks them; `path` is the provider's field.
pub(super) fn service_port<'s>(
    service: &'s str,
    port_value: impl Into<i64>,
    path: &str,
    field: &impl Fn(&str, String) -> MeshConfigError,
) -> Result<(&'s str, u16), MeshConfigError> {
    let trimmed = service.trim();
    if trimmed.is_empty() || trimmed.split('/').any(str::is_empty) {
        return Err(field(
            &format!("{path}.service"),
            format!("{service:?} is not a service: [namespace/]hostname"),
        ));
    }
    Ok((trimmed, port(port_value, &format!("{path}.port"), field)?))
}

/// A provider's `port`, 1 to 65535; another value names `name`.
pub(super) fn port(
    value: impl Into<i64>,
    name: &str,
    field: &impl Fn(&str, String) -> MeshConfigError,
) -> Result<u16, MeshConfigError> {
    let value = value.into();
    u16::try_from(value)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| field(name, format!("{value} is not a port (1 to 65535)")))
}

/// `value` read as a `T` (absent or null: the default); a wrong shape names `field`.
pub(super) fn section<T: serde::de::DeserializeOwned + Default>(
    value: Option<&serde_yaml::Value>,
    name: &str,
    field: &impl Fn(&str, String) -> MeshConfigError,
) -> Result<T, MeshConfigError> {
    match value {
        None | Some(serde_yaml::Value::Null) => Ok(T::default()),
        Some(value) => {
            serde_yaml::from_value(value.clone()).map_err(|e| field(name, e.to_string()))
        }
    }
}

/// The default tracing of a MeshConfig document: `defaultProviders.tracing`'s first provider
/// (Istio uses one), which must be a declared OpenTelemetry provider.
pub(super) fn parse(
    mesh: &serde_yaml::Mapping,
    field: &impl Fn(&str, String) -> MeshConfigError,
) -> Result<MeshTracing, MeshConfigError> {
    let declared: Vec<ExtensionProvider> =
        section(mesh.get("extensionProviders"), "extensionProviders", field)?;
    let defaults: DefaultProviders =
        section(mesh.get("defaultProviders"), "defaultProviders", field)?;
    let proxy_tracing: Option<ProxyTracing> = match mesh.get("defaultConfig") {
        Some(serde_yaml::Value::Mapping(proxy)) => {
            section(proxy.get("tracing"), "defaultConfig.tracing", field)?
        }
        None | Some(serde_yaml::Value::Null) => None,
        Some(_) => return Err(field("defaultConfig", "must be a mapping".to_owned())),
    };
    let mut providers = Vec::new();
    for (i, provider) in declared.iter().enumerate() {
        let path = format!("extensionProviders[{i}]");
        if provider.name.is_empty() {
            return Err(field(&format!("{path}.name"), "must be set".into()));
        }
        if declared[..i].iter().any(|p| p.name == provider.name) {
            return Err(field(
                &format!("{path}.name"),
                format!("{:?} is declared twice", provider.name),
            ));
        }
        let Some(otel) = &provider.opentelemetry else {
            continue;
        };
        if otel.service.is_empty() {
            return Err(field(
                &format!("{path}.opentelemetry.service"),
                "must be set".into(),
            ));
        }
        let port = port(otel.port, &format!("{path}.opentelemetry.port"), field)?;
        // The export's settings name the provider beside the field.
        let named =
            |at: &str, reason: String| field(at, format!("provider {:?}: {reason}", provider.name));
        // Istio's `ValidateExtensionProviderTracingOpentelemetry`.
        if otel.http.is_some() && otel.grpc.is_some() {
            return Err(named(
                &format!("{path}.opentelemetry"),
                "cannot specify both grpc and http".into(),
            ));
        }
        let http = otel
            .http
            .as_ref()
            .map(|http| otlp_http(http, &format!("{path}.opentelemetry.http"), &named))
            .transpose()?;
        let grpc = otel
            .grpc
            .as_ref()
            .map(|grpc| otlp_grpc(grpc, &format!("{path}.opentelemetry.grpc"), &named))
            .transpose()?;
        providers.push(TracingProvider {
            name: provider.name.clone(),
            field: format!("{path}.opentelemetry"),
            service: otel.service.clone(),
            port,
            http,
            grpc,
        });
    }
    let provider = match defaults.tracing.first() {
        None => None,
        Some(name) => Some(
            providers
                .iter()
                .find(|p| &p.name == name)
                .cloned()
                .ok_or_else(|| {
                    field(
                        "defaultProviders.tracing[0]",
                        format!("{name:?} is not an OpenTelemetry extension provider"),
                    )
                })?,
        ),
    };
    let sampling = match proxy_tracing.map(|t| t.sampling) {
        Some(s) if !(0.0..=f64::MAX).contains(&s) => {
            return Err(field(
                "defaultConfig.tracing.sampling",
                format!("{s} is not a percentage"),
            ));
        }
        Some(s) if s > 100.0 => DEFAULT_TRACE_SAMPLING,
        Some(s) if s > 0.0 => s,
        _ => DEFAULT_TRACE_SAMPLING,
    };
    Ok(MeshTracing {
        provider,
        providers,
        sampling,
    })
}
