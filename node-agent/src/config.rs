//! The agent's configuration: every setting, its environment variable and its default, in one
//! place. Parsed from any [`Strings`] source (the process environment and flags in the binary, a
//! map in tests), and dumped as-is on the admin port.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::Serialize;

pub const NODE_NAME: &str = "NODE_NAME";
pub const CLUSTER_ID: &str = "CLUSTER_ID";
pub const TRUST_DOMAIN: &str = "TRUST_DOMAIN";
pub const XDS_ADDRESS: &str = "XDS_ADDRESS";
pub const CA_ADDRESS: &str = "CA_ADDRESS";
pub const BOOTSTRAP_TOKEN_FILE: &str = "BOOTSTRAP_TOKEN_FILE";
pub const ROOT_CERT_FILE: &str = "ROOT_CERT_FILE";
pub const CERTIFICATE_TTL_SECONDS: &str = "CERTIFICATE_TTL_SECONDS";
pub const ENROLLMENT_SOCKET: &str = "ENROLLMENT_SOCKET";
pub const PIN_DIR: &str = "PIN_DIR";
pub const CGROUP_ROOT: &str = "CGROUP_ROOT";
pub const NODE_NETNS: &str = "NODE_NETNS";
pub const ACCELERATION: &str = "ACCELERATION";
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

/// How a missing root for an `https://` controller address is reported.
const ROOT_CERT_FILE_FOR_TLS: &str =
    "ROOT_CERT_FILE (to verify an https:// XDS_ADDRESS or CA_ADDRESS)";
const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
const DEFAULT_WORKER_THREADS: usize = 2;
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
const DEFAULT_XDS_ADDRESS: &str = "http://istiod.istio-system.svc:15010";
const DEFAULT_BOOTSTRAP_TOKEN_FILE: &str = "/var/run/secrets/weft/bootstrap-token";
const DEFAULT_CERTIFICATE_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_ENROLLMENT_SOCKET: &str = "/var/run/weft/enroll.sock";
const DEFAULT_PIN_BASE: &str = "/sys/fs/bpf/weft";
/// The agent's own namespace: right when it runs in the node's (host network, the testbed).
const DEFAULT_NODE_NETNS: &str = "/proc/self/ns/net";
const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:15000";
const DEFAULT_METRICS_ADDRESS: &str = "0.0.0.0:15020";
const DEFAULT_READINESS_ADDRESS: &str = "0.0.0.0:15021";
const DEFAULT_XDS_RETRY_INITIAL: Duration = Duration::from_millis(100);
const DEFAULT_XDS_RETRY_MAX: Duration = Duration::from_secs(15);
const DEFAULT_LOG_LEVEL: &str = "info";

/// A source of settings by name.
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

/// A setting that is missing or malformed.
#[derive(Debug, thiserror::Error)]
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

/// Everything the agent is told at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// This node's name: scopes the configuration pushed and the certificates obtainable.
    pub node_name: String,
    pub cluster_id: String,
    /// The mesh's trust domain: peers from any other are refused.
    pub trust_domain: String,
    /// The controller's xDS endpoint: `http://host:15010` (local mode) or
    /// `https://istiod.istio-system.svc:15012` (Kubernetes; verified against `root_cert_file`).
    pub xds_address: String,
    /// The CA endpoint (defaults to the xDS endpoint).
    pub ca_address: String,
    /// File holding the CA credential: this node's bootstrap token (local mode) or the agent's
    /// projected service-account token (Kubernetes). Read anew for every request.
    pub bootstrap_token_file: PathBuf,
    /// Trust roots to use instead of the one the CA returns; also what verifies the controller
    /// on an `https://` address (required there).
    pub root_cert_file: Option<PathBuf>,
    /// Requested workload certificate lifetime.
    pub certificate_ttl: Duration,
    /// Where the CNI (or the testbed) enrolls pods.
    pub enrollment_socket: PathBuf,
    /// bpffs directory for this node's pinned programs and maps.
    pub pin_dir: PathBuf,
    /// The root of the cgroup v2 hierarchy, where the capture programs attach; unset, the
    /// cgroup2 mount found in `/proc/self/mountinfo`. In a container it is the host's mount
    /// (a hostPath), never the container's own `/sys/fs/cgroup`.
    pub cgroup_root: Option<PathBuf>,
    /// The node's own network namespace, where the kubelet runs: connections its sockets open
    /// to enrolled pods (health probes) reach the application unsteered, as Istio lets the
    /// node's own traffic through. Unset, the agent's own namespace; an agent in a pod of its
    /// own is given the host's (`/proc/1/ns/net` mounted from the host), else the node's probes
    /// of STRICT pods are refused (failing closed).
    pub node_netns: PathBuf,
    /// Splice same-node loopback hops with sockops/sk_msg.
    pub acceleration: bool,
    pub admin_address: SocketAddr,
    pub metrics_address: SocketAddr,
    pub readiness_address: SocketAddr,
    /// First delay before reconnecting to the controller; doubles up to `xds_retry_max`.
    pub xds_retry_initial: Duration,
    pub xds_retry_max: Duration,
    /// A `tracing` filter directive (`info`, `node_agent=debug,access=info`).
    pub log_level: String,
    pub log_format: LogFormat,
    /// Proxy worker threads, each with its own single-threaded runtime, listeners and HBONE
    /// pool; a connection stays on the worker that accepted it. The control plane runs on a
    /// thread of its own.
    pub worker_threads: usize,
    /// Connections the agent proxies at once, on all pods' listeners; beyond it new ones are
    /// closed at once. Unset: what the descriptor limit allows (raised to the hard limit at
    /// start, two descriptors per connection after a reserve).
    pub max_connections: Option<usize>,
    /// Connections one source address may hold at once on one pod's HBONE port (in TLS
    /// handshake, which may take 10 s, or established).
    pub max_connections_per_source: usize,
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

impl Config {
    /// The reconnect schedule for the xDS client.
    pub fn xds_backoff(&self) -> weft_xds::Backoff {
        weft_xds::Backoff {
            initial: self.xds_retry_initial,
            max: self.xds_retry_max,
        }
    }
}

fn millis(
    strings: &impl Strings,
    name: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let ms: u64 = parse(strings, name, &default.as_millis().to_string())?;
    if ms == 0 {
        return Err(ConfigError::Invalid {
            name,
            value: ms.to_string(),
            reason: "must be positive".into(),
        });
    }
    Ok(Duration::from_millis(ms))
}

fn parse<T: std::str::FromStr>(
    strings: &impl Strings,
    name: &'static str,
    default: &str,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    let value = strings.get(name).unwrap_or_else(|| default.to_string());
    value.parse().map_err(|e: T::Err| ConfigError::Invalid {
        name,
        value,
        reason: e.to_string(),
    })
}

impl Config {
    pub fn from_strings(strings: &impl Strings) -> Result<Self, ConfigError> {
        let node_name = strings
            .get(NODE_NAME)
            .ok_or(ConfigError::Missing(NODE_NAME))?;
        let xds_address = strings
            .get(XDS_ADDRESS)
            .unwrap_or_else(|| DEFAULT_XDS_ADDRESS.to_string());
        let ttl_seconds: u64 = parse(
            strings,
            CERTIFICATE_TTL_SECONDS,
            &DEFAULT_CERTIFICATE_TTL.as_secs().to_string(),
        )?;
        if ttl_seconds < 10 {
            return Err(ConfigError::Invalid {
                name: CERTIFICATE_TTL_SECONDS,
                value: ttl_seconds.to_string(),
                reason: "must be at least 10 seconds".into(),
            });
        }
        // Off by default: a socket in the kernel's socket map reads through its spliced-queue
        // path, where a blocking read woken by anything but data (a concurrent writer on the
        // same socket, for one) returns EAGAIN. Non-blocking applications never notice; a
        // full-duplex application on blocking sockets could, so splicing is opted into.
        let acceleration = match strings.get(ACCELERATION).as_deref() {
            Some("true") | Some("1") | Some("on") => true,
            None | Some("false") | Some("0") | Some("off") => false,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: ACCELERATION,
                    value: other.to_string(),
                    reason: "use true or false".into(),
                });
            }
        };
        let xds_retry_initial = millis(strings, XDS_RETRY_INITIAL_MS, DEFAULT_XDS_RETRY_INITIAL)?;
        let xds_retry_max = millis(strings, XDS_RETRY_MAX_MS, DEFAULT_XDS_RETRY_MAX)?;
        if xds_retry_max < xds_retry_initial {
            return Err(ConfigError::Invalid {
                name: XDS_RETRY_MAX_MS,
                value: xds_retry_max.as_millis().to_string(),
                reason: format!("below {XDS_RETRY_INITIAL_MS}"),
            });
        }
        let log_format = match strings.get(LOG_FORMAT).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: LOG_FORMAT,
                    value: other.to_string(),
                    reason: "use text or json".into(),
                });
            }
        };
        let uses_tls = xds_address.starts_with("https://")
            || strings
                .get(CA_ADDRESS)
                .is_some_and(|a| a.starts_with("https://"));
        if uses_tls && strings.get(ROOT_CERT_FILE).is_none() {
            return Err(ConfigError::Missing(ROOT_CERT_FILE_FOR_TLS));
        }
        let worker_threads = match strings.get(WORKER_THREADS) {
            None => DEFAULT_WORKER_THREADS,
            Some(value) => match value.parse::<usize>() {
                Ok(n @ 1..=256) => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: WORKER_THREADS,
                        value,
                        reason: "use a number of threads from 1 to 256".into(),
                    });
                }
            },
        };
        let count = |name: &'static str, value: String| match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError::Invalid {
                name,
                value,
                reason: "use a positive number of connections".into(),
            }),
        };
        let max_connections = strings
            .get(MAX_CONNECTIONS)
            .map(|v| count(MAX_CONNECTIONS, v))
            .transpose()?;
        let max_connections_per_source = strings
            .get(MAX_CONNECTIONS_PER_SOURCE)
            .map(|v| count(MAX_CONNECTIONS_PER_SOURCE, v))
            .transpose()?
            .unwrap_or(weft_hbone::admission::DEFAULT_MAX_CONNECTIONS_PER_SOURCE);
        Ok(Self {
            worker_threads,
            max_connections,
            max_connections_per_source,
            xds_retry_initial,
            xds_retry_max,
            log_level: strings
                .get(LOG_LEVEL)
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string()),
            log_format,
            pin_dir: strings.get(PIN_DIR).map_or_else(
                || PathBuf::from(DEFAULT_PIN_BASE).join(&node_name),
                PathBuf::from,
            ),
            node_name,
            cluster_id: strings
                .get(CLUSTER_ID)
                .unwrap_or_else(|| DEFAULT_CLUSTER_ID.to_string()),
            trust_domain: strings
                .get(TRUST_DOMAIN)
                .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string()),
            ca_address: strings
                .get(CA_ADDRESS)
                .unwrap_or_else(|| xds_address.clone()),
            xds_address,
            bootstrap_token_file: parse(
                strings,
                BOOTSTRAP_TOKEN_FILE,
                DEFAULT_BOOTSTRAP_TOKEN_FILE,
            )?,
            root_cert_file: strings.get(ROOT_CERT_FILE).map(PathBuf::from),
            certificate_ttl: Duration::from_secs(ttl_seconds),
            enrollment_socket: parse(strings, ENROLLMENT_SOCKET, DEFAULT_ENROLLMENT_SOCKET)?,
            cgroup_root: strings.get(CGROUP_ROOT).map(PathBuf::from),
            node_netns: parse(strings, NODE_NETNS, DEFAULT_NODE_NETNS)?,
            acceleration,
            admin_address: parse(strings, ADMIN_ADDRESS, DEFAULT_ADMIN_ADDRESS)?,
            metrics_address: parse(strings, METRICS_ADDRESS, DEFAULT_METRICS_ADDRESS)?,
            readiness_address: parse(strings, READINESS_ADDRESS, DEFAULT_READINESS_ADDRESS)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_overrides() {
        let config = Config::from_strings(&strings(&[(NODE_NAME, "node1")])).unwrap();
        assert_eq!(config.pin_dir, PathBuf::from("/sys/fs/bpf/weft/node1"));
        assert_eq!(config.ca_address, config.xds_address);
        assert_eq!(config.admin_address.to_string(), "127.0.0.1:15000");
        assert!(!config.acceleration, "acceleration is opt-in");
        assert_eq!(config.xds_backoff(), weft_xds::Backoff::default());
        assert_eq!(config.log_level, "info");
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.worker_threads, 2);
        assert_eq!(config.max_connections, None);
        assert_eq!(config.max_connections_per_source, 256);
        // Unset, the node is where the agent runs.
        assert_eq!(config.node_netns, PathBuf::from("/proc/self/ns/net"));
        let config = Config::from_strings(&strings(&[
            (NODE_NAME, "n"),
            (XDS_ADDRESS, "http://10.0.0.2:15010"),
            (ACCELERATION, "on"),
            (CERTIFICATE_TTL_SECONDS, "60"),
            (XDS_RETRY_INITIAL_MS, "250"),
            (XDS_RETRY_MAX_MS, "2000"),
            (LOG_LEVEL, "node_agent=debug"),
            (LOG_FORMAT, "json"),
            (WORKER_THREADS, "1"),
            (MAX_CONNECTIONS, "5000"),
            (MAX_CONNECTIONS_PER_SOURCE, "64"),
            (NODE_NETNS, "/host/node-netns"),
        ]))
        .unwrap();
        assert_eq!(config.node_netns, PathBuf::from("/host/node-netns"));
        assert_eq!(config.worker_threads, 1);
        assert_eq!(config.max_connections, Some(5000));
        assert_eq!(config.max_connections_per_source, 64);
        assert_eq!(config.xds_backoff().initial, Duration::from_millis(250));
        assert_eq!(config.xds_backoff().max, Duration::from_secs(2));
        assert_eq!(config.log_level, "node_agent=debug");
        assert_eq!(config.log_format, LogFormat::Json);
        let dumped = serde_json::to_value(&config).unwrap();
        assert_eq!(dumped["log_format"], "json");
        assert_eq!(config.ca_address, "http://10.0.0.2:15010");
        assert!(config.acceleration);
        assert_eq!(config.certificate_ttl, Duration::from_secs(60));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let cases = [
            (vec![], "NODE_NAME is required"),
            (
                vec![(NODE_NAME, "n"), (ADMIN_ADDRESS, "nowhere")],
                "ADMIN_ADDRESS=\"nowhere\"",
            ),
            (
                vec![(NODE_NAME, "n"), (ACCELERATION, "maybe")],
                "ACCELERATION=\"maybe\": use true or false",
            ),
            (
                vec![(NODE_NAME, "n"), (CERTIFICATE_TTL_SECONDS, "5")],
                "at least 10 seconds",
            ),
            (
                vec![(NODE_NAME, "n"), (XDS_RETRY_INITIAL_MS, "0")],
                "XDS_RETRY_INITIAL_MS=\"0\": must be positive",
            ),
            (
                vec![(NODE_NAME, "n"), (XDS_RETRY_MAX_MS, "50")],
                "XDS_RETRY_MAX_MS=\"50\": below XDS_RETRY_INITIAL_MS",
            ),
            (
                vec![(NODE_NAME, "n"), (WORKER_THREADS, "0")],
                "WORKER_THREADS=\"0\": use a number of threads from 1 to 256",
            ),
            (
                vec![(NODE_NAME, "n"), (MAX_CONNECTIONS_PER_SOURCE, "0")],
                "MAX_CONNECTIONS_PER_SOURCE=\"0\": use a positive number of connections",
            ),
            (
                vec![(NODE_NAME, "n"), (LOG_FORMAT, "yaml")],
                "LOG_FORMAT=\"yaml\": use text or json",
            ),
            (
                vec![
                    (NODE_NAME, "n"),
                    (XDS_ADDRESS, "https://istiod.istio-system.svc:15012"),
                ],
                "ROOT_CERT_FILE (to verify an https:// XDS_ADDRESS or CA_ADDRESS) is required",
            ),
        ];
        for (pairs, expected) in cases {
            let error = Config::from_strings(&strings(&pairs))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }
}
