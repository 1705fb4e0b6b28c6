//! The mesh configuration file: Istio's `MeshConfig`, the YAML istiod reads from
//! `--meshConfig` (the `mesh` key of the `istio` ConfigMap, mounted as a file). The controller
//! reads the fields the mesh applies and ignores the others, as it ignores what it does not
//! apply elsewhere: `outboundTrafficPolicy.mode`, served to node agents as
//! `weft.mesh.v1.MeshConfig`, and the default tracing ([`trace`]: `defaultProviders.tracing`,
//! `extensionProviders[].opentelemetry`, `defaultConfig.tracing.sampling`), pushed to every
//! waypoint in its `WaypointConfig`, the access logs ([`access_log`]: `accessLogFile`,
//! `accessLogFormat`, `accessLogEncoding`, `defaultProviders.accessLogging`,
//! `extensionProviders[].envoyFileAccessLog`, `extensionProviders[].envoyOtelAls`:
//! [`otel_als`]; `envoyHttpAls` and `envoyTcpAls`: [`grpc_als`]), which Telemetry resources select from, and the gateways' default
//! `defaultConfig.gatewayTopology.numTrustedProxies`, in every gateway's, and the default
//! locality load balancing, `localityLbSetting`, which a cluster without a DestinationRule
//! setting of its own (nor a traffic distribution) follows, and `h2UpgradePolicy`, which
//! upgrades to HTTP/2 the clusters of ports declared HTTP whose DestinationRule leaves it to the
//! mesh (`translate::waypoint`). The file is read at
//! start (an invalid one stops the start) and again whenever its content changes; an invalid
//! change is logged naming the file, the field and the reason, and the last good configuration
//! stays in force. In Kubernetes mode without a file, the same document comes from the
//! ConfigMap `istio`, key `mesh`, of the controller's namespace, as istiod reads it when no
//! mesh file is mounted (`crate::source::kube::mesh_config` watches it and hands each
//! content to [`MeshConfigWatch::apply`]), with the same rules.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;
use weft_proto::mesh::{MeshConfig, OutboundTrafficPolicy};

use crate::model::networking::LocalityLbSetting;

mod access_log;
mod grpc_als;
mod otel_als;
mod trace;

pub use self::access_log::{
    AccessLogProvider, BUILTIN_PROVIDER, DEV_STDOUT, FileProvider, LogFormat, MeshAccessLogging,
};
pub use self::grpc_als::{GrpcAls, GrpcAlsProvider, HTTP_LOG_NAME, TCP_LOG_NAME};
pub use self::otel_als::{DEFAULT_LOG_NAME, OtelAlsProvider};
pub use self::trace::{
    DEFAULT_OTLP_HTTP_TIMEOUT, DEFAULT_TRACE_SAMPLING, MeshTracing, OtlpGrpc, OtlpHttp,
    TracingProvider,
};

/// How often the file is read again: the configuration directory's own pace.
const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// Why a mesh configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshConfigError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: invalid YAML: {reason}")]
    Syntax { path: String, reason: String },
    #[error("{path}: {field}: {reason}")]
    Field {
        path: String,
        field: String,
        reason: String,
    },
}

/// The mesh configuration in force: what node agents are served and what waypoints trace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    /// `weft.mesh.v1.MeshConfig`, served to node agents.
    pub agents: MeshConfig,
    /// The default tracing, in every waypoint's configuration.
    pub tracing: MeshTracing,
    /// The access logs and their providers, which Telemetry resources select from.
    pub access_logging: MeshAccessLogging,
    /// `defaultConfig.gatewayTopology.numTrustedProxies`: the gateways' default, which a
    /// gateway pod's `proxy.istio.io/config` annotation overrides.
    pub gateway_trusted_proxies: u32,
    /// `localityLbSetting`: the locality load balancing of a cluster whose DestinationRule sets
    /// none (istiod's `GetEffectiveLbSetting`); unset, Istio's default (enabled, nothing set).
    pub locality_lb: Option<LocalityLbSetting>,
    /// `h2UpgradePolicy: UPGRADE` (Istio's default is `DO_NOT_UPGRADE`).
    pub h2_upgrade: bool,
}

impl Mesh {
    /// What the document declares that is accepted but not applied, each a warning naming
    /// the field.
    pub fn not_applied(&self) -> &[String] {
        &self.access_logging.not_applied
    }

    /// Logs each of [`Mesh::not_applied`], `origin` naming the document.
    fn warn_not_applied(&self, origin: &str) {
        for warning in self.not_applied() {
            tracing::warn!(mesh_config = origin, "{warning}");
        }
    }
}

impl From<MeshConfig> for Mesh {
    fn from(agents: MeshConfig) -> Self {
        Self {
            agents,
            ..Default::default()
        }
    }
}

/// Parses a MeshConfig document (`path` names it in errors). An empty document is the
/// defaults, as in istiod.
pub fn parse(path: &str, text: &str) -> Result<Mesh, MeshConfigError> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| MeshConfigError::Syntax {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let field = |field: &str, reason: String| MeshConfigError::Field {
        path: path.to_owned(),
        field: field.to_owned(),
        reason,
    };
    let mut config = MeshConfig::default();
    let empty = serde_yaml::Mapping::new();
    let mesh = match &value {
        serde_yaml::Value::Null => &empty,
        serde_yaml::Value::Mapping(mesh) => mesh,
        _ => return Err(field("(document)", "must be a mapping".to_owned())),
    };
    let policy = mesh.get("outboundTrafficPolicy");
    let mode = match policy {
        None | Some(serde_yaml::Value::Null) => None,
        Some(serde_yaml::Value::Mapping(policy)) => policy.get("mode"),
        Some(_) => {
            return Err(field(
                "outboundTrafficPolicy",
                "must be a mapping".to_owned(),
            ));
        }
    };
    let mode = match mode {
        None | Some(serde_yaml::Value::Null) => OutboundTrafficPolicy::AllowAny,
        Some(serde_yaml::Value::String(mode)) => match mode.as_str() {
            "ALLOW_ANY" => OutboundTrafficPolicy::AllowAny,
            "REGISTRY_ONLY" => OutboundTrafficPolicy::RegistryOnly,
            other => {
                return Err(field(
                    "outboundTrafficPolicy.mode",
                    format!("unknown value {other:?} (ALLOW_ANY or REGISTRY_ONLY)"),
                ));
            }
        },
        Some(_) => {
            return Err(field(
                "outboundTrafficPolicy.mode",
                "must be a string".to_owned(),
            ));
        }
    };
    config.set_outbound_traffic_policy(mode);
    let tracing = trace::parse(mesh, &field)?;
    let access_logging = access_log::parse(mesh, &field)?;
    let gateway_trusted_proxies = match mesh.get("defaultConfig") {
        Some(proxy @ serde_yaml::Value::Mapping(_)) => {
            crate::model::edge::num_trusted_proxies(proxy)
                .map_err(|(name, reason)| field(&format!("defaultConfig.{name}"), reason))?
                .unwrap_or(0)
        }
        // Another shape is refused by the tracing section.
        _ => 0,
    };
    let locality_lb = match mesh.get("localityLbSetting") {
        None | Some(serde_yaml::Value::Null) => None,
        Some(setting) => {
            let setting: LocalityLbSetting = serde_yaml::from_value(setting.clone())
                .map_err(|e| field("localityLbSetting", e.to_string()))?;
            crate::validation::mesh_locality_lb_setting(&setting)
                .map_err(|e| field(&e.path, e.reason))?;
            Some(setting)
        }
    };
    let h2_upgrade = match mesh.get("h2UpgradePolicy") {
        None | Some(serde_yaml::Value::Null) => false,
        Some(serde_yaml::Value::String(policy)) => match policy.as_str() {
            "DO_NOT_UPGRADE" => false,
            "UPGRADE" => true,
            other => {
                return Err(field(
                    "h2UpgradePolicy",
                    format!("unknown value {other:?} (DO_NOT_UPGRADE or UPGRADE)"),
                ));
            }
        },
        Some(_) => return Err(field("h2UpgradePolicy", "must be a string".to_owned())),
    };
    Ok(Mesh {
        agents: config,
        tracing,
        access_logging,
        gateway_trusted_proxies,
        locality_lb,
        h2_upgrade,
    })
}

/// The mesh configuration in force, and the file it follows (none: Istio's defaults).
#[derive(Debug)]
pub struct MeshConfigWatch {
    path: Option<PathBuf>,
    current: watch::Sender<(Mesh, Option<String>)>,
}

impl Default for MeshConfigWatch {
    /// Istio's defaults, never changing.
    fn default() -> Self {
        Self::fixed(Mesh::default())
    }
}

fn read(path: &Path) -> Result<String, MeshConfigError> {
    std::fs::read_to_string(path).map_err(|e| MeshConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The document in the file at `path`, read once (`controller validate --mesh-config`).
pub fn read_file(path: &Path) -> Result<Mesh, MeshConfigError> {
    parse(&path.display().to_string(), &read(path)?)
}

impl MeshConfigWatch {
    /// A configuration that never changes (tests, and the controller without a file).
    pub fn fixed(config: impl Into<Mesh>) -> Self {
        Self {
            path: None,
            current: watch::channel((config.into(), None)).0,
        }
    }

    /// Reads `path` now: a missing or invalid file is an error, as istiod refuses to start
    /// with one.
    pub fn load(path: PathBuf) -> Result<Self, MeshConfigError> {
        let text = read(&path)?;
        let config = parse(&path.display().to_string(), &text)?;
        config.warn_not_applied(&path.display().to_string());
        Ok(Self {
            path: Some(path),
            current: watch::channel((config, Some(text))).0,
        })
    }

    /// The node agents' part of the configuration in force.
    pub fn current(&self) -> MeshConfig {
        self.current.borrow().0.agents
    }

    /// The default tracing in force.
    pub fn tracing(&self) -> MeshTracing {
        self.current.borrow().0.tracing.clone()
    }

    /// The access logging in force.
    pub fn access_logging(&self) -> MeshAccessLogging {
        self.current.borrow().0.access_logging.clone()
    }

    /// The gateways' default `numTrustedProxies`.
    pub fn gateway_trusted_proxies(&self) -> u32 {
        self.current.borrow().0.gateway_trusted_proxies
    }

    /// The mesh's default locality load balancing (`localityLbSetting`).
    pub fn locality_lb_setting(&self) -> Option<LocalityLbSetting> {
        self.current.borrow().0.locality_lb.clone()
    }

    /// Whether the mesh upgrades HTTP/1.1 to HTTP/2 by default (`h2UpgradePolicy: UPGRADE`).
    pub fn h2_upgrade(&self) -> bool {
        self.current.borrow().0.h2_upgrade
    }

    /// Changes when the configuration in force changes.
    pub fn subscribe(&self) -> watch::Receiver<(Mesh, Option<String>)> {
        self.current.subscribe()
    }

    /// Whether the configuration follows a file (`--mesh-config`), which then wins over the
    /// `istio` ConfigMap, as istiod's mounted file does.
    pub fn follows_file(&self) -> bool {
        self.path.is_some()
    }

    /// Reads the file again; a changed, valid content replaces the configuration in force.
    /// Returns the error of an unreadable or invalid file, which changes nothing.
    pub fn reload(&self) -> Result<bool, MeshConfigError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let text = read(path)?;
        self.apply(&path.display().to_string(), text)
    }

    /// Makes `text`, the document read from `origin` (named in errors), the configuration in
    /// force if it differs from the one in force and is valid; returns whether it changed.
    /// An invalid document changes nothing and is returned as the error.
    pub fn apply(&self, origin: &str, text: String) -> Result<bool, MeshConfigError> {
        if self.current.borrow().1.as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        let config = parse(origin, &text)?;
        let changed = self.current.borrow().0 != config;
        if changed {
            config.warn_not_applied(origin);
        }
        self.current.send_if_modified(|current| {
            *current = (config, Some(text));
            changed
        });
        if changed {
            self.log_changed();
        }
        Ok(changed)
    }

    fn log_changed(&self) {
        let tracing = self.tracing();
        tracing::info!(
            outbound_traffic_policy = self.current().outbound_traffic_policy().as_str_name(),
            tracing_provider = tracing.provider.as_ref().map(|p| p.name.as_str()),
            tracing_sampling = tracing.sampling,
            gateway_trusted_proxies = self.gateway_trusted_proxies(),
            "mesh configuration changed"
        );
    }

    /// Follows the file until shutdown; each problem is logged once until the file changes.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.path.is_none() {
            return;
        }
        let mut last_error = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            report_refusal(self.reload(), &mut last_error);
        }
    }
}

/// Logs a refused configuration once until the outcome changes.
pub fn report_refusal(
    outcome: Result<bool, MeshConfigError>,
    last_error: &mut Option<MeshConfigError>,
) {
    match outcome {
        Ok(_) => *last_error = None,
        Err(error) if last_error.as_ref() != Some(&error) => {
            tracing::error!(%error, "mesh configuration refused; the last good one stays in force");
            *last_error = Some(error);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests;
