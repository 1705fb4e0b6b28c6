use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::*;

fn limit(
    scope: RateLimitScope,
    max_tokens: u32,
    per_fill: u32,
    interval_ms: u64,
) -> LocalRateLimit {
    LocalRateLimit {
        key: "VirtualService/edge/shop/spec.http[0]".to_owned(),
        max_tokens,
        tokens_per_fill: per_fill,
        fill_interval: Duration::from_millis(interval_ms),
        scope,
    }
}

fn client(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

/// How many of `requests` requests at `at` pass.
fn passed(
    limiter: &RateLimiter,
    limit: &LocalRateLimit,
    who: IpAddr,
    at: Instant,
    requests: u32,
) -> u32 {
    (0..requests)
        .filter(|_| limiter.admit(limit, who, at))
        .count() as u32
}

#[test]
fn a_bucket_starts_full_and_refills_by_whole_intervals() {
    let limiter = RateLimiter::default();
    let limit = limit(RateLimitScope::Route, 3, 2, 1000);
    let t0 = Instant::now();
    assert_eq!(passed(&limiter, &limit, client(1), t0, 5), 3);
    // Not a whole interval yet.
    let t = t0 + Duration::from_millis(999);
    assert_eq!(passed(&limiter, &limit, client(1), t, 1), 0);
    // One interval: two tokens.
    let t = t0 + Duration::from_millis(1000);
    assert_eq!(passed(&limiter, &limit, client(1), t, 5), 2);
    // Many intervals: never more than the bucket holds.
    let t = t0 + Duration::from_secs(3600);
    assert_eq!(passed(&limiter, &limit, client(1), t, 10), 3);
    // Partial intervals are not lost: 1.5 s then 0.5 s make two intervals.
    let t = t + Duration::from_millis(1500);
    assert_eq!(passed(&limiter, &limit, client(1), t, 5), 2);
    let t = t + Duration::from_millis(500);
    assert_eq!(passed(&limiter, &limit, client(1), t, 5), 2);
}

#[test]
fn route_scope_is_shared_and_client_scope_is_not() {
    let t0 = Instant::now();
    let limiter = RateLimiter::default();
    let route = limit(RateLimitScope::Route, 2, 1, 60_000);
    assert_eq!(passed(&limiter, &route, client(1), t0, 2), 2);
    assert_eq!(passed(&limiter, &route, client(2), t0, 2), 0);

    let limiter = RateLimiter::default();
    let per_client = limit(RateLimitScope::Client, 2, 1, 60_000);
    assert_eq!(passed(&limiter, &per_client, client(1), t0, 3), 2);
    assert_eq!(passed(&limiter, &per_client, client(2), t0, 3), 2);
    assert_eq!(limiter.client_buckets(&per_client.key), 2);
}

#[test]
fn limits_with_other_keys_have_their_own_buckets() {
    let t0 = Instant::now();
    let limiter = RateLimiter::default();
    let first = limit(RateLimitScope::Route, 1, 1, 60_000);
    let second = LocalRateLimit {
        key: "HTTPRoute/edge/api/spec.rules[0]".to_owned(),
        ..first.clone()
    };
    assert_eq!(passed(&limiter, &first, client(1), t0, 2), 1);
    assert_eq!(passed(&limiter, &second, client(1), t0, 2), 1);
}

#[test]
fn changed_settings_start_a_new_bucket() {
    let t0 = Instant::now();
    let limiter = RateLimiter::default();
    let strict = limit(RateLimitScope::Route, 1, 1, 60_000);
    assert_eq!(passed(&limiter, &strict, client(1), t0, 3), 1);
    let relaxed = limit(RateLimitScope::Route, 5, 1, 60_000);
    assert_eq!(passed(&limiter, &relaxed, client(1), t0, 10), 5);
    // The same settings again keep the bucket they have.
    assert_eq!(passed(&limiter, &relaxed, client(1), t0, 1), 0);
}

#[test]
fn per_client_buckets_are_bounded_and_overflow_shares_one_bucket() {
    let t0 = Instant::now();
    let limiter = RateLimiter::with_client_capacity(4);
    let limit = limit(RateLimitScope::Client, 2, 1, 1000);
    for n in 0..4 {
        assert_eq!(passed(&limiter, &limit, client(n), t0, 1), 1);
    }
    // No room, and no bucket is full again yet: new clients share the overflow bucket.
    let overflow: u32 = (4..100)
        .map(|n| passed(&limiter, &limit, client(n), t0, 1))
        .sum();
    assert_eq!(overflow, 2, "a flood of addresses gets one bucket's worth");
    assert_eq!(limiter.client_buckets(&limit.key), 4);
    // Known clients keep their own buckets.
    assert_eq!(passed(&limiter, &limit, client(0), t0, 2), 1);
    // Once the buckets have filled up again, they make room for new clients.
    let later = t0 + Duration::from_secs(5);
    assert_eq!(passed(&limiter, &limit, client(500), later, 3), 2);
    assert_eq!(limiter.client_buckets(&limit.key), 1);
}

#[test]
fn a_fill_interval_below_envoys_minimum_counts_as_the_minimum() {
    let t0 = Instant::now();
    let limiter = RateLimiter::default();
    let limit = limit(RateLimitScope::Route, 1, 1, 0);
    assert_eq!(passed(&limiter, &limit, client(1), t0, 2), 1);
    let t = t0 + MIN_FILL_INTERVAL;
    assert_eq!(passed(&limiter, &limit, client(1), t, 2), 1);
}
