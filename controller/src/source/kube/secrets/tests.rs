//! The watch of Secrets as the index sees it: only the wanted ones, only their credential keys.

use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn secret(namespace: &str, name: &str, cert: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("tls.crt".to_owned(), ByteString(cert.as_bytes().to_vec())),
            ("tls.key".to_owned(), ByteString(b"key".to_vec())),
            ("unrelated".to_owned(), ByteString(b"x".to_vec())),
        ])),
        ..Default::default()
    }
}

fn held(index: &LiveIndex) -> Vec<(String, Vec<u8>)> {
    index
        .snapshot()
        .secrets
        .iter()
        .map(|(k, s)| (k.clone(), s.data["tls.crt"].clone()))
        .collect()
}

fn wanted(keys: &[&str]) -> BTreeSet<Key> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

#[test]
fn only_wanted_secrets_reach_the_index_and_only_their_credential_keys() {
    let index = LiveIndex::default();
    let mut keeper = SecretKeeper::default();
    keeper.set_wanted(wanted(&["edge/shop-cert"]), &index);
    keeper.handle(Event::Init, &index);
    keeper.handle(Event::InitApply(secret("edge", "shop-cert", "A")), &index);
    keeper.handle(Event::InitApply(secret("edge", "db-password", "P")), &index);
    assert!(held(&index).is_empty(), "nothing before the list ends");
    keeper.handle(Event::InitDone, &index);
    assert!(keeper.listed());
    assert_eq!(held(&index), [("edge/shop-cert".to_owned(), b"A".to_vec())]);
    assert_eq!(
        index.snapshot().secrets["edge/shop-cert"]
            .data
            .keys()
            .collect::<Vec<_>>(),
        ["tls.crt", "tls.key"],
        "other keys are never kept"
    );
    // Changes of unwanted Secrets change nothing; of wanted ones, the index.
    let generation = *index.subscribe().borrow();
    keeper.handle(Event::Apply(secret("edge", "db-password", "P2")), &index);
    keeper.handle(Event::Apply(secret("edge", "shop-cert", "A")), &index);
    assert_eq!(
        *index.subscribe().borrow(),
        generation,
        "an identical Secret wakes nobody"
    );
    keeper.handle(Event::Apply(secret("edge", "shop-cert", "B")), &index);
    assert_eq!(held(&index), [("edge/shop-cert".to_owned(), b"B".to_vec())]);
    keeper.handle(Event::Delete(secret("edge", "shop-cert", "B")), &index);
    assert!(held(&index).is_empty());
}

#[test]
fn a_newly_named_secret_is_read_and_one_no_longer_named_is_forgotten() {
    let index = LiveIndex::default();
    let mut keeper = SecretKeeper::default();
    keeper.set_wanted(wanted(&["edge/a"]), &index);
    keeper.handle(Event::Init, &index);
    keeper.handle(Event::InitApply(secret("edge", "a", "A")), &index);
    keeper.handle(Event::InitApply(secret("edge", "b", "B")), &index);
    keeper.handle(Event::InitDone, &index);
    // A Gateway now names b, which the watch has passed: the caller reads it once.
    let added = keeper.set_wanted(wanted(&["edge/a", "edge/b"]), &index);
    assert_eq!(added, ["edge/b"]);
    keeper.read(
        &"edge/b".to_owned(),
        Some(&secret("edge", "b", "B")),
        &index,
    );
    assert_eq!(held(&index).len(), 2);
    // No Gateway names a any more: it leaves memory.
    keeper.set_wanted(wanted(&["edge/b"]), &index);
    assert_eq!(held(&index), [("edge/b".to_owned(), b"B".to_vec())]);
    // A read during a relist joins it: the end of the list does not drop it.
    keeper.set_wanted(wanted(&["edge/b", "edge/c"]), &index);
    keeper.handle(Event::Init, &index);
    keeper.handle(Event::InitApply(secret("edge", "b", "B")), &index);
    keeper.read(
        &"edge/c".to_owned(),
        Some(&secret("edge", "c", "C")),
        &index,
    );
    keeper.handle(Event::InitDone, &index);
    assert_eq!(held(&index).len(), 2, "{:?}", held(&index));
    // A read of a Secret that does not exist removes it.
    keeper.read(&"edge/c".to_owned(), None, &index);
    assert_eq!(held(&index).len(), 1);
}
