//! Retry policies as Istio configures Envoy's: conditions, backoff, localities, hosts.

use super::*;

#[test]
fn retry_conditions_parse_as_envoy_names_them() {
    let cases: [(&str, u16, Option<u32>, bool); 9] = [
        ("5xx", 500, None, true),
        ("5xx", 404, None, false),
        ("gateway-error", 503, None, true),
        ("gateway-error", 500, None, false),
        ("retriable-4xx", 409, None, true),
        ("retriable-status-codes", 503, None, true),
        ("retriable-status-codes,418", 418, None, true),
        ("unavailable", 200, Some(14), true),
        (DEFAULT_RETRY_ON, 500, None, false),
    ];
    for (text, status, grpc, expected) in cases {
        let on = RetryOn::parse(text, "test").unwrap();
        assert_eq!(
            on.status_retriable(status, grpc),
            expected,
            "{text} {status}"
        );
    }
    let default = RetryOn::parse(DEFAULT_RETRY_ON, "test").unwrap();
    assert!(default.connect_failure && default.refused_stream);
    assert_eq!(default.retriable_status_codes, vec![503]);
}

#[test]
fn retry_backoff_doubles_from_its_base_up_to_ten_times_it() {
    let ms = Duration::from_millis;
    // (backoff, retry) -> the longest wait before it
    let cases = [
        (None, 1, ms(25)),
        (None, 2, ms(50)),
        (None, 4, ms(200)),
        (None, 5, ms(250)),
        (None, 100, ms(250)),
        (Some(ms(100)), 1, ms(100)),
        (Some(ms(100)), 3, ms(400)),
        (Some(ms(100)), 9, ms(1000)),
        // No overflow, however long the base.
        (Some(Duration::from_secs(u64::MAX / 2)), 3, Duration::MAX),
    ];
    for (backoff, retry, expected) in cases {
        let policy = RetryPolicy {
            backoff,
            ..RetryPolicy::mesh_default()
        };
        assert_eq!(
            policy.backoff_ceiling(retry),
            expected,
            "{backoff:?}, retry {retry}"
        );
    }
}

#[test]
fn remote_localities_are_retried_every_second_attempt_as_istio_configures_envoy() {
    let remote = RetryPolicy {
        retry_remote_localities: true,
        ..RetryPolicy::mesh_default()
    };
    // attempt (0: the first) -> earlier attempts whose priorities it leaves out
    let skipped: Vec<usize> = (0..6).map(|a| remote.skipped_priorities(a)).collect();
    assert_eq!(skipped, [0, 0, 2, 2, 4, 4]);
    let local = RetryPolicy::mesh_default();
    assert!((0..6).all(|a| local.skipped_priorities(a) == 0));
}

#[test]
fn retries_avoid_tried_endpoints_as_istio_defaults_it() {
    let with = |ignore_previous_hosts| RetryPolicy {
        ignore_previous_hosts,
        ..RetryPolicy::mesh_default()
    };
    // avoids_tried_endpoints(the cluster hashes requests)
    assert!(with(None).avoids_tried_endpoints(false));
    // Istio's consistent-hash default has no previous-hosts predicate.
    assert!(!with(None).avoids_tried_endpoints(true));
    assert!(with(Some(true)).avoids_tried_endpoints(true));
    assert!(!with(Some(false)).avoids_tried_endpoints(false));
}
