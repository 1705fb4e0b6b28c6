//! DestinationRule, as Istio's `ValidateDestinationRule` (`validation.go`) and
//! `ValidateTLS` / `ValidateLocalityLbSetting` (`agent/validation.go`) check it.

use std::collections::{BTreeMap, BTreeSet};

use super::Findings;
use super::common::{
    ExportKind, check_duration, check_export_to, check_labels, check_workload_selector,
    is_zero_duration,
};
use super::names::{is_ip, validate_fqdn, validate_wildcard_domain};
use super::virtual_service::check_subset_name;
use crate::model::networking::*;

/// Envoy's limit on a maglev table.
const MAGLEV_TABLE_LIMIT: u64 = 5_000_011;

/// Topology labels that `failoverPriority` may not name together with `failover`.
const TOPOLOGY_LABELS: &[&str] = &[
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

pub fn validate(spec: &DestinationRuleSpec, namespace: &str, findings: &mut Findings) {
    findings.check("spec.host", validate_wildcard_domain(&spec.host));
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy(findings, "spec.trafficPolicy", namespace, policy);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if !names.insert(subset.name.as_str()) {
            findings.error(
                format!("{path}.name"),
                format!("duplicate subset names: {}", subset.name),
            );
        }
        check_subset_name(findings, format!("{path}.name"), &subset.name);
        check_labels(findings, &format!("{path}.labels"), &subset.labels);
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(
                findings,
                &format!("{path}.trafficPolicy"),
                namespace,
                policy,
            );
        }
    }
    let export_kind = if spec.workload_selector.is_some() {
        ExportKind::SelectedDestinationRule
    } else {
        ExportKind::Config
    };
    check_export_to(findings, namespace, &spec.export_to, export_kind);
    if let Some(selector) = &spec.workload_selector {
        check_workload_selector(findings, "spec.workloadSelector", selector);
    }
}

/// Istio's `validateTrafficPolicy`.
fn traffic_policy(findings: &mut Findings, path: &str, namespace: &str, policy: &TrafficPolicy) {
    if policy.load_balancer.is_none()
        && policy.connection_pool.is_none()
        && policy.outlier_detection.is_none()
        && policy.tls.is_none()
        && policy.port_level_settings.is_empty()
        && policy.tunnel.is_none()
        && policy.proxy_protocol.is_none()
        && policy.retry_budget.is_none()
    {
        findings.error(path, "traffic policy must have at least one field");
        return;
    }
    if policy.tunnel.is_some() && policy.proxy_protocol.is_some() {
        findings.error(path, "tunnel and proxyProtocol must not be set together");
        return;
    }
    policy_parts(
        findings,
        path,
        namespace,
        policy.load_balancer.as_ref(),
        policy.connection_pool.as_ref(),
        policy.outlier_detection.as_ref(),
        policy.tls.as_ref(),
    );
    for (i, port_policy) in policy.port_level_settings.iter().enumerate() {
        let port_path = format!("{path}.portLevelSettings[{i}]");
        if port_policy.port.is_none() {
            findings.error(
                format!("{port_path}.port"),
                "portTrafficPolicy must have valid port",
            );
        }
        if port_policy.load_balancer.is_none()
            && port_policy.connection_pool.is_none()
            && port_policy.outlier_detection.is_none()
            && port_policy.tls.is_none()
        {
            findings.error(
                &port_path,
                "port traffic policy must have at least one field",
            );
            continue;
        }
        policy_parts(
            findings,
            &port_path,
            namespace,
            port_policy.load_balancer.as_ref(),
            port_policy.connection_pool.as_ref(),
            port_policy.outlier_detection.as_ref(),
            port_policy.tls.as_ref(),
        );
    }
    if let Some(tunnel) = &policy.tunnel {
        tunnel_settings(findings, &format!("{path}.tunnel"), tunnel);
    }
    if let Some(budget) = &policy.retry_budget
        && let Some(percent) = budget.percent
        && !(0.0..=100.0).contains(&percent)
    {
        findings.error(
            format!("{path}.retryBudget.percent"),
            format!("percent {percent} must be in range [0, 100]"),
        );
    }
}

fn policy_parts(
    findings: &mut Findings,
    path: &str,
    namespace: &str,
    load_balancer: Option<&LoadBalancerSettings>,
    connection_pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(outlier) = outlier {
        outlier_detection(findings, &format!("{path}.outlierDetection"), outlier);
    }
    if let Some(pool) = connection_pool {
        connection_pool_settings(findings, &format!("{path}.connectionPool"), pool);
    }
    if let Some(lb) = load_balancer {
        load_balancer_settings(findings, &format!("{path}.loadBalancer"), lb, outlier);
    }
    if let Some(tls) = tls {
        client_tls(findings, &format!("{path}.tls"), namespace, tls);
    }
}

/// Istio's `validateTunnelSettings`.
fn tunnel_settings(findings: &mut Findings, path: &str, tunnel: &TunnelSettings) {
    if let Some(protocol) = tunnel.protocol.as_deref()
        && !matches!(protocol, "" | "CONNECT" | "POST")
    {
        findings.error(
            format!("{path}.protocol"),
            "tunnel protocol must be \"CONNECT\" or \"POST\"",
        );
    }
    if let Err(fqdn) = validate_fqdn(&tunnel.target_host)
        && !is_ip(&tunnel.target_host)
    {
        findings.error(
            format!("{path}.targetHost"),
            format!(
                "tunnel target host must be valid FQDN or IP address: {fqdn}; {} is not a valid IP",
                tunnel.target_host
            ),
        );
    }
    if !(1..=65535).contains(&tunnel.target_port) {
        findings.error(
            format!("{path}.targetPort"),
            format!(
                "tunnel target port is invalid: port number {} must be in the range 1..65535",
                tunnel.target_port
            ),
        );
    }
}

/// Istio's `validateOutlierDetection`.
fn outlier_detection(findings: &mut Findings, path: &str, outlier: &OutlierDetection) {
    if let Some(base) = &outlier.base_ejection_time {
        check_duration(findings, format!("{path}.baseEjectionTime"), base);
    }
    if outlier.consecutive_errors.is_some_and(|e| e != 0) {
        findings.warn(
            format!("{path}.consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if outlier.split_external_local_origin_errors != Some(true)
        && outlier
            .consecutive_local_origin_failures
            .is_some_and(|f| f > 0)
    {
        findings.error(
            format!("{path}.consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    if let Some(interval) = &outlier.interval {
        check_duration(findings, format!("{path}.interval"), interval);
    }
    for (field, value) in [
        ("maxEjectionPercent", outlier.max_ejection_percent),
        ("minHealthPercent", outlier.min_health_percent),
    ] {
        if let Some(value) = value
            && !(0..=100).contains(&value)
        {
            findings.error(
                format!("{path}.{field}"),
                format!("percentage {value} is not in range 0..100"),
            );
        }
    }
    for (i, code) in outlier
        .outlier_detection_http_error_codes
        .iter()
        .enumerate()
    {
        if !(100..=599).contains(code) {
            findings.error(
                format!("{path}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("HTTP status code {code} should be between 100 and 599"),
            );
        }
    }
}

/// Istio's `validateConnectionPool`.
fn connection_pool_settings(findings: &mut Findings, path: &str, pool: &ConnectionPoolSettings) {
    if pool.http.is_none() && pool.tcp.is_none() {
        findings.error(path, "connection pool must have at least one field");
        return;
    }
    if let Some(http) = &pool.http {
        for (field, value, reason) in [
            (
                "http1MaxPendingRequests",
                http.http1_max_pending_requests,
                "http1 max pending requests must be non-negative",
            ),
            (
                "http2MaxRequests",
                http.http2_max_requests,
                "http2 max requests must be non-negative",
            ),
            (
                "maxRequestsPerConnection",
                http.max_requests_per_connection,
                "max requests per connection must be non-negative",
            ),
            (
                "maxRetries",
                http.max_retries,
                "max retries must be non-negative",
            ),
            (
                "maxConcurrentStreams",
                http.max_concurrent_streams,
                "max concurrent streams must be non-negative",
            ),
        ] {
            if value.is_some_and(|v| v < 0) {
                findings.error(format!("{path}.http.{field}"), reason);
            }
        }
        if let Some(idle) = &http.idle_timeout {
            check_duration(findings, format!("{path}.http.idleTimeout"), idle);
        }
        if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            && http.use_client_protocol == Some(true)
        {
            findings.error(
                format!("{path}.http.useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(keepalive) = &http.http2_keep_alive {
            let keepalive_path = format!("{path}.http.http2KeepAlive");
            for (field, value) in [
                ("interval", &keepalive.interval),
                ("timeout", &keepalive.timeout),
            ] {
                match value {
                    Some(value) => {
                        check_duration(findings, format!("{keepalive_path}.{field}"), value)
                    }
                    None => findings.error(
                        format!("{keepalive_path}.{field}"),
                        format!("http2 keepalive {field} is required"),
                    ),
                }
            }
        }
    }
    if let Some(tcp) = &pool.tcp {
        if tcp.max_connections.is_some_and(|v| v < 0) {
            findings.error(
                format!("{path}.tcp.maxConnections"),
                "max connections must be non-negative",
            );
        }
        for (field, value) in [
            ("connectTimeout", &tcp.connect_timeout),
            ("maxConnectionDuration", &tcp.max_connection_duration),
        ] {
            if let Some(value) = value {
                check_duration(findings, format!("{path}.tcp.{field}"), value);
            }
        }
        // `0s` disables the idle timeout.
        if let Some(idle) = &tcp.idle_timeout
            && !is_zero_duration(idle)
        {
            check_duration(findings, format!("{path}.tcp.idleTimeout"), idle);
        }
        if let Some(keepalive) = &tcp.tcp_keepalive {
            for (field, value) in [("time", &keepalive.time), ("interval", &keepalive.interval)] {
                if let Some(value) = value {
                    check_duration(findings, format!("{path}.tcp.tcpKeepalive.{field}"), value);
                }
            }
        }
    }
}

/// Envoy's primality test (`source/common/common/utility.cc`), which Istio copies.
fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x & 1 == 0 {
        return false;
    }
    let limit = (x as f64).sqrt() as u64;
    (3..=limit)
        .step_by(2)
        .all(|factor| !x.is_multiple_of(factor))
}

/// Istio's `validateLoadBalancer`.
fn load_balancer_settings(
    findings: &mut Findings,
    path: &str,
    lb: &LoadBalancerSettings,
    outlier: Option<&OutlierDetection>,
) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        findings.error(path, "only one of simple or consistentHash may be set");
    }
    if let Some(hash) = &lb.consistent_hash {
        consistent_hash(findings, &format!("{path}.consistentHash"), hash);
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        findings.error(
            path,
            "only one of localityLbSetting and zoneAwareLbSetting can be set",
        );
    }
    if let Some(locality) = &lb.locality_lb_setting {
        locality_lb_setting(
            findings,
            &format!("{path}.localityLbSetting"),
            locality,
            outlier,
        );
    }
    if let Some(zone_aware) = &lb.zone_aware_lb_setting {
        zone_aware_lb_setting(
            findings,
            &format!("{path}.zoneAwareLbSetting"),
            zone_aware,
            outlier,
        );
    }
    if let Some(warmup) = &lb.warmup_duration_secs {
        check_duration(findings, format!("{path}.warmupDurationSecs"), warmup);
    }
    if let Some(warmup) = &lb.warmup {
        let warmup_path = format!("{path}.warmup");
        match &warmup.duration {
            None => findings.error(format!("{warmup_path}.duration"), "duration is required"),
            Some(duration) => check_duration(findings, format!("{warmup_path}.duration"), duration),
        }
        if let Some(minimum) = warmup.minimum_percent
            && !(0.0..=100.0).contains(&minimum)
        {
            findings.error(
                format!("{warmup_path}.minimumPercent"),
                "minimumPercent value should be less than or equal to 100",
            );
        }
        if warmup.aggression.is_some_and(|a| a <= 0.0) {
            findings.error(
                format!("{warmup_path}.aggression"),
                "aggression should be greater than 0",
            );
        }
    }
}

fn consistent_hash(findings: &mut Findings, path: &str, hash: &ConsistentHashLb) {
    let keys = [
        hash.http_header_name.is_some(),
        hash.http_cookie.is_some(),
        hash.use_source_ip.is_some(),
        hash.http_query_parameter_name.is_some(),
    ];
    if keys.iter().filter(|k| **k).count() > 1 {
        findings.error(
            path,
            "consistentHash may specify only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
        );
    }
    if hash.ring_hash.is_some() && hash.maglev.is_some() {
        findings.error(path, "only one of ringHash or maglev may be set");
    }
    if let Some(cookie) = &hash.http_cookie {
        if cookie.name.is_empty() {
            findings.error(
                format!("{path}.httpCookie.name"),
                "name required for HttpCookie",
            );
        }
        // Stricter than Istio, for safety: the waypoint writes these into a generated
        // cookie's `Set-Cookie`, which cannot carry a control character.
        let mut header_text = |field: String, text: &str| {
            if text.chars().any(|c| c.is_ascii_control() && c != '\t') {
                findings.error(
                    field,
                    "contains a control character, which a Set-Cookie header cannot carry",
                );
            }
        };
        header_text(format!("{path}.httpCookie.name"), &cookie.name);
        if let Some(cookie_path) = &cookie.path {
            header_text(format!("{path}.httpCookie.path"), cookie_path);
        }
        for (i, attribute) in cookie.attributes.iter().enumerate() {
            header_text(
                format!("{path}.httpCookie.attributes[{i}].name"),
                &attribute.name,
            );
            if let Some(value) = &attribute.value {
                header_text(format!("{path}.httpCookie.attributes[{i}].value"), value);
            }
        }
        let mut names = BTreeSet::new();
        for (i, attribute) in cookie.attributes.iter().enumerate() {
            let attribute_path = format!("{path}.httpCookie.attributes[{i}].name");
            if attribute.name.is_empty() {
                findings.error(attribute_path, "cookie attribute name cannot be empty");
            } else if !names.insert(attribute.name.as_str()) {
                findings.error(
                    attribute_path,
                    format!("duplicate cookie attribute name: {}", attribute.name),
                );
            }
        }
    }
    if hash.minimum_ring_size.is_some_and(|s| s != 0) {
        findings.warn(
            format!("{path}.minimumRingSize"),
            "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
        );
        if hash.ring_hash.is_some() || hash.maglev.is_some() {
            findings.error(
                format!("{path}.minimumRingSize"),
                "only one of MinimumRingSize or Maglev/Ringhash can be specified",
            );
        }
    }
    if let Some(maglev) = &hash.maglev {
        let size = maglev.table_size.unwrap_or(0);
        let table_path = format!("{path}.maglev.tableSize");
        if size == 0 {
            findings.error(&table_path, "tableSize must be set for maglev");
        }
        if size >= MAGLEV_TABLE_LIMIT {
            findings.error(
                &table_path,
                format!("tableSize must be less than {MAGLEV_TABLE_LIMIT} for maglev"),
            );
        }
        if !is_prime(size) {
            findings.error(&table_path, "tableSize must be a prime number for maglev");
        }
    }
}

/// Istio's `ValidateLocalityLbSetting`.
pub(super) fn locality_lb_setting(
    findings: &mut Findings,
    path: &str,
    lb: &LocalityLbSetting,
    outlier: Option<&OutlierDetection>,
) {
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        findings.error(
            path,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    if !lb.failover.is_empty()
        && let Some(label) = lb
            .failover_priority
            .iter()
            .find(|l| TOPOLOGY_LABELS.contains(&l.as_str()))
    {
        findings.error(
            format!("{path}.failoverPriority"),
            format!(
                "can not simultaneously set 'failover' and topology label '{label}' in 'failover_priority'"
            ),
        );
        return;
    }
    let mut sources = Vec::new();
    for (i, distribute) in lb.distribute.iter().enumerate() {
        let to_path = format!("{path}.distribute[{i}].to");
        sources.push(distribute.from.as_str());
        if distribute.to.values().any(|w| *w == 0 || *w > 100) {
            findings.error(&to_path, "locality weight must be in range [1, 100]");
            return;
        }
        let total: u64 = distribute.to.values().map(|w| u64::from(*w)).sum();
        if total != 100 {
            findings.error(&to_path, format!("total locality weight {total} != 100"));
            return;
        }
        findings.check(
            &to_path,
            validate_localities(distribute.to.keys().map(String::as_str)),
        );
    }
    findings.check(
        format!("{path}.distribute"),
        validate_localities(sources.into_iter()),
    );
    failovers(
        findings,
        path,
        &lb.failover,
        !lb.failover_priority.is_empty(),
        outlier,
        "locality lb failover",
        "only specify region",
    );
}

/// Istio's `ValidateZoneAwareLbSetting`.
fn zone_aware_lb_setting(
    findings: &mut Findings,
    path: &str,
    lb: &ZoneAwareLbSetting,
    outlier: Option<&OutlierDetection>,
) {
    for label in &lb.failover_priority {
        if TOPOLOGY_LABELS.contains(&label.as_str()) {
            findings.error(
                format!("{path}.failoverPriority"),
                format!(
                    "'failover_priority' for zone aware lb must not use topology label '{label}'; region- and zone-level routing are handled automatically"
                ),
            );
        }
    }
    failovers(
        findings,
        path,
        &lb.failover,
        !lb.failover_priority.is_empty(),
        outlier,
        "zone aware lb failover",
        "only specifies region; zone and subzone failover are handled automatically",
    );
}

/// The failover rules both kinds of load-balancer settings share; `priority`: whether
/// `failoverPriority` is set.
fn failovers(
    findings: &mut Findings,
    path: &str,
    failover: &[LocalityFailover],
    priority: bool,
    outlier: Option<&OutlierDetection>,
    what: &str,
    region_only: &str,
) {
    if (!failover.is_empty() || priority) && outlier.is_none() {
        findings.warn(
            path,
            "outlier detection policy must be provided for failover",
        );
    }
    for (i, failover) in failover.iter().enumerate() {
        let failover_path = format!("{path}.failover[{i}]");
        if failover.from == failover.to {
            let settings = if what.starts_with("locality") {
                "locality lb failover settings"
            } else {
                "zone aware lb failover settings"
            };
            findings.error(
                &failover_path,
                format!("{settings} must specify different regions"),
            );
        }
        if failover.from.contains('/') || failover.to.contains('/') {
            findings.error(&failover_path, format!("{what} {region_only}"));
        }
        if failover.from.contains('*') || failover.to.contains('*') {
            findings.error(
                &failover_path,
                format!("{what} region should not contain '*' wildcard"),
            );
        }
    }
}

/// Istio's `validateLocalities`: `region[/zone[/subzone]]`, a `*` only at the end, no overlap.
fn validate_localities<'a>(localities: impl Iterator<Item = &'a str>) -> Result<(), String> {
    // region -> zone -> subzones, `*` standing for "all".
    let mut seen: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for locality in localities {
        let stars = locality.matches('*').count();
        if stars > 1 || (stars == 1 && !locality.ends_with('*')) {
            return Err(format!(
                "locality {locality} wildcard '*' number can not exceed 1 and must be in the end"
            ));
        }
        let overlap = || {
            Err(format!(
                "locality {locality} overlap with previous specified ones"
            ))
        };
        if seen.contains_key("*") {
            return overlap();
        }
        let items: Vec<&str> = locality.splitn(3, '/').collect();
        if items.iter().any(|i| i.is_empty()) {
            return Err(format!(
                "locality {locality} must not contain empty region/zone/subzone info"
            ));
        }
        match items.as_slice() {
            [region] => {
                if seen.contains_key(region) {
                    return overlap();
                }
                seen.insert(region, BTreeMap::from([("*", BTreeSet::from(["*"]))]));
            }
            [region, zone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") || zones.contains_key(zone) {
                    return overlap();
                }
                zones.insert(zone, BTreeSet::from(["*"]));
            }
            [region, zone, subzone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") {
                    return overlap();
                }
                let subzones = zones.entry(zone).or_default();
                if subzones.contains("*") || !subzones.insert(subzone) {
                    return overlap();
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Istio's `ValidateTLS`.
fn client_tls(findings: &mut Findings, path: &str, namespace: &str, tls: &ClientTlsSettings) {
    let credential = tls.credential_name.as_deref().unwrap_or("");
    if let Some(resource) = credential.strip_prefix("configmap://") {
        let resource_namespace = resource.split_once('/').map_or(namespace, |(ns, _)| ns);
        let name = resource.rsplit('/').next().unwrap_or("");
        if name.is_empty() || resource.matches('/').count() > 1 {
            findings.error(
                format!("{path}.credentialName"),
                format!("invalid configmap:// credentialName: invalid resource name {resource:?}"),
            );
        } else if resource_namespace != namespace || namespace.is_empty() {
            findings.error(
                format!("{path}.credentialName"),
                format!("invalid configmap:// credentialName: namespace must match the configuration namespace {namespace:?}"),
            );
        }
    }
    let set = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
    let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
    if tls.insecure_skip_verify == Some(true) {
        if mode == ClientTlsMode::Simple
            && (set(&tls.ca_certificates)
                || !credential.is_empty()
                || !tls.subject_alt_names.is_empty())
        {
            findings.error(
                path,
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
        if mode == ClientTlsMode::Mutual
            && (set(&tls.ca_certificates) || !tls.subject_alt_names.is_empty())
        {
            findings.error(
                path,
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
    }
    if matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) && !credential.is_empty() {
        if set(&tls.client_certificate)
            || set(&tls.ca_certificates)
            || set(&tls.private_key)
            || set(&tls.ca_crl)
        {
            findings.error(
                path,
                "cannot specify client certificates or CA certificate or CA CRL If credentialName is set",
            );
        }
        return;
    }
    if mode == ClientTlsMode::Mutual {
        if !set(&tls.client_certificate) {
            findings.error(
                format!("{path}.clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if !set(&tls.private_key) {
            findings.error(
                format!("{path}.privateKey"),
                "private key required for mutual tls",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn primes_as_envoy_counts_them() {
        let primes: Vec<u64> = (0..30).filter(|n| super::is_prime(*n)).collect();
        assert_eq!(primes, [1, 2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(super::is_prime(65537));
        assert!(!super::is_prime(65536));
    }
}
