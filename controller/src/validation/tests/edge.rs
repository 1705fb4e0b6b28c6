//! The edge's annotations ([`crate::model::edge`]): Weft's own local rate limit (Istio
//! configures it by EnvoyFilter, whose `token_bucket` it follows) and Istio's
//! `proxy.istio.io/config` on a gateway's pod.

use super::{Case, bad, ok, run, warns};

const RULE: &str = "Envoy local_ratelimit token_bucket (no Istio API)";

fn vs(annotation: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: t, namespace: ns, annotations: {{weft.dev/local-rate-limit: '{annotation}'}}}}\nspec: {{hosts: [a], http: [{{route: [{{destination: {{host: a}}}}]}}]}}\n"
    )
}

#[test]
fn local_rate_limits_are_checked_field_by_field() {
    let http_route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: t, namespace: ns, annotations: {weft.dev/local-rate-limit: '{maxTokens: 5, fillInterval: 10ms}'}}\nspec: {parentRefs: [{name: gw}], rules: [{backendRefs: [{name: a, port: 80}]}]}\n";
    let cases: Vec<Case> = vec![
        ok("per route", RULE, vs("{maxTokens: 5, tokensPerFill: 5, fillInterval: 1s}")),
        ok("per client", RULE, vs("{maxTokens: 5, fillInterval: 1m, per: client}")),
        bad(
            "no budget",
            RULE,
            vs("{maxTokens: 0, fillInterval: 1s}"),
            "metadata.annotations.weft.dev/local-rate-limit.maxTokens",
            "must be a positive number of tokens, found 0",
        ),
        bad(
            "no interval",
            RULE,
            vs("{maxTokens: 5}"),
            "metadata.annotations.weft.dev/local-rate-limit.fillInterval",
            "required",
        ),
        bad(
            "an unknown scope",
            RULE,
            vs("{maxTokens: 5, fillInterval: 1s, per: header}"),
            "metadata.annotations.weft.dev/local-rate-limit",
            "unknown variant `header`",
        ),
        bad(
            "an interval under Envoy's minimum, on an HTTPRoute",
            RULE,
            http_route.to_owned(),
            "metadata.annotations.weft.dev/local-rate-limit.fillInterval",
            "must be at least 50ms",
        ),
        bad(
            "on a kind without HTTP routes",
            RULE,
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: t, namespace: ns, annotations: {weft.dev/local-rate-limit: '{maxTokens: 1, fillInterval: 1s}'}}\nspec: {host: a}\n".to_owned(),
            "metadata.annotations.weft.dev/local-rate-limit",
            "HTTP routes of a VirtualService, HTTPRoute or GRPCRoute only",
        ),
    ];
    run(&cases);
}

#[test]
fn a_pods_trusted_proxies_that_do_not_parse_are_warned_about() {
    let pod = |config: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: gw, namespace: ns, annotations: {{proxy.istio.io/config: '{config}'}}}}\nspec: {{containers: [{{name: istio-proxy, image: proxy}}]}}\n"
        )
    };
    run(&[
        ok(
            "one trusted proxy",
            "ProxyConfig.gatewayTopology.numTrustedProxies",
            pod("{gatewayTopology: {numTrustedProxies: 1}}"),
        ),
        warns(
            "a negative count",
            "ProxyConfig.gatewayTopology.numTrustedProxies",
            pod("{gatewayTopology: {numTrustedProxies: -2}}"),
            "metadata.annotations.proxy.istio.io/config.gatewayTopology.numTrustedProxies",
            "found -2",
        ),
    ]);
}

const LIMITS_RULE: &str = "Envoy HttpConnectionManager and network local_ratelimit (no Istio API)";

fn gateway(annotation: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: t, namespace: ns, annotations: {{weft.dev/edge-limits: '{annotation}'}}}}\nspec: {{selector: {{istio: ingressgateway}}, servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ['*']}}]}}\n"
    )
}

#[test]
fn edge_limits_are_checked_field_by_field() {
    let kubernetes = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: t, namespace: ns, annotations: {weft.dev/edge-limits: '{idleTimeout: 0s}'}}\nspec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}\n";
    let cases: Vec<Case> = vec![
        ok(
            "every field",
            LIMITS_RULE,
            gateway("{maxRequestHeadersKb: 8, requestHeadersTimeout: 5s, idleTimeout: 5m, http2MaxConcurrentStreams: 10, perConnectionBufferLimitBytes: 65536, requestTimeout: 1m, maxRequestBytes: 1048576, connectionRateLimit: {maxTokens: 5, fillInterval: 1s, per: client}}"),
        ),
        bad(
            "headers over Envoy's bound",
            LIMITS_RULE,
            gateway("{maxRequestHeadersKb: 10000}"),
            "metadata.annotations.weft.dev/edge-limits.maxRequestHeadersKb",
            "must be from 1 to 8192 KiB, found 10000",
        ),
        bad(
            "a request body cap of nothing",
            LIMITS_RULE,
            gateway("{maxRequestBytes: 0}"),
            "metadata.annotations.weft.dev/edge-limits.maxRequestBytes",
            "must be from 1 to 4294967295 bytes, found 0",
        ),
        bad(
            "a request timeout turned off",
            LIMITS_RULE,
            gateway("{requestTimeout: 0s}"),
            "metadata.annotations.weft.dev/edge-limits.requestTimeout",
            "cannot be turned off",
        ),
        bad(
            "a timeout turned off, on a Gateway API Gateway",
            LIMITS_RULE,
            kubernetes.to_owned(),
            "metadata.annotations.weft.dev/edge-limits.idleTimeout",
            "cannot be turned off",
        ),
        bad(
            "a connection bucket without tokens",
            LIMITS_RULE,
            gateway("{connectionRateLimit: {maxTokens: 0, fillInterval: 1s}}"),
            "metadata.annotations.weft.dev/edge-limits.connectionRateLimit.maxTokens",
            "must be a positive number of tokens, found 0",
        ),
        bad(
            "on a kind that is not a Gateway",
            LIMITS_RULE,
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: t, namespace: ns, annotations: {weft.dev/edge-limits: '{idleTimeout: 1s}'}}\nspec: {host: a}\n".to_owned(),
            "metadata.annotations.weft.dev/edge-limits",
            "servers of an Istio Gateway or the listeners of a Gateway API Gateway only",
        ),
    ];
    run(&cases);
}
