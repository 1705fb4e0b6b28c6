//! Sampling decisions, the span's tags, and the export queue's bound.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prometheus_client::registry::Registry;
use weft_proto::waypoint as proto;

use super::*;

fn config(percentage: f64) -> TracingConfig {
    tracing_config(
        &proto::Tracing {
            provider: "otel".into(),
            collector: vec!["127.0.0.1:4317".into()],
            random_sampling_percentage: percentage,
            disable_span_reporting: false,
            service_name: String::new(),
            canonical_service: String::new(),
            custom_tags: Vec::new(),
            http: None,
            grpc: None,
        },
        "waypoint",
        "shop",
        false,
        &no_environment,
    )
    .unwrap()
}

fn no_environment(_: &str) -> Option<String> {
    None
}

fn exporter() -> Arc<SpanExporter> {
    SpanExporter::new(
        "waypoint~10.0.0.2~waypoint.shop~shop.svc.cluster.local".into(),
        &mut Registry::default(),
    )
}

fn traceparent(flags: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        HeaderValue::from_str(&format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"
        ))
        .unwrap(),
    );
    headers
}

#[test]
fn the_percentage_decides_only_without_an_incoming_decision() {
    let exporter = exporter();
    // (percentage, roll, headers, sampled)
    let cases = [
        (100.0, 0.999, HeaderMap::new(), true),
        (0.0, 0.0, HeaderMap::new(), false),
        (10.0, 0.05, HeaderMap::new(), true),
        (10.0, 0.2, HeaderMap::new(), false),
        // The caller's decision wins both ways, as Envoy keeps the parent's sampled flag.
        (0.0, 0.5, traceparent("01"), true),
        (100.0, 0.5, traceparent("00"), false),
    ];
    for (percentage, roll, headers, sampled) in cases {
        let span = RequestSpan::start(&config(percentage), &mut headers.clone(), &exporter, roll);
        assert_eq!(
            span.context.sampled, sampled,
            "{percentage}% roll {roll} {headers:?}"
        );
        assert_eq!(span.report.is_some(), sampled);
    }
}

#[test]
fn a_span_joins_the_incoming_trace_as_a_child() {
    let span = RequestSpan::start(&config(0.0), &mut traceparent("01"), &exporter(), 0.5);
    assert_eq!(
        propagation::hex(&span.context.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        span.context.parent_span_id.map(|p| propagation::hex(&p)),
        Some("00f067aa0ba902b7".to_owned())
    );
    assert_ne!(propagation::hex(&span.context.span_id), "00f067aa0ba902b7");
    let fresh = RequestSpan::start(&config(100.0), &mut HeaderMap::new(), &exporter(), 0.5);
    assert_eq!(fresh.context.parent_span_id, None);
    assert!(fresh.context.trace_id.iter().any(|b| *b != 0));
}

#[test]
fn disabled_reporting_still_propagates() {
    let mut tracing = proto::Tracing {
        random_sampling_percentage: 100.0,
        disable_span_reporting: true,
        ..Default::default()
    };
    let config = tracing_config(&tracing, "waypoint", "shop", false, &no_environment).unwrap();
    let span = RequestSpan::start(&config, &mut HeaderMap::new(), &exporter(), 0.0);
    assert!(span.context.sampled);
    assert!(span.report.is_none());
    tracing.disable_span_reporting = false;
    let error = tracing_config(&tracing, "waypoint", "shop", false, &no_environment).unwrap_err();
    assert!(error.to_string().contains("no collector"), "{error}");
}

#[test]
fn bad_settings_are_refused_with_their_field() {
    for (percentage, collector, field) in [
        (100.5, "127.0.0.1:4317", "random_sampling_percentage"),
        (-1.0, "127.0.0.1:4317", "random_sampling_percentage"),
        (f64::NAN, "127.0.0.1:4317", "random_sampling_percentage"),
        (1.0, "collector", "tracing.collector[0]"),
        (1.0, "collector:port", "tracing.collector[0]"),
    ] {
        let error = tracing_config(
            &proto::Tracing {
                collector: vec![collector.into()],
                random_sampling_percentage: percentage,
                ..Default::default()
            },
            "waypoint",
            "shop",
            false,
            &no_environment,
        )
        .unwrap_err();
        assert!(error.to_string().contains(field), "{error}");
    }
}

#[test]
fn otlp_http_settings_are_checked_and_kept_with_the_collector() {
    let with_http = |http: proto::OtlpHttp| {
        tracing_config(
            &proto::Tracing {
                collector: vec!["127.0.0.1:4318".into()],
                http: Some(http),
                ..Default::default()
            },
            "waypoint",
            "shop",
            false,
            &no_environment,
        )
    };
    let good = proto::OtlpHttp {
        path: "/v1/traces".into(),
        timeout: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
        headers: vec![proto::OtlpHttpHeader {
            name: "x-tenant".into(),
            value: "a".into(),
        }],
    };
    let collector = with_http(good.clone()).unwrap().collector.unwrap();
    assert_eq!(
        collector.http,
        Some(HttpExport {
            path: "/v1/traces".into(),
            timeout: std::time::Duration::from_secs(2),
            headers: vec![(
                http::HeaderName::from_static("x-tenant"),
                HeaderValue::from_static("a")
            )],
        })
    );
    let header = |name: &str, value: &str| proto::OtlpHttpHeader {
        name: name.into(),
        value: value.into(),
    };
    for (http, field) in [
        (
            proto::OtlpHttp {
                path: "v1/traces".into(),
                ..good.clone()
            },
            "tracing.http.path",
        ),
        (
            proto::OtlpHttp {
                timeout: None,
                ..good.clone()
            },
            "tracing.http.timeout",
        ),
        (
            proto::OtlpHttp {
                headers: vec![header("x-a", "1"), header("bad name", "1")],
                ..good.clone()
            },
            "tracing.http.headers[1].name",
        ),
        (
            proto::OtlpHttp {
                headers: vec![header("x-a", "a\nb")],
                ..good.clone()
            },
            "tracing.http.headers[0].value",
        ),
    ] {
        let error = with_http(http).unwrap_err();
        assert!(error.to_string().contains(field), "{field}: {error}");
    }
}

#[test]
fn otlp_grpc_settings_are_checked_and_kept_with_the_collector() {
    let with_grpc = |grpc: Option<proto::OtlpGrpc>| {
        tracing_config(
            &proto::Tracing {
                collector: vec!["127.0.0.1:4317".into()],
                grpc,
                ..Default::default()
            },
            "waypoint",
            "shop",
            false,
            &no_environment,
        )
    };
    let header = |name: &str, value: &str| proto::OtlpHttpHeader {
        name: name.into(),
        value: value.into(),
    };
    let good = proto::OtlpGrpc {
        timeout: Some(prost_types::Duration {
            seconds: 0,
            nanos: 250_000_000,
        }),
        initial_metadata: vec![header("authentication", "token"), header("x-a", "1")],
    };
    let collector = with_grpc(Some(good.clone())).unwrap().collector.unwrap();
    assert_eq!(
        collector.grpc,
        GrpcExport {
            timeout: Some(std::time::Duration::from_millis(250)),
            metadata: vec![
                (
                    http::HeaderName::from_static("authentication"),
                    HeaderValue::from_static("token")
                ),
                (
                    http::HeaderName::from_static("x-a"),
                    HeaderValue::from_static("1")
                ),
            ],
        }
    );
    assert_eq!(collector.http, None);
    assert_eq!(
        with_grpc(None).unwrap().collector.unwrap().grpc,
        GrpcExport::default()
    );
    for (grpc, field) in [
        (
            proto::OtlpGrpc {
                timeout: Some(prost_types::Duration::default()),
                ..good.clone()
            },
            "tracing.grpc.timeout",
        ),
        (
            proto::OtlpGrpc {
                initial_metadata: vec![header("x-a", "1"), header("bad name", "1")],
                ..good.clone()
            },
            "tracing.grpc.initial_metadata[1].name",
        ),
        (
            proto::OtlpGrpc {
                initial_metadata: vec![header("x-a", "a\rb")],
                ..good.clone()
            },
            "tracing.grpc.initial_metadata[0].value",
        ),
    ] {
        let error = with_grpc(Some(grpc)).unwrap_err();
        assert!(error.to_string().contains(field), "{field}: {error}");
    }
}

#[test]
fn spans_carry_envoys_and_istios_tags() {
    let exporter = exporter();
    let mut registry = Registry::default();
    let mut record = RequestRecord::new(Arc::new(crate::metrics::Metrics::new(&mut registry)));
    record.method = http::Method::GET;
    record.path = "/reviews/1".into();
    record.authority = "reviews:9080".into();
    record.status = 503;
    record.upstream_cluster = Some("outbound|9080|v1|reviews.shop.svc.cluster.local".into());
    record.downstream_local = Some("10.96.0.20:9080".parse().unwrap());
    record.downstream_remote = Some("10.0.0.7:40000".parse().unwrap());
    record.destination_service = Some(Arc::new(crate::model::ServiceName {
        hostname: "reviews.shop.svc.cluster.local".into(),
        name: "reviews".into(),
        namespace: "shop".into(),
    }));
    let span = RequestSpan::start(&config(100.0), &mut traceparent("01"), &exporter, 0.0);
    let report = span.report.as_ref().unwrap();
    let built: Span = build_span(
        &span.context,
        span.start,
        &record,
        report,
        exporter.node_id(),
    );
    drop(record);
    let tag = |key: &str| {
        built
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
    };
    assert_eq!(built.name, "reviews.shop.svc.cluster.local:9080/*");
    assert_eq!(tag("http.method").as_deref(), Some("GET"));
    assert_eq!(
        tag("http.url").as_deref(),
        Some("http://reviews:9080/reviews/1")
    );
    assert_eq!(tag("http.status_code").as_deref(), Some("503"));
    assert_eq!(
        tag("upstream_cluster").as_deref(),
        Some("outbound|9080|v1|reviews.shop.svc.cluster.local")
    );
    assert_eq!(tag("istio.canonical_service").as_deref(), Some("waypoint"));
    assert_eq!(tag("istio.namespace").as_deref(), Some("shop"));
    assert_eq!(tag("peer.address").as_deref(), Some("10.0.0.7"));
    assert_eq!(tag("error").as_deref(), Some("true"));
    assert!(tag("node_id").unwrap().starts_with("waypoint~10.0.0.2~"));
    assert_eq!(built.kind, span::SpanKind::Server as i32);
    assert_eq!(
        built.parent_span_id,
        propagation::unhex_for_tests("00f067aa0ba902b7")
    );
}

#[test]
fn a_gateways_span_is_a_client_span_named_by_its_canonical_service() {
    let tracing = proto::Tracing {
        provider: "otel".into(),
        collector: vec!["127.0.0.1:4317".into()],
        random_sampling_percentage: 100.0,
        service_name: "istio-ingressgateway.edge".into(),
        canonical_service: "istio-ingressgateway".into(),
        ..Default::default()
    };
    let gateway = tracing_config(&tracing, "ingress-7d9f", "edge", true, &no_environment).unwrap();
    assert_eq!(gateway.canonical_service, "istio-ingressgateway");
    assert_eq!(gateway.span_kind, span::SpanKind::Client);
    let exporter = exporter();
    let mut registry = Registry::default();
    let record = RequestRecord::new(Arc::new(crate::metrics::Metrics::new(&mut registry)));
    let span = RequestSpan::start(&gateway, &mut HeaderMap::new(), &exporter, 0.0);
    let built = build_span(
        &span.context,
        span.start,
        &record,
        span.report.as_ref().unwrap(),
        exporter.node_id(),
    );
    drop(record);
    assert_eq!(built.kind, span::SpanKind::Client as i32);
    let canonical = built
        .attributes
        .iter()
        .find(|kv| kv.key == "istio.canonical_service")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        });
    assert_eq!(canonical.as_deref(), Some("istio-ingressgateway"));
    // Without a canonical service the configuration's name stands in, as for a waypoint.
    let unnamed = proto::Tracing {
        canonical_service: String::new(),
        ..tracing
    };
    let waypoint = tracing_config(&unnamed, "waypoint", "shop", false, &no_environment).unwrap();
    assert_eq!(waypoint.canonical_service, "waypoint");
    assert_eq!(waypoint.span_kind, span::SpanKind::Server);
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_waiting() {
    // No sending task: nothing drains the queue.
    let exporter = exporter();
    let collector = config(100.0).collector.unwrap();
    for _ in 0..export::QUEUE_CAPACITY + 10 {
        exporter.submit(Arc::clone(&collector), Span::default());
    }
    assert_eq!(exporter.dropped(), 10);
}

fn string_tag(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

fn custom(tag: &str, r#type: proto::custom_tag::Type) -> proto::CustomTag {
    proto::CustomTag {
        tag: tag.into(),
        r#type: Some(r#type),
    }
}

fn from(name: &str, default: Option<&str>) -> proto::TagFromName {
    proto::TagFromName {
        name: name.into(),
        default_value: default.map(str::to_owned),
    }
}

/// Telemetry's custom tags: a literal, environment variables (set, unset with a default,
/// unset without one: no tag), request headers (present, absent with a default, absent
/// without one: no tag); and a header tag with a name no header can have is refused.
#[test]
fn custom_tags_are_literals_environment_variables_and_request_headers() {
    use proto::custom_tag::Type;
    let tracing = proto::Tracing {
        provider: "otel".into(),
        collector: vec!["127.0.0.1:4317".into()],
        random_sampling_percentage: 100.0,
        custom_tags: vec![
            custom("team", Type::Literal("checkout".into())),
            custom("zone", Type::Environment(from("ZONE", None))),
            custom("region", Type::Environment(from("REGION", Some("eu")))),
            custom("rack", Type::Environment(from("RACK", None))),
            custom("user", Type::Header(from("x-user", None))),
            custom("tier", Type::Header(from("x-tier", Some("free")))),
            custom("plan", Type::Header(from("x-plan", None))),
        ],
        ..Default::default()
    };
    let environment = |name: &str| (name == "ZONE").then(|| "zone-a".to_owned());
    let config = tracing_config(&tracing, "waypoint", "shop", false, &environment).unwrap();
    let exporter = exporter();
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("alice"));
    let span = RequestSpan::start(&config, &mut headers, &exporter, 0.0);
    let mut registry = Registry::default();
    let record = RequestRecord::new(Arc::new(crate::metrics::Metrics::new(&mut registry)));
    let built = build_span(
        &span.context,
        span.start,
        &record,
        span.report.as_ref().unwrap(),
        exporter.node_id(),
    );
    drop(record);
    for (key, value) in [
        ("team", Some("checkout")),
        ("zone", Some("zone-a")),
        ("region", Some("eu")),
        ("rack", None),
        ("user", Some("alice")),
        ("tier", Some("free")),
        ("plan", None),
    ] {
        assert_eq!(string_tag(&built, key).as_deref(), value, "{key}");
    }

    // Read again from the request as it is forwarded, after the route's header operations
    // (as Envoy's tracer reads the request its router changed): a header the route set or
    // removed, a default when it is gone; the other tags are kept.
    let mut span = span;
    let mut forwarded = HeaderMap::new();
    forwarded.insert("x-plan", HeaderValue::from_static("gold"));
    span.retag(&forwarded);
    let record = RequestRecord::new(Arc::new(crate::metrics::Metrics::new(&mut registry)));
    let built = build_span(
        &span.context,
        span.start,
        &record,
        span.report.as_ref().unwrap(),
        exporter.node_id(),
    );
    drop(record);
    for (key, value) in [
        ("team", Some("checkout")),
        ("zone", Some("zone-a")),
        ("user", None),
        ("tier", Some("free")),
        ("plan", Some("gold")),
    ] {
        assert_eq!(
            string_tag(&built, key).as_deref(),
            value,
            "after the route: {key}"
        );
    }

    let bad = proto::Tracing {
        custom_tags: vec![custom("user", Type::Header(from("x user", None)))],
        ..tracing
    };
    let error = tracing_config(&bad, "waypoint", "shop", false, &environment).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("tracing.custom_tags[user].header.name"),
        "{error}"
    );
}

/// Istio's `formatter` custom tag (Envoy's `CustomTag.value`, istiod's
/// `buildCustomTagsFromProvider`): the access log's substitution format, evaluated when the
/// span ends on the request's record, with the request and response headers it names
/// captured; an absent operator reads `-`. A format that does not parse is refused, naming
/// the tag.
#[test]
fn formatter_tags_are_evaluated_on_the_request_record_when_the_span_ends() {
    use proto::custom_tag::Type;
    let tracing = proto::Tracing {
        provider: "otel".into(),
        collector: vec!["127.0.0.1:4317".into()],
        random_sampling_percentage: 100.0,
        custom_tags: vec![
            custom(
                "call",
                Type::Formatter("%REQ(:METHOD)% %RESPONSE_CODE%".into()),
            ),
            custom("route", Type::Formatter("%ROUTE_NAME%".into())),
            custom(
                "tenant",
                Type::Formatter("tenant=%REQ(X-TENANT)% shard=%RESP(X-SHARD)%".into()),
            ),
            custom("missing", Type::Formatter("%REQ(X-ABSENT)%".into())),
            custom("team", Type::Literal("checkout".into())),
        ],
        ..Default::default()
    };
    let config = tracing_config(&tracing, "waypoint", "shop", false, &no_environment).unwrap();
    let exporter = exporter();
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("acme"));
    let mut span = RequestSpan::start(&config, &mut headers, &exporter, 0.0);
    let mut response = HeaderMap::new();
    response.insert("x-shard", HeaderValue::from_static("7"));
    span.capture_response(&response);
    let mut registry = Registry::default();
    let mut record = RequestRecord::new(Arc::new(crate::metrics::Metrics::new(&mut registry)));
    record.method = http::Method::POST;
    record.status = 503;
    record.route_name = Some("reviews-v2".into());
    let (_, built) = span.end(&record).expect("a sampled, reported span");
    drop(record);
    for (key, value) in [
        ("call", "POST 503"),
        ("route", "reviews-v2"),
        ("tenant", "tenant=acme shard=7"),
        ("missing", "-"),
        ("team", "checkout"),
    ] {
        assert_eq!(string_tag(&built, key).as_deref(), Some(value), "{key}");
    }

    let bad = proto::Tracing {
        custom_tags: vec![custom("route", Type::Formatter("%NO_SUCH_COMMAND%".into()))],
        ..tracing
    };
    let error = tracing_config(&bad, "waypoint", "shop", false, &no_environment).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("tracing.custom_tags[route].formatter"),
        "{error}"
    );
}

/// The span's name: the route's operation; at a waypoint, the one an upstream gateway named
/// in `x-envoy-decorator-operation` (taken off the request); Envoy's `ingress` and
/// `egress <authority>` for a request no route took; else the service's `host:port/*`.
#[test]
fn spans_are_named_after_the_route_or_the_callers_decorator() {
    let exporter = exporter();
    let mut registry = Registry::default();
    let metrics = Arc::new(crate::metrics::Metrics::new(&mut registry));
    let name_of = |config: &TracingConfig, headers: &mut HeaderMap, record: &RequestRecord| {
        let span = RequestSpan::start(config, headers, &exporter, 0.0);
        build_span(
            &span.context,
            span.start,
            record,
            span.report.as_ref().unwrap(),
            exporter.node_id(),
        )
        .name
    };
    let waypoint = config(100.0);
    let gateway = TracingConfig {
        span_kind: span::SpanKind::Client,
        ..config(100.0)
    };
    let mut record = RequestRecord::new(Arc::clone(&metrics));
    record.authority = "reviews:9080".into();
    record.downstream_local = Some("10.96.0.20:9080".parse().unwrap());
    record.destination_service = Some(Arc::new(crate::model::ServiceName {
        hostname: "reviews.shop.svc.cluster.local".into(),
        name: "reviews".into(),
        namespace: "shop".into(),
    }));
    assert_eq!(
        name_of(&waypoint, &mut HeaderMap::new(), &record),
        "reviews.shop.svc.cluster.local:9080/*"
    );
    record.operation = Some("reviews-vs:9080/api*".into());
    assert_eq!(
        name_of(&waypoint, &mut HeaderMap::new(), &record),
        "reviews-vs:9080/api*"
    );
    let decorated = || {
        let mut headers = HeaderMap::new();
        headers.insert(
            DECORATOR_OPERATION,
            HeaderValue::from_static("shop.example.com:80/*"),
        );
        headers
    };
    let mut headers = decorated();
    assert_eq!(
        name_of(&waypoint, &mut headers, &record),
        "shop.example.com:80/*"
    );
    assert!(!headers.contains_key(DECORATOR_OPERATION));
    // A gateway (egress) does not read it.
    let mut headers = decorated();
    assert_eq!(
        name_of(&gateway, &mut headers, &record),
        "reviews-vs:9080/api*"
    );
    record.operation = None;
    record.response_flags = ResponseFlag::NoRoute.into();
    assert_eq!(
        name_of(&waypoint, &mut HeaderMap::new(), &record),
        "ingress"
    );
    assert_eq!(
        name_of(&gateway, &mut HeaderMap::new(), &record),
        "egress reviews:9080"
    );
    drop(record);
}
