//! The agent's configuration: every setting, its environment variable and its default, in one
//! place. The settings every proxy has (node, controller, certificates, admin ports, logs,
//! workers, connection limits) are `weft_proxy_core::config`'s, read the same way as the
//! waypoint's; the agent's own are declared here. Parsed from any [`Strings`] source (the
//! process environment under the flags in the binary, a map in tests), and dumped as-is on the
//! admin port.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
pub use weft_proxy_core::config::*;

pub const ENROLLMENT_SOCKET: &str = "ENROLLMENT_SOCKET";
pub const PIN_DIR: &str = "PIN_DIR";
pub const CGROUP_ROOT: &str = "CGROUP_ROOT";
pub const NODE_NETNS: &str = "NODE_NETNS";
pub const ACCELERATION: &str = "ACCELERATION";
/// The cluster's DNS domain, as ztunnel's `CLUSTER_DOMAIN`.
pub const CLUSTER_DOMAIN: &str = "CLUSTER_DOMAIN";
/// The resolver configuration whose nameservers receive the pods' queries for names outside
/// the mesh.
pub const DNS_RESOLV_CONF: &str = "DNS_RESOLV_CONF";
/// Only the node's own workloads up front, other addresses at the first connection to them
/// (ztunnel's `XDS_ON_DEMAND`).
pub const XDS_ON_DEMAND: &str = "XDS_ON_DEMAND";
/// How long a name fetched on demand stays subscribed unused (`30m`, `90s`; `0s` keeps every
/// name while the agent runs, as ztunnel does).
pub const XDS_ON_DEMAND_IDLE: &str = "XDS_ON_DEMAND_IDLE";

/// Two workers: a connection and the HBONE connection it rides stay on one thread, and two
/// serve a node's pods without taking every core from them.
const DEFAULT_WORKER_THREADS: usize = 2;
const DEFAULT_ENROLLMENT_SOCKET: &str = "/var/run/weft/enroll.sock";
const DEFAULT_PIN_BASE: &str = "/sys/fs/bpf/weft";
/// The agent's own namespace: right when it runs in the node's (host network, the testbed).
const DEFAULT_NODE_NETNS: &str = "/proc/self/ns/net";
/// The agent's own resolver configuration, as ztunnel forwards with its own: in Kubernetes
/// the cluster's DNS service (the chart's agent pod keeps the default `dnsPolicy: ClusterFirst`).
const DEFAULT_DNS_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Everything the agent is told at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The settings every proxy has; the agent's node name is always set.
    #[serde(flatten)]
    pub proxy: ProxyConfig,
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
    /// The cluster's DNS domain, for the DNS proxy's short names.
    pub cluster_domain: String,
    /// Where the DNS proxy finds its upstream nameservers.
    pub dns_resolv_conf: PathBuf,
    /// Receive only this node's workloads up front and ask for any other address at the
    /// first connection to it (off: every address of the mesh).
    pub xds_on_demand: bool,
    /// In on-demand mode, how long a fetched name stays subscribed with no connection open
    /// to what it covers and no DNS answer from it; `None` keeps it while the agent runs.
    #[serde(with = "idle_seconds")]
    pub xds_on_demand_idle: Option<Duration>,
}

/// The idle period in a dump: seconds, or null for never.
mod idle_seconds {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(
        idle: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match idle {
            Some(idle) => serializer.serialize_some(&idle.as_secs_f64()),
            None => serializer.serialize_none(),
        }
    }
}

impl Config {
    pub fn from_strings(strings: &impl Strings) -> Result<Self, ConfigError> {
        let settings = Settings::new(strings);
        let proxy = ProxyConfig::from_settings(
            &settings,
            ProxyDefaults {
                node_name_required: true,
                worker_threads: DEFAULT_WORKER_THREADS,
            },
        )?;
        let pin_dir = settings.path(PIN_DIR).unwrap_or_else(|| {
            PathBuf::from(DEFAULT_PIN_BASE).join(proxy.node_name.as_deref().unwrap_or_default())
        });
        Ok(Self {
            proxy,
            enrollment_socket: settings
                .path(ENROLLMENT_SOCKET)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ENROLLMENT_SOCKET)),
            pin_dir,
            cgroup_root: settings.path(CGROUP_ROOT),
            node_netns: settings
                .path(NODE_NETNS)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_NODE_NETNS)),
            // Off by default: a socket in the kernel's socket map reads through its
            // spliced-queue path, where a blocking read woken by anything but data (a concurrent
            // writer on the same socket, for one) returns EAGAIN. Non-blocking applications never
            // notice; a full-duplex application on blocking sockets could, so splicing is opted
            // into.
            acceleration: settings.switch(ACCELERATION, false)?,
            cluster_domain: settings
                .string(CLUSTER_DOMAIN)
                .unwrap_or_else(|| crate::dns_proxy::DEFAULT_CLUSTER_DOMAIN.to_owned()),
            dns_resolv_conf: settings
                .path(DNS_RESOLV_CONF)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DNS_RESOLV_CONF)),
            xds_on_demand: settings.switch(XDS_ON_DEMAND, false)?,
            xds_on_demand_idle: match settings.string(XDS_ON_DEMAND_IDLE) {
                None => Some(crate::state::DEFAULT_ON_DEMAND_IDLE),
                Some(value) => {
                    let idle = parse_duration(&value).map_err(|reason| {
                        ConfigError::invalid(XDS_ON_DEMAND_IDLE, value, reason)
                    })?;
                    (!idle.is_zero()).then_some(idle)
                }
            },
        })
    }

    /// This node's name (required, so always set).
    pub fn node_name(&self) -> &str {
        self.proxy.node_name.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

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
        assert_eq!(config.proxy.ca_address, config.proxy.xds_address);
        assert_eq!(config.proxy.admin_address.to_string(), "127.0.0.1:15000");
        assert!(!config.acceleration, "acceleration is opt-in");
        assert!(!config.xds_on_demand, "every address by default");
        assert_eq!(config.xds_on_demand_idle, Some(Duration::from_secs(1800)));
        assert_eq!(config.proxy.xds_backoff(), weft_xds::Backoff::default());
        assert_eq!(config.proxy.log_level, "info");
        assert_eq!(config.proxy.log_format, LogFormat::Text);
        assert_eq!(config.proxy.worker_threads, 2);
        assert_eq!(config.proxy.max_connections, None);
        assert_eq!(config.proxy.max_connections_per_source, 256);
        // Unset, the node is where the agent runs.
        assert_eq!(config.node_netns, PathBuf::from("/proc/self/ns/net"));
        assert_eq!(config.cluster_domain, "cluster.local");
        assert_eq!(config.dns_resolv_conf, PathBuf::from("/etc/resolv.conf"));
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
            (CLUSTER_DOMAIN, "corp.example"),
            (DNS_RESOLV_CONF, "/run/dns/resolv.conf"),
            (XDS_ON_DEMAND, "true"),
            (XDS_ON_DEMAND_IDLE, "90s"),
        ]))
        .unwrap();
        assert!(config.xds_on_demand);
        assert_eq!(config.xds_on_demand_idle, Some(Duration::from_secs(90)));
        let never = Config::from_strings(&strings(&[(NODE_NAME, "n"), (XDS_ON_DEMAND_IDLE, "0s")]));
        assert_eq!(never.unwrap().xds_on_demand_idle, None);
        let error =
            Config::from_strings(&strings(&[(NODE_NAME, "n"), (XDS_ON_DEMAND_IDLE, "soon")]))
                .unwrap_err()
                .to_string();
        assert!(
            error.contains(XDS_ON_DEMAND_IDLE) && error.contains("soon"),
            "{error}"
        );
        assert_eq!(config.cluster_domain, "corp.example");
        assert_eq!(
            config.dns_resolv_conf,
            PathBuf::from("/run/dns/resolv.conf")
        );
        assert_eq!(config.node_netns, PathBuf::from("/host/node-netns"));
        assert_eq!(config.proxy.worker_threads, 1);
        assert_eq!(config.proxy.max_connections, Some(5000));
        assert_eq!(config.proxy.max_connections_per_source, 64);
        assert_eq!(
            config.proxy.xds_backoff().initial,
            Duration::from_millis(250)
        );
        assert_eq!(config.proxy.xds_backoff().max, Duration::from_secs(2));
        assert_eq!(config.proxy.log_level, "node_agent=debug");
        assert_eq!(config.proxy.log_format, LogFormat::Json);
        let dumped = serde_json::to_value(&config).unwrap();
        assert_eq!(dumped["log_format"], "json");
        assert_eq!(config.proxy.ca_address, "http://10.0.0.2:15010");
        assert!(config.acceleration);
        assert_eq!(config.proxy.certificate_ttl, Duration::from_secs(60));
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
