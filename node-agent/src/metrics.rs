//! Interim interface of the agent metrics (replaced by the full registry).
use prometheus_client::{encoding::EncodeLabelSet, registry::Registry};

use crate::state::{Service, Workload};

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

impl ConnectionLabels {
    pub fn from_workloads(
        reporter: &str,
        _src: Option<&Workload>,
        _dst: Option<&Workload>,
        _dst_service: Option<&Service>,
        security_policy: &str,
    ) -> Self {
        Self {
            reporter: reporter.into(),
            response_flags: "-".into(),
            connection_security_policy: security_policy.into(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics;

impl Metrics {
    pub fn new(_registry: &mut Registry) -> Self {
        Self
    }
    pub fn connection_opened(&self, labels: ConnectionLabels) -> ConnectionGuard {
        ConnectionGuard { labels }
    }
}

#[derive(Debug)]
pub struct ConnectionGuard {
    labels: ConnectionLabels,
}

impl ConnectionGuard {
    pub fn add_sent(&self, _bytes: u64) {}
    pub fn add_received(&self, _bytes: u64) {}
    pub fn set_response_flags(&mut self, flags: &str) {
        self.labels.response_flags = flags.into();
    }
}
