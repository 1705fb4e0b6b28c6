//! Validation of VirtualService, DestinationRule, ServiceEntry and Gateway.

use std::collections::BTreeSet;

use super::names::{
    host_is_subset, hosts_overlap, is_dns1123_label, is_ip, validate_fqdn, validate_ip_or_cidr,
    validate_wildcard_domain,
};
use super::{
    Findings, check_duration, check_export_to, check_header_operations, check_labels,
    check_percentage, check_port, check_string_match, check_workload_selector, compile_regex,
    duration_at_least_ms,
};
use crate::model::networking::*;

/// Retry conditions Envoy understands in `x-envoy-retry-on` and `x-envoy-retry-grpc-on`.
const RETRY_ON_POLICIES: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status code names accepted by `fault.abort.grpcStatus`.
const GRPC_STATUS_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

/// Protocols Istio's `protocol.Parse` knows (case-insensitive).
const PROTOCOLS: &[&str] = &[
    "TCP",
    "UDP",
    "GRPC",
    "GRPC-WEB",
    "HTTP",
    "HTTP_PROXY",
    "HTTP2",
    "HTTPS",
    "TLS",
    "MONGO",
    "REDIS",
    "MYSQL",
];

const MESH_GATEWAY: &str = "mesh";

fn check_protocol(findings: &mut Findings, path: impl std::fmt::Display, protocol: &str) {
    if !PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(protocol)) {
        findings.error(
            path,
            format!(
                "unrecognized protocol {protocol:?}, supported protocols are {}",
                PROTOCOLS.join(", ")
            ),
        );
    }
}

fn check_gateway_names(findings: &mut Findings, path: &str, gateways: &[String]) {
    for (i, gateway) in gateways.iter().enumerate() {
        let field = format!("{path}[{i}]");
        match gateway.split_once('/') {
            None => findings.check(&field, validate_fqdn(gateway)),
            Some((namespace, name)) => {
                if namespace.is_empty() || name.is_empty() {
                    findings.error(&field, "config namespace and gateway name cannot be empty");
                } else {
                    if !is_dns1123_label(namespace) {
                        findings.error(
                            &field,
                            format!("invalid value for namespace: {namespace:?}"),
                        );
                    }
                    if !is_dns1123_label(name) {
                        findings.error(&field, format!("invalid value for gateway name: {name:?}"));
                    }
                }
            }
        }
    }
}

fn check_subset_name(findings: &mut Findings, path: impl std::fmt::Display, name: &str) {
    if name.is_empty() {
        findings.error(path, "subset name cannot be empty");
    } else if !is_dns1123_label(name) {
        findings.error(path, format!("subset name is invalid: {name}"));
    }
}

fn check_destination(findings: &mut Findings, path: &str, destination: &Destination) {
    if destination.host == "*" {
        findings.error(format!("{path}.host"), "invalid destination host *");
    } else {
        findings.check(
            format!("{path}.host"),
            validate_wildcard_domain(&destination.host),
        );
    }
    if let Some(subset) = &destination.subset {
        check_subset_name(findings, format!("{path}.subset"), subset);
    }
    if let Some(port) = &destination.port {
        check_port(
            findings,
            format!("{path}.port.number"),
            u64::from(port.number),
        );
    }
}

/// Shared by HTTP, TCP and TLS routes: each entry needs a destination, weights are ≥ 0 and,
/// with several destinations, must not all be zero (Istio normalises the rest).
fn check_weights<'a>(
    findings: &mut Findings,
    path: &str,
    routes: impl Iterator<Item = (Option<&'a Destination>, Option<i32>)>,
) {
    let mut total: i64 = 0;
    let mut count = 0;
    for (i, (destination, weight)) in routes.enumerate() {
        count += 1;
        let entry = format!("{path}[{i}]");
        match destination {
            Some(destination) => {
                check_destination(findings, &format!("{entry}.destination"), destination)
            }
            None => findings.error(format!("{entry}.destination"), "destination is required"),
        }
        let weight = weight.unwrap_or(0);
        if weight < 0 {
            findings.error(format!("{entry}.weight"), format!("weight {weight} < 0"));
        }
        total += i64::from(weight);
    }
    if count > 1 && total == 0 {
        findings.error(path, "total destination weight = 0");
    }
}

pub(crate) fn virtual_service(spec: &VirtualServiceSpec, namespace: &str, findings: &mut Findings) {
    let delegate = spec.hosts.is_empty();
    if delegate {
        if !spec.gateways.is_empty() {
            findings.error(
                "spec.gateways",
                "delegate virtual service must have no gateways specified",
            );
        }
        if !spec.tls.is_empty() {
            findings.error(
                "spec.tls",
                "delegate virtual service must have no tls route specified",
            );
        }
        if !spec.tcp.is_empty() {
            findings.error(
                "spec.tcp",
                "delegate virtual service must have no tcp route specified",
            );
        }
    }
    check_gateway_names(findings, "spec.gateways", &spec.gateways);
    let applies_to_mesh =
        spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == MESH_GATEWAY);

    let mut all_hosts_valid = true;
    for (i, host) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if let Err(reason) = validate_wildcard_domain(host) {
            if !is_ip(host) {
                findings.error(&path, reason);
                all_hosts_valid = false;
            }
        } else if applies_to_mesh && host == "*" {
            findings.error(
                &path,
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            );
            all_hosts_valid = false;
        }
    }
    if all_hosts_valid {
        for (i, a) in spec.hosts.iter().enumerate() {
            for b in &spec.hosts[i + 1..] {
                if hosts_overlap(a, b) {
                    findings.error(
                        format!("spec.hosts[{i}]"),
                        format!("duplicate hosts in virtual service: {a} & {b}"),
                    );
                }
            }
        }
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        findings.error(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    for (i, route) in spec.http.iter().enumerate() {
        http_route(findings, &format!("spec.http[{i}]"), route, delegate);
    }
    for (i, route) in spec.tls.iter().enumerate() {
        tls_route(findings, &format!("spec.tls[{i}]"), route, &spec.hosts);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        let path = format!("spec.tcp[{i}]");
        for (j, m) in route.matches.iter().enumerate() {
            l4_match(findings, &format!("{path}.match[{j}]"), m);
        }
        if route.route.is_empty() {
            findings.error(format!("{path}.route"), "TCP route is required");
        }
        check_weights(
            findings,
            &format!("{path}.route"),
            route
                .route
                .iter()
                .map(|r| (r.destination.as_ref(), r.weight)),
        );
    }
    check_export_to(findings, namespace, &spec.export_to, false);
}

fn l4_match(findings: &mut Findings, path: &str, m: &L4MatchAttributes) {
    for (k, subnet) in m.destination_subnets.iter().enumerate() {
        findings.check(
            format!("{path}.destinationSubnets[{k}]"),
            validate_ip_or_cidr(subnet),
        );
    }
    if let Some(port) = m.port {
        check_port(findings, format!("{path}.port"), u64::from(port));
    }
    check_labels(findings, &format!("{path}.sourceLabels"), &m.source_labels);
    check_gateway_names(findings, &format!("{path}.gateways"), &m.gateways);
    check_source_namespace(findings, path, m.source_namespace.as_deref());
}

fn check_source_namespace(findings: &mut Findings, path: &str, namespace: Option<&str>) {
    if let Some(ns) = namespace
        && !is_dns1123_label(ns)
    {
        findings.error(
            format!("{path}.sourceNamespace"),
            format!("sourceNamespace match {ns} is invalid"),
        );
    }
}

fn tls_route(findings: &mut Findings, path: &str, route: &TlsRoute, hosts: &[String]) {
    if route.matches.is_empty() {
        findings.error(
            format!("{path}.match"),
            "TLS route must have at least one match condition",
        );
    }
    for (j, m) in route.matches.iter().enumerate() {
        let match_path = format!("{path}.match[{j}]");
        if m.sni_hosts.is_empty() {
            findings.error(
                format!("{match_path}.sniHosts"),
                "TLS match must have at least one SNI host",
            );
        }
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            let sni_path = format!("{match_path}.sniHosts[{k}]");
            if let Err(reason) = validate_wildcard_domain(sni) {
                if !is_ip(sni) {
                    findings.error(&sni_path, reason);
                }
            } else if !hosts.iter().any(|h| host_is_subset(sni, h)) {
                findings.error(
                    &sni_path,
                    format!(
                        "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                        hosts.join(", ")
                    ),
                );
            }
        }
        for (k, subnet) in m.destination_subnets.iter().enumerate() {
            findings.check(
                format!("{match_path}.destinationSubnets[{k}]"),
                validate_ip_or_cidr(subnet),
            );
        }
        if let Some(port) = m.port {
            check_port(findings, format!("{match_path}.port"), u64::from(port));
        }
        check_labels(
            findings,
            &format!("{match_path}.sourceLabels"),
            &m.source_labels,
        );
        check_gateway_names(findings, &format!("{match_path}.gateways"), &m.gateways);
        check_source_namespace(findings, &match_path, m.source_namespace.as_deref());
    }
    if route.route.is_empty() {
        findings.error(format!("{path}.route"), "TLS route is required");
    }
    check_weights(
        findings,
        &format!("{path}.route"),
        route
            .route
            .iter()
            .map(|r| (r.destination.as_ref(), r.weight)),
    );
}

fn http_route(findings: &mut Findings, path: &str, route: &HttpRoute, delegate: bool) {
    // Which action the route takes: exactly one of route, redirect, directResponse, delegate.
    let has_route = !route.route.is_empty();
    if route.delegate.is_some() {
        if delegate {
            findings.error(
                format!("{path}.delegate"),
                "delegate HTTP route cannot contain delegate",
            );
        }
        if route.redirect.is_some() {
            findings.error(
                format!("{path}.redirect"),
                "root HTTP route must not specify redirect",
            );
        }
        if has_route {
            findings.error(
                format!("{path}.route"),
                "root HTTP route must not specify route",
            );
        }
    } else if let Some(_redirect) = &route.redirect {
        if has_route {
            findings.error(
                format!("{path}.redirect"),
                "HTTP route cannot contain both route and redirect",
            );
        }
        if route.fault.is_some() {
            findings.error(
                format!("{path}.redirect"),
                "HTTP route cannot contain both fault and redirect",
            );
        }
        if route.rewrite.is_some() {
            findings.error(
                format!("{path}.redirect"),
                "HTTP route rule cannot contain both rewrite and redirect",
            );
        }
        if route.direct_response.is_some() {
            findings.error(
                format!("{path}.directResponse"),
                "HTTP route cannot contain both directResponse and redirect",
            );
        }
    } else if route.direct_response.is_some() {
        if has_route {
            findings.error(
                format!("{path}.directResponse"),
                "HTTP route cannot contain both route and directResponse",
            );
        }
        if route.fault.is_some() {
            findings.error(
                format!("{path}.directResponse"),
                "HTTP route cannot contain both fault and directResponse",
            );
        }
        if route.rewrite.is_some() {
            findings.error(
                format!("{path}.directResponse"),
                "HTTP route cannot contain both rewrite and directResponse",
            );
        }
    } else if !has_route {
        findings.error(path, "HTTP route, redirect or directResponse is required");
    }

    for (j, m) in route.matches.iter().enumerate() {
        http_match(findings, &format!("{path}.match[{j}]"), m, delegate);
    }
    if let Some(headers) = &route.headers {
        if let Some(request) = &headers.request {
            check_header_operations(findings, &format!("{path}.headers.request"), request, true);
        }
        if let Some(response) = &headers.response {
            check_header_operations(
                findings,
                &format!("{path}.headers.response"),
                response,
                false,
            );
        }
    }
    if let Some(cors) = &route.cors_policy {
        cors_policy(findings, &format!("{path}.corsPolicy"), cors);
    }
    if let Some(fault) = &route.fault {
        fault_injection(findings, &format!("{path}.fault"), fault);
    }
    if let Some(percent) = route.mirror_percent
        && percent > 100
    {
        findings.error(
            format!("{path}.mirrorPercent"),
            format!("mirror_percent must have a max value of 100 (it has {percent})"),
        );
    }
    if let Some(percentage) = &route.mirror_percentage {
        let value = percentage.value;
        if value > 100.0 {
            findings.error(
                format!("{path}.mirrorPercentage.value"),
                format!("mirror_percentage must have a max value of 100 (it has {value})"),
            );
        }
        if value < 0.0 {
            findings.error(
                format!("{path}.mirrorPercentage.value"),
                format!("mirror_percentage must have a min value of 0 (it has {value})"),
            );
        }
    }
    if let Some(mirror) = &route.mirror {
        check_destination(findings, &format!("{path}.mirror"), mirror);
        if !route.mirrors.is_empty() {
            findings.error(
                format!("{path}.mirrors"),
                "cannot specify both mirror and mirrors",
            );
        }
    }
    for (j, mirror) in route.mirrors.iter().enumerate() {
        let mirror_path = format!("{path}.mirrors[{j}]");
        match &mirror.destination {
            Some(destination) => {
                check_destination(findings, &format!("{mirror_path}.destination"), destination)
            }
            None => findings.error(
                format!("{mirror_path}.destination"),
                "destination is required for mirrors",
            ),
        }
        if let Some(percentage) = &mirror.percentage {
            check_percentage(
                findings,
                format!("{mirror_path}.percentage.value"),
                percentage,
            );
        }
    }
    if let Some(redirect) = &route.redirect {
        http_redirect(findings, &format!("{path}.redirect"), redirect);
    }
    if let Some(response) = &route.direct_response {
        direct_response(findings, &format!("{path}.directResponse"), response);
    }
    if let Some(retries) = &route.retries {
        http_retry(findings, &format!("{path}.retries"), retries);
    }
    if let Some(rewrite) = &route.rewrite {
        http_rewrite(
            findings,
            &format!("{path}.rewrite"),
            rewrite,
            route.headers.as_ref(),
        );
    }
    check_weights(
        findings,
        &format!("{path}.route"),
        route
            .route
            .iter()
            .map(|r| (r.destination.as_ref(), r.weight)),
    );
    for (j, destination) in route.route.iter().enumerate() {
        if let Some(headers) = &destination.headers {
            if let Some(request) = &headers.request {
                check_header_operations(
                    findings,
                    &format!("{path}.route[{j}].headers.request"),
                    request,
                    true,
                );
            }
            if let Some(response) = &headers.response {
                check_header_operations(
                    findings,
                    &format!("{path}.route[{j}].headers.response"),
                    response,
                    false,
                );
            }
        }
    }
    if let Some(timeout) = &route.timeout {
        // `0s` disables the timeout, which Istio allows here.
        let disabled = timeout
            .parse()
            .is_ok_and(|d| !d.negative && d.magnitude.is_zero());
        if !disabled {
            check_duration(findings, format!("{path}.timeout"), timeout);
        }
    }
}

fn http_match(findings: &mut Findings, path: &str, m: &HttpMatchRequest, delegate: bool) {
    let single = [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ];
    for (field, value) in single {
        if let Some(value) = value {
            if delegate && value.regex.is_some() {
                findings.error(
                    format!("{path}.{field}"),
                    format!("{field} match does not support regex match for delegating"),
                );
            }
            check_string_match(findings, &format!("{path}.{field}"), value);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("queryParams", &m.query_params),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, value) in map {
            let entry = format!("{path}.{field}.{name}");
            if name.is_empty() {
                findings.error(&entry, "header name cannot be empty");
            }
            check_string_match(findings, &entry, value);
        }
    }
    if let Some(port) = m.port {
        check_port(findings, format!("{path}.port"), u64::from(port));
    }
    check_labels(findings, &format!("{path}.sourceLabels"), &m.source_labels);
    check_gateway_names(findings, &format!("{path}.gateways"), &m.gateways);
    check_source_namespace(findings, path, m.source_namespace.as_deref());
}

fn cors_policy(findings: &mut Findings, path: &str, cors: &CorsPolicy) {
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        let entry = format!("{path}.allowOrigins[{i}]");
        let value = origin
            .exact
            .as_deref()
            .or(origin.prefix.as_deref())
            .or(origin.regex.as_deref())
            .unwrap_or("");
        if value.is_empty() {
            findings.error(
                &entry,
                "'' is not a valid match type for CORS allow origins",
            );
        }
        check_string_match(findings, &entry, origin);
    }
    for (i, method) in cors.allow_methods.iter().enumerate() {
        if !HTTP_METHODS.contains(&method.as_str()) {
            findings.error(
                format!("{path}.allowMethods[{i}]"),
                format!("{method:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (i, name) in list.iter().enumerate() {
            if name.is_empty() {
                findings.error(
                    format!("{path}.{field}[{i}]"),
                    "header name cannot be empty",
                );
            }
        }
    }
    if let Some(max_age) = &cors.max_age {
        match duration_at_least_ms(max_age) {
            Ok(d) if d.subsec_nanos() != 0 => {
                findings.error(
                    format!("{path}.maxAge"),
                    "max_age duration is accurate only to seconds precision",
                );
            }
            Ok(_) => {}
            Err(reason) => findings.error(format!("{path}.maxAge"), reason),
        }
    }
}

fn fault_injection(findings: &mut Findings, path: &str, fault: &HttpFaultInjection) {
    if fault.abort.is_none() && fault.delay.is_none() {
        findings.error(
            path,
            "HTTP fault injection must have an abort and/or a delay",
        );
    }
    if let Some(abort) = &fault.abort {
        let abort_path = format!("{path}.abort");
        if let Some(percentage) = &abort.percentage {
            check_percentage(
                findings,
                format!("{abort_path}.percentage.value"),
                percentage,
            );
        }
        let kinds = [
            abort.http_status.is_some(),
            abort.grpc_status.is_some(),
            abort.http2_error.is_some(),
        ];
        match kinds.iter().filter(|k| **k).count() {
            0 => findings.error(
                &abort_path,
                "abort must specify one of httpStatus, grpcStatus or http2Error",
            ),
            1 => {}
            _ => findings.error(
                &abort_path,
                "abort may specify only one of httpStatus, grpcStatus or http2Error",
            ),
        }
        if let Some(status) = abort.http_status
            && !(200..=599).contains(&status)
        {
            findings.error(
                format!("{abort_path}.httpStatus"),
                format!("HTTP status {status} is not in range 200-599"),
            );
        }
        if let Some(status) = &abort.grpc_status
            && !GRPC_STATUS_NAMES.contains(&status.as_str())
        {
            findings.error(
                format!("{abort_path}.grpcStatus"),
                format!(
                    "{status:?} is not a gRPC status code name (one of {})",
                    GRPC_STATUS_NAMES.join(", ")
                ),
            );
        }
        if abort.http2_error.is_some() {
            findings.error(
                format!("{abort_path}.http2Error"),
                "HTTP/2 abort fault injection not supported yet",
            );
        }
    }
    if let Some(delay) = &fault.delay {
        let delay_path = format!("{path}.delay");
        if let Some(percentage) = &delay.percentage {
            check_percentage(
                findings,
                format!("{delay_path}.percentage.value"),
                percentage,
            );
        }
        if let Some(percent) = delay.percent
            && !(0..=100).contains(&percent)
        {
            findings.error(
                format!("{delay_path}.percent"),
                format!("percentage {percent} is not in range 0..100"),
            );
        }
        match (&delay.fixed_delay, &delay.exponential_delay) {
            (Some(fixed), None) => {
                check_duration(findings, format!("{delay_path}.fixedDelay"), fixed)
            }
            (None, Some(exponential)) => {
                check_duration(
                    findings,
                    format!("{delay_path}.exponentialDelay"),
                    exponential,
                );
                findings.error(
                    format!("{delay_path}.exponentialDelay"),
                    "exponentialDelay not supported yet",
                );
            }
            (Some(_), Some(_)) => findings.error(
                &delay_path,
                "delay may specify only one of fixedDelay or exponentialDelay",
            ),
            (None, None) => findings.error(&delay_path, "delay must specify fixedDelay"),
        }
    }
}

fn http_redirect(findings: &mut Findings, path: &str, redirect: &HttpRedirect) {
    let has_port = redirect.port.is_some() || redirect.derive_port.is_some();
    if redirect.uri.is_none()
        && redirect.authority.is_none()
        && !has_port
        && redirect.scheme.is_none()
    {
        findings.error(
            path,
            "redirect must specify URI, authority, scheme, or port",
        );
    }
    if redirect.port.is_some() && redirect.derive_port.is_some() {
        findings.error(
            format!("{path}.port"),
            "redirect may specify only one of port or derivePort",
        );
    }
    if let Some(code) = redirect.redirect_code
        && !(300..=399).contains(&code)
    {
        findings.error(
            format!("{path}.redirectCode"),
            format!("{code} is not a valid redirect code, must be 3xx"),
        );
    }
    if let Some(scheme) = &redirect.scheme
        && scheme != "http"
        && scheme != "https"
    {
        findings.error(
            format!("{path}.scheme"),
            "invalid redirect scheme, must be \"http\" or \"https\"",
        );
    }
    if let Some(port) = redirect.port {
        check_port(findings, format!("{path}.port"), u64::from(port));
    }
}

/// Envoy's cap on a direct response body.
const MAX_DIRECT_RESPONSE_BODY: usize = 1 << 20;

fn is_base64(value: &str) -> bool {
    let trimmed = value.trim_end_matches('=');
    value.len().is_multiple_of(4)
        && value.len() - trimmed.len() <= 2
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn direct_response(findings: &mut Findings, path: &str, response: &HttpDirectResponse) {
    if !(200..=599).contains(&response.status) {
        findings.error(
            format!("{path}.status"),
            format!("status {} is not in range 200-599", response.status),
        );
    }
    if let Some(body) = &response.body {
        match (&body.string, &body.bytes) {
            (Some(_), Some(_)) => findings.error(
                format!("{path}.body"),
                "body may specify only one of string or bytes",
            ),
            (Some(text), None) if text.len() > MAX_DIRECT_RESPONSE_BODY => findings.error(
                format!("{path}.body.string"),
                format!("body exceeds the maximum size of {MAX_DIRECT_RESPONSE_BODY} bytes"),
            ),
            (None, Some(bytes)) if !is_base64(bytes) => {
                findings.error(format!("{path}.body.bytes"), "bytes must be base64 encoded");
            }
            (None, Some(bytes)) if bytes.len() / 4 * 3 > MAX_DIRECT_RESPONSE_BODY => findings
                .error(
                    format!("{path}.body.bytes"),
                    format!("body exceeds the maximum size of {MAX_DIRECT_RESPONSE_BODY} bytes"),
                ),
            _ => {}
        }
    }
}

fn http_retry(findings: &mut Findings, path: &str, retries: &HttpRetry) {
    if retries.attempts < 0 {
        findings.error(format!("{path}.attempts"), "attempts cannot be negative");
    }
    let configured = retries.per_try_timeout.is_some()
        || retries.retry_on.as_deref().is_some_and(|r| !r.is_empty())
        || retries.retry_remote_localities.is_some();
    if retries.attempts == 0 && configured {
        findings.error(
            format!("{path}.attempts"),
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    if let Some(timeout) = &retries.per_try_timeout {
        check_duration(findings, format!("{path}.perTryTimeout"), timeout);
    }
    if let Some(backoff) = &retries.backoff {
        check_duration(findings, format!("{path}.backoff"), backoff);
    }
    if let Some(retry_on) = &retries.retry_on
        && !retry_on.is_empty()
    {
        for policy in retry_on.split(',') {
            let status_code = policy
                .parse::<u16>()
                .is_ok_and(|code| (100..=599).contains(&code));
            if !status_code && !RETRY_ON_POLICIES.contains(&policy) {
                findings.error(
                    format!("{path}.retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
}

fn http_rewrite(
    findings: &mut Findings,
    path: &str,
    rewrite: &HttpRewrite,
    headers: Option<&Headers>,
) {
    if rewrite.uri.is_none() && rewrite.authority.is_none() && rewrite.uri_regex_rewrite.is_none() {
        findings.error(
            path,
            "rewrite must specify at least one of URI, authority or uriRegexRewrite",
        );
    }
    if rewrite.uri.is_some() && rewrite.uri_regex_rewrite.is_some() {
        findings.error(
            path,
            "rewrite may only contain one of URI or uriRegexRewrite",
        );
    }
    if let Some(regex_rewrite) = &rewrite.uri_regex_rewrite {
        findings.check(
            format!("{path}.uriRegexRewrite.match"),
            compile_regex(&regex_rewrite.pattern).map(|_| ()),
        );
    }
    // The authority may be rewritten in one place only.
    let authority_sets = headers
        .and_then(|h| h.request.as_ref())
        .map(|r| {
            r.set
                .keys()
                .chain(r.add.keys())
                .filter(|k| k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host"))
                .count()
        })
        .unwrap_or(0);
    if authority_sets + usize::from(rewrite.authority.is_some()) > 1 {
        findings.error(
            format!("{path}.authority"),
            "authority header cannot be set multiple times",
        );
    }
}

pub(crate) fn destination_rule(
    spec: &DestinationRuleSpec,
    namespace: &str,
    findings: &mut Findings,
) {
    findings.check("spec.host", validate_wildcard_domain(&spec.host));
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy(findings, "spec.trafficPolicy", policy);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        check_subset_name(findings, format!("{path}.name"), &subset.name);
        if !subset.name.is_empty() && !names.insert(subset.name.as_str()) {
            findings.error(
                format!("{path}.name"),
                format!("duplicate subset name {:?}", subset.name),
            );
        }
        check_labels(findings, &format!("{path}.labels"), &subset.labels);
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(findings, &format!("{path}.trafficPolicy"), policy);
        }
    }
    check_export_to(findings, namespace, &spec.export_to, false);
    if let Some(selector) = &spec.workload_selector {
        check_workload_selector(findings, "spec.workloadSelector", selector);
        if spec.export_to.iter().any(|e| e != "." && e != namespace) {
            findings.error("spec.exportTo", "destination rule with workload selector cannot have exportTo beyond current namespace");
        }
    }
}

fn traffic_policy(findings: &mut Findings, path: &str, policy: &TrafficPolicy) {
    if policy.load_balancer.is_none()
        && policy.connection_pool.is_none()
        && policy.outlier_detection.is_none()
        && policy.tls.is_none()
        && policy.port_level_settings.is_empty()
    {
        findings.error(path, "traffic policy must have at least one field");
    }
    port_policy_parts(
        findings,
        path,
        policy.load_balancer.as_ref(),
        policy.connection_pool.as_ref(),
        policy.outlier_detection.as_ref(),
        policy.tls.as_ref(),
    );
    for (i, port_policy) in policy.port_level_settings.iter().enumerate() {
        let port_path = format!("{path}.portLevelSettings[{i}]");
        match &port_policy.port {
            Some(port) => check_port(
                findings,
                format!("{port_path}.port.number"),
                u64::from(port.number),
            ),
            None => findings.error(
                format!("{port_path}.port"),
                "portTrafficPolicy must have valid port",
            ),
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
        }
        port_policy_parts(
            findings,
            &port_path,
            port_policy.load_balancer.as_ref(),
            port_policy.connection_pool.as_ref(),
            port_policy.outlier_detection.as_ref(),
            port_policy.tls.as_ref(),
        );
    }
}

fn port_policy_parts(
    findings: &mut Findings,
    path: &str,
    load_balancer: Option<&LoadBalancerSettings>,
    connection_pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = load_balancer {
        load_balancer_settings(findings, &format!("{path}.loadBalancer"), lb);
    }
    if let Some(pool) = connection_pool {
        connection_pool_settings(findings, &format!("{path}.connectionPool"), pool);
    }
    if let Some(outlier) = outlier {
        outlier_detection(findings, &format!("{path}.outlierDetection"), outlier);
    }
    if let Some(tls) = tls {
        client_tls(findings, &format!("{path}.tls"), tls);
    }
}

fn load_balancer_settings(findings: &mut Findings, path: &str, lb: &LoadBalancerSettings) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        findings.error(path, "only one of simple or consistentHash may be set");
    }
    if let Some(hash) = &lb.consistent_hash {
        let hash_path = format!("{path}.consistentHash");
        let keys = [
            hash.http_header_name.is_some(),
            hash.http_cookie.is_some(),
            hash.use_source_ip.is_some(),
            hash.http_query_parameter_name.is_some(),
        ];
        match keys.iter().filter(|k| **k).count() {
            0 => findings.error(
                &hash_path,
                "consistentHash must specify one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
            ),
            1 => {}
            _ => findings.error(
                &hash_path,
                "consistentHash may specify only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
            ),
        }
        if let Some(header) = &hash.http_header_name
            && header.is_empty()
        {
            findings.error(
                format!("{hash_path}.httpHeaderName"),
                "header name cannot be empty",
            );
        }
        if let Some(cookie) = &hash.http_cookie {
            if cookie.name.is_empty() {
                findings.error(
                    format!("{hash_path}.httpCookie.name"),
                    "name required for HttpCookie",
                );
            }
            match &cookie.ttl {
                None => findings.error(
                    format!("{hash_path}.httpCookie.ttl"),
                    "ttl required for HttpCookie",
                ),
                Some(ttl) => {
                    if let Err(reason) = ttl.parse().map_err(|e| e.to_string()).and_then(|d| {
                        if d.negative {
                            Err(format!("ttl {:?} must not be negative", ttl.0))
                        } else {
                            Ok(())
                        }
                    }) {
                        findings.error(format!("{hash_path}.httpCookie.ttl"), reason);
                    }
                }
            }
        }
        if hash.ring_hash.is_some() && hash.maglev.is_some() {
            findings.error(&hash_path, "only one of ringHash or maglev may be set");
        }
        if hash.minimum_ring_size.is_some() && (hash.ring_hash.is_some() || hash.maglev.is_some()) {
            findings.error(
                format!("{hash_path}.minimumRingSize"),
                "minimumRingSize is deprecated and cannot be combined with ringHash or maglev",
            );
        }
    }
    if let Some(locality) = &lb.locality_lb_setting {
        let locality_path = format!("{path}.localityLbSetting");
        if !locality.distribute.is_empty() && !locality.failover.is_empty() {
            findings.error(
                &locality_path,
                "can not simultaneously specify 'distribute' and 'failover'",
            );
        }
        if !locality.failover.is_empty() && !locality.failover_priority.is_empty() {
            for (i, failover) in locality.failover.iter().enumerate() {
                if failover.to.is_empty() {
                    findings.error(
                        format!("{locality_path}.failover[{i}].to"),
                        "failover 'to' must not be empty",
                    );
                }
            }
        }
        for (i, distribute) in locality.distribute.iter().enumerate() {
            let total: u64 = distribute.to.values().map(|w| u64::from(*w)).sum();
            if total != 100 {
                findings.error(
                    format!("{locality_path}.distribute[{i}].to"),
                    format!("total weight of locality distribution must be 100, found {total}"),
                );
            }
        }
        for (i, failover) in locality.failover.iter().enumerate() {
            if failover.from == failover.to {
                findings.error(
                    format!("{locality_path}.failover[{i}]"),
                    "locality lb failover settings must specify different regions",
                );
            }
        }
    }
    if let Some(warmup) = &lb.warmup_duration_secs {
        check_duration(findings, format!("{path}.warmupDurationSecs"), warmup);
    }
}

fn connection_pool_settings(findings: &mut Findings, path: &str, pool: &ConnectionPoolSettings) {
    if pool.http.is_none() && pool.tcp.is_none() {
        findings.error(path, "connection pool must have at least one field");
    }
    if let Some(http) = &pool.http {
        let checks = [
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
        ];
        for (field, value, reason) in checks {
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
            ("idleTimeout", &tcp.idle_timeout),
        ] {
            if let Some(value) = value {
                check_duration(findings, format!("{path}.tcp.{field}"), value);
            }
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

fn outlier_detection(findings: &mut Findings, path: &str, outlier: &OutlierDetection) {
    if let Some(base) = &outlier.base_ejection_time {
        check_duration(findings, format!("{path}.baseEjectionTime"), base);
    }
    if let Some(interval) = &outlier.interval {
        check_duration(findings, format!("{path}.interval"), interval);
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
}

fn client_tls(findings: &mut Findings, path: &str, tls: &ClientTlsSettings) {
    let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
    let has_files = tls.client_certificate.is_some()
        || tls.ca_certificates.is_some()
        || tls.private_key.is_some();
    if matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual)
        && tls.credential_name.is_some()
    {
        if has_files {
            findings.error(
                path,
                "cannot specify client certificates or CA certificate If credentialName is set",
            );
        }
        return;
    }
    if mode == ClientTlsMode::Mutual {
        if tls.client_certificate.is_none() {
            findings.error(
                format!("{path}.clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if tls.private_key.is_none() {
            findings.error(
                format!("{path}.privateKey"),
                "private key required for mutual tls",
            );
        }
    }
}

pub(crate) fn service_entry(spec: &ServiceEntrySpec, namespace: &str, findings: &mut Findings) {
    if let Some(selector) = &spec.workload_selector {
        for (key, value) in &selector.labels {
            if key.is_empty() || key.contains('*') || value.contains('*') {
                findings.error(
                    format!("spec.workloadSelector.labels.{key}"),
                    format!(
                        "wildcard or empty key is not supported in selector: \"{key}={value}\""
                    ),
                );
            }
        }
        if !spec.endpoints.is_empty() {
            findings.error(
                "spec.workloadSelector",
                "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
            );
        }
    }
    if spec.hosts.is_empty() {
        findings.error("spec.hosts", "service entry must have at least one host");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        if host == "*" {
            findings.error(format!("spec.hosts[{i}]"), "invalid host *");
        } else {
            findings.check(format!("spec.hosts[{i}]"), validate_wildcard_domain(host));
        }
    }
    let resolution = spec.resolution.unwrap_or(ServiceEntryResolution::None);
    let mut cidr_found = false;
    for (i, address) in spec.addresses.iter().enumerate() {
        cidr_found |= address.contains('/');
        findings.check(format!("spec.addresses[{i}]"), validate_ip_or_cidr(address));
    }
    if cidr_found
        && !matches!(
            resolution,
            ServiceEntryResolution::None | ServiceEntryResolution::Static
        )
    {
        findings.error(
            "spec.addresses",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }
    let mut port_names = BTreeSet::new();
    let mut port_numbers = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        if !port_names.insert(port.name.as_str()) {
            findings.error(
                format!("{path}.name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        if !port_numbers.insert(port.number) {
            findings.error(
                format!("{path}.number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        if !is_dns1123_label(&port.name) {
            findings.error(
                format!("{path}.name"),
                format!("invalid port name: {:?}", port.name),
            );
        }
        check_port(findings, format!("{path}.number"), u64::from(port.number));
        if let Some(target) = port.target_port {
            check_port(findings, format!("{path}.targetPort"), u64::from(target));
        }
        if let Some(protocol) = &port.protocol {
            check_protocol(findings, format!("{path}.protocol"), protocol);
        }
    }
    match resolution {
        ServiceEntryResolution::None => {
            if !spec.endpoints.is_empty() {
                findings.error(
                    "spec.endpoints",
                    "no endpoints should be provided for resolution type none",
                );
            }
        }
        ServiceEntryResolution::Static => {
            for (i, endpoint) in spec.endpoints.iter().enumerate() {
                let path = format!("spec.endpoints[{i}]");
                let address = endpoint.address.as_deref().unwrap_or("");
                if let Some(socket) = address.strip_prefix("unix://") {
                    if !socket.starts_with('/') && !socket.starts_with('@') {
                        findings.error(
                            format!("{path}.address"),
                            format!("{socket} is not an absolute path to a file"),
                        );
                    }
                } else if !is_ip(address) {
                    findings.error(
                        format!("{path}.address"),
                        format!("{address} is not a valid IP"),
                    );
                }
                for name in endpoint.ports.keys() {
                    if !port_names.contains(name.as_str()) {
                        findings.error(
                            format!("{path}.ports.{name}"),
                            format!("endpoint port {name} is not defined by the service entry"),
                        );
                    }
                }
                check_labels(findings, &format!("{path}.labels"), &endpoint.labels);
            }
        }
        ServiceEntryResolution::Dns | ServiceEntryResolution::DnsRoundRobin => {
            if spec.endpoints.is_empty() {
                for (i, host) in spec.hosts.iter().enumerate() {
                    if validate_fqdn(host).is_err() {
                        findings.error(
                            format!("spec.hosts[{i}]"),
                            "hosts must be FQDN if no endpoints are provided for resolution mode DNS",
                        );
                    }
                }
            }
            for (i, endpoint) in spec.endpoints.iter().enumerate() {
                let address = endpoint.address.as_deref().unwrap_or("");
                if !is_ip(address) && validate_fqdn(address).is_err() {
                    findings.error(
                        format!("spec.endpoints[{i}].address"),
                        format!(
                            "endpoint address {address:?} is not a valid FQDN or an IP address"
                        ),
                    );
                }
                check_labels(
                    findings,
                    &format!("spec.endpoints[{i}].labels"),
                    &endpoint.labels,
                );
            }
        }
    }
    check_export_to(findings, namespace, &spec.export_to, true);
}

pub(crate) fn gateway(spec: &GatewaySpec, name: &str, findings: &mut Findings) {
    if !is_dns1123_label(name) {
        findings.error("metadata.name", format!("invalid gateway name: {name:?}"));
    }
    if spec.servers.is_empty() {
        findings.error("spec.servers", "gateway must have at least one server");
    }
    let mut port_names = BTreeSet::new();
    for (i, server) in spec.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        if server.hosts.is_empty() {
            findings.error(
                format!("{path}.hosts"),
                "server config must contain at least one host",
            );
        }
        for (j, host) in server.hosts.iter().enumerate() {
            gateway_host(findings, &format!("{path}.hosts[{j}]"), host);
        }
        let Some(port) = &server.port else {
            findings.error(format!("{path}.port"), "port is required");
            continue;
        };
        if port.name.is_empty() {
            findings.error(format!("{path}.port.name"), "port name must be set");
        } else if !port_names.insert(port.name.as_str()) {
            findings.error(
                format!("{path}.port.name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    port.name
                ),
            );
        }
        if port.number > 0
            || server
                .bind
                .as_deref()
                .is_none_or(|b| !b.starts_with("unix://"))
        {
            check_port(
                findings,
                format!("{path}.port.number"),
                u64::from(port.number),
            );
        }
        check_protocol(findings, format!("{path}.port.protocol"), &port.protocol);
        if let Some(bind) = &server.bind
            && !bind.starts_with("unix://")
            && !is_ip(bind)
        {
            findings.error(format!("{path}.bind"), format!("{bind} is not a valid IP"));
        }
        let protocol = port.protocol.to_ascii_uppercase();
        let is_tls = protocol == "HTTPS" || protocol == "TLS";
        let is_http = matches!(
            protocol.as_str(),
            "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" | "HTTP_PROXY"
        );
        match &server.tls {
            None if is_tls => findings.error(
                format!("{path}.tls"),
                "server must have TLS settings for HTTPS/TLS protocols",
            ),
            None => {}
            Some(tls) => {
                if !is_tls {
                    let redirect_only = tls.https_redirect == Some(true)
                        && tls.server_certificate.is_none()
                        && tls.private_key.is_none()
                        && tls.ca_certificates.is_none();
                    if !is_http {
                        findings.error(
                            format!("{path}.tls"),
                            "server cannot have TLS settings for non HTTPS/TLS ports",
                        );
                    } else if !redirect_only {
                        findings.error(
                            format!("{path}.tls"),
                            "server cannot have TLS settings for plain text HTTP ports",
                        );
                    }
                }
                server_tls(findings, &format!("{path}.tls"), tls);
            }
        }
    }
}

fn gateway_host(findings: &mut Findings, path: &str, host: &str) {
    let dns_name = match host.split_once('/') {
        Some((namespace, dns_name)) => {
            if namespace.is_empty() || dns_name.is_empty() {
                findings.error(
                    path,
                    "config namespace and dnsName in host entry cannot be empty",
                );
                return;
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
}

fn server_tls(findings: &mut Findings, path: &str, tls: &ServerTlsSettings) {
    let mode = tls.mode.unwrap_or(ServerTlsMode::Passthrough);
    let has_credential = tls.credential_name.is_some() || !tls.credential_names.is_empty();
    match mode {
        ServerTlsMode::IstioMutual => {
            for (field, set) in [
                ("serverCertificate", tls.server_certificate.is_some()),
                ("privateKey", tls.private_key.is_some()),
                ("caCertificates", tls.ca_certificates.is_some()),
                ("credentialName", has_credential),
            ] {
                if set {
                    findings.error(
                        format!("{path}.{field}"),
                        format!("ISTIO_MUTUAL TLS cannot have associated {field}"),
                    );
                }
            }
        }
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
            if !has_credential =>
        {
            let label = match mode {
                ServerTlsMode::Simple => "SIMPLE",
                ServerTlsMode::Mutual => "MUTUAL",
                _ => "OPTIONAL_MUTUAL",
            };
            if tls.server_certificate.is_none() {
                findings.error(
                    format!("{path}.serverCertificate"),
                    format!("{label} TLS requires a server certificate"),
                );
            }
            if tls.private_key.is_none() {
                findings.error(
                    format!("{path}.privateKey"),
                    format!("{label} TLS requires a private key"),
                );
            }
            if mode != ServerTlsMode::Simple && tls.ca_certificates.is_none() {
                findings.error(
                    format!("{path}.caCertificates"),
                    format!("{label} TLS requires a client CA bundle"),
                );
            }
        }
        _ => {}
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min != TlsProtocolVersion::Auto
        && max != TlsProtocolVersion::Auto
        && (min as u8) > (max as u8)
    {
        findings.error(
            format!("{path}.minProtocolVersion"),
            "minProtocolVersion cannot be greater than maxProtocolVersion",
        );
    }
}
