//! What the source admits from the API server: invalid objects reported and skipped with the
//! last good version kept, unknown fields warned about, list items decoded as loaded YAML.

use super::*;

const GOOD_VS: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: good, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
";

/// Valid schema, refused by validation: `*` is not allowed for the mesh gateway.
const WILDCARD_VS: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wildcard, namespace: bookinfo}
spec:
  hosts: ['*']
  http:
  - route:
    - destination: {host: reviews}
";

/// Breaks the schema: an HTTP route's `route` is a list.
const MISSPELT_VS: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: misspelt, namespace: bookinfo}
spec:
  hosts: [ratings]
  http:
  - route: ratings
";

/// A field Istio's API does not have: what the API server kept (a newer Istio's CRDs), istiod
/// ignores, and so does the source, with a warning.
const UNKNOWN_FIELD_VS: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: newer, namespace: bookinfo}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
    futureRetryPolicy: {budget: 3}
";

fn rejections_of(index: &TestIndex, name: &str) -> Vec<Rejection> {
    index
        .rejections()
        .into_iter()
        .filter(|r| r.name == name)
        .collect()
}

#[tokio::test]
async fn invalid_resources_are_reported_and_skipped_and_the_last_good_version_stays() {
    init_tracing();
    let fake = FakeApiServer::start().await.unwrap();
    for text in [GOOD_VS, WILDCARD_VS, MISSPELT_VS] {
        create_all(&fake, text);
    }
    let running = start_source(fake).await;
    let fake = &running.fake;
    let index = &running.index;
    let mut expected = expected_from(&[GOOD_VS.to_owned()]);
    converge(index, &expected, "only the valid VirtualService").await;

    let wildcard = rejections_of(index, "wildcard");
    assert_eq!(wildcard.len(), 1, "{wildcard:?}");
    assert_eq!(wildcard[0].kind, ResourceKind::VirtualService);
    assert_eq!(wildcard[0].namespace, "bookinfo");
    assert_eq!(wildcard[0].problems[0].path, "spec.hosts[0]");
    let misspelt = rejections_of(index, "misspelt");
    assert_eq!(misspelt.len(), 1, "{misspelt:?}");
    assert_eq!(misspelt[0].problems[0].path, "spec.http[0].route");
    assert!(
        misspelt[0].problems[0].reason.contains("invalid type"),
        "{misspelt:?}"
    );
    assert!(
        misspelt[0]
            .to_string()
            .starts_with("VirtualService bookinfo/misspelt: ")
    );

    // A later valid version of a refused object is applied.
    let fixed = WILDCARD_VS.replace("hosts: ['*']", "hosts: [details]");
    fake.update(json_of(&fixed)).unwrap();
    expected.extend(expected_from(&[fixed]));
    converge(index, &expected, "fixed VirtualService applied").await;

    // An invalid update of an accepted object is refused; the accepted version stays, also
    // through a relist.
    let broken = GOOD_VS.replace("hosts: [reviews]", "hosts: ['*']");
    fake.update(json_of(&broken)).unwrap();
    eventually("the broken update is reported", || {
        rejections_of(index, "good").len() == 1
    })
    .await;
    assert_eq!(index.normalized(), expected);
    fake.expire();
    eventually("VirtualServices relisted", || {
        index.replaced(ResourceKind::VirtualService) == 2
    })
    .await;
    assert_eq!(index.normalized(), expected);
    assert_eq!(
        rejections_of(index, "good").len(),
        2,
        "refused again on relist"
    );
}

#[test]
fn list_items_without_type_decode_like_loaded_yaml() {
    let expected = load(ALLOW_PRODUCTPAGE).remove(0);
    let mut object = json_of(ALLOW_PRODUCTPAGE);
    let map = object.as_object_mut().unwrap();
    map.remove("apiVersion");
    map.remove("kind");
    assert_eq!(
        decode(ResourceKind::AuthorizationPolicy, object).unwrap(),
        (expected, Vec::new())
    );
}

#[test]
fn unknown_fields_are_accepted_with_a_warning() {
    let object: DynamicObject = serde_json::from_value(json_of(UNKNOWN_FIELD_VS)).unwrap();
    let (_, warnings) = admit(ResourceKind::VirtualService, &object).unwrap();
    let unknown: Vec<&str> = warnings
        .iter()
        .filter(|w| w.reason.contains("unknown field"))
        .map(|w| w.path.as_str())
        .collect();
    assert_eq!(unknown, ["spec.http[0].futureRetryPolicy"]);
}

#[test]
fn admission_table() {
    let cases: [(&str, ResourceKind, Result<(), &str>); 6] = [
        (GOOD_VS, ResourceKind::VirtualService, Ok(())),
        (UNKNOWN_FIELD_VS, ResourceKind::VirtualService, Ok(())),
        (
            WILDCARD_VS,
            ResourceKind::VirtualService,
            Err("spec.hosts[0]"),
        ),
        (
            MISSPELT_VS,
            ResourceKind::VirtualService,
            Err("spec.http[0].route"),
        ),
        // An AuthorizationPolicy without spec is valid (it denies everything).
        (
            "{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: deny, namespace: a}}",
            ResourceKind::AuthorizationPolicy,
            Ok(()),
        ),
        (
            "{apiVersion: v1, kind: Pod, metadata: {name: p, namespace: a}, spec: {containers: 3}}",
            ResourceKind::Pod,
            Err("spec.containers"),
        ),
    ];
    for (text, kind, expected) in cases {
        let object: DynamicObject = serde_json::from_value(json_of(text)).unwrap();
        let outcome = admit(kind, &object)
            .map(|_| ())
            .map_err(|rejection| rejection.problems[0].path.clone());
        assert_eq!(outcome, expected.map_err(str::to_owned), "{text}");
    }
}

#[test]
fn tracker_keeps_the_last_good_version_through_a_relist() {
    let index = TestIndex::default();
    let mut tracker = KindTracker::new(ResourceKind::VirtualService);
    let object = |text: &str| -> DynamicObject { serde_json::from_value(json_of(text)).unwrap() };
    let broken = GOOD_VS.replace("hosts: [reviews]", "hosts: ['*']");
    let steps = [
        (Event::Init, Outcome::Pending),
        (Event::InitApply(object(GOOD_VS)), Outcome::Pending),
        (Event::InitApply(object(WILDCARD_VS)), Outcome::Rejected),
        (Event::InitDone, Outcome::Replaced),
        (Event::Apply(object(&broken)), Outcome::Rejected),
        (Event::Init, Outcome::Pending),
        (Event::InitApply(object(&broken)), Outcome::Rejected),
        (Event::InitDone, Outcome::Replaced),
    ];
    for (event, outcome) in steps {
        assert_eq!(tracker.handle(event, &index), outcome);
    }
    assert_eq!(index.normalized(), expected_from(&[GOOD_VS.to_owned()]));
    assert_eq!(
        tracker.handle(Event::Delete(object(GOOD_VS)), &index),
        Outcome::Deleted
    );
    assert!(index.normalized().is_empty());
    // Once deleted, no previous version is left to keep.
    for event in [
        Event::Init,
        Event::InitApply(object(&broken)),
        Event::InitDone,
    ] {
        tracker.handle(event, &index);
    }
    assert!(index.normalized().is_empty());
}
