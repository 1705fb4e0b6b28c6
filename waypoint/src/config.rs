//! The waypoint binary's settings: its own variable names and defaults as constants beside the
//! ones every proxy has (`weft_proxy_core::config`, read the same way as the node agent's), one
//! [`Config`], parsed from any [`Strings`] source (the process environment under the flags in
//! production, a map in tests).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Serialize;
pub use weft_proxy_core::config::*;

/// The waypoint's name: its `WaypointConfig` resource is `<namespace>/<name>`.
pub const WAYPOINT_NAME: &str = "WAYPOINT_NAME";
/// The waypoint's namespace: its pod's (the downward API's `metadata.namespace`, as Istio's
/// proxies read it).
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
/// Its service account, for its identity (as Istio's proxies read it).
pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
pub const HBONE_ADDRESS: &str = "HBONE_ADDRESS";
/// A network namespace to enter before opening any socket (the waypoint pod's).
pub const NETNS: &str = "NETNS";
/// A CA directory the waypoint signs its own certificate from (tests, single-machine demos).
pub const CA_DIR: &str = "CA_DIR";
/// A binary-encoded `WaypointConfig` applied at start.
pub const CONFIG_FILE: &str = "CONFIG_FILE";
/// The pod's IP, as Istio's proxies take it from the downward API (`status.podIP`).
pub const INSTANCE_IP: &str = "INSTANCE_IP";
/// Protocol upgrades forwarded (`Upgrade:` values, comma-separated); default: `websocket`.
pub const UPGRADES: &str = "UPGRADES";

/// The proxy's role: `waypoint` (default; HBONE in, for the services that use it) or `gateway`
/// (an ingress gateway: the ports of the Istio Gateways selecting its pod, for clients outside
/// the mesh).
pub const PROXY_ROLE: &str = "PROXY_ROLE";
/// The gateway's pod name (the downward API's `metadata.name`): its configuration is
/// `<namespace>/<pod>`, as Istio's gateways are known by their pod.
pub const POD_NAME: &str = "POD_NAME";
/// Local mode's credentials: `<dir>/<credentialName>/tls.crt`, `tls.key`, `ca.crt`. Unset
/// (Kubernetes mode), a gateway has only the credentials the controller serves.
pub const CREDENTIALS_DIR: &str = "CREDENTIALS_DIR";
/// The resolver configuration ServiceEntry names are resolved with (default the system's
/// `/etc/resolv.conf`), as the node agent's variable of the same name.
pub const DNS_RESOLV_CONF: &str = "DNS_RESOLV_CONF";
/// The address a gateway's ports are opened on.
pub const GATEWAY_ADDRESS: &str = "GATEWAY_ADDRESS";
pub const DEFAULT_GATEWAY_ADDRESS: &str = "0.0.0.0";
/// Istio's pilot-agent switch of the same name: after SIGTERM, exit as soon as no connection
/// is left (once [`MINIMUM_DRAIN_DURATION`] has run), not at the end of the termination
/// deadline. A Go boolean (`true`, `1`, `t`, `false`, ...); default `false`.
pub const EXIT_ON_ZERO_ACTIVE_CONNECTIONS: &str = "EXIT_ON_ZERO_ACTIVE_CONNECTIONS";
/// How long the drain runs at least under [`EXIT_ON_ZERO_ACTIVE_CONNECTIONS`]; Istio's
/// default, 5 s.
pub const MINIMUM_DRAIN_DURATION: &str = "MINIMUM_DRAIN_DURATION";
pub const DEFAULT_MINIMUM_DRAIN_DURATION: std::time::Duration = std::time::Duration::from_secs(5);

/// [`XDS_ADDRESS`] that runs the waypoint without a controller (a [`CONFIG_FILE`] only).
pub const NO_CONTROLLER: &str = "none";
pub const DEFAULT_NAME: &str = "waypoint";
pub const DEFAULT_NAMESPACE: &str = "default";
pub const DEFAULT_HBONE_ADDRESS: &str = "0.0.0.0:15008";

/// Invalid settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no certificate source: set {CA_ADDRESS} with {BOOTSTRAP_TOKEN_FILE}, or {CA_DIR}")]
    NoCertificateSource,
    #[error("{PROXY_ROLE}: {0:?} is neither waypoint nor gateway")]
    Role(String),
}

/// How the drain after SIGTERM ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainEnd {
    /// At the termination deadline, however early the connections finished (pilot-agent's
    /// default, its `terminationDrainDuration`).
    Deadline,
    /// As soon as no connection is left once `minimum` has run, else at the deadline
    /// ([`EXIT_ON_ZERO_ACTIVE_CONNECTIONS`]).
    NoConnectionLeft { minimum: std::time::Duration },
}

/// Where the waypoint's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateSettings {
    /// The controller's CA ([`CA_ADDRESS`]), with the credential in
    /// [`BOOTSTRAP_TOKEN_FILE`] and the roots in [`ROOT_CERT_FILE`].
    Ca,
    /// A CA directory (`root-cert.pem`, `root-key.pem`) the waypoint signs its own certificate
    /// from: tests and single-machine demos only.
    LocalCaDir(PathBuf),
}

/// What the proxy is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Waypoint,
    /// An ingress gateway: credentials from the controller, else from this directory (local
    /// mode).
    Gateway {
        credentials_dir: Option<PathBuf>,
    },
}

/// Every setting of the waypoint binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The settings every proxy has. The controller's address is `None` with
    /// [`NO_CONTROLLER`].
    #[serde(flatten)]
    pub proxy: ProxyConfig,
    /// Waypoint name and namespace: the `WaypointConfig` resource is `namespace/name`.
    pub name: String,
    pub namespace: String,
    /// Identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub service_account: String,
    pub hbone_address: SocketAddr,
    /// Network namespace to enter before opening any socket (the waypoint pod's).
    pub netns: Option<PathBuf>,
    pub certificate: CertificateSettings,
    /// A binary-encoded `WaypointConfig` applied at start (tests, demos without a controller).
    pub config_file: Option<PathBuf>,
    /// The pod's IP for the xDS node id; found from the listener or the interfaces when unset.
    pub instance_ip: Option<IpAddr>,
    /// Protocol upgrades forwarded, lower case; any other is refused (`h2c` is never
    /// performed: such a request is served as HTTP/1.1).
    pub upgrades: Vec<String>,
    pub role: Role,
    /// Where a gateway opens its ports.
    pub gateway_address: IpAddr,
    /// [`CREDENTIALS_DIR`], for either role: where the credentials a DestinationRule's
    /// `credentialName` names for TLS origination are read (local mode).
    pub origination_credentials: Option<PathBuf>,
    /// [`DNS_RESOLV_CONF`]; `None`: `/etc/resolv.conf`.
    pub dns_resolv_conf: Option<PathBuf>,
    pub drain_end: DrainEnd,
}

/// [`EXIT_ON_ZERO_ACTIVE_CONNECTIONS`] and [`MINIMUM_DRAIN_DURATION`], as pilot-agent reads
/// them: the switch is a Go boolean (`strconv.ParseBool`).
fn drain_end(settings: &Settings<'_>) -> Result<DrainEnd, ConfigError> {
    let exit_on_zero = match settings.string(EXIT_ON_ZERO_ACTIVE_CONNECTIONS).as_deref() {
        None => false,
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
        Some(other) => {
            return Err(ConfigError::invalid(
                EXIT_ON_ZERO_ACTIVE_CONNECTIONS,
                other,
                "use true or false",
            ));
        }
    };
    let minimum = match settings.string(MINIMUM_DRAIN_DURATION) {
        None => DEFAULT_MINIMUM_DRAIN_DURATION,
        Some(value) => parse_duration(&value)
            .map_err(|reason| ConfigError::invalid(MINIMUM_DRAIN_DURATION, value, reason))?,
    };
    Ok(if exit_on_zero {
        DrainEnd::NoConnectionLeft { minimum }
    } else {
        DrainEnd::Deadline
    })
}

/// One worker thread per CPU the process may run on.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    pub fn from_strings(strings: &impl Strings) -> Result<Self, SettingsError> {
        let settings = Settings::new(strings);
        let proxy = ProxyConfig::from_settings(
            &settings,
            ProxyDefaults {
                node_name_required: false,
                worker_threads: default_worker_threads(),
            },
        )?;
        // A waypoint names where its certificate comes from: a CA with a credential, or a CA
        // directory of its own.
        let certificate = match (settings.string(CA_ADDRESS), settings.path(CA_DIR)) {
            (Some(_), _) if settings.string(BOOTSTRAP_TOKEN_FILE).is_none() => {
                return Err(SettingsError::NoCertificateSource);
            }
            (Some(_), _) => CertificateSettings::Ca,
            (None, Some(dir)) => CertificateSettings::LocalCaDir(dir),
            (None, None) => return Err(SettingsError::NoCertificateSource),
        };
        let role = match settings.string(PROXY_ROLE).as_deref() {
            None | Some("waypoint") => Role::Waypoint,
            Some("gateway") => Role::Gateway {
                credentials_dir: settings.path(CREDENTIALS_DIR),
            },
            Some(other) => return Err(SettingsError::Role(other.to_owned())),
        };
        let name = match role {
            Role::Gateway { .. } => settings
                .string(POD_NAME)
                .unwrap_or_else(|| settings.string_or(WAYPOINT_NAME, DEFAULT_NAME)),
            Role::Waypoint => settings.string_or(WAYPOINT_NAME, DEFAULT_NAME),
        };
        Ok(Config {
            proxy,
            service_account: settings
                .string(SERVICE_ACCOUNT)
                .unwrap_or_else(|| name.clone()),
            name,
            namespace: settings.string_or(POD_NAMESPACE, DEFAULT_NAMESPACE),
            hbone_address: settings.parse_or(HBONE_ADDRESS, DEFAULT_HBONE_ADDRESS)?,
            netns: settings.path(NETNS),
            certificate,
            config_file: settings.path(CONFIG_FILE),
            instance_ip: settings.parse(INSTANCE_IP)?,
            role,
            gateway_address: settings.parse_or(GATEWAY_ADDRESS, DEFAULT_GATEWAY_ADDRESS)?,
            origination_credentials: settings.path(CREDENTIALS_DIR),
            dns_resolv_conf: settings.path(DNS_RESOLV_CONF),
            drain_end: drain_end(&settings)?,
            upgrades: match settings.string(UPGRADES) {
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
        })
    }

    /// The controller's xDS endpoint, `None` when the waypoint runs without one.
    pub fn controller(&self) -> Option<&str> {
        Some(self.proxy.xds_address.as_str()).filter(|address| *address != NO_CONTROLLER)
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

    /// The xDS node id: `waypoint~<pod ip>~<name>.<namespace>~<namespace>.svc.cluster.local`,
    /// or for a gateway `router~<pod ip>~<pod>.<namespace>~...` as Istio's gateways build it.
    pub fn node_id(&self, pod_ip: IpAddr) -> String {
        let kind = match self.role {
            Role::Waypoint => "waypoint",
            Role::Gateway { .. } => "router",
        };
        format!(
            "{kind}~{pod_ip}~{}.{}~{}.svc.cluster.local",
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
    use std::collections::HashMap;

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
                vec![(INSTANCE_IP, "10.251.2.99")],
                &interfaces[..],
                Some("10.251.2.99"),
            ),
            // A listener bound to one address names it.
            (
                vec![(HBONE_ADDRESS, "10.251.2.50:15008")],
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
            let mut pairs = vec![(CA_DIR, "/ca")];
            pairs.extend(settings.iter().copied());
            let config = Config::from_strings(&strings(&pairs)).unwrap();
            assert_eq!(
                config.pod_ip(addresses),
                expected.map(ip),
                "{settings:?} {addresses:?}"
            );
        }
        let config = Config::from_strings(&strings(&[
            (CA_DIR, "/ca"),
            (WAYPOINT_NAME, "waypoint"),
            (POD_NAMESPACE, "shop"),
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
        let config = Config::from_strings(&strings(&[(CA_DIR, "/ca")])).unwrap();
        assert_eq!(config.hbone_address.port(), 15008);
        assert_eq!(config.proxy.metrics_address.port(), 15020);
        assert_eq!(config.proxy.readiness_address.port(), 15021);
        assert_eq!(
            config.proxy.admin_address,
            "127.0.0.1:15000".parse().unwrap()
        );
        assert_eq!(config.controller(), Some(DEFAULT_XDS_ADDRESS));
        assert_eq!(config.resource_name(), "default/waypoint");
        assert_eq!(config.service_account, "waypoint");
        assert_eq!(
            config.certificate,
            CertificateSettings::LocalCaDir("/ca".into())
        );
        assert!(config.proxy.worker_threads >= 1);
        let config =
            Config::from_strings(&strings(&[(CA_DIR, "/ca"), (WORKER_THREADS, "3")])).unwrap();
        assert_eq!(config.proxy.worker_threads, 3);
    }

    #[test]
    fn settings_are_read_and_checked() {
        let config = Config::from_strings(&strings(&[
            (WAYPOINT_NAME, "reviews-wp"),
            (POD_NAMESPACE, "bookinfo"),
            (XDS_ADDRESS, "none"),
            (CA_ADDRESS, "https://istiod:15012"),
            (BOOTSTRAP_TOKEN_FILE, "/token"),
            // An https:// CA is verified against configured roots.
            (ROOT_CERT_FILE, "/root.pem"),
            (HBONE_ADDRESS, "127.0.0.1:25008"),
        ]))
        .unwrap();
        assert_eq!(config.resource_name(), "bookinfo/reviews-wp");
        assert_eq!(config.controller(), None);
        assert_eq!(config.hbone_address, "127.0.0.1:25008".parse().unwrap());
        assert!(matches!(config.certificate, CertificateSettings::Ca));

        let cases = [
            vec![],
            vec![(CA_ADDRESS, "http://x:15010")],
            vec![(CA_DIR, "/ca"), (METRICS_ADDRESS, "15020")],
            vec![(CA_DIR, "/ca"), (INSTANCE_IP, "10.0.0")],
            // The admin port never leaves loopback.
            vec![(CA_DIR, "/ca"), (ADMIN_ADDRESS, "0.0.0.0:15000")],
            vec![(CA_DIR, "/ca"), (ADMIN_ADDRESS, "10.0.0.5:15000")],
            vec![(CA_DIR, "/ca"), (WORKER_THREADS, "0")],
            vec![(CA_DIR, "/ca"), (WORKER_THREADS, "two")],
        ];
        for case in cases {
            assert!(Config::from_strings(&strings(&case)).is_err(), "{case:?}");
        }
    }
    /// pilot-agent's `EXIT_ON_ZERO_ACTIVE_CONNECTIONS` (a Go boolean, default false) and
    /// `MINIMUM_DRAIN_DURATION` (default 5 s).
    #[test]
    fn the_drain_ends_as_pilot_agent_ends_it() {
        let drain_end = |pairs: &[(&str, &str)]| {
            let mut pairs = pairs.to_vec();
            pairs.push((CA_DIR, "/ca"));
            Config::from_strings(&strings(&pairs)).map(|c| c.drain_end)
        };
        assert_eq!(drain_end(&[]).unwrap(), DrainEnd::Deadline);
        assert_eq!(
            drain_end(&[(EXIT_ON_ZERO_ACTIVE_CONNECTIONS, "False")]).unwrap(),
            DrainEnd::Deadline
        );
        for on in ["true", "1", "T", "TRUE"] {
            assert_eq!(
                drain_end(&[(EXIT_ON_ZERO_ACTIVE_CONNECTIONS, on)]).unwrap(),
                DrainEnd::NoConnectionLeft {
                    minimum: DEFAULT_MINIMUM_DRAIN_DURATION
                },
                "{on}"
            );
        }
        assert_eq!(
            drain_end(&[
                (EXIT_ON_ZERO_ACTIVE_CONNECTIONS, "true"),
                (MINIMUM_DRAIN_DURATION, "1500ms")
            ])
            .unwrap(),
            DrainEnd::NoConnectionLeft {
                minimum: std::time::Duration::from_millis(1500)
            }
        );
        let refused = drain_end(&[(EXIT_ON_ZERO_ACTIVE_CONNECTIONS, "yes")])
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains(EXIT_ON_ZERO_ACTIVE_CONNECTIONS),
            "{refused}"
        );
        let refused = drain_end(&[
            (EXIT_ON_ZERO_ACTIVE_CONNECTIONS, "true"),
            (MINIMUM_DRAIN_DURATION, "5"),
        ])
        .unwrap_err()
        .to_string();
        assert!(refused.contains(MINIMUM_DRAIN_DURATION), "{refused}");
    }
}
