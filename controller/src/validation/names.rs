//! Name rules shared by the validators: DNS labels and domains (with Istio's wildcard rules),
//! Kubernetes label keys and values, IP addresses and CIDR blocks.

use std::net::IpAddr;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// RFC 1123 label: lower-case alphanumerics and `-`, starting and ending alphanumeric, ≤ 63.
pub fn is_dns1123_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= DNS1123_LABEL_MAX
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, ≤ 253 characters.
pub fn is_dns1123_subdomain(value: &str) -> bool {
    value.len() <= DNS1123_SUBDOMAIN_MAX && value.split('.').all(is_dns1123_label)
}

/// A label that may be `*` or start with `*` (Istio's `IsWildcardDNS1123Label`).
fn is_wildcard_dns1123_label(value: &str) -> bool {
    if value.is_empty() || value.len() > DNS1123_LABEL_MAX {
        return false;
    }
    if value == "*" {
        return true;
    }
    let rest = value.strip_prefix('*').unwrap_or(value);
    let bytes = rest.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-'
        && (value.starts_with('*') || bytes[0] != b'-')
}

fn check_domain_preconditions(domain: &str) -> Result<(), String> {
    if domain.len() > 255 {
        return Err(format!("domain name {domain:?} too long (max 255)"));
    }
    if domain.is_empty() {
        return Err("empty domain name not allowed".to_owned());
    }
    Ok(())
}

fn validate_dns1123_labels(whole: &str, domain: &str) -> Result<(), String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let top_level = labels[labels.len() - 1];
    if !top_level.is_empty() && top_level.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "domain name {whole:?} invalid (top level domain {top_level:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        // A trailing dot (`istio.io.`) is an unambiguous absolute name.
        if i == labels.len() - 1 && label.is_empty() && i > 0 {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {whole:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// A fully qualified (or short) DNS name without wildcards.
pub fn validate_fqdn(domain: &str) -> Result<(), String> {
    check_domain_preconditions(domain)?;
    validate_dns1123_labels(domain, domain)
}

/// A DNS name that may carry a wildcard in its first label only: `*.example.com`, `*`,
/// `reviews`, `reviews.default.svc.cluster.local` pass; `foo.*` and `a.*.com` do not.
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
        Some(rest) => validate_dns1123_labels(domain, rest),
        None => Ok(()),
    }
}

/// Whether two (possibly wildcard) hosts overlap: `*.foo.com` and `a.foo.com` do.
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    fn covers(wild: &str, other: &str) -> bool {
        match wild.strip_prefix('*') {
            Some(suffix) => {
                other.ends_with(suffix)
                    || other.strip_prefix('*').is_some_and(|o| o.ends_with(suffix))
            }
            None => wild == other,
        }
    }
    covers(a, b) || covers(b, a)
}

/// Whether host `a` is within host `b` (`a.foo.com` ⊆ `*.foo.com`).
pub fn host_is_subset(a: &str, b: &str) -> bool {
    match b.strip_prefix('*') {
        Some(suffix) => a.ends_with(suffix),
        None => a == b,
    }
}

pub fn is_ip(value: &str) -> bool {
    value.parse::<IpAddr>().is_ok()
}

/// `a.b.c.d`, `a.b.c.d/nn` or the IPv6 equivalents.
pub fn validate_ip_or_cidr(value: &str) -> Result<(), String> {
    match value.split_once('/') {
        Some((address, prefix)) => {
            let address: IpAddr = address
                .parse()
                .map_err(|_| format!("{value} is not a valid CIDR block"))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            match prefix.parse::<u8>() {
                Ok(bits) if bits <= max && !prefix.starts_with('+') => Ok(()),
                _ => Err(format!("{value} is not a valid CIDR block")),
            }
        }
        None if is_ip(value) => Ok(()),
        None => Err(format!("{value} is not a valid IP")),
    }
}

fn is_qualified_name_part(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// A Kubernetes label key: `[prefix/]name`, prefix a DNS subdomain, name a qualified name.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns1123_subdomain(prefix)
    {
        return Err(format!(
            "invalid label key {key:?}: prefix must be a DNS subdomain"
        ));
    }
    if !is_qualified_name_part(name) {
        return Err(format!(
            "invalid label key {key:?}: name must be 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        ));
    }
    Ok(())
}

/// A Kubernetes label value: empty, or a qualified name part.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name_part(value) {
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

    #[test]
    fn wildcard_domains_follow_istio() {
        let cases: &[(&str, bool)] = &[
            ("*.example.com", true),
            ("*", true),
            ("reviews", true),
            ("reviews.default.svc.cluster.local", true),
            ("istio.io.", true),
            ("*foo.example.com", true),
            ("foo.*", false),
            ("a.*.com", false),
            ("", false),
            ("UPPER.example.com", false),
            ("-bad.example.com", false),
            ("example.123", false),
            ("a..b", false),
        ];
        for (domain, ok) in cases {
            assert_eq!(validate_wildcard_domain(domain).is_ok(), *ok, "{domain}");
        }
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
    }
}
