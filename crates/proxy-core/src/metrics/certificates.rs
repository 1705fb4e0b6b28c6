//! The expiry of every workload certificate a proxy holds, one gauge per identity in seconds
//! since the epoch (`weft_workload_certificate_expiry_timestamp_seconds{identity=...}`), as
//! istiod reports its root's (`citadel_server_root_cert_expiry_timestamp`). Read from the
//! certificate source at scrape time, so an identity the proxy stopped holding disappears and a
//! renewal shows at once; `time() - ` it tells how long is left. The start of each
//! certificate's validity (`weft_workload_certificate_issue_timestamp_seconds`) is beside it, so
//! that an alert can judge the time left against the lifetime the proxy asked for: renewal
//! starts at half life, whatever the lifetime.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weft_identity::CertificateSource;

pub const CERTIFICATE_EXPIRY: &str = "weft_workload_certificate_expiry_timestamp_seconds";
pub const CERTIFICATE_ISSUE: &str = "weft_workload_certificate_issue_timestamp_seconds";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabel {
    /// The SPIFFE identity the certificate carries.
    identity: String,
}

struct CertificateExpiry(Arc<dyn CertificateSource>);

impl std::fmt::Debug for CertificateExpiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateExpiry").finish_non_exhaustive()
    }
}

fn epoch_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Collector for CertificateExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let expiry = Family::<IdentityLabel, Gauge<f64, AtomicU64>>::default();
        let issue = Family::<IdentityLabel, Gauge<f64, AtomicU64>>::default();
        for certificate in self.0.held() {
            let label = IdentityLabel {
                identity: certificate.identity().to_string(),
            };
            issue
                .get_or_create(&label)
                .set(epoch_seconds(certificate.not_before()));
            expiry
                .get_or_create(&label)
                .set(epoch_seconds(certificate.not_after()));
        }
        for (name, help, family) in [
            (
                CERTIFICATE_EXPIRY,
                "When each workload certificate held expires, in seconds since the epoch",
                &expiry,
            ),
            (
                CERTIFICATE_ISSUE,
                "When each workload certificate held became valid, in seconds since the epoch",
                &issue,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, family.metric_type())?;
            family.encode(metric)?;
        }
        Ok(())
    }
}

/// Reports the validity (issue and expiry) of the certificates `source` holds in `registry`.
pub fn register_certificate_expiry(registry: &mut Registry, source: Arc<dyn CertificateSource>) {
    registry.register_collector(Box::new(CertificateExpiry(source)));
}
