//! What counts toward an outlier ejection: local-origin failures apart from responses
//! (`splitExternalLocalOriginErrors`, `consecutiveLocalOriginFailures`) and the statuses that
//! count as errors (`outlierDetectionHttpErrorCodes`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use waypoint::testing::FakeEndpoint;
use weft_proto::waypoint as proto;

use crate::harness::*;

/// The whole service (`v1` and `v2`, in turn) ejecting by `outlier`, its endpoints' statuses
/// as they come (no retry of a 5xx), each try given `per_try_timeout` when set.
async fn ejecting(
    outlier: proto::OutlierDetection,
    per_try_timeout: Option<Duration>,
) -> (Harness, FakeEndpoint, FakeEndpoint) {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let mut both = cluster("", &[&v1, &v2]);
    both.outlier_detection = Some(proto::OutlierDetection {
        interval: Some(duration(Duration::from_millis(100))),
        base_ejection_time: Some(duration(Duration::from_secs(30))),
        max_ejection_percent: 50,
        ..outlier
    });
    let route = proto::HttpRoute {
        retries: Some(proto::HttpRetry {
            attempts: 1,
            per_try_timeout: per_try_timeout.map(duration),
            // Neither a 5xx nor a try's timeout is retried.
            retry_on: "connect-failure".to_owned(),
            ..Default::default()
        }),
        ..route_to("")
    };
    harness
        .waypoint
        .apply_config(config(vec![route], vec![both]))
        .unwrap();
    (harness, v1, v2)
}

#[tokio::test]
async fn split_local_origin_failures_eject_at_their_own_threshold() {
    // One 5xx ejects; two local-origin failures do, counted apart.
    let (harness, v1, v2) = ejecting(
        proto::OutlierDetection {
            consecutive_5xx_errors: Some(1),
            split_external_local_origin_errors: true,
            consecutive_local_origin_failures: Some(2),
            ..Default::default()
        },
        Some(Duration::from_millis(100)),
    )
    .await;
    // Every try at v1 times out (a local-origin failure, answered 504).
    v1.behaviour.delay_ms.store(2_000, Ordering::Relaxed);
    let mut sender = harness.http1().await;
    let mut timeouts = 0;
    for _ in 0..4 {
        let (status, _, _) = send_on(&mut sender, get("/")).await;
        timeouts += usize::from(status == StatusCode::GATEWAY_TIMEOUT);
    }
    // Unsplit, the first timeout would have counted as a 504 and ejected v1 at once.
    assert_eq!((v1.request_count(), timeouts), (2, 2), "v1 tried twice");
    let before = v2.request_count();
    for _ in 0..6 {
        let (status, _, body) = send_on(&mut sender, get("/")).await;
        assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v2".as_ref()));
    }
    assert_eq!(v2.request_count(), before + 6);
    assert_eq!(v1.request_count(), 2, "v1 ejected after two timeouts");
}

#[tokio::test]
async fn only_the_listed_error_codes_count_toward_ejection() {
    let (harness, v1, v2) = ejecting(
        proto::OutlierDetection {
            consecutive_5xx_errors: Some(2),
            http_error_codes: vec![429],
            ..Default::default()
        },
        None,
    )
    .await;
    // A 500 is not listed: a success for outlier detection, however many of them.
    v1.behaviour.status.store(500, Ordering::Relaxed);
    let mut sender = harness.http1().await;
    for _ in 0..8 {
        send_on(&mut sender, get("/")).await;
    }
    assert_eq!(
        v1.request_count(),
        4,
        "v1 kept in rotation through its 500s"
    );
    // A 429 is listed: two in a row eject v1.
    v1.behaviour.status.store(429, Ordering::Relaxed);
    let mut too_many = 0;
    for _ in 0..4 {
        let (status, _, _) = send_on(&mut sender, get("/")).await;
        too_many += usize::from(status == StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!((v1.request_count(), too_many), (6, 2));
    let before = v2.request_count();
    for _ in 0..6 {
        let (status, _, body) = send_on(&mut sender, get("/")).await;
        assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v2".as_ref()));
    }
    assert_eq!(v2.request_count(), before + 6);
    assert_eq!(v1.request_count(), 6, "v1 ejected after two 429s");
}
