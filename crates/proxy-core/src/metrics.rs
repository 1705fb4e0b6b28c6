//! Istio's metrics as both proxies report them: one typed label set ([`labels`]) and the TCP
//! families with their per-connection record ([`tcp`]). The waypoint's request families use the
//! same labels; the expiry of the workload certificates a proxy holds ([`certificates`]); and
//! what every Weft process reports about itself, proxies and controller alike ([`process`]).

pub mod certificates;
pub mod labels;
pub mod process;
pub mod tcp;

pub use certificates::{CERTIFICATE_EXPIRY, CERTIFICATE_ISSUE, register_certificate_expiry};
pub use labels::{
    LabelPairs, PEER_LABEL_VALUES, Peer, PeerLabels, Reporter, RequestLabels, RequestProtocol,
    ResponseFlag, ResponseFlags, SecurityPolicy, Series, Service, TcpLabels, UNKNOWN,
    is_label_name,
};
pub use process::{Component, register_process_metrics};
pub use tcp::{
    ACCESS_LOG, AccessLog, ConnectionEnd, LabelKey, LogText, TcpConnection, TcpMetric, TcpMetrics,
    TcpSeriesOverride,
};

#[cfg(test)]
mod tests;
