//! The waypoint binary's settings: environment names and defaults as constants, one
//! [`Config`], parsed from any [`Strings`] source (the process environment in production, a map
//! in tests).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Serialize;

pub const ENV_CONTROLLER: &str = "WEFT_CONTROLLER";
pub const ENV_NAME: &str = "WEFT_WAYPOINT_NAME";
pub const ENV_NAMESPACE: &str = "WEFT_WAYPOINT_NAMESPACE";
pub const ENV_SERVICE_ACCOUNT: &str = "WEFT_SERVICE_ACCOUNT";
pub const ENV_TRUST_DOMAIN: &str = "WEFT_TRUST_DOMAIN";
pub const ENV_HBONE_ADDRESS: &str = "WEFT_HBONE_ADDRESS";
pub const ENV_METRICS_ADDRESS: &str = "WEFT_METRICS_ADDRESS";
pub const ENV_READINESS_ADDRESS: &str = "WEFT_READINESS_ADDRESS";
pub const ENV_ADMIN_ADDRESS: &str = "WEFT_ADMIN_ADDRESS";
pub const ENV_NETNS: &str = "WEFT_NETNS";
pub const ENV_NODE_NAME: &str = "WEFT_NODE_NAME";
pub const ENV_CA_ADDRESS: &str = "WEFT_CA_ADDRESS";
pub const ENV_CA_TOKEN_FILE: &str = "WEFT_CA_TOKEN_FILE";
pub const ENV_CA_ROOT_FILE: &str = "WEFT_CA_ROOT_FILE";
pub const ENV_CA_DIR: &str = "WEFT_CA_DIR";
pub const ENV_CONFIG_FILE: &str = "WEFT_CONFIG_FILE";
/// The pod's IP, as Istio's proxies take it from the downward API (`status.podIP`).
pub const ENV_INSTANCE_IP: &str = "INSTANCE_IP";
/// Worker threads serving HBONE connections (`weft_workers`); default: one per CPU.
pub const ENV_WORKER_THREADS: &str = "WEFT_WORKER_THREADS";
/// Protocol upgrades forwarded (`Upgrade:` values, comma-separated); default: `websocket`.
pub const ENV_UPGRADES: &str = "WEFT_UPGRADES";

pub const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:15010";
pub const DEFAULT_NAME: &str = "waypoint";
pub const DEFAULT_NAMESPACE: &str = "default";
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_HBONE_ADDRESS: &str = "0.0.0.0:15008";
pub const DEFAULT_METRICS_ADDRESS: &str = "0.0.0.0:15020";
pub const DEFAULT_READINESS_ADDRESS: &str = "0.0.0.0:15021";
/// Istio's admin port, on loopback only: the dump shows the whole configuration.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:15000";

/// A source of named strings.
pub trait Strings {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Environment;

impl Strings for Environment {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Strings for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned().filter(|v| !v.is_empty())
    }
}

/// Invalid settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "no certificate source: set {ENV_CA_ADDRESS} with {ENV_CA_TOKEN_FILE}, or {ENV_CA_DIR}"
    )]
    NoCertificateSource,
}

/// Where the waypoint's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CertificateSettings {
    /// The controller's CA over gRPC, authenticated by a bootstrap token.
    Ca {
        address: String,
        token_file: PathBuf,
        root_file: Option<PathBuf>,
    },
    /// A CA directory (`root-cert.pem`, `root-key.pem`) the waypoint signs its own certificate
    /// from: tests and single-machine demos only.
    LocalCaDir(PathBuf),
}

/// Every setting of the waypoint binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Controller's xDS endpoint (`http://host:15010`); empty disables xDS.
    pub controller: Option<String>,
    /// Waypoint name and namespace: the `WaypointConfig` resource is `namespace/name`.
    pub name: String,
    pub namespace: String,
    /// Identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub service_account: String,
    pub trust_domain: String,
    pub hbone_address: SocketAddr,
    pub metrics_address: SocketAddr,
    pub readiness_address: SocketAddr,
    /// `/config_dump`; must be a loopback address.
    pub admin_address: SocketAddr,
    /// Network namespace to enter before opening any socket (the waypoint pod's).
    pub netns: Option<PathBuf>,
    pub node_name: Option<String>,
    pub certificate: CertificateSettings,
    /// A binary-encoded `WaypointConfig` applied at start (tests, demos without a controller).
    pub config_file: Option<PathBuf>,
    /// The pod's IP for the xDS node id; found from the listener or the interfaces when unset.
    pub instance_ip: Option<IpAddr>,
    /// Threads serving HBONE connections, each with its own runtime and upstream pools.
    pub worker_threads: usize,
    /// Protocol upgrades forwarded, lower case; any other is refused (`h2c` is never
    /// performed: such a request is served as HTTP/1.1).
    pub upgrades: Vec<String>,
}

/// One worker thread per CPU the process may run on.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn address(
    strings: &impl Strings,
    name: &'static str,
    default: &str,
) -> Result<SocketAddr, SettingsError> {
    let value = strings.get(name).unwrap_or_else(|| default.to_owned());
    value
        .parse()
        .map_err(|e: std::net::AddrParseError| SettingsError::Invalid {
            name,
            value,
            reason: e.to_string(),
        })
}

impl Config {
    pub fn from_strings(strings: &impl Strings) -> Result<Self, SettingsError> {
        let name = strings
            .get(ENV_NAME)
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        let certificate = match (strings.get(ENV_CA_ADDRESS), strings.get(ENV_CA_DIR)) {
            (Some(address), _) => CertificateSettings::Ca {
                address,
                token_file: strings
                    .get(ENV_CA_TOKEN_FILE)
                    .map(PathBuf::from)
                    .ok_or(SettingsError::NoCertificateSource)?,
                root_file: strings.get(ENV_CA_ROOT_FILE).map(PathBuf::from),
            },
            (None, Some(dir)) => CertificateSettings::LocalCaDir(PathBuf::from(dir)),
            (None, None) => return Err(SettingsError::NoCertificateSource),
        };
        let controller = match strings.get(ENV_CONTROLLER) {
            Some(v) if v == "none" => None,
            Some(v) => Some(v),
            None => Some(DEFAULT_CONTROLLER.to_owned()),
        };
        Ok(Config {
            controller,
            service_account: strings
                .get(ENV_SERVICE_ACCOUNT)
                .unwrap_or_else(|| name.clone()),
            name,
            namespace: strings
                .get(ENV_NAMESPACE)
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            trust_domain: strings
                .get(ENV_TRUST_DOMAIN)
                .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned()),
            hbone_address: address(strings, ENV_HBONE_ADDRESS, DEFAULT_HBONE_ADDRESS)?,
            metrics_address: address(strings, ENV_METRICS_ADDRESS, DEFAULT_METRICS_ADDRESS)?,
            readiness_address: address(strings, ENV_READINESS_ADDRESS, DEFAULT_READINESS_ADDRESS)?,
            admin_address: {
                let admin = address(strings, ENV_ADMIN_ADDRESS, DEFAULT_ADMIN_ADDRESS)?;
                if !admin.ip().is_loopback() {
                    return Err(SettingsError::Invalid {
                        name: ENV_ADMIN_ADDRESS,
                        value: admin.to_string(),
                        reason: "the admin port shows the whole configuration: it listens on loopback only (127.0.0.1 or ::1)".to_owned(),
                    });
                }
                admin
            },
            netns: strings.get(ENV_NETNS).map(PathBuf::from),
            node_name: strings.get(ENV_NODE_NAME),
            certificate,
            config_file: strings.get(ENV_CONFIG_FILE).map(PathBuf::from),
            instance_ip: strings
                .get(ENV_INSTANCE_IP)
                .map(|value| {
                    value
                        .parse()
                        .map_err(|e: std::net::AddrParseError| SettingsError::Invalid {
                            name: ENV_INSTANCE_IP,
                            value,
                            reason: e.to_string(),
                        })
                })
                .transpose()?,
            upgrades: match strings.get(ENV_UPGRADES) {
                None => crate::conformance::DEFAULT_UPGRADES
                    .iter()
                    .map(|u| (*u).to_owned())
                    .collect(),
                Some(value) => value
                    .split(',')
                    .map(|u| u.trim().to_ascii_lowercase())
                    .filter(|u| !u.is_empty())
                    .collect(),
            },
            worker_threads: match strings.get(ENV_WORKER_THREADS) {
                None => default_worker_threads(),
                Some(value) => match value.parse::<usize>() {
                    Ok(n) if (1..=1024).contains(&n) => n,
                    _ => {
                        return Err(SettingsError::Invalid {
                            name: ENV_WORKER_THREADS,
                            value,
                            reason: "expected a number of threads from 1 to 1024".to_owned(),
                        });
                    }
                },
            },
        })
    }

    /// The pod's IP as the xDS node id carries it (`waypoint~<ip>~...`, as Istio's proxies
    /// build it): `INSTANCE_IP` when set, else the HBONE listener's address when it names one,
    /// else the first of `interface_addresses` (the pod's network namespace) that is neither
    /// loopback nor link-local. `None` when nothing qualifies.
    pub fn pod_ip(&self, interface_addresses: &[IpAddr]) -> Option<IpAddr> {
        if let Some(ip) = self.instance_ip {
            return Some(ip);
        }
        let listener = self.hbone_address.ip();
        if !listener.is_unspecified() {
            return Some(listener);
        }
        interface_addresses.iter().copied().find(|ip| {
            !ip.is_loopback()
                && !ip.is_unspecified()
                && match ip {
                    IpAddr::V4(v4) => !v4.is_link_local(),
                    IpAddr::V6(v6) => !v6.is_unicast_link_local(),
                }
        })
    }

    /// The xDS node id: `waypoint~<pod ip>~<name>.<namespace>~<namespace>.svc.cluster.local`.
    pub fn node_id(&self, pod_ip: IpAddr) -> String {
        format!(
            "waypoint~{pod_ip}~{}.{}~{}.svc.cluster.local",
            self.name, self.namespace, self.namespace
        )
    }

    /// Name of this waypoint's `WaypointConfig` resource.
    pub fn resource_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_id_carries_the_pods_own_ip() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let interfaces = [
            ip("127.0.0.1"),
            ip("::1"),
            ip("fe80::1"),
            ip("10.251.2.12"),
            ip("10.9.9.9"),
        ];
        let cases = [
            // Listening on every address: the pod's first real address, not 0.0.0.0.
            (vec![], &interfaces[..], Some("10.251.2.12")),
            // INSTANCE_IP wins, as in Istio's proxies.
            (
                vec![(ENV_INSTANCE_IP, "10.251.2.99")],
                &interfaces[..],
                Some("10.251.2.99"),
            ),
            // A listener bound to one address names it.
            (
                vec![(ENV_HBONE_ADDRESS, "10.251.2.50:15008")],
                &interfaces[..],
                Some("10.251.2.50"),
            ),
            (vec![], &interfaces[..3], None),
            (
                vec![],
                &[ip("169.254.1.1"), ip("fd00::5")][..],
                Some("fd00::5"),
            ),
        ];
        for (settings, addresses, expected) in cases {
            let mut pairs = vec![(ENV_CA_DIR, "/ca")];
            pairs.extend(settings.iter().copied());
            let config = Config::from_strings(&strings(&pairs)).unwrap();
            assert_eq!(
                config.pod_ip(addresses),
                expected.map(ip),
                "{settings:?} {addresses:?}"
            );
        }
        let config = Config::from_strings(&strings(&[
            (ENV_CA_DIR, "/ca"),
            (ENV_NAME, "waypoint"),
            (ENV_NAMESPACE, "shop"),
        ]))
        .unwrap();
        assert_eq!(
            config.node_id(ip("10.251.2.12")),
            "waypoint~10.251.2.12~waypoint.shop~shop.svc.cluster.local"
        );
    }

    fn strings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_follow_istio_ports() {
        let config = Config::from_strings(&strings(&[(ENV_CA_DIR, "/ca")])).unwrap();
        assert_eq!(config.hbone_address.port(), 15008);
        assert_eq!(config.metrics_address.port(), 15020);
        assert_eq!(config.readiness_address.port(), 15021);
        assert_eq!(config.admin_address, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(config.controller.as_deref(), Some(DEFAULT_CONTROLLER));
        assert_eq!(config.resource_name(), "default/waypoint");
        assert_eq!(config.service_account, "waypoint");
        assert_eq!(
            config.certificate,
            CertificateSettings::LocalCaDir("/ca".into())
        );
        assert!(config.worker_threads >= 1);
        let config =
            Config::from_strings(&strings(&[(ENV_CA_DIR, "/ca"), (ENV_WORKER_THREADS, "3")]))
                .unwrap();
        assert_eq!(config.worker_threads, 3);
    }

    #[test]
    fn settings_are_read_and_checked() {
        let config = Config::from_strings(&strings(&[
            (ENV_NAME, "reviews-wp"),
            (ENV_NAMESPACE, "bookinfo"),
            (ENV_CONTROLLER, "none"),
            (ENV_CA_ADDRESS, "https://istiod:15012"),
            (ENV_CA_TOKEN_FILE, "/token"),
            (ENV_HBONE_ADDRESS, "127.0.0.1:25008"),
        ]))
        .unwrap();
        assert_eq!(config.resource_name(), "bookinfo/reviews-wp");
        assert_eq!(config.controller, None);
        assert_eq!(config.hbone_address, "127.0.0.1:25008".parse().unwrap());
        assert!(matches!(config.certificate, CertificateSettings::Ca { .. }));

        let cases = [
            vec![],
            vec![(ENV_CA_ADDRESS, "http://x:15010")],
            vec![(ENV_CA_DIR, "/ca"), (ENV_METRICS_ADDRESS, "15020")],
            vec![(ENV_CA_DIR, "/ca"), (ENV_INSTANCE_IP, "10.0.0")],
            // The admin port never leaves loopback.
            vec![(ENV_CA_DIR, "/ca"), (ENV_ADMIN_ADDRESS, "0.0.0.0:15000")],
            vec![(ENV_CA_DIR, "/ca"), (ENV_ADMIN_ADDRESS, "10.0.0.5:15000")],
            vec![(ENV_CA_DIR, "/ca"), (ENV_WORKER_THREADS, "0")],
            vec![(ENV_CA_DIR, "/ca"), (ENV_WORKER_THREADS, "two")],
        ];
        for case in cases {
            assert!(Config::from_strings(&strings(&case)).is_err(), "{case:?}");
        }
    }
}
