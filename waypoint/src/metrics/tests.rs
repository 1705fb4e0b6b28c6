use super::*;

#[test]
fn telemetry_can_turn_the_access_log_off_but_not_the_metrics() {
    let logged = |disabled: bool| {
        let capture = weft_test_support::logs::LogCapture::new();
        let mut registry = Registry::default();
        tracing::subscriber::with_default(capture.subscriber(), || {
            let mut record = RequestRecord::new(Arc::new(Metrics::new(&mut registry)));
            record.path = "/logged-or-not".into();
            record.status = 200;
            record.access_log_disabled = disabled;
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("response_code=\"200\""), "{text}");
        capture.text().contains("/logged-or-not")
    };
    assert!(logged(false));
    assert!(!logged(true));
}

/// Label sets resolved once and reused count each request under its own labels.
#[test]
fn requests_count_under_their_own_labels_when_label_sets_are_reused() {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let record = |status: u16, flags: ResponseFlag, at_edge: bool| {
        let mut record = RequestRecord::new(Arc::clone(&metrics));
        record.status = status;
        record.response_flags = flags.into();
        record.at_edge = at_edge;
        record.access_log_disabled = true;
        record
    };
    let mut expected = Vec::new();
    for (status, flags, at_edge, times) in [
        (200, ResponseFlag::None, false, 3),
        (503, ResponseFlag::UpstreamOverflow, false, 2),
        (200, ResponseFlag::None, true, 1),
    ] {
        for _ in 0..times {
            let one = record(status, flags, at_edge);
            expected.push((one.labels(), times));
        }
    }
    assert_eq!(metrics.resolved.lock().unwrap().len(), 3);
    for (labels, times) in expected {
        assert_eq!(metrics.requests_with(&labels), times, "{labels:?}");
    }
}

#[test]
fn access_log_line_follows_istio_default_field_order() {
    let mut registry = Registry::default();
    let mut record = RequestRecord::new(Arc::new(Metrics::new(&mut registry)));
    record.method = http::Method::GET;
    record.path = "/reviews/1".into();
    record.status = 503;
    record.response_flags = ResponseFlag::UpstreamOverflow.into();
    record.response_code_details = "upstream_reset_before_response_started{overflow}".into();
    record.bytes_received = 3;
    record.bytes_sent = 81;
    record.user_agent = "curl/8".into();
    record.request_id = "abc".into();
    record.authority = "reviews:9080".into();
    record.upstream_host = Some("10.0.0.5:9080".parse().unwrap());
    record.upstream_cluster = Some("outbound|9080|v1|reviews".into());
    record.downstream_local = Some("10.96.0.10:9080".parse().unwrap());
    record.downstream_remote = Some("10.0.0.7:40000".parse().unwrap());
    let line = record.access_log_line();
    let after_time = line.split_once("] ").unwrap().1;
    assert!(after_time.starts_with(
        "\"GET /reviews/1 HTTP/1.1\" 503 UO upstream_reset_before_response_started{overflow} - \"-\" 3 81 "
    ), "{line}");
    assert!(line.ends_with(
        "\"-\" \"curl/8\" \"abc\" \"reviews:9080\" \"10.0.0.5:9080\" outbound|9080|v1|reviews - 10.96.0.10:9080 10.0.0.7:40000 - default"
    ), "{line}");
    drop(record);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("response_flags=\"UO\""), "{text}");
}

#[test]
fn access_log_lines_escape_terminal_control_characters() {
    let mut registry = Registry::default();
    let mut record = RequestRecord::new(Arc::new(Metrics::new(&mut registry)));
    record.access_log_disabled = true;
    // A path may carry bytes above ASCII (C1 controls once decoded); a header the record
    // keeps is visible ASCII, but any text is escaped when it is not.
    record.path = RecordText::Owned("/a\u{9b}2J".to_owned());
    record.authority = RecordText::Owned("shop\u{1b}[31m".to_owned());
    let line = record.access_log_line();
    assert!(!line.contains(['\u{9b}', '\u{1b}']), "{line}");
    assert!(line.contains("/a\\u{9b}2J"), "{line}");
    assert!(line.contains("\"shop\\u{1b}[31m\""), "{line}");
}

#[test]
fn start_time_is_rfc3339_utc() {
    let cases = [
        (0u64, "1970-01-01T00:00:00.000Z"),
        (951_782_400, "2000-02-29T00:00:00.000Z"),
        (1_700_000_000, "2023-11-14T22:13:20.000Z"),
    ];
    for (secs, expected) in cases {
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(humantime_utc(time), expected);
    }
}

mod overrides {
    use super::*;
    use weft_proto::waypoint as proto;
    use weft_test_support::prometheus::Exposition;

    use proto::metric_tag_source::Source;

    fn tag(name: &str, sources: Vec<Source>) -> proto::MetricTag {
        proto::MetricTag {
            tag: name.to_owned(),
            sources: sources
                .into_iter()
                .map(|s| proto::MetricTagSource { source: Some(s) })
                .collect(),
        }
    }

    fn attribute(attribute: proto::RequestAttribute) -> Source {
        Source::Attribute(attribute as i32)
    }

    /// The request count retagged, the duration disabled, the sizes standard.
    fn retagged() -> Arc<MetricOverrides> {
        let list = [
            proto::MetricOverride {
                metric: proto::RequestMetric::RequestCount as i32,
                disabled: false,
                removed_tags: vec!["request_protocol".into(), "source_principal".into()],
                upserted_tags: vec![
                    tag(
                        "user",
                        vec![
                            Source::RequestHeader("x-user".into()),
                            Source::Literal("anonymous".into()),
                        ],
                    ),
                    tag(
                        "request_host",
                        vec![attribute(proto::RequestAttribute::RequestHost)],
                    ),
                    tag("response_code", vec![Source::Literal("overridden".into())]),
                    tag(
                        "url_path",
                        vec![attribute(proto::RequestAttribute::RequestUrlPath)],
                    ),
                    tag(
                        "peer",
                        vec![attribute(proto::RequestAttribute::ConnectionPeerPrincipal)],
                    ),
                ],
            },
            proto::MetricOverride {
                metric: proto::RequestMetric::RequestDuration as i32,
                disabled: true,
                ..Default::default()
            },
        ];
        metric_overrides(&list, "metric_overrides")
            .unwrap()
            .expect("overrides")
    }

    fn record(metrics: &Arc<Metrics>, overrides: &Arc<MetricOverrides>, user: Option<&str>) {
        let mut record = RequestRecord::new(Arc::clone(metrics));
        record.access_log_disabled = true;
        record.status = 200;
        record.authority = "reviews:9080".into();
        record.path = "/reviews/1?x=1".into();
        let mut headers = http::HeaderMap::new();
        if let Some(user) = user {
            headers.insert("x-user", HeaderValue::from_str(user).unwrap());
        }
        record.set_metric_overrides(overrides, &headers);
    }

    fn exposed(registry: &Registry) -> Exposition {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        Exposition::parse(&text)
    }

    #[test]
    fn a_metric_is_disabled_retagged_or_left_standard_by_its_override() {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let overrides = retagged();
        for user in [Some("jason"), Some("jason"), Some("a\"b\\c"), None] {
            record(&metrics, &overrides, user);
        }
        let exposition = exposed(&registry);
        let counted = exposition.matching("istio_requests_total", &[]);
        assert_eq!(counted.len(), 3, "{counted:#?}");
        for sample in &counted {
            // Removed: absent from every series of the metric, not empty.
            assert_eq!(sample.label("request_protocol"), None, "{}", sample.line);
            assert_eq!(sample.label("source_principal"), None, "{}", sample.line);
            // Upserted: a standard label replaced in place, new ones added.
            assert_eq!(sample.label("response_code"), Some("overridden"));
            assert_eq!(sample.label("request_host"), Some("reviews:9080"));
            assert_eq!(sample.label("url_path"), Some("/reviews/1"));
            // An attribute without a value, and no other source: `unknown`.
            assert_eq!(sample.label("peer"), Some("unknown"));
            assert_eq!(sample.label("reporter"), Some("waypoint"));
            assert_eq!(sample.label("destination_service"), Some("unknown"));
        }
        assert_eq!(
            exposition.count("istio_requests_total", &[("user", "jason")]),
            2
        );
        // A header's quote and backslash are escaped in the exposition, read back whole.
        assert_eq!(
            exposition.count("istio_requests_total", &[("user", "a\"b\\c")]),
            1
        );
        assert_eq!(
            exposition.count("istio_requests_total", &[("user", "anonymous")]),
            1
        );
        assert!(
            exposition
                .matching("istio_request_duration_milliseconds_count", &[])
                .is_empty()
        );
        // Without an override of its own, a metric keeps Istio's labels.
        assert_eq!(
            exposition.count(
                "istio_request_bytes_count",
                &[("request_protocol", "http"), ("response_code", "200")]
            ),
            4
        );
    }

    #[test]
    fn values_a_request_brings_are_bounded_in_length_and_in_series() {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let overrides = retagged();
        record(&metrics, &overrides, Some(&"x".repeat(1000)));
        let total = super::super::overrides::MAX_OVERRIDDEN_SERIES + 20;
        for i in 0..total {
            record(&metrics, &overrides, Some(&format!("user-{i}")));
        }
        let exposition = exposed(&registry);
        let counted = exposition.matching("istio_requests_total", &[]);
        let long = counted
            .iter()
            .find(|s| s.label("user").is_some_and(|u| u.starts_with("xxx")))
            .expect("the long value's series");
        assert_eq!(long.label("user").map(str::len), Some(256));
        // The first label sets were kept; past the bound, the upserted values are `unknown`.
        assert!(
            counted.len() <= super::super::overrides::MAX_OVERRIDDEN_SERIES + 1,
            "{}",
            counted.len()
        );
        assert_eq!(
            exposition.count("istio_requests_total", &[("user", "unknown")]),
            21,
        );
        assert_eq!(
            exposition.count("istio_requests_total", &[]),
            total as u64 + 1
        );
    }

    #[test]
    fn overrides_the_exposition_cannot_carry_are_refused() {
        let named = |name: &str| proto::MetricOverride {
            metric: proto::RequestMetric::RequestCount as i32,
            removed_tags: vec![name.to_owned()],
            ..Default::default()
        };
        for bad in ["my-tag", "le", "__name__", ""] {
            let error = metric_overrides(&[named(bad)], "metric_overrides").unwrap_err();
            assert!(
                error.to_string().contains("metric_overrides[0]"),
                "{bad}: {error}"
            );
        }
        let unspecified = proto::MetricOverride::default();
        assert!(metric_overrides(&[unspecified], "metric_overrides").is_err());
        assert!(
            metric_overrides(&[named("ok"), named("ok")], "metric_overrides").is_err(),
            "one metric given twice"
        );
        assert_eq!(metric_overrides(&[], "metric_overrides").unwrap(), None);
    }

    /// The TCP metrics retagged and one disabled, as a Telemetry at the waypoint sends them.
    fn tcp_retagged() -> Arc<MetricOverrides> {
        let list = [
            proto::MetricOverride {
                metric: proto::RequestMetric::TcpOpenedConnections as i32,
                removed_tags: vec!["destination_principal".into()],
                upserted_tags: vec![
                    tag(
                        "peer_port",
                        vec![attribute(proto::RequestAttribute::SourcePort)],
                    ),
                    tag(
                        "cluster",
                        vec![attribute(proto::RequestAttribute::ClusterName)],
                    ),
                    // A connection has no request: the header and the request attribute have
                    // no value, the literal after them gives it.
                    tag(
                        "host",
                        vec![
                            Source::RequestHeader("x-user".into()),
                            attribute(proto::RequestAttribute::RequestHost),
                            Source::Literal("none".into()),
                        ],
                    ),
                    tag(
                        "code",
                        vec![attribute(proto::RequestAttribute::ResponseCode)],
                    ),
                    tag(
                        "mtls",
                        vec![attribute(proto::RequestAttribute::ConnectionMtls)],
                    ),
                ],
                ..Default::default()
            },
            proto::MetricOverride {
                metric: proto::RequestMetric::TcpSentBytes as i32,
                disabled: true,
                ..Default::default()
            },
            proto::MetricOverride {
                metric: proto::RequestMetric::TcpClosedConnections as i32,
                removed_tags: vec!["response_flags".into()],
                ..Default::default()
            },
        ];
        metric_overrides(&list, "metric_overrides")
            .unwrap()
            .expect("overrides")
    }

    fn connection(metrics: &Metrics, overrides: Option<&Arc<MetricOverrides>>, port: u16) {
        let info = ConnectionInfo {
            mtls: true,
            downstream_local: "10.96.0.10:9080".into(),
            downstream_remote: format!("10.0.0.7:{port}"),
            upstream_cluster: Some("outbound|9080||reviews".into()),
            access_log_disabled: true,
            metric_overrides: overrides.cloned(),
            ..ConnectionInfo::default()
        };
        let record = metrics.connection_opened(info);
        record.add_sent(10);
        record.add_received(5);
    }

    #[test]
    fn tcp_metrics_are_disabled_retagged_or_left_standard_by_their_overrides() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let overrides = tcp_retagged();
        connection(&metrics, Some(&overrides), 40000);
        connection(&metrics, Some(&overrides), 40001);
        let exposition = exposed(&registry);
        let opened = exposition.matching("istio_tcp_connections_opened_total", &[]);
        assert_eq!(opened.len(), 2, "{opened:#?}");
        for sample in &opened {
            assert_eq!(
                sample.label("destination_principal"),
                None,
                "{}",
                sample.line
            );
            assert_eq!(sample.label("cluster"), Some("outbound|9080||reviews"));
            assert_eq!(sample.label("host"), Some("none"));
            assert_eq!(sample.label("code"), Some("unknown"));
            assert_eq!(sample.label("mtls"), Some("true"));
            assert_eq!(sample.label("reporter"), Some("waypoint"));
            assert_eq!(sample.label("request_protocol"), Some("tcp"));
        }
        for port in ["40000", "40001"] {
            assert_eq!(
                exposition.count("istio_tcp_connections_opened_total", &[("peer_port", port)]),
                1
            );
        }
        // Disabled: not recorded at all.
        assert!(
            exposition
                .matching("istio_tcp_sent_bytes_total", &[])
                .is_empty()
        );
        // Closed with its override, as it ends; the received bytes keep Istio's labels.
        let closed = exposition.matching("istio_tcp_connections_closed_total", &[]);
        assert_eq!(closed.len(), 1, "{closed:#?}");
        assert_eq!(closed[0].label("response_flags"), None);
        assert_eq!(
            exposition.count("istio_tcp_connections_closed_total", &[]),
            2
        );
        assert_eq!(
            exposition.count(
                "istio_tcp_received_bytes_total",
                &[
                    ("response_flags", "-"),
                    ("destination_principal", "unknown")
                ]
            ),
            10
        );
    }

    #[test]
    fn tcp_connections_without_tcp_overrides_keep_istios_metrics() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        // Request overrides only: the connection is counted as Istio counts it.
        connection(&metrics, Some(&retagged()), 40000);
        connection(&metrics, None, 40001);
        let exposition = exposed(&registry);
        assert_eq!(
            exposition.count(
                "istio_tcp_connections_opened_total",
                &[
                    ("destination_principal", "unknown"),
                    ("response_flags", "-")
                ]
            ),
            2
        );
        assert_eq!(exposition.count("istio_tcp_sent_bytes_total", &[]), 20);
        assert!(
            exposition
                .matching(
                    "istio_tcp_connections_opened_total",
                    &[("peer_port", "40000")]
                )
                .is_empty()
        );
    }

    #[test]
    fn tcp_values_a_connection_brings_are_bounded_in_series() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let overrides = tcp_retagged();
        let total = super::super::overrides::MAX_OVERRIDDEN_SERIES + 5;
        for i in 0..total {
            connection(&metrics, Some(&overrides), (i % 60_000) as u16 + 1024);
        }
        let exposition = exposed(&registry);
        // One series for the closed count (no per-connection value), the first label sets
        // for the opened count, then `unknown`.
        assert!(
            exposition
                .matching("istio_tcp_connections_opened_total", &[])
                .len()
                <= super::super::overrides::MAX_OVERRIDDEN_SERIES
        );
        assert!(
            exposition.count(
                "istio_tcp_connections_opened_total",
                &[("peer_port", "unknown")]
            ) >= 5
        );
        assert_eq!(
            exposition.count("istio_tcp_connections_opened_total", &[]),
            total as u64
        );
    }

    #[test]
    fn tcp_metrics_given_twice_or_unknown_are_refused() {
        let tcp = |metric: i32| proto::MetricOverride {
            metric,
            disabled: true,
            ..Default::default()
        };
        let sent = proto::RequestMetric::TcpSentBytes as i32;
        assert!(metric_overrides(&[tcp(sent), tcp(sent)], "metric_overrides").is_err());
        let error = metric_overrides(&[tcp(99)], "metric_overrides").unwrap_err();
        assert!(
            error.to_string().contains("metric_overrides[0].metric"),
            "{error}"
        );
        let only_tcp = metric_overrides(&[tcp(sent)], "metric_overrides")
            .unwrap()
            .unwrap();
        assert!(only_tcp.changes_tcp() && !only_tcp.changes_requests());
    }
}
