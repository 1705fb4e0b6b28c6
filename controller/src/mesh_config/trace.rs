//! The mesh config's tracing: `extensionProviders[].opentelemetry`, the default
//! tracing provider (`defaultProviders.tracing`) and sampling (`defaultConfig.tracing.sampling`).

use serde::Deserialize;

use super::MeshConfigError;

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
    /// Set for OTLP over HTTP, which the waypoint does not speak (it exports over gRPC).
    http: Option<serde_yaml::Value>,
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
        if otel.http.is_some() {
            return Err(field(
                &format!("{path}.opentelemetry.http"),
                "OTLP over HTTP is not supported: the waypoint exports over gRPC".into(),
            ));
        }
        providers.push(TracingProvider {
            name: provider.name.clone(),
            field: format!("{path}.opentelemetry"),
            service: otel.service.clone(),
            port,
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
