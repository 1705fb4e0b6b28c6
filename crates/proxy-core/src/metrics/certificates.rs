//! The expiry of every workload certificate a proxy holds, one gauge per identity in seconds
//! since the epoch (`weft_workload_certificate_expiry_timestamp_seconds{identity=...}`), as
//! istiod reports its root's (`citadel_server_root_cert_expiry_timestamp`). Read from the
//! certificate source at scrape time, so an identity the proxy stopped holding disappears and a
//! renewal shows at once; `time() - ` it tells how long is left.

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

impl Collector for CertificateExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family = Family::<IdentityLabel, Gauge<f64, AtomicU64>>::default();
        for certificate in self.0.held() {
            let seconds = certificate
                .not_after()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            family
                .get_or_create(&IdentityLabel {
                    identity: certificate.identity().to_string(),
                })
                .set(seconds);
        }
        let metric = encoder.encode_descriptor(
            CERTIFICATE_EXPIRY,
            "When each workload certificate held expires, in seconds since the epoch",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

/// Reports the expiry of the certificates `source` holds in `registry`.
pub fn register_certificate_expiry(registry: &mut Registry, source: Arc<dyn CertificateSource>) {
    registry.register_collector(Box::new(CertificateExpiry(source)));
}
