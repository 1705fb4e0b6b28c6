//! VirtualService retry policies as the waypoint gets them.

use super::*;
use crate::translate::waypoint::route::retry_conditions;

#[test]
fn retry_conditions_are_what_envoy_gets_from_istio() {
    let cases = [
        ("5xx", Some("5xx")),
        ("gateway-error, 503", Some("gateway-error,503")),
        (
            "retriable-status-codes,503",
            Some("retriable-status-codes,503"),
        ),
        // Without codes, Istio's list of retriable codes is empty: the condition retries nothing.
        ("retriable-status-codes,reset", Some("reset")),
        ("retriable-status-codes", None),
        (" , ", None),
    ];
    for (retry_on, expected) in cases {
        assert_eq!(
            retry_conditions(retry_on).as_deref(),
            expected,
            "{retry_on:?}"
        );
    }
}

/// The retry policy of each HTTP route (in order, the default route last) of a VirtualService
/// for `reviews` with these `http` routes.
fn vs_retries(http: &str) -> Vec<Option<wp::HttpRetry>> {
    let index = validated(&format!(
        "{MESH}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: shop}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    ));
    let config = config(&index);
    let service = config
        .services
        .iter()
        .find(|s| s.name == "reviews")
        .expect("reviews is served");
    service
        .http_routes
        .iter()
        .map(|r| r.retries.clone())
        .collect()
}

#[test]
fn retry_host_and_backoff_settings_reach_the_waypoint_as_istio_sets_them() {
    let retries = vs_retries(
        r#"  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: reviews}}]
    retries: {attempts: 2, retryIgnorePreviousHosts: false}
  - match: [{uri: {prefix: /b}}]
    route: [{destination: {host: reviews}}]
    retries: {attempts: 2, retryIgnorePreviousHosts: true, backoff: 250ms, retryRemoteLocalities: true}
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 2}
"#,
    );
    let ignore: Vec<_> = retries
        .iter()
        .map(|r| r.as_ref().and_then(|r| r.retry_ignore_previous_hosts))
        .collect();
    // Unset stays unset: the waypoint applies Istio's default, which depends on the cluster.
    assert_eq!(ignore[..3], [Some(false), Some(true), None], "{retries:?}");
    let backoff: Vec<_> = retries
        .iter()
        .map(|r| r.as_ref().and_then(|r| r.backoff))
        .collect();
    // Unset: the waypoint's (Envoy's) 25 ms, as Istio leaves it.
    let quarter = prost_types::Duration {
        seconds: 0,
        nanos: 250_000_000,
    };
    assert_eq!(backoff[..3], [None, Some(quarter), None], "{retries:?}");
    let remote: Vec<_> = retries
        .iter()
        .map(|r| r.as_ref().is_some_and(|r| r.retry_remote_localities))
        .collect();
    assert_eq!(remote[..3], [false, true, false], "{retries:?}");
}
