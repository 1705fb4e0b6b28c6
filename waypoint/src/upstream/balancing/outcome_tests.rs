//! How outcomes are counted toward an ejection: local-origin failures apart from responses
//! (`splitExternalLocalOriginErrors`) and the statuses that count as errors
//! (`outlierDetectionHttpErrorCodes`), as Envoy's router and detector count them.

use std::time::Duration;

use super::tests::{endpoint, fresh_state, least_request};
use super::*;

fn cluster_with(policy: OutlierPolicy) -> Cluster {
    Cluster {
        outlier: Some(policy),
        ..least_request(vec![endpoint(1), endpoint(2)])
    }
}

fn outlier(consecutive_5xx: Option<u32>, consecutive_gateway: Option<u32>) -> OutlierPolicy {
    OutlierPolicy {
        consecutive_gateway_errors: consecutive_gateway,
        consecutive_5xx,
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 100,
        min_health_percent: 0,
        local_origin_failures: None,
        http_error_codes: Vec::new(),
    }
}

/// Records `outcomes` at the cluster's first endpoint; whether it ends ejected.
fn ejected_after(policy: OutlierPolicy, outcomes: &[Outcome]) -> bool {
    let cluster = cluster_with(policy);
    let state = fresh_state();
    let address = cluster.endpoints[0].address;
    for outcome in outcomes {
        state.record_outcome(&cluster, address, *outcome);
    }
    lock(&state.0.endpoints)
        .get(&address)
        .is_some_and(|s| s.ejected_until.is_some())
}

use Outcome::{ConnectFailed, Response, Timeout};

#[test]
fn unsplit_local_origin_failures_count_as_gateway_errors() {
    // Envoy's resultToHttpCode: a connect failure is a 503, a timeout a 504.
    assert!(ejected_after(
        outlier(Some(3), None),
        &[ConnectFailed, Timeout, Response(500)]
    ));
    assert!(ejected_after(
        outlier(None, Some(2)),
        &[ConnectFailed, Timeout]
    ));
    assert!(!ejected_after(
        outlier(Some(3), None),
        &[ConnectFailed, Response(200), Timeout]
    ));
}

#[test]
fn split_local_origin_failures_eject_at_their_own_threshold() {
    let split = |threshold| OutlierPolicy {
        local_origin_failures: Some(threshold),
        ..outlier(Some(2), Some(1))
    };
    // Not counted as 5xx or gateway errors: two of them do not reach 5xx's 2 or gateway's 1.
    assert!(!ejected_after(split(3), &[ConnectFailed, Timeout]));
    assert!(ejected_after(
        split(3),
        &[ConnectFailed, Timeout, ConnectFailed]
    ));
    // Any response means the connection was made: the local count starts again, while the
    // 5xx count goes on apart from it.
    assert!(!ejected_after(
        split(3),
        &[
            ConnectFailed,
            Timeout,
            Response(500),
            ConnectFailed,
            Timeout
        ]
    ));
    assert!(ejected_after(
        split(5),
        &[Response(500), ConnectFailed, Response(500)]
    ));
    assert!(ejected_after(split(5), &[ConnectFailed, Response(503)]));
}

#[test]
fn the_split_count_shows_on_the_admin_page_and_clears_on_ejection() {
    let cluster = cluster_with(OutlierPolicy {
        local_origin_failures: Some(2),
        ..outlier(Some(5), None)
    });
    let state = fresh_state();
    let address = cluster.endpoints[0].address;
    state.record_outcome(&cluster, address, Timeout);
    let status = |state: &ClusterState| {
        let s = &lock(&state.0.endpoints).by_address[&address];
        (
            s.consecutive_local_origin,
            s.consecutive_5xx,
            s.ejected_until.is_some(),
        )
    };
    assert_eq!(status(&state), (1, 0, false));
    state.record_outcome(&cluster, address, ConnectFailed);
    assert_eq!(status(&state), (0, 0, true));
}

#[test]
fn listed_error_codes_replace_5xx() {
    let codes = |consecutive_5xx, consecutive_gateway, codes: &[u16]| OutlierPolicy {
        http_error_codes: codes.to_vec(),
        ..outlier(consecutive_5xx, consecutive_gateway)
    };
    // A listed status under 500 counts as a 500: toward 5xx, not gateway errors.
    assert!(ejected_after(
        codes(Some(2), None, &[429]),
        &[Response(429), Response(429)]
    ));
    assert!(!ejected_after(
        codes(None, Some(2), &[429]),
        &[Response(429), Response(429)]
    ));
    // An unlisted status, a 5xx too, is a success and resets the counts.
    assert!(!ejected_after(
        codes(Some(2), None, &[429]),
        &[Response(500), Response(500)]
    ));
    assert!(!ejected_after(
        codes(Some(2), None, &[429]),
        &[Response(429), Response(503), Response(429)]
    ));
    // A listed 5xx counts as itself: 503 toward gateway errors, 500 not.
    assert!(ejected_after(
        codes(None, Some(2), &[500, 503]),
        &[Response(503), Response(503)]
    ));
    assert!(!ejected_after(
        codes(None, Some(2), &[500, 503]),
        &[Response(500), Response(500)]
    ));
    // Local-origin failures are not matched against the list: still 503s and 504s.
    assert!(ejected_after(
        codes(None, Some(2), &[429]),
        &[ConnectFailed, Timeout]
    ));
}
