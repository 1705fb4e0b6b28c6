//! Each connection's record: Istio's TCP metrics (the families and the record are
//! `weft_proxy_core`'s) and one access-log event in ztunnel's fields, written when it ends.

use std::net::{IpAddr, SocketAddr};

use weft_proxy_core::metrics::{ACCESS_LOG, AccessLog, ConnectionEnd, ResponseFlag, TcpConnection};

use super::error::ProxyError;

/// One connection's record, counting its bytes; dropped when the connection ends.
pub type ConnectionGuard = TcpConnection<ConnectionLog>;

/// What a connection's access-log event says besides its labels and bytes.
#[derive(Debug, Default)]
pub struct ConnectionLog {
    /// The client's socket address as the agent saw it.
    pub source: Option<SocketAddr>,
    /// The destination's socket address (the original destination).
    pub destination: Option<SocketAddr>,
    /// Why the connection failed.
    pub error: Option<String>,
}

impl ConnectionLog {
    pub fn between(source: SocketAddr, destination: Option<SocketAddr>) -> Self {
        Self {
            source: Some(source),
            destination,
            error: None,
        }
    }

    /// An outbound connection's record, its source the pod's address as ztunnel logs it: the
    /// redirect to the agent's in-pod listener makes the app's socket come from loopback.
    /// The app's port is kept; a source not on loopback (an app that bound its address) is
    /// logged as it is.
    pub fn outbound(app: SocketAddr, pod: &[IpAddr], destination: Option<SocketAddr>) -> Self {
        let family = destination.map_or(app.is_ipv4(), |d| d.is_ipv4());
        let source = match pod.iter().find(|ip| ip.is_ipv4() == family).or(pod.first()) {
            Some(&ip) if app.ip().is_loopback() => SocketAddr::new(ip, app.port()),
            _ => app,
        };
        Self::between(source, destination)
    }
}

/// A socket address in the access log, `unknown` when the agent never learned it.
struct LoggedAddress(Option<SocketAddr>);

impl std::fmt::Display for LoggedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => address.fmt(f),
            None => f.write_str(weft_proxy_core::metrics::UNKNOWN),
        }
    }
}

impl AccessLog for ConnectionLog {
    fn revoked(&mut self, reason: &str) -> Option<ResponseFlag> {
        let error = ProxyError::revoked(reason);
        self.error = Some(error.to_string());
        Some(error.response_flags())
    }

    fn write(&self, end: &ConnectionEnd<'_>) {
        let l = &end.labels.peers;
        tracing::info!(
            target: ACCESS_LOG,
            src = %LoggedAddress(self.source),
            dst = %LoggedAddress(self.destination),
            direction = l.reporter.direction(),
            src_workload = %l.source_workload,
            src_namespace = %l.source_workload_namespace,
            src_identity = %l.source_principal,
            dst_workload = %l.destination_workload,
            dst_namespace = %l.destination_workload_namespace,
            dst_identity = %l.destination_principal,
            dst_service = %l.destination_service,
            security = %end.labels.connection_security_policy,
            response_flags = %end.labels.response_flags,
            bytes_sent = end.sent,
            bytes_received = end.received,
            duration_ms = end.duration.as_millis() as u64,
            error = self.error.as_deref(),
            "connection complete"
        );
    }
}

/// How a failed connection closes.
pub(crate) trait Failed {
    /// Closes with `error`'s response flags, and `error` in the access log.
    fn failed(&mut self, error: &ProxyError);
}

impl Failed for ConnectionGuard {
    fn failed(&mut self, error: &ProxyError) {
        self.set_response_flags(error.response_flags());
        self.log_mut().error = Some(error.to_string());
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use weft_proxy_core::metrics::{PeerLabels, Reporter, SecurityPolicy, TcpLabels, TcpMetrics};
    use weft_test_support::logs::LogCapture;

    use super::*;

    #[test]
    fn an_outbound_source_is_the_pods_address_not_the_redirects_loopback() {
        let socket = |s: &str| s.parse::<SocketAddr>().unwrap();
        let pod: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let cases = [
            (
                "127.0.0.1:40000",
                Some("10.0.0.9:80"),
                &pod[..],
                "10.0.0.5:40000",
            ),
            (
                "[::1]:40000",
                Some("[fd00::9]:80"),
                &pod[..],
                "[fd00::5]:40000",
            ),
            ("127.0.0.1:40000", None, &pod[..], "10.0.0.5:40000"),
            (
                "127.0.0.1:40000",
                Some("[fd00::9]:80"),
                &pod[..1],
                "10.0.0.5:40000",
            ),
            (
                "10.0.0.5:40000",
                Some("10.0.0.9:80"),
                &pod[..],
                "10.0.0.5:40000",
            ),
            (
                "127.0.0.1:40000",
                Some("10.0.0.9:80"),
                &[][..],
                "127.0.0.1:40000",
            ),
        ];
        for (app, destination, pod, logged) in cases {
            let log = ConnectionLog::outbound(socket(app), pod, destination.map(socket));
            assert_eq!(log.source, Some(socket(logged)), "{app} to {destination:?}");
            assert_eq!(log.destination, destination.map(socket));
        }
    }

    #[test]
    fn one_access_log_event_per_connection_with_its_details() {
        let captured = LogCapture::new();
        let mut registry = Registry::default();
        let metrics = TcpMetrics::new(&mut registry);
        tracing::subscriber::with_default(captured.subscriber(), || {
            let mut peers = PeerLabels::unknown(Reporter::Destination);
            peers.source_principal = "spiffe://cluster.local/ns/a/sa/client".into();
            peers.destination_principal = "spiffe://cluster.local/ns/b/sa/server".into();
            let mut guard = metrics.open(
                TcpLabels::new(peers, SecurityPolicy::Unknown),
                ConnectionLog::between(
                    "10.0.0.1:40000".parse().unwrap(),
                    Some("10.0.0.2:8080".parse().unwrap()),
                ),
            );
            guard.add_sent(5);
            guard.add_received(9);
            guard.failed(&ProxyError::Refused(
                crate::proxy::plan::InboundRefusal::Denied("denied by shop/deny-all".into()),
            ));
            drop(guard);
        });
        let log = captured.text();
        assert_eq!(log.lines().count(), 1, "{log}");
        for expected in [
            "access:",
            "src=10.0.0.1:40000",
            "dst=10.0.0.2:8080",
            "direction=\"inbound\"",
            "src_identity=spiffe://cluster.local/ns/a/sa/client",
            "dst_identity=spiffe://cluster.local/ns/b/sa/server",
            "bytes_sent=5",
            "bytes_received=9",
            "duration_ms=",
            "response_flags=DENY",
            "error=\"denied by shop/deny-all\"",
            "connection complete",
        ] {
            assert!(log.contains(expected), "missing {expected} in {log}");
        }
    }

    #[test]
    fn a_revoked_connection_says_why() {
        let mut log = ConnectionLog::default();
        assert_eq!(
            log.revoked("denied by shop/deny-all"),
            Some(ResponseFlag::Denied)
        );
        assert_eq!(
            log.error.as_deref(),
            Some("connection closed due to policy change: denied by shop/deny-all")
        );
        assert_eq!(
            log.revoked(crate::proxy::error::POD_LEFT),
            Some(ResponseFlag::None)
        );
        assert_eq!(
            log.error.as_deref(),
            Some("connection closed: the pod left the mesh")
        );
    }
}
