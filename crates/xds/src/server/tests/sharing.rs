//! A push to many proxies holds each resource once: every stream's response refers to the
//! store's resource (its packed bytes, name and version), and what each stream records as sent
//! shares the store's name and version strings. Measured at two sizes, so a copy per proxy
//! (what grows as proxies x resources) shows up as bytes held per proxy.

use std::collections::HashSet;
use std::mem::size_of;

use prost::Message;
use prost_types::Any;
use tokio::sync::mpsc;
use tokio::time::Instant;
use weft_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use super::super::stream::ProxyStream;
use super::*;
use crate::ResourceStore;
use crate::store::Snapshot;

const T: &str = "type.googleapis.com/test.Thing";

/// Bytes of each resource's packed message, about those of a workload `Address`.
const VALUE_LEN: usize = 300;

fn resources(count: usize, generation: u8) -> Vec<StoredResource> {
    (0..count)
        .map(|i| {
            let mut value = vec![generation; VALUE_LEN];
            value[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let body = Any {
                type_url: T.to_string(),
                value,
            };
            StoredResource::new(format!("shop/workload-{i:06}"), body)
        })
        .collect()
}

fn stream(
    store: &ResourceStore,
    id: usize,
) -> (
    ProxyStream,
    mpsc::Receiver<Result<DeltaResponse, tonic::Status>>,
) {
    let (responses, received) = mpsc::channel(4);
    let proxy = ProxyIdentity {
        id: format!("node-{id}"),
        node: Node::default(),
        connection: id as u64,
        verified: None,
    };
    let stream = ProxyStream {
        proxy,
        reader: store.reader(),
        scope: Arc::new(Unscoped),
        metrics: Arc::new(NoMetrics),
        config: ServerConfig::default(),
        subscriptions: BTreeMap::new(),
        next_nonce: 0,
        responses,
    };
    (stream, received)
}

/// Bytes of resource content a response holds of its own, not shared with `snapshot`: what a
/// copy per proxy costs (name, version, type URL and packed bytes of every resource).
fn owned_bytes(response: &DeltaResponse, snapshot: &Snapshot) -> usize {
    response
        .resources
        .iter()
        .map(|sent| {
            let stored = snapshot
                .get(T, sent.name())
                .expect("sent resources are stored");
            if Arc::ptr_eq(stored, &sent.resource) {
                0
            } else {
                let r = &sent.resource;
                r.name.len() + r.version.len() + r.body.type_url.len() + r.body.value.len()
            }
        })
        .sum()
}

/// Bytes the generated response would hold of its own for the same content: every resource's
/// strings and bytes copied.
fn copied_bytes(response: &DeltaResponse) -> usize {
    response
        .resources
        .iter()
        .map(|sent| {
            let r = &sent.resource;
            size_of::<weft_proto::envoy::service::discovery::v3::Resource>()
                + r.name.len()
                + r.version.len()
                + r.body.type_url.len()
                + r.body.value.len()
        })
        .sum()
}

#[tokio::test]
async fn a_push_to_every_proxy_shares_each_resources_bytes() {
    for (proxies, count) in [(10, 100), (100, 1_000)] {
        let mut store = ResourceStore::new();
        store.replace_type(T, resources(count, 1));
        let first = store.snapshot();
        let mut streams: Vec<_> = (0..proxies).map(|id| stream(&store, id)).collect();
        for (stream, _) in &mut streams {
            let subscribe = DeltaDiscoveryRequest {
                node: Some(Node::default()),
                type_url: T.to_string(),
                ..DeltaDiscoveryRequest::default()
            };
            stream.handle_request(subscribe).await.expect("subscribed");
        }
        // A full push: every resource changes.
        store.replace_type(T, resources(count, 2));
        let second = store.snapshot();
        for (stream, _) in &mut streams {
            let latest = stream.reader.latest();
            stream
                .push_changes(&latest, Instant::now())
                .await
                .expect("pushed");
        }

        let (mut owned, mut copied, mut values) = (0, 0, HashSet::new());
        for (stream, received) in &mut streams {
            for snapshot in [&first, &second] {
                let response = received
                    .try_recv()
                    .expect("a response")
                    .expect("not an error");
                assert_eq!(
                    response.resources.len(),
                    count,
                    "{proxies}x{count}: full state"
                );
                owned += owned_bytes(&response, snapshot);
                copied += copied_bytes(&response);
                values.extend(
                    response
                        .resources
                        .iter()
                        .map(|s| s.resource.body.value.as_ptr()),
                );
            }
            let sent = &stream.subscriptions[T].sent;
            assert_eq!(sent.len(), count);
            for (name, version) in sent {
                let stored = second.get(T, name).expect("stored");
                assert!(
                    Arc::ptr_eq(name, &stored.name) && Arc::ptr_eq(version, &stored.version),
                    "{proxies}x{count}: {name} recorded as sent with copies of the store's strings"
                );
            }
        }
        assert_eq!(
            owned,
            0,
            "{proxies}x{count}: responses hold {} bytes of resources per proxy of their own",
            owned / proxies
        );
        assert_eq!(
            values.len(),
            2 * count,
            "{proxies}x{count}: one buffer per resource and push, whatever the number of proxies"
        );
        let held = size_of::<SentResource>() * 2 * count;
        let stored = second.resources(T).expect("stored");
        let recorded_copied: usize = stored
            .values()
            .map(|r| 2 * size_of::<String>() + r.name.len() + r.version.len())
            .sum();
        let recorded_shared = 2 * size_of::<Arc<str>>() * count;
        eprintln!(
            "{proxies} proxies x {count} resources ({VALUE_LEN}-byte values), two full pushes, \
             per proxy: responses hold {} bytes with a copy per response, {held} shared; \
             the names and versions sent take {recorded_copied} bytes owned, \
             {recorded_shared} shared (entries alone, without the map's own overhead)",
            copied / proxies
        );

        // What the proxy decodes is the whole resource, as the generated type would carry it.
        let (mut stream, mut received) = stream(&store, proxies);
        let subscribe = DeltaDiscoveryRequest {
            node: Some(Node::default()),
            type_url: T.to_string(),
            ..DeltaDiscoveryRequest::default()
        };
        stream.handle_request(subscribe).await.expect("subscribed");
        let response = received
            .try_recv()
            .expect("a response")
            .expect("not an error");
        let decoded = DeltaDiscoveryResponse::decode(response.encode_to_vec().as_slice())
            .expect("decodes as the generated type");
        assert_eq!(decoded, response.to_proto());
        assert_eq!(
            decoded.resources[0]
                .resource
                .as_ref()
                .map(|a| a.value.len()),
            Some(VALUE_LEN)
        );
    }
}

/// A proxy reconnecting with what it has (`initial_resource_versions`) is recorded with the
/// store's strings too, for the resources it holds at their version (those are not sent again,
/// so no push would replace the entries).
#[tokio::test]
async fn what_a_reconnecting_proxy_has_shares_the_stores_strings() {
    let mut store = ResourceStore::new();
    store.replace_type(T, resources(50, 1));
    let snapshot = store.snapshot();
    let stored = snapshot.resources(T).expect("stored");
    let mut initial: std::collections::HashMap<String, String> = stored
        .values()
        .map(|r| (r.name.to_string(), r.version.to_string()))
        .collect();
    initial.insert("shop/workload-000000".into(), "stale".into());
    initial.insert("gone".into(), "any".into());
    let (mut stream, mut received) = stream(&store, 0);
    let subscribe = DeltaDiscoveryRequest {
        node: Some(Node::default()),
        type_url: T.to_string(),
        initial_resource_versions: initial,
        ..DeltaDiscoveryRequest::default()
    };
    stream.handle_request(subscribe).await.expect("subscribed");
    let response = received
        .try_recv()
        .expect("a response")
        .expect("not an error");
    let names: Vec<&str> = response.resources.iter().map(SentResource::name).collect();
    assert_eq!(
        names,
        ["shop/workload-000000"],
        "only the stale one is sent"
    );
    assert_eq!(response.removed_resources, ["gone"]);
    let sent = &stream.subscriptions[T].sent;
    assert_eq!(sent.len(), 50);
    for (name, version) in sent {
        let stored = &stored[&**name];
        assert!(Arc::ptr_eq(name, &stored.name), "{name}: name copied");
        assert!(
            Arc::ptr_eq(version, &stored.version),
            "{name}: version copied"
        );
    }
}
