//! The client's bookkeeping of demands, driven directly (no server needed).

use super::*;

const THING: &str = "type.googleapis.com/test.Thing";

fn on_demand_client() -> DeltaClient {
    let target = Target::address("http://127.0.0.1:1").expect("a valid address");
    DeltaClient::new(target, Node::default()).subscribe_names(
        THING,
        vec!["node:n1".to_string()],
        |_: Update| Ok(()),
    )
}

fn demand(name: &str) -> (DemandRequest, oneshot::Receiver<Result<(), DemandError>>) {
    let (answered, answer) = oneshot::channel();
    let request = DemandRequest {
        type_url: THING.to_string(),
        name: name.to_string(),
        answered,
    };
    (request, answer)
}

/// The callers waiting for one name are bounded: those that gave up (a connection past its
/// wait) are forgotten as new ones come, and beyond `MAX_WAITERS_PER_NAME` live ones a demand
/// is refused at once instead of queued.
#[test]
fn waiters_for_one_name_are_bounded_and_those_that_gave_up_are_dropped() {
    let mut client = on_demand_client();
    let (first, _first_answer) = demand("/10.0.0.1");
    assert!(
        client.take_demand(first).is_some(),
        "the first demand is sent"
    );
    let key = (THING.to_string(), "/10.0.0.1".to_string());

    // Many callers that gave up: none is kept beyond the next demand.
    for _ in 0..10 * MAX_WAITERS_PER_NAME {
        let (request, answer) = demand("/10.0.0.1");
        drop(answer);
        assert!(
            client.take_demand(request).is_none(),
            "one request per name"
        );
    }
    let (live, mut live_answer) = demand("/10.0.0.1");
    assert!(client.take_demand(live).is_none());
    assert_eq!(
        client.pending[&key].len(),
        2,
        "the first caller and the live one"
    );

    // Live callers up to the bound wait; the next one is told at once.
    let mut waiting = Vec::new();
    while client.pending[&key].len() < MAX_WAITERS_PER_NAME {
        let (request, answer) = demand("/10.0.0.1");
        assert!(client.take_demand(request).is_none());
        waiting.push(answer);
    }
    let (over, mut over_answer) = demand("/10.0.0.1");
    assert!(client.take_demand(over).is_none());
    assert_eq!(over_answer.try_recv(), Ok(Err(DemandError::Busy)));
    assert_eq!(client.pending[&key].len(), MAX_WAITERS_PER_NAME);
    assert!(
        live_answer.try_recv().is_err(),
        "the waiting ones still wait"
    );
    assert_eq!(client.pending.len(), 1, "one entry per name");
}
