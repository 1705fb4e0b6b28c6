//! The client's bookkeeping of demands, without a stream: how many wait for one name, and
//! which names a release drops.

use weft_proto::envoy::config::core::v3::Node;

use super::*;
use crate::client::Target;

const THING: &str = "type.googleapis.com/test.Thing";

fn client() -> DeltaClient {
    let target = Target::address("http://127.0.0.1:1").expect("a valid uri");
    DeltaClient::new(target, Node::default()).subscribe_names(
        THING,
        vec!["node:n1".to_string()],
        |_: Update| Ok(()),
    )
}

fn subscribe(name: &str) -> (DemandMessage, oneshot::Receiver<Result<(), DemandError>>) {
    let (answered, answer) = oneshot::channel();
    let message = DemandMessage::Subscribe {
        type_url: THING.to_string(),
        name: name.to_string(),
        answered,
        watch_absent: false,
    };
    (message, answer)
}

#[test]
fn waiters_for_one_unanswered_name_are_bounded_and_those_that_gave_up_hold_no_place() {
    let mut client = client();
    let (first, _first_answer) = subscribe("/10.0.0.1");
    assert!(client.take_demand(first).is_some(), "the first demand asks");
    let mut waiting = Vec::new();
    for _ in 1..MAX_WAITERS_PER_NAME {
        let (message, answer) = subscribe("/10.0.0.1");
        assert!(client.take_demand(message).is_none(), "shares the request");
        waiting.push(answer);
    }
    let (crowded, mut refused) = subscribe("/10.0.0.1");
    assert!(client.take_demand(crowded).is_none());
    assert_eq!(
        refused.try_recv(),
        Ok(Err(DemandError::Crowded {
            name: "/10.0.0.1".to_string()
        }))
    );
    // Another name is not crowded out.
    let (other, mut other_answer) = subscribe("/10.0.0.2");
    assert!(client.take_demand(other).is_some());
    assert!(other_answer.try_recv().is_err(), "still waiting");

    // Waiters that gave up make room.
    waiting.truncate(10);
    let (late, mut late_answer) = subscribe("/10.0.0.1");
    assert!(client.take_demand(late).is_none());
    assert!(late_answer.try_recv().is_err(), "waits, not refused");
    assert_eq!(
        client.pending[&(THING.to_string(), "/10.0.0.1".to_string())].len(),
        12
    );
}

#[test]
fn a_release_drops_names_asked_for_but_not_initial_or_unanswered_ones() {
    let mut client = client();
    let (asked, _answer) = subscribe("/10.0.0.1");
    client.take_demand(asked);
    let answers = Answers {
        found: vec!["/10.0.0.1".to_string()],
        removed: Vec::new(),
    };
    assert!(client.settle_demands(THING, answers).is_none());
    let (unanswered, _waiting) = subscribe("/10.0.0.2");
    client.take_demand(unanswered);

    let release = DemandMessage::Release {
        type_url: THING.to_string(),
        names: ["node:n1", "/10.0.0.1", "/10.0.0.2", "/10.0.0.3"]
            .map(String::from)
            .to_vec(),
    };
    let request = client.take_demand(release).expect("an unsubscribe request");
    assert_eq!(request.type_url, THING);
    assert_eq!(request.resource_names_unsubscribe, ["/10.0.0.1"]);
    assert!(request.resource_names_subscribe.is_empty());
    assert_eq!(client.subscriptions[0].names, ["node:n1", "/10.0.0.2"]);

    // Nothing left to release: no request.
    let again = DemandMessage::Release {
        type_url: THING.to_string(),
        names: vec!["/10.0.0.1".to_string(), "node:n1".to_string()],
    };
    assert!(client.take_demand(again).is_none());
}
