//! Istio's Gateway, as `ValidateGateway`, `validateServer` and `validateTLSOptions`
//! (`validation.go`) and `ValidateNamespaceSlashWildcardHostname` (`agent/validation.go`) check it.

use std::collections::BTreeSet;

use super::Findings;
use super::common::{Protocol, check_port};
use super::names::{is_dns1123_label, is_ip, validate_partial_wildcard, validate_wildcard_domain};
use crate::model::networking::*;

/// Cipher suites Istio knows (`security.ValidCipherSuites`).
const CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

pub fn validate(spec: &GatewaySpec, name: &str, findings: &mut Findings) {
    if !is_dns1123_label(name) {
        findings.error("metadata.name", format!("invalid gateway name: {name:?}"));
    }
    if spec.servers.is_empty() {
        findings.error("spec.servers", "gateway must have at least one server");
    }
    for (i, server) in spec.servers.iter().enumerate() {
        self::server(findings, &format!("spec.servers[{i}]"), server);
    }
    let mut port_names = BTreeSet::new();
    for (i, server) in spec.servers.iter().enumerate() {
        let Some(port) = &server.port else { continue };
        if !port_names.insert(port.name.as_str()) {
            findings.error(
                format!("spec.servers[{i}].port.name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    port.name
                ),
            );
        }
        if !Protocol::parse(&port.protocol).is_http()
            && server
                .tls
                .as_ref()
                .is_some_and(|t| t.https_redirect == Some(true))
        {
            findings.warn(
                format!("spec.servers[{i}].tls.httpsRedirect"),
                "tls.httpsRedirect should only be used with http servers",
            );
        }
    }
}

/// Istio's `validateServer`.
fn server(findings: &mut Findings, path: &str, server: &Server) {
    if server.hosts.is_empty() {
        findings.error(
            format!("{path}.hosts"),
            "server config must contain at least one host",
        );
    }
    for (j, host) in server.hosts.iter().enumerate() {
        gateway_host(findings, &format!("{path}.hosts[{j}]"), host);
    }
    let bind = server.bind.as_deref().unwrap_or("");
    let port_valid = server_port(findings, path, server.port.as_ref(), bind);
    if let Some(socket) = bind.strip_prefix("unix://") {
        if socket.is_empty() {
            findings.error(format!("{path}.bind"), "unix address must not be empty");
        } else if !socket.starts_with('@') && (!socket.starts_with('/') || socket.ends_with('/')) {
            findings.error(
                format!("{path}.bind"),
                format!("{socket} is not an absolute path to a file"),
            );
        }
        if server.port.as_ref().is_some_and(|p| p.number != 0) {
            findings.error(
                format!("{path}.port.number"),
                "port number must be 0 for unix domain socket",
            );
        }
    } else if !bind.is_empty() && !is_ip(bind) {
        findings.error(format!("{path}.bind"), format!("{bind} is not a valid IP"));
    }
    if let Some(tls) = &server.tls {
        tls_options(findings, &format!("{path}.tls"), tls);
    }
    let Some(port) = server.port.as_ref().filter(|_| port_valid) else {
        return;
    };
    let protocol = Protocol::parse(&port.protocol);
    match &server.tls {
        None if protocol.is_tls() => findings.error(
            format!("{path}.tls"),
            "server must have TLS settings for HTTPS/TLS protocols",
        ),
        Some(tls) if !protocol.is_tls() => {
            if protocol.is_http() {
                let passthrough = matches!(
                    tls.mode.unwrap_or(ServerTlsMode::Passthrough),
                    ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
                );
                let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
                if !passthrough
                    || set(&tls.ca_certificates)
                    || set(&tls.private_key)
                    || set(&tls.server_certificate)
                {
                    findings.error(
                        format!("{path}.tls"),
                        "server cannot have TLS settings for plain text HTTP ports",
                    );
                }
            } else {
                findings.error(
                    format!("{path}.tls"),
                    "server cannot have TLS settings for non HTTPS/TLS ports",
                );
            }
        }
        _ => {}
    }
}

/// Istio's `validateServerPort`; whether the port passed.
fn server_port(findings: &mut Findings, path: &str, port: Option<&ServerPort>, bind: &str) -> bool {
    let Some(port) = port else {
        findings.error(format!("{path}.port"), "port is required");
        return false;
    };
    let before = findings.errors.len();
    if Protocol::parse(&port.protocol) == Protocol::Unsupported {
        findings.error(
            format!("{path}.port.protocol"),
            format!(
                "invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                port.protocol
            ),
        );
    }
    if port.number > 0 || !bind.starts_with("unix://") {
        check_port(
            findings,
            format!("{path}.port.number"),
            u64::from(port.number),
        );
    }
    if port.target_port.is_some_and(|t| t > 0) {
        findings.error(
            format!("{path}.port.targetPort"),
            "targetPort has no impact on Gateways",
        );
    }
    if port.name.is_empty() {
        findings.error(format!("{path}.port.name"), "port name must be set");
    }
    findings.errors.len() == before
}

/// A Gateway host: `namespace/dnsName` or a bare (old-style) `dnsName`; the namespace `*`, `.`
/// or a DNS label; no short names and no partial wildcards (`*foo.com`).
fn gateway_host(findings: &mut Findings, path: &str, host: &str) {
    let dns_name = match host.split_once('/') {
        Some((namespace, dns_name)) => {
            if namespace.is_empty() || dns_name.is_empty() {
                findings.error(
                    path,
                    "config namespace and dnsName in host entry cannot be empty",
                );
            }
            if namespace != "*" && namespace != "." && !is_dns1123_label(namespace) {
                findings.error(
                    path,
                    format!("invalid namespace value {namespace:?} in gateway"),
                );
            }
            dns_name
        }
        None => host,
    };
    if dns_name != "*" && !dns_name.contains('.') {
        findings.error(path, "short names (non FQDN) are not allowed");
    }
    if let Err(reason) = validate_wildcard_domain(dns_name)
        && !is_ip(dns_name)
    {
        findings.error(path, reason);
    }
    findings.check(path, validate_partial_wildcard(dns_name));
}

/// Istio's `IsValidCipherSuite`: known names, `ALL`, empty, or anything that does not start
/// with a letter or digit (an OpenSSL-style exclusion such as `!aNULL`).
fn is_valid_cipher_suite(suite: &str) -> bool {
    suite.is_empty()
        || suite == "ALL"
        || !suite.chars().next().is_some_and(|c| c.is_alphanumeric())
        || CIPHER_SUITES.contains(&suite)
}

/// Istio's `validateTLSOptions`.
fn tls_options(findings: &mut Findings, path: &str, tls: &ServerTlsSettings) {
    let mode = tls.mode.unwrap_or(ServerTlsMode::Passthrough);
    let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
    if matches!(
        tls.min_protocol_version,
        Some(TlsProtocolVersion::V1_0 | TlsProtocolVersion::V1_1)
    ) && tls.cipher_suites.is_empty()
    {
        findings.warn(
            format!("{path}.minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers.",
        );
    }
    let mut invalid = BTreeSet::new();
    let mut valid = BTreeSet::new();
    let mut duplicate = BTreeSet::new();
    for suite in &tls.cipher_suites {
        if !is_valid_cipher_suite(suite) {
            invalid.insert(suite.as_str());
        } else if !valid.insert(suite.as_str()) {
            duplicate.insert(suite.as_str());
        }
    }
    if !invalid.is_empty() {
        findings.warn(
            format!("{path}.cipherSuites"),
            format!("ignoring invalid cipher suites: {invalid:?}"),
        );
    }
    if !duplicate.is_empty() {
        findings.warn(
            format!("{path}.cipherSuites"),
            format!("ignoring duplicate cipher suites: {duplicate:?}"),
        );
    }
    client_pins(findings, path, mode, tls);
    let credential_names = tls.credential_names();
    let certificates = tls.tls_certificates();
    // The CRD's bounds (minItems 1, maxItems 2: one RSA and one ECDSA certificate), which the
    // API server enforces before Istio's webhook sees the document.
    for (field, items, present) in [
        (
            "credentialNames",
            credential_names.len(),
            tls.credential_names.is_some(),
        ),
        (
            "tlsCertificates",
            certificates.len(),
            tls.tls_certificates.is_some(),
        ),
    ] {
        if present && !(1..=2).contains(&items) {
            findings.error(
                format!("{path}.{field}"),
                format!("{field} holds {items} items; one or two are allowed"),
            );
        }
    }
    if mode == ServerTlsMode::IstioMutual {
        for (field, reason, present) in [
            (
                "serverCertificate",
                "server certificate",
                set(&tls.server_certificate),
            ),
            ("privateKey", "private key", set(&tls.private_key)),
            ("caCertificates", "CA bundle", set(&tls.ca_certificates)),
            (
                "tlsCertificates",
                "tlsCertificates",
                !certificates.is_empty(),
            ),
            (
                "credentialName",
                "credentialName",
                set(&tls.credential_name),
            ),
            (
                "credentialNames",
                "credentialNames",
                !credential_names.is_empty(),
            ),
        ] {
            if present {
                findings.error(
                    format!("{path}.{field}"),
                    format!("ISTIO_MUTUAL TLS cannot have associated {reason}"),
                );
            }
        }
        return;
    }
    if matches!(
        mode,
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
    ) && (set(&tls.ca_crl)
        || set(&tls.server_certificate)
        || set(&tls.private_key)
        || set(&tls.ca_certificates)
        || !certificates.is_empty()
        || set(&tls.credential_name)
        || !credential_names.is_empty())
    {
        findings.warn(
            path,
            format!(
                "{} mode does not use certificates, they will be ignored",
                mode.as_str()
            ),
        );
    }
    let sources = usize::from(set(&tls.server_certificate) && set(&tls.private_key))
        + usize::from(set(&tls.credential_name))
        + usize::from(!credential_names.is_empty())
        + usize::from(!certificates.is_empty());
    if sources > 1 {
        findings.error(
            path,
            "only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified",
        );
    }
    let terminating = matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    if terminating && (set(&tls.credential_name) || !credential_names.is_empty()) {
        return;
    }
    if terminating {
        let prefix = if mode == ServerTlsMode::Simple {
            "SIMPLE TLS"
        } else {
            if !set(&tls.ca_certificates) {
                findings.error(
                    format!("{path}.caCertificates"),
                    "MUTUAL TLS requires a client CA bundle",
                );
            }
            "MUTUAL TLS"
        };
        if certificates.len() > 2 {
            findings.warn(
                format!("{path}.tlsCertificates"),
                format!("{prefix} can support up to 2 server certificates"),
            );
        }
        let pairs: Vec<(bool, bool)> = if certificates.is_empty() {
            vec![(set(&tls.server_certificate), set(&tls.private_key))]
        } else {
            certificates
                .iter()
                .map(|c| (set(&c.server_certificate), set(&c.private_key)))
                .collect()
        };
        for (certificate, key) in pairs {
            if !certificate {
                findings.error(
                    format!("{path}.serverCertificate"),
                    format!("{prefix} requires a server certificate"),
                );
            }
            if !key {
                findings.error(
                    format!("{path}.privateKey"),
                    format!("{prefix} requires a private key"),
                );
            }
        }
    }
    if set(&tls.ca_crl) {
        if set(&tls.credential_name) {
            findings.error(
                format!("{path}.caCrl"),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        if mode == ServerTlsMode::Simple {
            findings.error(
                format!("{path}.caCrl"),
                "CRL is not supported with SIMPLE TLS",
            );
        }
    }
}

/// `verifyCertificateSpki` and `verifyCertificateHash`. Istio hands them to Envoy for MUTUAL
/// and OPTIONAL_MUTUAL servers only (`ApplyCredentialSDSToServerCommonTLSContext`) and drops
/// them otherwise: a warning here. Envoy refuses the listener when a pin is not a SHA-256
/// digest (base64, or hex with optional colons); Istio does not check them, so the refusal is
/// ours, naming the pin, where Envoy's would only NACK the proxy's listeners.
fn client_pins(findings: &mut Findings, path: &str, mode: ServerTlsMode, tls: &ServerTlsSettings) {
    use base64::Engine;
    let mutual = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
    for (field, pins, digest) in [
        (
            "verifyCertificateSpki",
            &tls.verify_certificate_spki,
            (|pin: &str| {
                base64::engine::general_purpose::STANDARD
                    .decode(pin)
                    .is_ok_and(|bytes| bytes.len() == 32)
            }) as fn(&str) -> bool,
        ),
        (
            "verifyCertificateHash",
            &tls.verify_certificate_hash,
            |pin| {
                let hex = pin.replace(':', "");
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
            },
        ),
    ] {
        if pins.is_empty() {
            continue;
        }
        if !mutual {
            findings.warn(
                format!("{path}.{field}"),
                format!(
                    "{field} applies to MUTUAL and OPTIONAL_MUTUAL servers only, as in Istio; ignored with {}",
                    mode.as_str()
                ),
            );
            continue;
        }
        for (i, pin) in pins.iter().enumerate() {
            if !digest(pin) {
                let encoding = if field == "verifyCertificateSpki" {
                    "base64"
                } else {
                    "hex"
                };
                findings.error(
                    format!("{path}.{field}[{i}]"),
                    format!("{pin:?} is not a {encoding}-encoded SHA-256 digest"),
                );
            }
        }
    }
}
