//! The record of one TCP connection forwarded at L4: Istio's TCP label set, fixed when it
//! opens, and its access-log line in Istio's default TCP format when it ends.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::info;
use weft_proxy_core::metrics::{
    ACCESS_LOG, AccessLog, ConnectionEnd, LogText, ResponseFlag, TcpConnection, TcpLabels,
};

use super::{
    MetricOverrides, Metrics, Peer, UtcTime, humantime_utc, overrides, peer_labels, security,
};
use crate::access_log::AccessLogs;
use crate::model::ServiceName;

/// What the metrics and the access log say about one TCP connection, fixed when it opens.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    pub source: Peer,
    pub destination: Peer,
    /// Hostname, name and namespace of the service the connection was addressed to.
    pub destination_service: Option<Arc<ServiceName>>,
    pub mtls: bool,
    /// Envoy's response flag: `-` when the connection was carried, else why not (`UH`, `UF`,
    /// `NC`).
    pub response_flags: ResponseFlag,
    /// Why the connection was refused (`rbac_access_denied_matched_policy[...]`), or ended
    /// early (a policy that no longer allows it), if it was.
    pub termination_details: Option<String>,
    pub upstream_host: Option<String>,
    pub upstream_cluster: Option<String>,
    pub downstream_local: String,
    pub downstream_remote: String,
    /// Accepted by a gateway listener: reported as the source.
    pub at_edge: bool,
    /// Telemetry turned the access log off: no line is written.
    pub access_log_disabled: bool,
    /// The access logs Telemetry selects, when not the default line.
    pub access_logs: Option<Arc<AccessLogs>>,
    /// Telemetry's metric overrides in force when the connection opened, if any.
    pub metric_overrides: Option<Arc<MetricOverrides>>,
}

impl ConnectionInfo {
    /// Istio's TCP label set for this connection.
    pub fn labels(&self) -> TcpLabels {
        TcpLabels {
            response_flags: self.response_flags,
            ..TcpLabels::new(
                peer_labels(
                    self.at_edge,
                    &self.source,
                    &self.destination,
                    self.destination_service.as_deref(),
                ),
                security(self.mtls),
            )
        }
    }
}

/// One TCP connection through the waypoint: Istio's TCP metrics, and one access-log line in
/// Istio's default TCP format when it ends.
pub type ConnectionRecord = TcpConnection<TcpAccessLog>;

/// What a TCP connection's access-log line says besides its labels and bytes.
#[derive(Debug)]
pub struct TcpAccessLog {
    info: ConnectionInfo,
    start_time: SystemTime,
}

impl AccessLog for TcpAccessLog {
    fn revoked(&mut self, reason: &str) -> Option<ResponseFlag> {
        self.info.termination_details = Some(reason.to_owned());
        None
    }

    fn write(&self, end: &ConnectionEnd<'_>) {
        if self.info.access_log_disabled {
            return;
        }
        match &self.info.access_logs {
            None => info!(target: ACCESS_LOG, "{}", self.line(end)),
            Some(logs) => logs.write(&crate::access_log::ConnectionEntry {
                info: &self.info,
                end,
                start_time: UtcTime(self.start_time),
            }),
        }
    }
}

impl TcpAccessLog {
    /// The access-log line, in the field order of Istio's default text format for TCP.
    pub fn line(&self, end: &ConnectionEnd<'_>) -> String {
        let info = &self.info;
        let dash = |v: &str| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.to_owned()
            }
        };
        format!(
            "[{}] \"- - -\" 0 {} - {} \"-\" {} {} {} - \"-\" \"-\" \"-\" \"-\" \"{}\" {} - {} {} - -",
            humantime_utc(self.start_time),
            end.labels.response_flags,
            LogText(info.termination_details.as_deref().unwrap_or("-")),
            end.received,
            end.sent,
            end.duration.as_millis(),
            LogText(info.upstream_host.as_deref().unwrap_or("-")),
            LogText(info.upstream_cluster.as_deref().unwrap_or("-")),
            dash(&info.downstream_local),
            dash(&info.downstream_remote),
        )
    }
}

impl Metrics {
    /// Counts a TCP connection as opened and returns its record, which counts its bytes and
    /// closes it when dropped.
    pub fn connection_opened(&self, info: ConnectionInfo) -> ConnectionRecord {
        let labels = info.labels();
        let overrides = info
            .metric_overrides
            .as_ref()
            .filter(|o| o.changes_tcp())
            .map(|o| {
                overrides::TcpOverride::new(Arc::clone(o), &info, Arc::clone(&self.overridden))
            });
        let log = TcpAccessLog {
            info,
            start_time: SystemTime::now(),
        };
        match overrides {
            Some(overrides) => self.tcp.open_overridden(labels, Box::new(overrides), log),
            None => self.tcp.open(labels, log),
        }
    }
}
