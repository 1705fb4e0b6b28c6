//! `extensionProviders[].envoyOtelAls`: Istio's OpenTelemetry access-log provider
//! (`MeshConfig.ExtensionProvider.EnvoyOpenTelemetryLogProvider`: `service`, `port`,
//! `logName`, `logFormat.text` and `logFormat.labels`), resolved as istiod's
//! `openTelemetryLog` resolves it (istio/istio `pilot/pkg/model/telemetry_logging.go`): no
//! `logName` is `otel_envoy_accesslog`, no text is Istio's default TEXT format (its trailing
//! newline included), and the labels are the record's attributes (a label that is not text is
//! an empty string, as istiod sends it). Validated as
//! `ValidateExtensionProviderEnvoyOtelAls` validates it (a port, a service), and each format
//! parsed as Envoy would parse it.

use std::collections::BTreeMap;

use serde::Deserialize;
use weft_access_log::{DEFAULT_TEXT_FORMAT, Format};

use super::MeshConfigError;

/// istiod's `OtelEnvoyAccessLogFriendlyName`: the log name when the provider sets none.
pub const DEFAULT_LOG_NAME: &str = "otel_envoy_accesslog";

/// An `envoyOtelAls` provider, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelAlsProvider {
    /// Where it is declared (`extensionProviders[i].envoyOtelAls`), for warnings.
    pub field: String,
    /// `[namespace/]hostname` of the collector's service.
    pub service: String,
    pub port: u16,
    pub log_name: String,
    /// The LogRecord's body: a text format.
    pub body: String,
    /// `logFormat.labels`: the LogRecord's attributes, each a format.
    pub attributes: BTreeMap<String, String>,
}

/// The provider as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct EnvoyOtelAls {
    service: String,
    port: i64,
    log_name: String,
    log_format: Option<OtelLogFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct OtelLogFormat {
    text: String,
    labels: Option<BTreeMap<String, serde_yaml::Value>>,
}

impl EnvoyOtelAls {
    /// Resolves the provider; `path` is its field (`extensionProviders[i].envoyOtelAls`).
    pub(super) fn resolve(
        self,
        path: &str,
        field: &impl Fn(&str, String) -> MeshConfigError,
    ) -> Result<OtelAlsProvider, MeshConfigError> {
        let (service, port) = super::trace::service_port(&self.service, self.port, path, field)?;
        let log_format = self.log_format.unwrap_or_default();
        let body = if log_format.text.is_empty() {
            format!("{DEFAULT_TEXT_FORMAT}\n")
        } else {
            log_format.text
        };
        Format::text(&body).map_err(|e| field(&format!("{path}.logFormat.text"), e.to_string()))?;
        let mut attributes = BTreeMap::new();
        for (name, value) in log_format.labels.unwrap_or_default() {
            let label = format!("{path}.logFormat.labels.{name}");
            // istiod's `ConvertStructToAttributeKeyValues` sends each label as
            // `value.GetStringValue()`: a number, a boolean, null, a map or a list is an empty
            // string, not refused and not written as text.
            let text = match value {
                serde_yaml::Value::String(s) => s,
                _ => String::new(),
            };
            Format::text(&text).map_err(|e| field(&label, e.to_string()))?;
            attributes.insert(name, text);
        }
        Ok(OtelAlsProvider {
            field: path.to_owned(),
            service: service.to_owned(),
            port,
            log_name: if self.log_name.is_empty() {
                DEFAULT_LOG_NAME.to_owned()
            } else {
                self.log_name
            },
            body,
            attributes,
        })
    }
}
