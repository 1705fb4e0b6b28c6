//! Custom tags and metric overrides, merged as istiod merges them.

use super::per_service::{RATINGS, REVIEWS, SERVED_ELSEWHERE};
use super::*;

/// The waypoint's custom tags, by name: `tag=literal:value`, `tag=env:NAME|default`,
/// `tag=header:name|default`, `tag=formatter:format`.
fn custom_tags(telemetries: &[String]) -> Vec<String> {
    use weft_proto::waypoint::custom_tag::Type;
    let index = validated(&format!("{MESH}{}", telemetries.concat()));
    let settings = MeshSettings {
        mesh: Arc::new(MeshConfigWatch::fixed(parse("mesh", MESH_CONFIG).unwrap())),
        ..Default::default()
    };
    let config = waypoint_configs(&index, &settings, &mut Vec::new())
        .remove("shop/waypoint")
        .expect("the waypoint's config");
    let tracing = config.tracing.expect("tracing");
    tracing
        .custom_tags
        .iter()
        .map(|t| {
            let source = |s: &weft_proto::waypoint::TagFromName| {
                format!("{}|{}", s.name, s.default_value.as_deref().unwrap_or("-"))
            };
            let value = match t.r#type.as_ref().expect("a source") {
                Type::Literal(v) => format!("literal:{v}"),
                Type::Environment(s) => format!("env:{}", source(s)),
                Type::Header(s) => format!("header:{}", source(s)),
                Type::Formatter(v) => format!("formatter:{v}"),
            };
            format!("{}={value}", t.tag)
        })
        .collect()
}

/// istiod's `Telemetries.Tracing`: the last applicable entry (root namespace, then the
/// proxy's namespace, then those binding it) that sets `customTags` replaces the whole set, a
/// shallow merge; an entry that sets none, or one for the other side, leaves them.
#[test]
fn custom_tags_of_the_narrowest_telemetry_replace_the_wider_ones_whole() {
    let root = telemetry(
        "mesh-default",
        "istio-system",
        1,
        "{tracing: [{customTags: {mesh: {literal: {value: root}}, cluster: {environment: {name: CLUSTER, defaultValue: c1}}}}]}",
    );
    let namespace = telemetry(
        "shop",
        "shop",
        2,
        "{tracing: [{customTags: {team: {literal: {value: shop}}, user: {header: {name: x-user}}}}]}",
    );
    let sampling_only = telemetry(
        "for-waypoint",
        "shop",
        3,
        "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], tracing: [{randomSamplingPercentage: 50}, {match: {mode: CLIENT}, customTags: {client: {literal: {value: side}}}}]}",
    );
    assert_eq!(
        custom_tags(std::slice::from_ref(&root)),
        ["cluster=env:CLUSTER|c1", "mesh=literal:root"]
    );
    let narrower = ["team=literal:shop", "user=header:x-user|-"];
    assert_eq!(custom_tags(&[root.clone(), namespace.clone()]), narrower);
    assert_eq!(custom_tags(&[root, namespace, sampling_only]), narrower);
    assert!(custom_tags(&[]).is_empty());
}

/// istiod's `buildCustomTagsFromProvider`: a `formatter` tag becomes Envoy's `value` tag, its
/// substitution format carried as written, beside the tags of the other sources.
#[test]
fn a_formatter_tag_carries_its_substitution_format_to_the_waypoint() {
    let namespace = telemetry(
        "shop",
        "shop",
        1,
        "{tracing: [{customTags: {call: {formatter: {value: '%REQ(:METHOD)% %RESPONSE_CODE%'}}, route: {formatter: {value: '%ROUTE_NAME%'}}, team: {literal: {value: shop}}}}]}",
    );
    assert_eq!(
        custom_tags(&[namespace]),
        [
            "call=formatter:%REQ(:METHOD)% %RESPONSE_CODE%",
            "route=formatter:%ROUTE_NAME%",
            "team=literal:shop",
        ]
    );
}

/// The waypoint's metric overrides and each served host's own (`None`: the waypoint's), as
/// `metric:disabled:-removed,+upserted` strings, sorted.
fn metric_overrides(
    telemetries: &[String],
) -> std::collections::BTreeMap<String, Option<Vec<String>>> {
    let index = validated(&format!("{MESH}{SERVED_ELSEWHERE}{}", telemetries.concat()));
    let settings = MeshSettings {
        mesh: Arc::new(MeshConfigWatch::fixed(parse("mesh", MESH_CONFIG).unwrap())),
        ..Default::default()
    };
    let config = waypoint_configs(&index, &settings, &mut Vec::new())
        .remove("shop/waypoint")
        .expect("the waypoint's config");
    let shown = |overrides: &[weft_proto::waypoint::MetricOverride]| {
        overrides
            .iter()
            .map(|o| {
                let metric = weft_proto::waypoint::RequestMetric::try_from(o.metric)
                    .unwrap()
                    .as_str_name();
                let mut tags: Vec<String> =
                    o.removed_tags.iter().map(|t| format!("-{t}")).collect();
                tags.extend(o.upserted_tags.iter().map(|t| format!("+{t}", t = t.tag)));
                format!("{metric}:{}:{}", o.disabled, tags.join(","))
            })
            .collect::<Vec<_>>()
    };
    let mut out: std::collections::BTreeMap<_, _> = config
        .services
        .iter()
        .map(|s| {
            (
                s.hostname.clone(),
                s.telemetry.as_ref().map(|t| shown(&t.metric_overrides)),
            )
        })
        .collect();
    out.insert("*".to_owned(), Some(shown(&config.metric_overrides)));
    out
}

#[test]
fn metric_overrides_merge_by_metric_and_tag_narrowest_last() {
    // Root: remove grpc_response_status from every metric and disable the request size;
    // namespace: upsert a tag on the request count and turn the request size back on;
    // reviews' own: disable the duration, remove the tag the namespace added.
    let services = metric_overrides(&[
        telemetry(
            "root",
            "istio-system",
            1,
            "{metrics: [{overrides: [{tagOverrides: {grpc_response_status: {operation: REMOVE}}}, {match: {metric: REQUEST_SIZE}, disabled: true}]}]}",
        ),
        telemetry(
            "namespace",
            "shop",
            2,
            "{metrics: [{providers: [{name: prometheus}], overrides: [{match: {metric: REQUEST_COUNT, mode: SERVER}, tagOverrides: {request_host: {value: request.host}}}, {match: {metric: REQUEST_SIZE}, disabled: false}]}]}",
        ),
        telemetry(
            "reviews",
            "shop",
            3,
            "{targetRefs: [{kind: Service, name: reviews}], metrics: [{overrides: [{match: {metric: REQUEST_DURATION}, disabled: true}, {match: {metric: REQUEST_COUNT}, tagOverrides: {request_host: {operation: REMOVE}}}]}]}",
        ),
    ]);
    assert_eq!(
        services["*"],
        Some(vec![
            "REQUEST_COUNT:false:-grpc_response_status,+request_host".to_owned(),
            "REQUEST_DURATION:false:-grpc_response_status".to_owned(),
            "REQUEST_SIZE:false:-grpc_response_status".to_owned(),
            "RESPONSE_SIZE:false:-grpc_response_status".to_owned(),
            "TCP_OPENED_CONNECTIONS:false:-grpc_response_status".to_owned(),
            "TCP_CLOSED_CONNECTIONS:false:-grpc_response_status".to_owned(),
            "TCP_SENT_BYTES:false:-grpc_response_status".to_owned(),
            "TCP_RECEIVED_BYTES:false:-grpc_response_status".to_owned(),
        ])
    );
    assert_eq!(
        services[REVIEWS],
        Some(vec![
            "REQUEST_COUNT:false:-grpc_response_status,-request_host".to_owned(),
            "REQUEST_DURATION:true:".to_owned(),
            "REQUEST_SIZE:false:-grpc_response_status".to_owned(),
            "RESPONSE_SIZE:false:-grpc_response_status".to_owned(),
            "TCP_OPENED_CONNECTIONS:false:-grpc_response_status".to_owned(),
            "TCP_CLOSED_CONNECTIONS:false:-grpc_response_status".to_owned(),
            "TCP_SENT_BYTES:false:-grpc_response_status".to_owned(),
            "TCP_RECEIVED_BYTES:false:-grpc_response_status".to_owned(),
        ])
    );
    assert_eq!(services[RATINGS], None);
}

#[test]
fn metric_overrides_follow_the_side_all_metrics_and_the_providers() {
    let waypoint = |spec: &str| {
        metric_overrides(&[telemetry("t", "shop", 1, spec)])
            .remove("*")
            .unwrap()
            .unwrap()
    };
    // A waypoint reports its server side: a CLIENT entry changes nothing there.
    assert!(
        waypoint("{metrics: [{overrides: [{match: {mode: CLIENT}, disabled: true}]}]}").is_empty()
    );
    // Disabled on all metrics, then one metric changed by a later entry: istiod turns the
    // side's metrics back on.
    let all_off: Vec<String> = [
        "REQUEST_COUNT",
        "REQUEST_DURATION",
        "REQUEST_SIZE",
        "RESPONSE_SIZE",
        "TCP_OPENED_CONNECTIONS",
        "TCP_CLOSED_CONNECTIONS",
        "TCP_SENT_BYTES",
        "TCP_RECEIVED_BYTES",
    ]
    .iter()
    .map(|m| format!("{m}:true:"))
    .collect();
    assert_eq!(
        waypoint("{metrics: [{overrides: [{disabled: true}]}]}"),
        all_off
    );
    assert_eq!(
        waypoint(
            "{metrics: [{overrides: [{match: {metric: ALL_METRICS, mode: SERVER}, disabled: true}, {match: {metric: RESPONSE_SIZE}, tagOverrides: {x: {value: \"'y'\"}}}]}]}"
        ),
        ["RESPONSE_SIZE:false:+x"]
    );
    // The last providers named leave Prometheus out: no metrics at all, as istiod builds no
    // stats filter; an entry for another provider changes nothing of Prometheus'.
    assert_eq!(
        waypoint("{metrics: [{providers: [{name: stackdriver}]}]}"),
        all_off
    );
    assert!(
        waypoint("{metrics: [{providers: [{name: stackdriver}], overrides: [{disabled: true}]}, {providers: [{name: prometheus}]}]}")
            .is_empty()
    );
    // An expression Weft does not evaluate, or a name Prometheus refuses, is not sent
    // (validation reported it).
    assert_eq!(
        waypoint(
            "{metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {peer: {value: upstream_peer.istio_version}, bad-name: {value: request.host}, ok: {value: response.code}}}]}]}"
        ),
        ["REQUEST_COUNT:false:+ok"]
    );
}

#[test]
fn tcp_metric_overrides_follow_the_side_and_merge_as_the_request_ones() {
    let waypoint = |specs: &[&str]| {
        let telemetries: Vec<String> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| telemetry(&format!("t{i}"), "shop", i as u32 + 1, spec))
            .collect();
        metric_overrides(&telemetries).remove("*").unwrap().unwrap()
    };
    // The client side is a gateway's: nothing changes at a waypoint.
    assert!(
        waypoint(&[
            "{metrics: [{overrides: [{match: {metric: TCP_SENT_BYTES, mode: CLIENT}, disabled: true}]}]}"
        ])
        .is_empty()
    );
    assert_eq!(
        waypoint(&[
            "{metrics: [{overrides: [{match: {metric: TCP_SENT_BYTES, mode: CLIENT_AND_SERVER}, disabled: true}, {match: {metric: TCP_OPENED_CONNECTIONS, mode: SERVER}, tagOverrides: {destination_principal: {operation: REMOVE}, peer_port: {value: source.port}}}]}]}"
        ]),
        [
            "TCP_OPENED_CONNECTIONS:false:-destination_principal,+peer_port",
            "TCP_SENT_BYTES:true:",
        ]
    );
    // A narrower Telemetry turns the metric back on and keeps the wider one's tags.
    assert_eq!(
        waypoint(&[
            "{metrics: [{overrides: [{match: {metric: TCP_RECEIVED_BYTES}, disabled: true, tagOverrides: {cluster: {value: xds.cluster_name}}}]}]}",
            "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], metrics: [{overrides: [{match: {metric: TCP_RECEIVED_BYTES}, disabled: false}]}]}",
        ]),
        ["TCP_RECEIVED_BYTES:false:+cluster"]
    );
}
