use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

#[test]
fn rate_limits_parse_with_envoys_defaults() {
    let limit = parse_local_rate_limit("maxTokens: 10\nfillInterval: 1m\n").unwrap();
    assert_eq!(
        limit,
        LocalRateLimit {
            max_tokens: 10,
            tokens_per_fill: 1,
            fill_interval: Duration::from_secs(60),
            per: RateLimitPer::Route,
        }
    );
    let limit = parse_local_rate_limit(
        "{maxTokens: 4, tokensPerFill: 2, fillInterval: 500ms, per: client}",
    )
    .unwrap();
    assert_eq!(limit.tokens_per_fill, 2);
    assert_eq!(limit.fill_interval, Duration::from_millis(500));
    assert_eq!(limit.per, RateLimitPer::Client);
}

#[test]
fn bad_rate_limits_name_the_field_and_the_reason() {
    let base = "metadata.annotations.weft.dev/local-rate-limit";
    let cases = [
        ("fillInterval: 1s", format!("{base}.maxTokens"), "required"),
        (
            "maxTokens: 0\nfillInterval: 1s",
            format!("{base}.maxTokens"),
            "positive",
        ),
        (
            "maxTokens: -3\nfillInterval: 1s",
            format!("{base}.maxTokens"),
            "found -3",
        ),
        (
            "maxTokens: 1\ntokensPerFill: 0\nfillInterval: 1s",
            format!("{base}.tokensPerFill"),
            "positive",
        ),
        ("maxTokens: 1", format!("{base}.fillInterval"), "required"),
        (
            "maxTokens: 1\nfillInterval: 10ms",
            format!("{base}.fillInterval"),
            "at least 50ms",
        ),
        (
            "maxTokens: 1\nfillInterval: 1 second",
            format!("{base}.fillInterval"),
            "invalid duration",
        ),
        (
            "maxTokens: 1\nfillInterval: 1s\nper: user",
            base.to_owned(),
            "unknown variant",
        ),
        (
            "maxTokens: 1\nfillInterval: 1s\nburst: 3",
            base.to_owned(),
            "unknown field",
        ),
        ("[1, 2]", base.to_owned(), "expected YAML with maxTokens"),
    ];
    for (value, path, reason) in cases {
        let error = parse_local_rate_limit(value).unwrap_err();
        assert_eq!(error.path, path, "{value}");
        assert!(error.reason.contains(reason), "{value}: {}", error.reason);
    }
}

#[test]
fn the_pod_annotation_sets_trusted_proxies() {
    let annotations = |value: &str| BTreeMap::from([(PROXY_CONFIG.to_owned(), value.to_owned())]);
    assert_eq!(pod_num_trusted_proxies(None), Ok(None));
    assert_eq!(
        pod_num_trusted_proxies(Some(&annotations(
            "gatewayTopology:\n  numTrustedProxies: 2\n"
        ))),
        Ok(Some(2))
    );
    // Other ProxyConfig fields are not ours to judge.
    assert_eq!(
        pod_num_trusted_proxies(Some(&annotations("holdApplicationUntilProxyStarts: true"))),
        Ok(None)
    );
    let error = pod_num_trusted_proxies(Some(&annotations(
        "gatewayTopology: {numTrustedProxies: -1}",
    )))
    .unwrap_err();
    assert_eq!(
        error.path,
        "metadata.annotations.proxy.istio.io/config.gatewayTopology.numTrustedProxies"
    );
    assert!(error.reason.contains("found -1"), "{}", error.reason);
    let error = pod_num_trusted_proxies(Some(&annotations("gatewayTopology: [1]"))).unwrap_err();
    assert_eq!(
        error.path,
        "metadata.annotations.proxy.istio.io/config.gatewayTopology"
    );
}

#[test]
fn edge_limits_parse_by_envoys_names() {
    assert_eq!(parse_edge_limits("{}").unwrap(), EdgeLimits::default());
    let limits = parse_edge_limits(
        "maxRequestHeadersKb: 8\nrequestHeadersTimeout: 2s\nidleTimeout: 90s\n\
         http2MaxConcurrentStreams: 10\nperConnectionBufferLimitBytes: 4096\n\
         requestTimeout: 30s\nmaxRequestBytes: 1048576\nmaxConnections: 500\n\
         connectionRateLimit: {maxTokens: 2, fillInterval: 1h, per: client}\n",
    )
    .unwrap();
    assert_eq!(
        limits,
        EdgeLimits {
            max_request_headers_kb: Some(8),
            request_headers_timeout: Some(Duration::from_secs(2)),
            idle_timeout: Some(Duration::from_secs(90)),
            http2_max_concurrent_streams: Some(10),
            per_connection_buffer_limit_bytes: Some(4096),
            request_timeout: Some(Duration::from_secs(30)),
            max_request_bytes: Some(1_048_576),
            max_connections: Some(500),
            connection_rate_limit: Some(ConnectionRateLimit {
                max_tokens: 2,
                tokens_per_fill: 1,
                fill_interval: Duration::from_secs(3600),
                per: ConnectionRateLimitPer::Client,
            }),
        }
    );
    let per_server = parse_edge_limits("connectionRateLimit: {maxTokens: 1, fillInterval: 1s}")
        .unwrap()
        .connection_rate_limit
        .unwrap();
    assert_eq!(per_server.per, ConnectionRateLimitPer::Server);
}

#[test]
fn bad_edge_limits_name_the_field_and_the_reason() {
    let base = "metadata.annotations.weft.dev/edge-limits";
    let cases = [
        (
            "maxRequestHeadersKb: 0",
            format!("{base}.maxRequestHeadersKb"),
            "from 1 to 8192 KiB, found 0",
        ),
        (
            "maxRequestHeadersKb: 9000",
            format!("{base}.maxRequestHeadersKb"),
            "found 9000",
        ),
        (
            "http2MaxConcurrentStreams: -1",
            format!("{base}.http2MaxConcurrentStreams"),
            "found -1",
        ),
        (
            "perConnectionBufferLimitBytes: 0",
            format!("{base}.perConnectionBufferLimitBytes"),
            "found 0",
        ),
        (
            "maxRequestBytes: 0",
            format!("{base}.maxRequestBytes"),
            "must be from 1 to 4294967295 bytes, found 0",
        ),
        (
            "maxRequestBytes: 4294967296",
            format!("{base}.maxRequestBytes"),
            "found 4294967296",
        ),
        (
            "maxRequestBytes: 1MiB",
            base.to_owned(),
            "expected YAML with",
        ),
        (
            "requestTimeout: 0s",
            format!("{base}.requestTimeout"),
            "cannot be turned off",
        ),
        (
            "requestTimeout: -5s",
            format!("{base}.requestTimeout"),
            "at least 1ms",
        ),
        (
            "requestTimeout: 10",
            format!("{base}.requestTimeout"),
            "invalid duration",
        ),
        (
            "idleTimeout: 0s",
            format!("{base}.idleTimeout"),
            "cannot be turned off",
        ),
        (
            "requestHeadersTimeout: -1s",
            format!("{base}.requestHeadersTimeout"),
            "at least 1ms",
        ),
        (
            "idleTimeout: soon",
            format!("{base}.idleTimeout"),
            "invalid duration",
        ),
        (
            "connectionRateLimit: {fillInterval: 1s}",
            format!("{base}.connectionRateLimit.maxTokens"),
            "required",
        ),
        (
            "connectionRateLimit: {maxTokens: 1, fillInterval: 1ms}",
            format!("{base}.connectionRateLimit.fillInterval"),
            "at least 50ms",
        ),
        (
            "connectionRateLimit: {maxTokens: 1, fillInterval: 1s, per: route}",
            base.to_owned(),
            "unknown variant",
        ),
        (
            "maxHeaders: 3",
            base.to_owned(),
            "unknown field `maxHeaders`",
        ),
        (
            "[1]",
            base.to_owned(),
            "expected YAML with maxRequestHeadersKb",
        ),
    ];
    for (value, path, reason) in cases {
        let error = parse_edge_limits(value).unwrap_err();
        assert_eq!(error.path, path, "{value}");
        assert!(error.reason.contains(reason), "{value}: {}", error.reason);
    }
}
