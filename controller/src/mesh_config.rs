//! The mesh config (Istio's `MeshConfig`, the `mesh` key of the `istio` ConfigMap, given to the
//! controller as a file with `--mesh-config` as istiod takes `--meshConfig`): what of it the
//! mesh reads. Today that is tracing: `extensionProviders[].opentelemetry`, the default tracing
//! provider (`defaultProviders.tracing`) and sampling (`defaultConfig.tracing.sampling`).
//! Every other field is accepted and ignored, as a MeshConfig carries many the mesh has no
//! use for.

use serde::Deserialize;

/// Istio's sampling when the mesh config sets none (`PILOT_TRACE_SAMPLING`'s default): 1%.
pub const DEFAULT_TRACE_SAMPLING: f64 = 1.0;

/// Why a mesh config was refused.
#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    #[error("mesh config: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("mesh config: {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The parts of `MeshConfig` the mesh reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    pub enable_tracing: Option<bool>,
    pub default_config: ProxyConfig,
    pub default_providers: DefaultProviders,
    pub extension_providers: Vec<ExtensionProvider>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyConfig {
    pub tracing: Option<ProxyTracing>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyTracing {
    /// Percentage, 0.0 to 100.0; 0 means unset (Istio's reading).
    pub sampling: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DefaultProviders {
    pub tracing: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtensionProvider {
    pub name: String,
    pub opentelemetry: Option<OpenTelemetryProvider>,
}

/// `extensionProviders[].opentelemetry`: an OTLP collector.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OpenTelemetryProvider {
    /// `[namespace/]hostname` of the collector's service.
    pub service: String,
    pub port: u32,
    /// Set for OTLP over HTTP, which the waypoint does not speak (it exports over gRPC).
    pub http: Option<serde_yaml::Value>,
}

/// The tracing the mesh config asks of every proxy, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshTracing {
    /// The default provider, when it is an OpenTelemetry one.
    pub provider: Option<TracingProvider>,
    /// `defaultConfig.tracing.sampling`, else Istio's 1%; over 100 reads as 1, as Istio reads it.
    pub sampling: f64,
}

/// An OpenTelemetry extension provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingProvider {
    pub name: String,
    /// `hostname`, or `namespace/hostname` as Istio allows.
    pub service: String,
    pub port: u16,
}

impl MeshConfig {
    pub fn parse(yaml: &str) -> Result<Self, MeshConfigError> {
        if yaml.trim().is_empty() {
            return Ok(Self::default());
        }
        let config: MeshConfig = serde_yaml::from_str(yaml)?;
        config.tracing()?;
        Ok(config)
    }

    /// The default tracing: `defaultProviders.tracing`'s first provider (Istio uses one), which
    /// must be a declared OpenTelemetry provider.
    pub fn tracing(&self) -> Result<MeshTracing, MeshConfigError> {
        let invalid = |path: String, reason: String| MeshConfigError::Invalid { path, reason };
        let mut providers = Vec::new();
        for (i, provider) in self.extension_providers.iter().enumerate() {
            let path = format!("extensionProviders[{i}]");
            if provider.name.is_empty() {
                return Err(invalid(format!("{path}.name"), "must be set".into()));
            }
            if self.extension_providers[..i]
                .iter()
                .any(|p| p.name == provider.name)
            {
                return Err(invalid(
                    format!("{path}.name"),
                    format!("{:?} is declared twice", provider.name),
                ));
            }
            let Some(otel) = &provider.opentelemetry else {
                continue;
            };
            if otel.service.is_empty() {
                return Err(invalid(
                    format!("{path}.opentelemetry.service"),
                    "must be set".into(),
                ));
            }
            let port = u16::try_from(otel.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    invalid(
                        format!("{path}.opentelemetry.port"),
                        format!("{} is not a port", otel.port),
                    )
                })?;
            if otel.http.is_some() {
                return Err(invalid(
                    format!("{path}.opentelemetry.http"),
                    "OTLP over HTTP is not supported: the waypoint exports over gRPC".into(),
                ));
            }
            providers.push(TracingProvider {
                name: provider.name.clone(),
                service: otel.service.clone(),
                port,
            });
        }
        let provider = match self.default_providers.tracing.first() {
            None => None,
            Some(name) => Some(
                providers
                    .iter()
                    .find(|p| &p.name == name)
                    .cloned()
                    .ok_or_else(|| {
                        invalid(
                            "defaultProviders.tracing[0]".into(),
                            format!("{name:?} is not an OpenTelemetry extension provider"),
                        )
                    })?,
            ),
        };
        let sampling = match self.default_config.tracing.as_ref().map(|t| t.sampling) {
            Some(s) if !(0.0..=f64::MAX).contains(&s) => {
                return Err(invalid(
                    "defaultConfig.tracing.sampling".into(),
                    format!("{s} is not a percentage"),
                ));
            }
            Some(s) if s > 100.0 => DEFAULT_TRACE_SAMPLING,
            Some(s) if s > 0.0 => s,
            _ => DEFAULT_TRACE_SAMPLING,
        };
        Ok(MeshTracing { provider, sampling })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OTEL: &str = r#"
enableTracing: true
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  tracing: {sampling: 100}
defaultProviders:
  tracing: [otel]
extensionProviders:
- name: otel
  opentelemetry: {service: opentelemetry-collector.observability.svc.cluster.local, port: 4317}
- name: prometheus
  prometheus: {}
"#;

    #[test]
    fn the_default_opentelemetry_provider_and_sampling_are_read() {
        let tracing = MeshConfig::parse(OTEL).unwrap().tracing().unwrap();
        assert_eq!(
            tracing.provider,
            Some(TracingProvider {
                name: "otel".into(),
                service: "opentelemetry-collector.observability.svc.cluster.local".into(),
                port: 4317,
            })
        );
        assert_eq!(tracing.sampling, 100.0);
    }

    #[test]
    fn sampling_defaults_as_istio_reads_it() {
        for (yaml, expected) in [
            ("", 1.0),
            ("defaultConfig: {tracing: {sampling: 0}}", 1.0),
            ("defaultConfig: {tracing: {sampling: 0.5}}", 0.5),
            ("defaultConfig: {tracing: {sampling: 150}}", 1.0),
        ] {
            let tracing = MeshConfig::parse(yaml).unwrap().tracing().unwrap();
            assert_eq!(tracing.sampling, expected, "{yaml}");
            assert_eq!(tracing.provider, None);
        }
    }

    #[test]
    fn bad_providers_are_refused_with_their_field() {
        for (yaml, field) in [
            (
                "defaultProviders: {tracing: [zipkin]}",
                "defaultProviders.tracing[0]",
            ),
            (
                "extensionProviders: [{name: a, opentelemetry: {service: c, port: 0}}]",
                "extensionProviders[0].opentelemetry.port",
            ),
            (
                "extensionProviders: [{name: a, opentelemetry: {port: 4317}}]",
                "extensionProviders[0].opentelemetry.service",
            ),
            (
                "extensionProviders: [{name: a, opentelemetry: {service: c, port: 4318, http: {path: /v1/traces}}}]",
                "extensionProviders[0].opentelemetry.http",
            ),
            (
                "extensionProviders: [{name: a, prometheus: {}}, {name: a, prometheus: {}}]",
                "extensionProviders[1].name",
            ),
            (
                "defaultConfig: {tracing: {sampling: -1}}",
                "defaultConfig.tracing.sampling",
            ),
        ] {
            let error = MeshConfig::parse(yaml).unwrap_err().to_string();
            assert!(error.contains(field), "{yaml}: {error}");
        }
    }
}
