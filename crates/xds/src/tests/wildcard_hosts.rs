//! A hostname nothing goes by, answered with the most specific wildcard host covering it, in
//! one request at any depth, and followed as wildcard hosts come and go.

use super::*;

/// A service per host, going by `host:<host>` as the controller names them.
fn hosts(store: &mut ResourceStore, hosts: &[&str]) {
    let resources: Vec<StoredResource> = hosts
        .iter()
        .map(|host| {
            StoredResource::new(format!("ns/{host}"), thing(host))
                .with_aliases(vec![format!("host:{host}")])
        })
        .collect();
    store.replace_type(THING, resources);
}

async fn ask(stream: &mut RawStream, name: &str) -> Result<DeltaDiscoveryResponse> {
    stream
        .send(DeltaDiscoveryRequest {
            type_url: THING.to_string(),
            resource_names_subscribe: vec![name.to_string()],
            ..DeltaDiscoveryRequest::default()
        })
        .await?;
    stream.next().await
}

#[tokio::test]
async fn a_hostname_is_answered_with_the_most_specific_wildcard_host_covering_it() -> Result<()> {
    let mut store = ResourceStore::new();
    hosts(
        &mut store,
        &["*.example.com", "*.other.com", "api.example.com"],
    );
    let server =
        RunningServer::bind(DeltaAdsServer::new(store.reader()).with_config(fast_config())).await?;
    let mut stream = RawStream::open(
        server.address,
        DeltaDiscoveryRequest {
            node: Some(node("on-demand")),
            type_url: THING.to_string(),
            resource_names_subscribe: vec!["host:api.example.com".to_string()],
            ..DeltaDiscoveryRequest::default()
        },
    )
    .await?;
    // A name a service goes by: that service alone, not the wildcard covering it too.
    let exact = stream.next().await?;
    assert_eq!(response_names(&exact), ["ns/api.example.com"]);
    stream.ack(&exact).await?;

    // Six labels under the wildcard's parent: one request, one answer, by the name asked.
    let deep = "host:a.b.c.d.e.f.example.com";
    let answer = ask(&mut stream, deep).await?;
    assert_eq!(response_names(&answer), ["ns/*.example.com"]);
    assert_eq!(answer.resources[0].aliases, [deep]);
    assert!(answer.removed_resources.is_empty());
    stream.ack(&answer).await?;

    // A more specific wildcard host appears: it takes the name's place, the other goes.
    hosts(
        &mut store,
        &[
            "*.example.com",
            "*.other.com",
            "api.example.com",
            "*.d.e.f.example.com",
        ],
    );
    let moved = stream.next().await?;
    assert_eq!(response_names(&moved), ["ns/*.d.e.f.example.com"]);
    assert_eq!(moved.resources[0].aliases, [deep]);
    assert_eq!(moved.removed_resources, ["ns/*.example.com"]);
    stream.ack(&moved).await?;

    // It goes again: the less specific one stands in once more.
    hosts(
        &mut store,
        &["*.example.com", "*.other.com", "api.example.com"],
    );
    let back = stream.next().await?;
    assert_eq!(response_names(&back), ["ns/*.example.com"]);
    assert_eq!(back.removed_resources, ["ns/*.d.e.f.example.com"]);
    stream.ack(&back).await?;

    // The name itself appears: it covers itself, the wildcard goes.
    hosts(
        &mut store,
        &[
            "*.example.com",
            "*.other.com",
            "api.example.com",
            "a.b.c.d.e.f.example.com",
        ],
    );
    let own = stream.next().await?;
    assert_eq!(response_names(&own), ["ns/a.b.c.d.e.f.example.com"]);
    assert_eq!(own.removed_resources, ["ns/*.example.com"]);
    stream.ack(&own).await?;
    hosts(
        &mut store,
        &["*.example.com", "*.other.com", "api.example.com"],
    );
    let gone = stream.next().await?;
    assert_eq!(response_names(&gone), ["ns/*.example.com"]);
    stream.ack(&gone).await?;

    // A name no wildcard covers is answered removed; one that later appears is pushed.
    let none = ask(&mut stream, "host:x.nowhere.org").await?;
    assert!(none.resources.is_empty());
    assert_eq!(none.removed_resources, ["host:x.nowhere.org"]);
    stream.ack(&none).await?;
    hosts(
        &mut store,
        &["*.example.com", "*.other.com", "api.example.com", "*.org"],
    );
    let later = stream.next().await?;
    assert_eq!(response_names(&later), ["ns/*.org"]);
    assert_eq!(later.resources[0].aliases, ["host:x.nowhere.org"]);
    stream.ack(&later).await?;

    // Dropped, the name takes what stood in for it away; a wildcard nobody asked for never came.
    stream
        .send(DeltaDiscoveryRequest {
            type_url: THING.to_string(),
            resource_names_unsubscribe: vec![deep.to_string()],
            ..DeltaDiscoveryRequest::default()
        })
        .await?;
    let dropped = stream.next().await?;
    assert_eq!(dropped.removed_resources, ["ns/*.example.com"]);
    drop(store);
    drop(stream);
    server.stop().await
}

/// The work of resolving one name is bounded by its labels, not by the wildcard hosts the
/// store holds: 10 and 10,000 wildcard hosts under other parents cost the same lookups, and a
/// name longer than a DNS name costs one.
#[test]
fn a_stand_in_costs_one_lookup_per_label() {
    let looked_at = |wildcards: usize, name: &str| {
        let mut store = ResourceStore::new();
        let mut all: Vec<String> = (0..wildcards).map(|i| format!("*.d{i}.org")).collect();
        all.push("*.example.com".to_string());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        hosts(&mut store, &all);
        let snapshot = store.snapshot();
        crate::cost::take_looked_at();
        let found = snapshot.stand_in(THING, name, |_| true);
        (found, crate::cost::take_looked_at())
    };
    let name = "host:a.b.c.d.e.f.g.h.example.com";
    let (small, large) = (looked_at(10, name), looked_at(10_000, name));
    assert_eq!(small, large);
    assert_eq!(small.0.as_deref(), Some("host:*.example.com"));
    // The name itself and 8 parents before the wildcard's, each looked up once.
    assert!(small.1 <= 2 * 9 + 2, "{} looked at", small.1);
    let too_long = format!("host:{}.example.com", ["a"; 130].join("."));
    assert_eq!(looked_at(10, &too_long).0, None);
    assert!(looked_at(10, &too_long).1 <= 2);
}
