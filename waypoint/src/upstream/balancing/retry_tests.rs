//! Retries in flight under `maxRetries` or, when set, the DestinationRule's `retryBudget`.

use super::tests::{endpoint, fresh_state, least_request};
use super::*;
use crate::model::RetryBudget;

#[test]
fn the_budget_is_a_share_of_active_requests_with_a_floor() {
    let budget = RetryBudget {
        percent: 20.0,
        min_retry_concurrency: 3,
    };
    // Envoy's max(percent / 100 * active, min), the product truncated.
    assert_eq!(budget.max_retries(0), 3);
    assert_eq!(budget.max_retries(19), 3);
    assert_eq!(budget.max_retries(24), 4);
    assert_eq!(budget.max_retries(100), 20);
    let half = RetryBudget {
        percent: 50.0,
        min_retry_concurrency: 1,
    };
    assert_eq!(half.max_retries(3), 1);
    assert_eq!(half.max_retries(4), 2);
}

#[test]
fn a_retry_budget_replaces_max_retries() {
    let mut cluster = least_request(vec![endpoint(1)]);
    cluster.limits.max_retries = Some(1);
    let state = fresh_state();
    // Without a budget, maxRetries: one retry in flight.
    let first = state.retry_permit(&cluster).unwrap();
    assert!(state.retry_permit(&cluster).is_none());
    drop(first);
    // A budget of half the active requests, at least one: four active requests, two retries,
    // whatever maxRetries says.
    cluster.limits.retry_budget = Some(RetryBudget {
        percent: 50.0,
        min_retry_concurrency: 1,
    });
    state.0.active_requests.store(4, Ordering::Release);
    let held = [
        state.retry_permit(&cluster).unwrap(),
        state.retry_permit(&cluster).unwrap(),
    ];
    assert!(state.retry_permit(&cluster).is_none());
    // A refusal takes no place; fewer active requests, a smaller budget.
    assert_eq!(state.0.active_retries.load(Ordering::Acquire), 2);
    drop(held);
    state.0.active_requests.store(1, Ordering::Release);
    let one = state.retry_permit(&cluster).unwrap();
    assert!(state.retry_permit(&cluster).is_none());
    drop(one);
    assert_eq!(state.0.active_retries.load(Ordering::Acquire), 0);
}
