use std::path::Path;

use super::*;
use crate::loader;

fn parse(yaml: &str) -> Vec<Resource> {
    let (resources, errors) = loader::load_str(Path::new("test.yaml"), yaml);
    assert!(errors.is_empty(), "{errors:?}");
    resources.into_iter().map(|l| l.resource).collect()
}

fn one(yaml: &str) -> Resource {
    parse(yaml).remove(0)
}

const GOOD_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
"#;

// A regex that does not compile is refused by validation.
const BAD_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {regex: "("}
    route:
    - destination: {host: reviews, subset: a}
    - destination: {host: reviews, subset: b}
"#;

const NAMESPACE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
"#;

#[test]
fn apply_stores_valid_and_bumps_generation() {
    let index = ConfigIndex::new();
    let rx = index.subscribe();
    assert_eq!(index.apply(one(GOOD_VS)), Ok(true));
    assert_eq!(*rx.borrow(), 1);
    assert_eq!(index.snapshot().virtual_services().count(), 1);
    // Re-applying the same content is not a change.
    assert_eq!(index.apply(one(GOOD_VS)), Ok(false));
    assert_eq!(index.snapshot().generation(), 1);
}

#[test]
fn invalid_apply_keeps_previous_version() {
    let index = ConfigIndex::new();
    index.apply(one(GOOD_VS)).unwrap();
    let error = index.apply(one(BAD_VS)).unwrap_err();
    assert!(matches!(&error, IndexError::Invalid { key, .. } if key.name == "reviews"));
    assert!(error.to_string().contains("spec.http[0]"), "{error}");
    let snapshot = index.snapshot();
    let kept = snapshot.virtual_services().next().unwrap();
    assert_eq!(kept.spec.http[0].matches.len(), 0);
    assert_eq!(snapshot.generation(), 1);
}

#[test]
fn delete_removes_and_reports_presence() {
    let index = ConfigIndex::new();
    index.apply(one(GOOD_VS)).unwrap();
    assert!(index.delete(ResourceKind::VirtualService, "default", "reviews"));
    assert!(!index.delete(ResourceKind::VirtualService, "default", "reviews"));
    assert!(index.snapshot().is_empty());
    assert_eq!(index.snapshot().generation(), 2);
}

#[test]
fn replace_all_only_touches_its_own_source() {
    let index = ConfigIndex::new();
    let files = SourceId("file:a".into());
    index.apply(one(NAMESPACE)).unwrap();
    let report = index.replace_all(&files, parse(GOOD_VS));
    assert!(report.changed && report.invalid.is_empty());
    assert_eq!(index.snapshot().len(), 2);

    // The source no longer lists the VirtualService: it goes, the Namespace (not its) stays.
    let report = index.replace_all(&files, vec![]);
    assert!(report.changed);
    let snapshot = index.snapshot();
    assert_eq!(
        snapshot.keys(),
        vec![ResourceKey::new(ResourceKind::Namespace, "", "default")]
    );
}

#[test]
fn replace_all_keeps_last_good_version_of_invalid_resource() {
    let index = ConfigIndex::new();
    let files = SourceId("file:a".into());
    index.replace_all(&files, parse(GOOD_VS));
    let report = index.replace_all(&files, parse(BAD_VS));
    assert_eq!(report.invalid.len(), 1);
    assert_eq!(
        report.kept,
        vec![ResourceKey::new(
            ResourceKind::VirtualService,
            "default",
            "reviews"
        )]
    );
    assert!(!report.changed);
    assert_eq!(
        index
            .snapshot()
            .virtual_services()
            .next()
            .unwrap()
            .spec
            .http[0]
            .matches
            .len(),
        0
    );
    // Still owned by the source: dropping it from the listing removes it.
    assert!(index.replace_all(&files, vec![]).changed);
    assert!(index.snapshot().is_empty());
}

#[tokio::test]
async fn readers_wake_on_change() {
    let index = Arc::new(ConfigIndex::new());
    let mut rx = index.subscribe();
    let writer = index.clone();
    let task = tokio::spawn(async move { writer.apply(one(GOOD_VS)) });
    tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
        .await
        .expect("woken within 5s")
        .unwrap();
    assert_eq!(*rx.borrow_and_update(), 1);
    task.await.unwrap().unwrap();
}
