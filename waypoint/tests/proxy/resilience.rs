//! What a route and a DestinationRule do when endpoints misbehave or are slow: faults,
//! retries, timeouts, mirrors, outlier detection, connection-pool limits and reuse.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use weft_proto::waypoint as proto;

use crate::harness::*;

/// A route to `v1` retrying a 5xx `attempts` times.
fn retrying_5xx(attempts: i32) -> proto::HttpRoute {
    proto::HttpRoute {
        retries: Some(proto::HttpRetry {
            attempts,
            per_try_timeout: None,
            retry_on: "5xx".to_owned(),
            ..Default::default()
        }),
        ..route_to("v1")
    }
}

/// A route to the whole service (`v1` and `v2`, in turn) retrying a 5xx once, with
/// `retryIgnorePreviousHosts` as given.
fn retrying_once(ignore_previous_hosts: Option<bool>) -> proto::HttpRoute {
    proto::HttpRoute {
        retries: Some(proto::HttpRetry {
            attempts: 1,
            retry_on: "5xx".to_owned(),
            retry_ignore_previous_hosts: ignore_previous_hosts,
            ..Default::default()
        }),
        ..route_to("")
    }
}

#[tokio::test]
async fn fault_abort_answers_without_reaching_the_endpoint() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let route = aborted_route_to("v1", 418);
    harness
        .waypoint
        .apply_config(config(vec![route], vec![cluster("v1", &[&v1])]))
        .unwrap();
    for _ in 0..5 {
        let (status, _, body) = harness.get("/").await;
        assert_eq!(status, StatusCode::IM_A_TEAPOT);
        assert_eq!(body, "fault filter abort");
    }
    assert_eq!(v1.request_count(), 0);
}

#[tokio::test]
async fn fault_delay_holds_the_request() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let route = proto::HttpRoute {
        fault: Some(proto::HttpFaultInjection {
            delay: Some(proto::http_fault_injection::Delay {
                fixed_delay: Some(duration(Duration::from_millis(600))),
                percentage: None,
            }),
            abort: None,
        }),
        ..route_to("v1")
    };
    harness
        .waypoint
        .apply_config(config(vec![route], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let started = Instant::now();
    let (status, _, body) = harness.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "v1");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retries_recover_from_an_endpoint_failing_twice() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let route = retrying_5xx(3);
    harness
        .waypoint
        .apply_config(config(vec![route], vec![cluster("v1", &[&v1])]))
        .unwrap();
    v1.behaviour.fail_first.store(2, Ordering::Relaxed);
    let (status, _, body) = harness.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "v1");
    assert_eq!(v1.request_count(), 3, "two failures, then success");

    // Without retries the first failure reaches the client.
    let no_retry = retrying_5xx(0);
    harness
        .waypoint
        .apply_config(config(vec![no_retry], vec![cluster("v1", &[&v1])]))
        .unwrap();
    v1.behaviour.fail_first.store(1, Ordering::Relaxed);
    let (status, _, _) = harness.get("/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// Requests counted with `response_code` and `response_flags`.
fn requests_flagged(metrics: &str, code: &str, flags: &str) -> u64 {
    weft_test_support::prometheus::Exposition::parse(metrics).count(
        "istio_requests_total",
        &[("response_code", code), ("response_flags", flags)],
    )
}

/// Retries that run out on a failure they would have retried flag the request `URX` beside the
/// last attempt's own flag, as Envoy's router does on `RetryStatus::NoRetryLimitExceeded`
/// (`Filter::onUpstreamHeaders` for a retriable status, `Filter::maybeRetryReset` for a per-try
/// timeout; `source/common/router/router.cc`, printed by `ResponseFlagUtils::toShortString`,
/// `source/common/stream_info/utility.cc`). A retry that succeeds, and a route without
/// retries, leave no `URX`.
#[tokio::test]
async fn retries_that_run_out_flag_the_request_urx() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let apply = |route| {
        harness
            .waypoint
            .apply_config(config(vec![route], vec![cluster("v1", &[&v1])]))
            .unwrap();
    };

    // Two retries, three 503s: the last 503 goes to the client, flagged URX alone.
    apply(retrying_5xx(2));
    v1.behaviour.fail_first.store(3, Ordering::Relaxed);
    let (status, _, _) = harness.get("/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v1.request_count(), 3);
    // A retry that succeeds: no flag.
    v1.behaviour.fail_first.store(1, Ordering::Relaxed);
    let (status, _, _) = harness.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v1.request_count(), 5);
    // No retry policy: the 503 has no URX.
    apply(retrying_5xx(0));
    v1.behaviour.fail_first.store(1, Ordering::Relaxed);
    let (status, _, _) = harness.get("/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Per-try timeouts on every attempt: Envoy's `UT` and `URX`, in its flag order.
    apply(proto::HttpRoute {
        retries: Some(proto::HttpRetry {
            attempts: 1,
            per_try_timeout: Some(duration(Duration::from_millis(100))),
            retry_on: "5xx".to_owned(),
            ..Default::default()
        }),
        ..route_to("v1")
    });
    v1.behaviour.delay_ms.store(2000, Ordering::Relaxed);
    let (status, _, body) = harness.get("/").await;
    assert_eq!(
        (status, body.as_ref()),
        (
            StatusCode::GATEWAY_TIMEOUT,
            b"upstream request timeout".as_ref()
        )
    );

    let metrics = harness.metrics().await;
    for (code, flags, count) in [
        ("503", "URX", 1),
        ("200", "-", 1),
        ("503", "-", 1),
        ("504", "UT,URX", 1),
    ] {
        assert_eq!(
            requests_flagged(&metrics, code, flags),
            count,
            "{code} {flags}:\n{metrics}"
        );
    }
}

/// A retry goes to the endpoint no attempt has tried (Istio's default, and
/// `retryIgnorePreviousHosts: true`); with `false` it may land on the failing one again.
#[tokio::test]
async fn retries_avoid_the_endpoint_that_failed_unless_told_not_to() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    v1.behaviour.status.store(503, Ordering::Relaxed);
    let mut random = cluster("", &[&v1, &v2]);
    random.load_balancer = Some(proto::LoadBalancerSettings {
        lb_policy: Some(proto::load_balancer_settings::LbPolicy::Simple(
            proto::load_balancer_settings::SimpleLb::Random as i32,
        )),
        slow_start: None,
    });
    for ignore in [None, Some(true)] {
        harness
            .waypoint
            .apply_config(config(vec![retrying_once(ignore)], vec![random.clone()]))
            .unwrap();
        let mut sender = harness.http1().await;
        for _ in 0..40 {
            let (status, _, body) = send_on(&mut sender, get("/")).await;
            assert_eq!(
                (status, body.as_ref()),
                (StatusCode::OK, b"v2".as_ref()),
                "retryIgnorePreviousHosts {ignore:?}"
            );
        }
    }
    // Allowed back to the endpoint tried: a request whose two random draws both meet v1 fails
    // (a quarter of them; none in 60 has odds of 3 in 10^8).
    harness
        .waypoint
        .apply_config(config(vec![retrying_once(Some(false))], vec![random]))
        .unwrap();
    let mut sender = harness.http1().await;
    let mut failed = 0;
    for _ in 0..60 {
        let (status, _, _) = send_on(&mut sender, get("/")).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            failed += 1;
        }
    }
    assert!(failed > 0, "no retry went back to the failing endpoint");
}

/// A route's `backoff` holds each retry (a random time below the base, doubling), and the
/// route's timeout runs over the wait: a long back-off ends in the route's 504 at its time,
/// where Envoy's default 25 ms lets every retry through at once.
#[tokio::test]
async fn retries_back_off_from_the_routes_base_within_its_timeout() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    v1.behaviour.status.store(503, Ordering::Relaxed);
    let route = |backoff: Option<Duration>| {
        let mut route = retrying_5xx(3);
        route.timeout = Some(duration(Duration::from_millis(300)));
        if let Some(retries) = &mut route.retries {
            retries.backoff = backoff.map(duration);
        }
        route
    };
    harness
        .waypoint
        .apply_config(config(vec![route(None)], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let (status, _, _) = harness.get("/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v1.request_count(), 4, "every retry went within the timeout");

    // Three waits below 60 s, 120 s and 240 s add up to less than 300 ms once in 10^8 or so.
    harness
        .waypoint
        .apply_config(config(
            vec![route(Some(Duration::from_secs(60)))],
            vec![cluster("v1", &[&v1])],
        ))
        .unwrap();
    let started = Instant::now();
    let (status, _, _) = harness.get("/").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "answered after {took:?}"
    );
    assert!(
        v1.request_count() < 8,
        "{} attempts: the back-off held none",
        v1.request_count() - 4
    );
}

/// A request body is retried whole while it fits in what the waypoint keeps (1 MiB, Envoy's
/// retry buffer); a larger one streams to the endpoint and its failure is not retried (Envoy's
/// "retry or shadow abandoned"), where a store-and-forward proxy would refuse it.
#[tokio::test]
async fn a_body_is_retried_whole_within_the_retry_buffer_and_streams_past_it() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let route = retrying_5xx(2);
    harness
        .waypoint
        .apply_config(config(vec![route], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let post = |body: Bytes| {
        Request::builder()
            .method("POST")
            .uri("/upload")
            .header("host", HOST)
            .body(Full::new(body))
            .unwrap()
    };

    v1.behaviour.fail_first.store(1, Ordering::Relaxed);
    let (status, _, _) = harness.send(post(Bytes::from_static(b"payload"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v1.request_count(), 2, "one failure, then the retry");
    assert_eq!(v1.last_request().unwrap().body, "payload");

    let large = Bytes::from(vec![b'x'; 2 * waypoint::proxy::DEFAULT_RETRY_BUFFER_LIMIT]);
    let (status, _, _) = harness.send(post(large.clone())).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a body past the buffer streams through"
    );
    assert_eq!(v1.last_request().unwrap().body, large);
    v1.behaviour.fail_first.store(1, Ordering::Relaxed);
    let (status, _, _) = harness.send(post(large)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not retried");
    assert_eq!(v1.request_count(), 4);
}

#[tokio::test]
async fn route_timeout_answers_504_near_the_limit() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let route = proto::HttpRoute {
        timeout: Some(duration(Duration::from_millis(200))),
        ..route_to("v1")
    };
    harness
        .waypoint
        .apply_config(config(vec![route], vec![cluster("v1", &[&v1])]))
        .unwrap();
    v1.behaviour.delay_ms.store(3000, Ordering::Relaxed);
    let started = Instant::now();
    let (status, _, body) = harness.get("/").await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream request timeout");
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(1000),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn mirror_delivers_a_copy_and_the_primary_answers() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let route = mirrored_route_to("v1", "v2");
    harness
        .waypoint
        .apply_config(config(
            vec![route],
            vec![cluster("v1", &[&v1]), cluster("v2", &[&v2])],
        ))
        .unwrap();
    let request = Request::builder()
        .method("POST")
        .uri("/ratings")
        .header("host", HOST)
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let (status, _, body) = harness.send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "v1");
    for _ in 0..100 {
        if v2.request_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copy = v2.last_request().expect("mirror copy delivered");
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.path, "/ratings");
    assert_eq!(copy.body, "payload");
    assert_eq!(copy.headers["host"], format!("{HOST}-shadow"));
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint_and_lets_it_back() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let mut both = cluster("", &[&v1, &v2]);
    both.outlier_detection = Some(proto::OutlierDetection {
        consecutive_5xx_errors: Some(2),
        interval: Some(duration(Duration::from_millis(100))),
        base_ejection_time: Some(duration(Duration::from_millis(400))),
        max_ejection_percent: 50,
        ..Default::default()
    });
    let route = proto::HttpRoute {
        retries: Some(proto::HttpRetry {
            attempts: 0,
            ..Default::default()
        }),
        ..route_to("")
    };
    harness
        .waypoint
        .apply_config(config(vec![route], vec![both]))
        .unwrap();
    v1.behaviour.status.store(500, Ordering::Relaxed);
    let mut sender = harness.http1().await;
    let failing_from = Instant::now();
    for _ in 0..4 {
        send_on(&mut sender, get("/")).await;
    }
    assert_eq!(v1.request_count(), 2, "two 5xx, then ejected");
    let before = v2.request_count();
    for _ in 0..10 {
        let (status, _, body) = send_on(&mut sender, get("/")).await;
        assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v2".as_ref()));
    }
    assert_eq!(v2.request_count(), before + 10);
    assert_eq!(v1.request_count(), 2);

    v1.behaviour.status.store(0, Ordering::Relaxed);
    // Once its ejection time is over, v1 is chosen again.
    let deadline = failing_from + Duration::from_secs(5);
    while v1.request_count() == 2 {
        assert!(Instant::now() < deadline, "v1 never came back");
        let (status, _, _) = send_on(&mut sender, get("/")).await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        failing_from.elapsed() >= Duration::from_millis(400),
        "v1 came back before its ejection time: {:?}",
        failing_from.elapsed()
    );
    let back = v1.request_count();
    for _ in 0..10 {
        let (status, _, _) = send_on(&mut sender, get("/")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        v1.request_count() >= back + 4,
        "v1 back in rotation: {} of 10",
        v1.request_count() - back
    );
}

#[tokio::test]
async fn connection_pool_overflow_answers_503_uo() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Arc::new(Harness::start(mesh, &[&v1]).await);
    let mut limited = cluster("v1", &[&v1]);
    limited.connection_pool = Some(proto::ConnectionPoolSettings {
        tcp: Some(proto::connection_pool_settings::TcpSettings {
            max_connections: 1,
            ..Default::default()
        }),
        http: Some(proto::connection_pool_settings::HttpSettings {
            http1_max_pending_requests: 1,
            ..Default::default()
        }),
    });
    let route = proto::HttpRoute {
        retries: Some(proto::HttpRetry {
            attempts: 0,
            ..Default::default()
        }),
        ..route_to("v1")
    };
    harness
        .waypoint
        .apply_config(config(vec![route], vec![limited]))
        .unwrap();
    v1.behaviour.delay_ms.store(300, Ordering::Relaxed);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let harness = Arc::clone(&harness);
        tasks.push(tokio::spawn(async move { harness.get("/").await }));
    }
    let mut ok = 0;
    let mut overflow = 0;
    for task in tasks {
        let (status, _, body) = task.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(
                    String::from_utf8_lossy(&body).contains("overflow"),
                    "{body:?}"
                );
                overflow += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // One in flight and one pending succeed; the other three overflow.
    assert_eq!((ok, overflow), (2, 3));
    assert!(
        harness
            .waypoint
            .upstream()
            .open_connections("outbound|9080|v1|reviews.default.svc.cluster.local")
            <= 1
    );
}

#[tokio::test]
async fn upstream_connections_are_reused_up_to_max_requests_per_connection() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let mut limited = cluster("v2", &[&v2]);
    limited.connection_pool = Some(proto::ConnectionPoolSettings {
        tcp: None,
        http: Some(proto::connection_pool_settings::HttpSettings {
            max_requests_per_connection: 2,
            ..Default::default()
        }),
    });
    let to_v2 = proto::HttpRoute {
        r#match: vec![proto::HttpMatchRequest {
            uri: Some(proto::StringMatch {
                match_type: Some(proto::string_match::MatchType::Prefix("/v2".to_owned())),
            }),
            ..Default::default()
        }],
        ..route_to("v2")
    };
    harness
        .waypoint
        .apply_config(config(
            vec![to_v2, route_to("v1")],
            vec![cluster("v1", &[&v1]), limited],
        ))
        .unwrap();
    let mut sender = harness.http1().await;
    for _ in 0..6 {
        assert_eq!(send_on(&mut sender, get("/v1")).await.0, StatusCode::OK);
        assert_eq!(send_on(&mut sender, get("/v2")).await.0, StatusCode::OK);
    }
    assert_eq!(
        v1.tunnels.lock().unwrap().len(),
        1,
        "one pooled connection serves all"
    );
    assert_eq!(
        v2.tunnels.lock().unwrap().len(),
        3,
        "a new connection every two requests"
    );
}

/// The access log's `%RESPONSE_CODE_DETAILS%`: Envoy's `via_upstream` for every answer the
/// upstream gave, first try or after retries, and a failed one that ran out of retries
/// (`ResponseCodeDetailValues::ViaUpstream`, `envoy/stream_info/stream_info.h`, set by the
/// router in `Filter::onUpstreamHeaders`); a local reply keeps its own details.
#[tokio::test]
async fn upstream_answers_are_logged_via_upstream_and_local_replies_keep_their_details() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let path = std::env::temp_dir().join(format!("weft-details-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let apply = |route| {
        let mut config = config(vec![route], vec![cluster("v1", &[&v1])]);
        config.access_logs = vec![proto::AccessLog {
            provider: "details".to_owned(),
            path: path.display().to_string(),
            format: Some(proto::access_log::Format::Text(
                "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"
                    .to_owned(),
            )),
            ..Default::default()
        }];
        harness.waypoint.apply_config(config).unwrap();
    };

    apply(retrying_5xx(2));
    assert_eq!(harness.get("/first").await.0, StatusCode::OK);
    v1.behaviour.fail_first.store(1, Ordering::Relaxed);
    assert_eq!(harness.get("/retried").await.0, StatusCode::OK);
    v1.behaviour.fail_first.store(3, Ordering::Relaxed);
    assert_eq!(
        harness.get("/exhausted").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    apply(aborted_route_to("v1", 418));
    assert_eq!(harness.get("/aborted").await.0, StatusCode::IM_A_TEAPOT);

    let expected = [
        "/first 200 - via_upstream",
        "/retried 200 - via_upstream",
        "/exhausted 503 URX via_upstream",
        "/aborted 418 FI fault_filter_abort",
    ];
    // Each line is written once its response has ended; bounded wait for the four.
    let deadline = Instant::now() + Duration::from_secs(10);
    let logged = loop {
        let logged = std::fs::read_to_string(&path).unwrap_or_default();
        if logged.lines().count() >= expected.len() || Instant::now() > deadline {
            break logged;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = std::fs::remove_file(&path);
    assert_eq!(logged.lines().collect::<Vec<_>>(), expected, "{logged}");
}

/// The `v1` cluster over `endpoint` with `connectionPool.http.maxRetries: 1`.
fn one_retry_at_a_time(endpoint: &waypoint::testing::FakeEndpoint) -> proto::Cluster {
    let mut limited = cluster("v1", &[endpoint]);
    limited.connection_pool = Some(proto::ConnectionPoolSettings {
        tcp: None,
        http: Some(proto::connection_pool_settings::HttpSettings {
            max_retries: 1,
            ..Default::default()
        }),
    });
    limited
}

/// One request's retries take a `maxRetries` place one at a time: each retry gives its place
/// back when its outcome is known, so a lone request retries as often as its policy says under
/// `maxRetries: 1` (Envoy's `RetryStateImpl::shouldRetry` releases the last retry's place
/// before it asks for the next).
#[tokio::test]
async fn a_lone_requests_retries_hold_one_max_retries_place_at_a_time() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    harness
        .waypoint
        .apply_config(config(
            vec![retrying_5xx(2)],
            vec![one_retry_at_a_time(&v1)],
        ))
        .unwrap();
    v1.behaviour.status.store(503, Ordering::Relaxed);
    assert_eq!(harness.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v1.request_count(), 3, "the try and both retries");
    let metrics = harness.metrics().await;
    assert_eq!(requests_flagged(&metrics, "503", "URX"), 1, "{metrics}");
    assert_eq!(requests_flagged(&metrics, "503", "UO"), 0, "{metrics}");
}

/// A retry the cluster's `maxRetries` refuses (Istio's `connectionPool.http.maxRetries`) ends
/// the request with the failure it would have retried, flagged `UO`, as Envoy's router does on
/// `RetryStatus::NoOverflow` (`Filter::onUpstreamHeaders`, `source/common/router/router.cc`);
/// the request whose retry was admitted and failed again is `URX`.
#[tokio::test]
async fn a_retry_refused_by_max_retries_is_flagged_uo() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Arc::new(Harness::start(mesh, &[&v1]).await);
    harness
        .waypoint
        .apply_config(config(
            vec![retrying_5xx(1)],
            vec![one_retry_at_a_time(&v1)],
        ))
        .unwrap();
    // Every answer a slow 503: both requests fail together, one retry fits in the budget.
    v1.behaviour.status.store(503, Ordering::Relaxed);
    v1.behaviour.delay_ms.store(300, Ordering::Relaxed);
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let harness = Arc::clone(&harness);
            tokio::spawn(async move { harness.get("/").await.0 })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(v1.request_count(), 3, "two tries and one retry");
    let metrics = harness.metrics().await;
    for (flags, count) in [("UO", 1), ("URX", 1)] {
        assert_eq!(
            requests_flagged(&metrics, "503", flags),
            count,
            "{flags}:\n{metrics}"
        );
    }
}

/// Retries bounded by the DestinationRule's `retryBudget` instead of `maxRetries` (Envoy's
/// `RetryBudgetImpl`, Istio's `applyRetryBudget`): with four requests failing together and a
/// budget of half the active requests (at least one), two retries are admitted although
/// `maxRetries` is 1, and the two refused requests end flagged `UO`.
#[tokio::test]
async fn a_retry_budget_admits_a_share_of_active_requests() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Arc::new(Harness::start(mesh, &[&v1]).await);
    let mut budgeted = one_retry_at_a_time(&v1);
    budgeted.retry_budget = Some(proto::RetryBudget {
        percent: 50.0,
        min_retry_concurrency: 1,
    });
    harness
        .waypoint
        .apply_config(config(vec![retrying_5xx(1)], vec![budgeted]))
        .unwrap();
    // Every answer a slow 503: the four tries are in flight together when the first retries
    // ask, so the budget is half of four.
    v1.behaviour.status.store(503, Ordering::Relaxed);
    v1.behaviour.delay_ms.store(500, Ordering::Relaxed);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let harness = Arc::clone(&harness);
            tokio::spawn(async move { harness.get("/").await.0 })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(v1.request_count(), 6, "four tries and two retries");
    let metrics = harness.metrics().await;
    for (flags, count) in [("UO", 2), ("URX", 2)] {
        assert_eq!(
            requests_flagged(&metrics, "503", flags),
            count,
            "{flags}:\n{metrics}"
        );
    }
}
