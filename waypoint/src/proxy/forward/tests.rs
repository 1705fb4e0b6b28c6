use super::*;

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
    headers.insert("x-private", "1".parse().unwrap());
    headers.insert("keep-alive", "timeout=5".parse().unwrap());
    headers.insert(header::TE, "trailers".parse().unwrap());
    headers.insert("traceparent", "00-abc-def-01".parse().unwrap());
    strip_hop_by_hop(&mut headers);
    assert!(!headers.contains_key("x-private"));
    assert!(!headers.contains_key(header::CONNECTION));
    assert!(!headers.contains_key("keep-alive"));
    assert_eq!(headers[header::TE], "trailers");
    assert_eq!(headers["traceparent"], "00-abc-def-01");
}

/// Envoy's `RetryStateImpl::shouldRetry`: `NoRetryLimitExceeded` only once every retry
/// the policy allows was made, never without a policy, never once the body was abandoned.
#[test]
fn only_spent_retries_are_the_retry_limit() {
    let policy = |attempts| RetryPolicy {
        attempts,
        ..RetryPolicy::mesh_default()
    };
    let cases = [
        (2, 0, true, false),
        (2, 1, true, false),
        (2, 2, true, true),
        (1, 1, true, true),
        // `attempts: 0`: no retry policy.
        (0, 0, true, false),
        // The body outgrew the retry buffer: retries abandoned.
        (2, 2, false, false),
    ];
    for (attempts, retries, replayable, exceeded) in cases {
        assert_eq!(
            retries_exhausted(&policy(attempts), retries, replayable),
            exceeded,
            "{attempts} {retries} {replayable}"
        );
    }
}

#[test]
fn a_mirror_keeps_the_host_or_takes_envoys_shadow_suffix_before_the_port() {
    let cases = [
        ("reviews", true, "reviews"),
        ("a.wild.example:8080", true, "a.wild.example:8080"),
        ("reviews", false, "reviews-shadow"),
        ("a.wild.example:8080", false, "a.wild.example-shadow:8080"),
        ("[::1]:8080", false, "[::1]:8080-shadow"),
    ];
    for (authority, keep_host, expected) in cases {
        assert_eq!(
            shadow_authority(authority, keep_host),
            expected,
            "{authority} {keep_host}"
        );
    }
}
