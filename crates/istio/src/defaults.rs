//! What istiod and Envoy apply when configuration says nothing. The controller writes these
//! into what it sends where Istio's output would carry them; the waypoint applies them where a
//! field arrives empty.

use std::time::Duration;

/// The mesh's trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The cluster's DNS suffix (`<service>.<namespace>.svc.<suffix>`) when none is configured.
pub const DEFAULT_DOMAIN_SUFFIX: &str = "cluster.local";
/// The cluster's name in identities and metrics when none is configured.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// The control plane's own namespace (istiod's `istio-system`).
pub const DEFAULT_SYSTEM_NAMESPACE: &str = "istio-system";
/// The namespace whose selector-less policies apply mesh-wide: the system namespace unless
/// configured otherwise.
pub const DEFAULT_ROOT_NAMESPACE: &str = DEFAULT_SYSTEM_NAMESPACE;

/// Envoy's retry conditions when a route sets no retry policy (istiod's default).
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Retries after the first attempt when a route sets no policy (istiod's default).
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Status codes `retriable-status-codes` covers when a route names none (istiod sets 503).
pub const DEFAULT_RETRIABLE_STATUS_CODES: &[u16] = &[503];

/// Consecutive 5xx before ejection when `outlierDetection` sets no threshold (Envoy's default,
/// which Istio leaves in place).
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Consecutive local-origin failures before ejection when `splitExternalLocalOriginErrors` is
/// set and `consecutiveLocalOriginFailures` is not (Envoy's default, which Istio leaves in place).
pub const DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURE: u32 = 5;
/// Outlier detection's sweep interval when unset (Envoy's default).
pub const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
/// Base ejection time when unset (Envoy's default).
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Most of a cluster's endpoints that may be ejected at once when unset (Envoy's default).
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
