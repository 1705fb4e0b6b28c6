//! Name rules shared by the validators, as Istio's code has them (`pkg/config/labels`,
//! `pkg/config/validation/agent`, `pkg/config/host`) and, for object metadata, as Kubernetes has
//! them. The two differ: Istio's DNS-1123 labels (hosts, subset and port names, gateway names)
//! allow upper case, Kubernetes object names and label values do not.

use std::net::IpAddr;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// Istio's `labels.IsDNS1123Label`: `[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?`, at most 63.
pub fn is_dns1123_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= DNS1123_LABEL_MAX
        && bytes.iter().copied().all(is_label_byte)
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Kubernetes' RFC 1123 label (namespaces, Services, container names): lower case only.
pub fn is_k8s_dns1123_label(value: &str) -> bool {
    is_dns1123_label(value) && !value.bytes().any(|b| b.is_ascii_uppercase())
}

/// Kubernetes' RFC 1123 subdomain (most object names): lower-case labels joined by dots.
pub fn is_dns1123_subdomain(value: &str) -> bool {
    value.len() <= DNS1123_SUBDOMAIN_MAX && value.split('.').all(is_k8s_dns1123_label)
}

/// Kubernetes' `ValidateServiceAccountName`: a service account is a Kubernetes object, so its
/// name is an RFC 1123 subdomain. The name becomes a segment of the workload's SPIFFE identity.
pub fn validate_service_account(name: &str) -> Result<(), String> {
    if is_dns1123_subdomain(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid service account name {name:?}: it must be a lower-case RFC 1123 subdomain"
        ))
    }
}

/// Istio's `labels.IsWildcardDNS1123Label`: `*`, or a label optionally prefixed with `*` or
/// `*-` (`*foo`, `*-foo`).
pub fn is_wildcard_dns1123_label(value: &str) -> bool {
    if value.len() > DNS1123_LABEL_MAX {
        return false;
    }
    if value == "*" {
        return true;
    }
    let rest = value
        .strip_prefix("*-")
        .or_else(|| value.strip_prefix('*'))
        .unwrap_or(value);
    is_dns1123_label(rest)
}

/// Istio's `CheckDNS1123Preconditions`.
fn check_domain_preconditions(domain: &str) -> Result<(), String> {
    if domain.len() > 255 {
        return Err(format!("domain name {domain:?} too long (max 255)"));
    }
    if domain.is_empty() {
        return Err("empty domain name not allowed".to_owned());
    }
    Ok(())
}

/// Istio's `ValidateDNS1123Labels`: every label valid, the top-level domain not all-numeric, a
/// trailing dot allowed (`istio.io.`).
fn validate_dns1123_labels(domain: &str) -> Result<(), String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let top_level = labels[labels.len() - 1];
    if !top_level.is_empty() && top_level.parse::<i64>().is_ok() {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {top_level:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        if i == labels.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// Istio's `ValidateFQDN`: a DNS name (short or fully qualified) without wildcards.
pub fn validate_fqdn(domain: &str) -> Result<(), String> {
    check_domain_preconditions(domain)?;
    validate_dns1123_labels(domain)
}

/// Istio's `ValidateWildcardDomain`: a DNS name whose first label may be a wildcard label:
/// `*.example.com`, `*`, `*foo.example.com`, `reviews` pass; `foo.*` and `a.*.com` do not.
pub fn validate_wildcard_domain(domain: &str) -> Result<(), String> {
    check_domain_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(rest) => validate_dns1123_labels(rest),
        None => Ok(()),
    }
}

/// Istio's `ValidatePartialWildCard`: `*` alone or a `*.` prefix, nothing like `*foo.com`.
pub fn validate_partial_wildcard(host: &str) -> Result<(), String> {
    if host.contains('*') && host.len() != 1 && !host.starts_with("*.") {
        return Err(format!("partial wildcard {host:?} not allowed"));
    }
    Ok(())
}

fn is_wildcarded(host: &str) -> bool {
    host.starts_with('*')
}

/// Istio's `host.Name.Matches`: whether two (possibly wildcard) hosts overlap.
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    match (is_wildcarded(a), is_wildcarded(b)) {
        (true, true) if a.len() < b.len() => b[1..].ends_with(&a[1..]),
        (true, true) => a[1..].ends_with(&b[1..]),
        (true, false) => b.ends_with(&a[1..]),
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

/// Istio's `host.Name.SubsetOf`: whether every name `a` matches is matched by `b`.
pub fn host_is_subset(a: &str, b: &str) -> bool {
    match (is_wildcarded(a), is_wildcarded(b)) {
        (true, true) => a.len() >= b.len() && a[1..].ends_with(&b[1..]),
        (true, false) => false,
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

pub fn is_ip(value: &str) -> bool {
    value.parse::<IpAddr>().is_ok()
}

/// Istio's `ValidateIPAddress`.
pub fn validate_ip(value: &str) -> Result<(), String> {
    if is_ip(value) {
        Ok(())
    } else {
        Err(format!("{value} is not a valid IP"))
    }
}

/// Istio's `ValidateIPSubnet`: `a.b.c.d`, `a.b.c.d/nn` or the IPv6 equivalents.
pub fn validate_ip_or_cidr(value: &str) -> Result<(), String> {
    if value.matches('/').count() != 1 {
        return validate_ip(value);
    }
    let (address, prefix) = value.split_once('/').unwrap_or((value, ""));
    let invalid = || format!("{value} is not a valid CIDR block");
    let address: IpAddr = address.parse().map_err(|_| invalid())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let digits = !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit());
    match prefix.parse::<u8>() {
        Ok(bits) if digits && bits <= max && !(prefix.len() > 1 && prefix.starts_with('0')) => {
            Ok(())
        }
        _ => Err(invalid()),
    }
}

/// Kubernetes' and Istio's qualified name: alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric.
fn is_qualified_name(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain (at most 253), the name a qualified
/// name of at most 63. Istio's `validateTagKey` lets the prefix's labels carry upper case.
fn label_key(key: &str, istio: bool) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let labels_ok = if istio {
            prefix.split('.').all(is_dns1123_label)
        } else {
            is_dns1123_subdomain(prefix)
        };
        if !labels_ok || prefix.len() > DNS1123_SUBDOMAIN_MAX {
            return Err(format!("invalid tag key: {key:?}"));
        }
    }
    if !is_qualified_name(name) {
        return Err(format!("invalid tag key: {key:?}"));
    }
    if name.len() > DNS1123_LABEL_MAX {
        return Err(format!("invalid tag key: {key:?} (name is too long)"));
    }
    Ok(())
}

/// Istio's `labels.Instance.Validate`, for the labels Istio's resources carry (subset labels,
/// source labels, endpoint labels): values have no length limit there.
pub fn validate_istio_label(key: &str, value: &str) -> Result<(), String> {
    label_key(key, true)?;
    if !value.is_empty() && !is_qualified_name(value) {
        return Err(format!("invalid tag value: {value:?}"));
    }
    Ok(())
}

/// A Kubernetes label key (object metadata).
pub fn validate_label_key(key: &str) -> Result<(), String> {
    label_key(key, false)
}

/// A Kubernetes label value (object metadata): empty, or a qualified name of at most 63.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (is_qualified_name(value) && value.len() <= DNS1123_LABEL_MAX) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: must be empty or 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Istio's `ValidateWildcardDomain` cases (`pkg/config/validation/agent`).
    #[test]
    fn wildcard_domains_follow_istio() {
        let cases: &[(&str, bool)] = &[
            ("*.example.com", true),
            ("*", true),
            ("reviews", true),
            ("reviews.default.svc.cluster.local", true),
            ("istio.io.", true),
            ("*foo.example.com", true),
            ("*-foo.example.com", true),
            ("UPPER.example.com", true),
            ("foo.*", false),
            ("a.*.com", false),
            ("", false),
            ("-bad.example.com", false),
            ("example.123", false),
            ("a..b", false),
            ("**.example.com", false),
        ];
        for (domain, ok) in cases {
            assert_eq!(validate_wildcard_domain(domain).is_ok(), *ok, "{domain}");
        }
    }

    #[test]
    fn istio_labels_allow_upper_case_kubernetes_names_do_not() {
        assert!(is_dns1123_label("V1"));
        assert!(!is_k8s_dns1123_label("V1"));
        assert!(!is_dns1123_subdomain("Reviews"));
        assert!(is_dns1123_subdomain("reviews.v1"));
    }

    #[test]
    fn label_keys_and_values() {
        assert!(validate_label_key("app").is_ok());
        assert!(validate_label_key("istio.io/use-waypoint").is_ok());
        assert!(validate_label_key("app.kubernetes.io/name").is_ok());
        assert!(validate_label_key("bad key").is_err());
        assert!(validate_label_key("Bad_Prefix/x").is_err());
        assert!(validate_label_key("").is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("v1").is_ok());
        assert!(validate_label_value("-v1").is_err());
        assert!(validate_label_value(&"a".repeat(64)).is_err());
        assert!(validate_istio_label("version", &"a".repeat(64)).is_ok());
        assert!(validate_istio_label("Example.COM/app", "v1").is_ok());
    }

    #[test]
    fn cidrs_and_overlap() {
        assert!(validate_ip_or_cidr("10.0.0.0/8").is_ok());
        assert!(validate_ip_or_cidr("2001:db8::/32").is_ok());
        assert!(validate_ip_or_cidr("10.0.0.1").is_ok());
        assert!(validate_ip_or_cidr("10.0.0.0/33").is_err());
        assert!(validate_ip_or_cidr("example.com").is_err());
        assert!(hosts_overlap("*.foo.com", "a.foo.com"));
        assert!(hosts_overlap("*.com", "*.foo.com"));
        assert!(!hosts_overlap("a.foo.com", "b.foo.com"));
        assert!(host_is_subset("a.foo.com", "*.foo.com"));
        assert!(!host_is_subset("foo.com", "*.foo.com"));
        assert!(!host_is_subset("*.foo.com", "a.foo.com"));
    }
}
