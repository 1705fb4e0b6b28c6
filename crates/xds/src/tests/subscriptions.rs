//! Subscriptions a proxy changes on an open stream, and the initial resource versions it
//! reports, driven by hand on a raw stream.

use super::*;

#[tokio::test]
async fn names_can_be_subscribed_and_unsubscribed_on_an_open_stream() -> Result<()> {
    let mut store = ResourceStore::new();
    for name in ["a", "b", "c"] {
        store.set(THING, name, thing("1"));
    }
    let server =
        RunningServer::bind(DeltaAdsServer::new(store.reader()).with_config(fast_config())).await?;
    let mut stream = RawStream::open(
        server.address,
        DeltaDiscoveryRequest {
            node: Some(node("raw")),
            type_url: THING.to_string(),
            resource_names_subscribe: vec!["a".to_string()],
            ..DeltaDiscoveryRequest::default()
        },
    )
    .await?;
    let first = stream.next().await?;
    assert_eq!(response_names(&first), ["a"]);
    stream.ack(&first).await?;

    stream
        .send(DeltaDiscoveryRequest {
            type_url: THING.to_string(),
            resource_names_subscribe: vec!["c".to_string()],
            resource_names_unsubscribe: vec!["a".to_string()],
            ..DeltaDiscoveryRequest::default()
        })
        .await?;
    let added = stream.next().await?;
    assert_eq!(response_names(&added), ["c"]);
    assert!(added.removed_resources.is_empty());
    assert_ne!(added.nonce, first.nonce, "every response has its own nonce");
    stream.ack(&added).await?;

    store.set(THING, "a", thing("2"));
    store.set(THING, "b", thing("2"));
    stream.expect_quiet().await?;
    store.set(THING, "c", thing("2"));
    assert_eq!(response_names(&stream.next().await?), ["c"]);
    drop(store);
    drop(stream);
    server.stop().await
}

#[tokio::test]
async fn initial_resource_versions_skip_what_the_proxy_already_has() -> Result<()> {
    let mut store = ResourceStore::new();
    store.set(THING, "current", thing("1"));
    store.set(THING, "stale", thing("2"));
    let snapshot = store.snapshot();
    let version_of = |name: &str| snapshot.get(THING, name).map(|r| r.version.to_string());
    let server =
        RunningServer::bind(DeltaAdsServer::new(store.reader()).with_config(fast_config())).await?;
    let mut stream = RawStream::open(
        server.address,
        DeltaDiscoveryRequest {
            node: Some(node("reconnecting")),
            type_url: THING.to_string(),
            initial_resource_versions: [
                (
                    "current".to_string(),
                    version_of("current").context("version")?,
                ),
                ("stale".to_string(), "old-version".to_string()),
                ("gone".to_string(), "any".to_string()),
            ]
            .into(),
            ..DeltaDiscoveryRequest::default()
        },
    )
    .await?;
    let first = stream.next().await?;
    assert_eq!(response_names(&first), ["stale"]);
    assert_eq!(first.removed_resources, ["gone"]);
    drop(store);
    drop(stream);
    server.stop().await
}
