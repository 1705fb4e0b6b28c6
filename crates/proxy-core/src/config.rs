//! The configuration kit of the proxies: where a setting comes from and what it means, the same
//! way in the node agent and the waypoint.
//!
//! - **Names.** A setting is read from the environment variable ztunnel (Istio's node proxy)
//!   reads for it where it has one (`NODE_NAME`, `XDS_ADDRESS`, `CA_ADDRESS`, `TRUST_DOMAIN`,
//!   `INSTANCE_IP`, `POD_NAMESPACE`, `SERVICE_ACCOUNT`, ...), else from the setting's name in
//!   upper snake case, unprefixed. Settings both proxies have are declared once, here
//!   ([`ProxyConfig`]); each binary's `config.rs` declares its own beside them.
//! - **Empty.** An empty variable is unset: a manifest's `value: ""` falls back to the default
//!   (or is reported missing), never becomes an empty name or path.
//! - **Flags.** Every setting is also a command-line flag; a flag wins over its variable
//!   ([`Layered`]).
//! - **Sources.** Parsers read a [`Strings`], so tests pass a map and never touch the process
//!   environment.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use serde::Serialize;
use weft_istio::defaults::{DEFAULT_CLUSTER_ID, DEFAULT_TRUST_DOMAIN};

/// This node's name (Kubernetes' `spec.nodeName`).
pub const NODE_NAME: &str = "NODE_NAME";
pub const CLUSTER_ID: &str = "CLUSTER_ID";
pub const TRUST_DOMAIN: &str = "TRUST_DOMAIN";
pub const XDS_ADDRESS: &str = "XDS_ADDRESS";
pub const CA_ADDRESS: &str = "CA_ADDRESS";
pub const BOOTSTRAP_TOKEN_FILE: &str = "BOOTSTRAP_TOKEN_FILE";
pub const ROOT_CERT_FILE: &str = "ROOT_CERT_FILE";
pub const CERTIFICATE_TTL_SECONDS: &str = "CERTIFICATE_TTL_SECONDS";
pub const ADMIN_ADDRESS: &str = "ADMIN_ADDRESS";
pub const METRICS_ADDRESS: &str = "METRICS_ADDRESS";
pub const READINESS_ADDRESS: &str = "READINESS_ADDRESS";
pub const XDS_RETRY_INITIAL_MS: &str = "XDS_RETRY_INITIAL_MS";
pub const XDS_RETRY_MAX_MS: &str = "XDS_RETRY_MAX_MS";
pub const LOG_LEVEL: &str = "LOG_LEVEL";
pub const LOG_FORMAT: &str = "LOG_FORMAT";
pub const WORKER_THREADS: &str = "WORKER_THREADS";
pub const MAX_CONNECTIONS: &str = "MAX_CONNECTIONS";
pub const MAX_CONNECTIONS_PER_SOURCE: &str = "MAX_CONNECTIONS_PER_SOURCE";
/// How long a SIGTERM drain may take (ztunnel's name): a duration such as `5s` or `1500ms`.
pub const CONNECTION_TERMINATION_DEADLINE: &str = "CONNECTION_TERMINATION_DEADLINE";
/// The pod's `terminationGracePeriodSeconds` (ztunnel's name): without
/// [`CONNECTION_TERMINATION_DEADLINE`], the drain ends a little before the kubelet's SIGKILL.
pub const TERMINATION_GRACE_PERIOD_SECONDS: &str = "TERMINATION_GRACE_PERIOD_SECONDS";
pub use weft_identity::COMPLIANCE_POLICY;

/// How a missing root for an `https://` controller address is reported.
const ROOT_CERT_FILE_FOR_TLS: &str =
    "ROOT_CERT_FILE (to verify an https:// XDS_ADDRESS or CA_ADDRESS)";
/// The controller's plaintext gRPC port, by Istio's service name.
pub const DEFAULT_XDS_ADDRESS: &str = "http://istiod.istio-system.svc:15010";
const DEFAULT_BOOTSTRAP_TOKEN_FILE: &str = "/var/run/secrets/weft/bootstrap-token";
const DEFAULT_CERTIFICATE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Istio's admin port, on loopback only: the dump shows the whole configuration.
const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:15000";
const DEFAULT_METRICS_ADDRESS: &str = "0.0.0.0:15020";
const DEFAULT_READINESS_ADDRESS: &str = "0.0.0.0:15021";
const DEFAULT_XDS_RETRY_INITIAL: Duration = Duration::from_millis(100);
const DEFAULT_XDS_RETRY_MAX: Duration = Duration::from_secs(15);
const DEFAULT_LOG_LEVEL: &str = "info";
/// Istio's `terminationDrainDuration` and ztunnel's default termination deadline.
pub const DEFAULT_TERMINATION_DEADLINE: Duration = Duration::from_secs(5);
const MAX_WORKER_THREADS: usize = 256;

/// A source of settings by name. Implementations return what is there, empty or not; the
/// readers ([`Settings`]) give empty its one meaning.
pub trait Strings {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Environment;

impl Strings for Environment {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Strings for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

impl Strings for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

/// Command-line flags over another source: a flag given wins over its variable.
#[derive(Debug, Clone)]
pub struct Layered<S> {
    flags: BTreeMap<&'static str, String>,
    under: S,
}

impl<S: Strings> Layered<S> {
    /// `flags` by the name of the variable each stands for; `None`: not given.
    pub fn new(flags: impl IntoIterator<Item = (&'static str, Option<String>)>, under: S) -> Self {
        Self {
            flags: flags
                .into_iter()
                .filter_map(|(name, value)| value.map(|v| (name, v)))
                .collect(),
            under,
        }
    }
}

impl<S: Strings> Strings for Layered<S> {
    fn get(&self, name: &str) -> Option<String> {
        self.flags
            .get(name)
            .cloned()
            .or_else(|| self.under.get(name))
    }
}

/// A setting that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

impl ConfigError {
    pub fn invalid(name: &'static str, value: impl ToString, reason: impl Into<String>) -> Self {
        Self::Invalid {
            name,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Reads settings from a [`Strings`], an empty value counting as unset.
#[derive(Clone, Copy)]
pub struct Settings<'a> {
    strings: &'a dyn Strings,
}

impl<'a> Settings<'a> {
    pub fn new(strings: &'a dyn Strings) -> Self {
        Self { strings }
    }

    /// The value of `name`, `None` when unset or empty.
    pub fn string(&self, name: &str) -> Option<String> {
        self.strings.get(name).filter(|value| !value.is_empty())
    }

    pub fn string_or(&self, name: &str, default: &str) -> String {
        self.string(name).unwrap_or_else(|| default.to_owned())
    }

    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.string(name).ok_or(ConfigError::Missing(name))
    }

    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.string(name).map(PathBuf::from)
    }

    /// `name` parsed, `None` when unset.
    pub fn parse<T: FromStr>(&self, name: &'static str) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        self.string(name)
            .map(|value| {
                value
                    .parse()
                    .map_err(|e: T::Err| ConfigError::invalid(name, &value, e.to_string()))
            })
            .transpose()
    }

    /// `name` parsed, or `default` parsed when unset.
    pub fn parse_or<T: FromStr>(&self, name: &'static str, default: &str) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let value = self.string_or(name, default);
        value
            .parse()
            .map_err(|e: T::Err| ConfigError::invalid(name, &value, e.to_string()))
    }

    /// A switch: `true`/`1`/`on` or `false`/`0`/`off`.
    pub fn switch(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.string(name).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "on") => Ok(true),
            Some("false" | "0" | "off") => Ok(false),
            Some(other) => Err(ConfigError::invalid(name, other, "use true or false")),
        }
    }

    /// A positive number of milliseconds.
    pub fn millis(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let ms: u64 = self.parse_or(name, &default.as_millis().to_string())?;
        if ms == 0 {
            return Err(ConfigError::invalid(name, ms, "must be positive"));
        }
        Ok(Duration::from_millis(ms))
    }

    /// A positive count, `None` when unset.
    pub fn count(&self, name: &'static str, what: &str) -> Result<Option<usize>, ConfigError> {
        self.string(name)
            .map(|value| match value.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(ConfigError::invalid(
                    name,
                    value,
                    format!("use a positive number of {what}"),
                )),
            })
            .transpose()
    }

    /// An address that must be a loopback one (127.0.0.1 or ::1).
    pub fn loopback_address(
        &self,
        name: &'static str,
        default: &str,
        why: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let address: SocketAddr = self.parse_or(name, default)?;
        if !address.ip().is_loopback() {
            return Err(ConfigError::invalid(
                name,
                address,
                format!("{why}: it listens on loopback only (127.0.0.1 or ::1)"),
            ));
        }
        Ok(address)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per event, for log collectors.
    Json,
}

/// What a binary's defaults differ in.
#[derive(Debug, Clone, Copy)]
pub struct ProxyDefaults {
    /// Whether the proxy cannot run without `NODE_NAME` (the agent serves a node; a waypoint
    /// may be scheduled anywhere).
    pub node_name_required: bool,
    pub worker_threads: usize,
}

/// The settings both proxies have, each read and checked the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyConfig {
    /// This node's name: scopes the configuration pushed and the certificates obtainable.
    pub node_name: Option<String>,
    /// Reported in metrics and sent to the CA.
    pub cluster_id: String,
    /// The mesh's trust domain: peers from any other are refused.
    pub trust_domain: String,
    /// The controller's xDS endpoint: `http://host:15010` (local mode) or
    /// `https://istiod.istio-system.svc:15012` (Kubernetes; verified against `root_cert_file`).
    pub xds_address: String,
    /// The CA endpoint (defaults to the xDS endpoint).
    pub ca_address: String,
    /// File holding the CA credential: a node's bootstrap token (local mode) or the projected
    /// service-account token (Kubernetes). Read anew for every request.
    pub bootstrap_token_file: PathBuf,
    /// Trust roots to use instead of the one the CA returns; also what verifies the controller
    /// on an `https://` address (required there).
    pub root_cert_file: Option<PathBuf>,
    /// Requested workload certificate lifetime.
    pub certificate_ttl: Duration,
    /// `/config_dump`; a loopback address (the dump shows the whole configuration).
    pub admin_address: SocketAddr,
    pub metrics_address: SocketAddr,
    pub readiness_address: SocketAddr,
    /// First delay before reconnecting to the controller; doubles up to `xds_retry_max`.
    pub xds_retry_initial: Duration,
    pub xds_retry_max: Duration,
    /// A `tracing` filter directive (`info`, `node_agent=debug,access=info`); `RUST_LOG`, when
    /// set, wins.
    pub log_level: String,
    pub log_format: LogFormat,
    /// Threads serving connections, each with its own single-threaded runtime and pools; a
    /// connection stays on the worker it was given. The control plane runs on a thread of its
    /// own.
    pub worker_threads: usize,
    /// Connections proxied at once; beyond it new ones are closed at once. Unset: what the
    /// descriptor limit allows (raised to the hard limit at start, two descriptors per
    /// connection after a reserve).
    pub max_connections: Option<usize>,
    /// Connections one source address may hold at once on an HBONE listener group (in TLS
    /// handshake, which may take 10 s, or established).
    pub max_connections_per_source: usize,
    /// After SIGTERM: readiness fails at once, listeners close, and connections in flight have
    /// this long to finish before the process exits.
    pub termination_deadline: Duration,
    /// TLS key exchanges offered and accepted: X25519MLKEM768 first, or (`pqc`) only it.
    pub compliance_policy: weft_identity::CompliancePolicy,
}

impl ProxyConfig {
    pub fn from_settings(
        settings: &Settings<'_>,
        defaults: ProxyDefaults,
    ) -> Result<Self, ConfigError> {
        let node_name = if defaults.node_name_required {
            Some(settings.required(NODE_NAME)?)
        } else {
            settings.string(NODE_NAME)
        };
        let xds_address = settings.string_or(XDS_ADDRESS, DEFAULT_XDS_ADDRESS);
        let ca_address = settings
            .string(CA_ADDRESS)
            .unwrap_or_else(|| xds_address.clone());
        let root_cert_file = settings.path(ROOT_CERT_FILE);
        let uses_tls = [&xds_address, &ca_address]
            .iter()
            .any(|a| a.starts_with("https://"));
        if uses_tls && root_cert_file.is_none() {
            return Err(ConfigError::Missing(ROOT_CERT_FILE_FOR_TLS));
        }
        let ttl_seconds: u64 = settings.parse_or(
            CERTIFICATE_TTL_SECONDS,
            &DEFAULT_CERTIFICATE_TTL.as_secs().to_string(),
        )?;
        if ttl_seconds < 10 {
            return Err(ConfigError::invalid(
                CERTIFICATE_TTL_SECONDS,
                ttl_seconds,
                "must be at least 10 seconds",
            ));
        }
        let xds_retry_initial = settings.millis(XDS_RETRY_INITIAL_MS, DEFAULT_XDS_RETRY_INITIAL)?;
        let xds_retry_max = settings.millis(XDS_RETRY_MAX_MS, DEFAULT_XDS_RETRY_MAX)?;
        if xds_retry_max < xds_retry_initial {
            return Err(ConfigError::invalid(
                XDS_RETRY_MAX_MS,
                xds_retry_max.as_millis(),
                format!("below {XDS_RETRY_INITIAL_MS}"),
            ));
        }
        let log_format = match settings.string(LOG_FORMAT).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(ConfigError::invalid(LOG_FORMAT, other, "use text or json")),
        };
        let worker_threads = match settings.string(WORKER_THREADS) {
            None => defaults.worker_threads,
            Some(value) => match value.parse::<usize>() {
                Ok(n @ 1..=MAX_WORKER_THREADS) => n,
                _ => {
                    return Err(ConfigError::invalid(
                        WORKER_THREADS,
                        value,
                        format!("use a number of threads from 1 to {MAX_WORKER_THREADS}"),
                    ));
                }
            },
        };
        let compliance_policy = settings
            .string(COMPLIANCE_POLICY)
            .unwrap_or_default()
            .parse()
            .map_err(|e: weft_identity::UnknownCompliancePolicy| {
                ConfigError::invalid(COMPLIANCE_POLICY, &e.0, "use pqc, or leave it unset")
            })?;
        Ok(Self {
            node_name,
            cluster_id: settings.string_or(CLUSTER_ID, DEFAULT_CLUSTER_ID),
            trust_domain: settings.string_or(TRUST_DOMAIN, DEFAULT_TRUST_DOMAIN),
            xds_address,
            ca_address,
            bootstrap_token_file: settings
                .path(BOOTSTRAP_TOKEN_FILE)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BOOTSTRAP_TOKEN_FILE)),
            root_cert_file,
            certificate_ttl: Duration::from_secs(ttl_seconds),
            admin_address: settings.loopback_address(
                ADMIN_ADDRESS,
                DEFAULT_ADMIN_ADDRESS,
                "the admin port shows the whole configuration",
            )?,
            metrics_address: settings.parse_or(METRICS_ADDRESS, DEFAULT_METRICS_ADDRESS)?,
            readiness_address: settings.parse_or(READINESS_ADDRESS, DEFAULT_READINESS_ADDRESS)?,
            xds_retry_initial,
            xds_retry_max,
            log_level: settings.string_or(LOG_LEVEL, DEFAULT_LOG_LEVEL),
            log_format,
            worker_threads,
            max_connections: settings.count(MAX_CONNECTIONS, "connections")?,
            max_connections_per_source: settings
                .count(MAX_CONNECTIONS_PER_SOURCE, "connections")?
                .unwrap_or(weft_hbone::admission::DEFAULT_MAX_CONNECTIONS_PER_SOURCE),
            termination_deadline: termination_deadline(settings)?,
            compliance_policy,
        })
    }

    /// The reconnect schedule for the xDS client.
    pub fn xds_backoff(&self) -> weft_xds::Backoff {
        weft_xds::Backoff {
            initial: self.xds_retry_initial,
            max: self.xds_retry_max,
        }
    }

    /// Installs the process's TLS compliance policy and its log subscriber: `RUST_LOG` when
    /// set, else [`Self::log_level`]. Called once, before any TLS configuration is built.
    pub fn init(&self) -> Result<(), ConfigError> {
        self.compliance_policy.install().map_err(|installed| {
            ConfigError::invalid(
                COMPLIANCE_POLICY,
                format!("{:?}", self.compliance_policy),
                format!("the process already runs under {installed:?}"),
            )
        })?;
        let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
            Ok(filter) => filter,
            Err(_) => tracing_subscriber::EnvFilter::try_new(&self.log_level)
                .map_err(|e| ConfigError::invalid(LOG_LEVEL, &self.log_level, e.to_string()))?,
        };
        // Colour codes only for a terminal: in a log file they are noise, and writing them is
        // a measurable part of each connection's access-log event.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        match self.log_format {
            LogFormat::Text => {
                use tracing_subscriber::layer::SubscriberExt;
                use tracing_subscriber::util::SubscriberInitExt;
                use tracing_subscriber::{Layer, filter::filter_fn};
                let access = |m: &tracing::Metadata<'_>| m.target() == crate::metrics::ACCESS_LOG;
                // Access lines escape their own texts (`metrics::LogText`): the subscriber's
                // escaping walks each character of a line, a fifth of the instructions of a
                // request at the gateway. Every other event keeps it. They are written without
                // the stdout lock the workers would queue on (`access_writer`).
                tracing_subscriber::registry()
                    .with(filter)
                    .with(
                        tracing_subscriber::fmt::layer()
                            .with_ansi(ansi)
                            .with_ansi_sanitization(false)
                            .with_writer(access_writer::AccessWriter::stdout())
                            .with_filter(filter_fn(access)),
                    )
                    .with(
                        tracing_subscriber::fmt::layer()
                            .with_ansi(ansi)
                            .with_filter(filter_fn(move |m| !access(m))),
                    )
                    .init();
            }
            LogFormat::Json => tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(ansi)
                .json()
                .init(),
        }
        Ok(())
    }
}

/// ztunnel's rule: [`CONNECTION_TERMINATION_DEADLINE`] when set; else, from the pod's grace
/// period, the period less 5 s (less 1 s for periods of 10 s or less, at least 1 s), which
/// leaves time to close what is left more cleanly than the kubelet's SIGKILL would; else
/// Istio's 5 s.
fn termination_deadline(settings: &Settings<'_>) -> Result<Duration, ConfigError> {
    if let Some(value) = settings.string(CONNECTION_TERMINATION_DEADLINE) {
        return parse_duration(&value).map_err(|reason| {
            ConfigError::invalid(CONNECTION_TERMINATION_DEADLINE, value, reason)
        });
    }
    let Some(grace) = settings.parse::<u64>(TERMINATION_GRACE_PERIOD_SECONDS)? else {
        return Ok(DEFAULT_TERMINATION_DEADLINE);
    };
    let margin = if grace > 10 { 5 } else { 1 };
    Ok(Duration::from_secs(grace.saturating_sub(margin).max(1)))
}

/// A duration as Kubernetes and Istio write them: a number with a unit of `ms`, `s`, `m` or
/// `h` (`5s`, `1500ms`, `1m`).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let unit_at = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "give a unit: ms, s, m or h (such as 5s)".to_owned())?;
    let (number, unit) = value.split_at(unit_at);
    let number: u64 = number
        .parse()
        .map_err(|_| "start with a whole number (such as 5s)".to_owned())?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => return Err(format!("unknown unit {unit:?}: use ms, s, m or h")),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| "too long".to_owned())
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub mod access_writer;
#[cfg(test)]
mod tests;
