//! The mesh config's access logging: `accessLogFile`, `accessLogFormat` and
//! `accessLogEncoding` (the log Istio writes when no Telemetry resource nor default provider
//! says otherwise), `defaultProviders.accessLogging`, and the `envoyFileAccessLog` extension
//! providers with Istio's built-in `envoy` one (istio/istio `pkg/config/mesh/mesh.go`
//! `DefaultMeshConfig`: `/dev/stdout`, formatted as the mesh's `accessLogFormat` says). Every
//! format is parsed here as Envoy would parse it, so a format Envoy would refuse refuses the
//! document, naming the field.

use std::collections::BTreeMap;

use serde::Deserialize;
use weft_access_log::{DEFAULT_JSON_LABELS, DEFAULT_TEXT_FORMAT, Format};

use super::MeshConfigError;
use super::grpc_als::{EnvoyGrpcAls, GrpcAls, GrpcAlsProvider};
use super::otel_als::{EnvoyOtelAls, OtelAlsProvider};
use super::trace::section;

/// The name of Istio's built-in file provider.
pub const BUILTIN_PROVIDER: &str = "envoy";
/// Where the built-in provider writes.
pub const DEV_STDOUT: &str = "/dev/stdout";

/// A log format, resolved: Istio's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    Text(String),
    Json(BTreeMap<String, String>),
}

impl LogFormat {
    /// Istio's default TEXT format.
    pub fn istio_text() -> LogFormat {
        LogFormat::Text(DEFAULT_TEXT_FORMAT.to_owned())
    }

    /// Istio's default JSON labels.
    pub fn istio_json() -> LogFormat {
        LogFormat::Json(
            DEFAULT_JSON_LABELS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    /// Istio's `fileAccessLogFormat`: an empty text is the default; a text is one line (the
    /// newline Istio appends is the line's end).
    fn text(text: &str) -> LogFormat {
        let text = text.strip_suffix('\n').unwrap_or(text);
        if text.is_empty() {
            LogFormat::istio_text()
        } else {
            LogFormat::Text(text.to_owned())
        }
    }

    /// Istio's `buildFileAccessJSONLogFormat`: no labels are the default labels.
    fn json(labels: BTreeMap<String, String>) -> LogFormat {
        if labels.is_empty() {
            LogFormat::istio_json()
        } else {
            LogFormat::Json(labels)
        }
    }

    /// Parses the format as Envoy would (the message is Envoy's).
    pub fn check(&self) -> Result<(), String> {
        let parsed = match self {
            LogFormat::Text(text) => Format::text(text),
            LogFormat::Json(labels) => {
                Format::json(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
        };
        parsed.map(drop).map_err(|e| e.to_string())
    }
}

/// An extension provider a Telemetry's `accessLogging[].providers` may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogProvider {
    pub name: String,
    /// Its `envoyFileAccessLog`; `None` for a provider of another kind (a metrics, tracing or
    /// gRPC access-log service provider), which writes no line here.
    pub file: Option<FileProvider>,
    /// Its `envoyOtelAls`: records exported to an OpenTelemetry collector.
    pub otel: Option<OtelAlsProvider>,
    /// Its `envoyHttpAls` or `envoyTcpAls`: entries streamed to Envoy's gRPC access-log
    /// service.
    pub grpc_als: Option<GrpcAlsProvider>,
}

impl AccessLogProvider {
    /// Whether selecting this provider configures an access log, as istiod's
    /// `telemetryAccessLog` (`pilot/pkg/model/telemetry_logging.go`) builds one for the file,
    /// gRPC and OpenTelemetry access-log providers and none for the others (tracing, metrics,
    /// ext-authz): a Telemetry selecting only those leaves the mesh's `accessLogFile` in force.
    pub fn writes_access_log(&self) -> bool {
        self.file.is_some() || self.otel.is_some() || self.grpc_als.is_some()
    }
}

/// An `envoyFileAccessLog` provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProvider {
    /// `/dev/stdout` when unset, as Istio's `fileAccessLogFromTelemetry` sets it.
    pub path: String,
    pub format: LogFormat,
    /// `omitEmptyValues`: Envoy's `omit_empty_values` on the format.
    pub omit_empty_values: bool,
}

/// The access logging the mesh config asks of every proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshAccessLogging {
    /// `accessLogFile`: the log written when no Telemetry entry or default provider applies.
    pub file: Option<String>,
    /// `accessLogFormat` with `accessLogEncoding`.
    pub format: LogFormat,
    /// `defaultProviders.accessLogging`, as written (`None` when unset).
    pub default_providers: Option<Vec<String>>,
    /// Every declared provider, the built-in `envoy` one included.
    pub providers: Vec<AccessLogProvider>,
    /// What the document declares that is accepted but not applied, each a warning naming
    /// the field and the provider.
    pub not_applied: Vec<String>,
}

impl Default for MeshAccessLogging {
    fn default() -> Self {
        MeshAccessLogging {
            file: None,
            format: LogFormat::istio_text(),
            default_providers: None,
            providers: vec![builtin(LogFormat::istio_text())],
            not_applied: Vec::new(),
        }
    }
}

impl MeshAccessLogging {
    /// The provider of this name, as istiod's `fetchProvider` finds one (without case).
    pub fn provider_named(&self, name: &str) -> Option<&AccessLogProvider> {
        self.providers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The default providers in force: `defaultProviders.accessLogging`, none when unset.
    pub fn defaults(&self) -> Vec<String> {
        self.default_providers.clone().unwrap_or_default()
    }
}

fn builtin(format: LogFormat) -> AccessLogProvider {
    AccessLogProvider {
        name: BUILTIN_PROVIDER.to_owned(),
        file: Some(FileProvider {
            path: DEV_STDOUT.to_owned(),
            format,
            omit_empty_values: false,
        }),
        otel: None,
        grpc_als: None,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct DefaultProviders {
    access_logging: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ExtensionProvider {
    name: String,
    envoy_file_access_log: Option<EnvoyFileAccessLog>,
    envoy_otel_als: Option<EnvoyOtelAls>,
    envoy_http_als: Option<EnvoyGrpcAls>,
    envoy_tcp_als: Option<EnvoyGrpcAls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct EnvoyFileAccessLog {
    path: String,
    log_format: Option<FileLogFormat>,
    omit_empty_values: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct FileLogFormat {
    text: Option<String>,
    labels: Option<BTreeMap<String, serde_yaml::Value>>,
}

/// The access logging of a MeshConfig document.
pub(super) fn parse(
    mesh: &serde_yaml::Mapping,
    field: &impl Fn(&str, String) -> MeshConfigError,
) -> Result<MeshAccessLogging, MeshConfigError> {
    let string = |name: &str| match mesh.get(name) {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(field(name, "must be a string".to_owned())),
    };
    let file = string("accessLogFile")?.filter(|f| !f.is_empty());
    let text = string("accessLogFormat")?.unwrap_or_default();
    let format = match string("accessLogEncoding")?.as_deref() {
        None | Some("TEXT") => LogFormat::text(&text),
        Some("JSON") if text.is_empty() => LogFormat::istio_json(),
        // Istio parses the text as a JSON object of labels.
        Some("JSON") => {
            let labels: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text)
                .map_err(|e| field("accessLogFormat", format!("not a JSON object: {e}")))?;
            LogFormat::json(
                labels
                    .into_iter()
                    .map(|(k, v)| {
                        label_text(&v)
                            .map(|t| (k.clone(), t))
                            .ok_or_else(|| field("accessLogFormat", not_a_label(&k)))
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
        Some(other) => {
            return Err(field(
                "accessLogEncoding",
                format!("unknown value {other:?} (TEXT or JSON)"),
            ));
        }
    };
    format
        .check()
        .map_err(|reason| field("accessLogFormat", reason))?;
    let defaults: DefaultProviders =
        section(mesh.get("defaultProviders"), "defaultProviders", field)?;
    let declared: Vec<ExtensionProvider> =
        section(mesh.get("extensionProviders"), "extensionProviders", field)?;
    let mut providers = Vec::new();
    let not_applied = Vec::new();
    for (i, provider) in declared.into_iter().enumerate() {
        let path = format!("extensionProviders[{i}].envoyFileAccessLog");
        let file = match provider.envoy_file_access_log {
            None => None,
            Some(log) => {
                let log_format = match log.log_format {
                    // Istio's built-in provider without a format of its own follows the
                    // mesh's, unless it sets `omitEmptyValues` (istiod's `telemetryAccessLog`
                    // then takes `fileAccessLogFromTelemetry`: Istio's default TEXT format).
                    None if provider.name == BUILTIN_PROVIDER && !log.omit_empty_values => {
                        format.clone()
                    }
                    None => LogFormat::istio_text(),
                    Some(FileLogFormat {
                        text: Some(text),
                        labels: None,
                    }) => LogFormat::text(&text),
                    Some(FileLogFormat { text: None, labels }) => LogFormat::json(
                        labels
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| {
                                yaml_label_text(&v).map(|t| (k.clone(), t)).ok_or_else(|| {
                                    field(&format!("{path}.logFormat.labels.{k}"), not_a_label(&k))
                                })
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    Some(_) => {
                        return Err(field(
                            &format!("{path}.logFormat"),
                            "only one of text or labels may be set".to_owned(),
                        ));
                    }
                };
                let format_field = match &log_format {
                    LogFormat::Text(_) => "logFormat.text",
                    LogFormat::Json(_) => "logFormat.labels",
                };
                log_format
                    .check()
                    .map_err(|reason| field(&format!("{path}.{format_field}"), reason))?;
                Some(FileProvider {
                    path: if log.path.is_empty() {
                        DEV_STDOUT.to_owned()
                    } else {
                        log.path
                    },
                    format: log_format,
                    omit_empty_values: log.omit_empty_values,
                })
            }
        };
        let otel = provider
            .envoy_otel_als
            .map(|otel| otel.resolve(&format!("extensionProviders[{i}].envoyOtelAls"), field))
            .transpose()?;
        let grpc_als = match (provider.envoy_http_als, provider.envoy_tcp_als) {
            (Some(als), _) => Some((GrpcAls::Http, als)),
            (None, Some(als)) => Some((GrpcAls::Tcp, als)),
            (None, None) => None,
        }
        .map(|(kind, als)| {
            als.resolve(
                kind,
                &format!("extensionProviders[{i}].{}", kind.field()),
                field,
            )
        })
        .transpose()?;
        providers.push(AccessLogProvider {
            name: provider.name,
            file,
            otel,
            grpc_als,
        });
    }
    // A declared `envoy` replaces the built-in one, as istiod merges the mesh config.
    if !providers.iter().any(|p| p.name == BUILTIN_PROVIDER) {
        providers.push(builtin(format.clone()));
    }
    Ok(MeshAccessLogging {
        file,
        format,
        default_providers: defaults.access_logging,
        providers,
        not_applied,
    })
}

fn not_a_label(name: &str) -> String {
    format!("label {name:?}: only text values are supported")
}

/// A JSON label's value as a format string: text, or a number or boolean written as it is.
fn label_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn yaml_label_text(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
