//! Subscriptions by name and alias, and the client's demands: what an on-demand proxy asks
//! for and what it is answered.

use std::collections::BTreeSet;

use super::*;
use crate::DemandError;

/// A service at `/10.0.0.1` with one endpoint, and a workload elsewhere, each going by its
/// addresses as the controller names them.
fn addresses(store: &mut ResourceStore, endpoints: &[(&str, &str)]) {
    let mut resources = vec![
        StoredResource::new("ns/svc", thing("svc")).with_aliases(vec!["/10.0.0.1".to_string()]),
        StoredResource::new("far", thing("far")).with_aliases(vec!["/10.1.0.9".to_string()]),
        StoredResource::new("local", thing("local"))
            .with_aliases(vec!["node:n1".to_string(), "/10.1.0.5".to_string()]),
    ];
    for (name, value) in endpoints {
        resources.push(
            StoredResource::new(*name, thing(value))
                .with_aliases(vec!["/10.0.0.1".to_string(), format!("/{name}")]),
        );
    }
    store.replace_type(THING, resources);
}

/// A store holding [`addresses`] with one endpoint, and a server of it.
async fn serve_addresses() -> Result<(ResourceStore, RunningServer)> {
    let mut store = ResourceStore::new();
    addresses(&mut store, &[("ep1", "1")]);
    let server =
        RunningServer::bind(DeltaAdsServer::new(store.reader()).with_config(fast_config())).await?;
    Ok((store, server))
}

/// A stream of `node_id` subscribing `name` on its first request.
async fn open_named(server: &RunningServer, node_id: &str, name: &str) -> Result<RawStream> {
    open_with_names(server, node_id, vec![name.to_string()]).await
}

async fn open_with_names(
    server: &RunningServer,
    node_id: &str,
    names: Vec<String>,
) -> Result<RawStream> {
    RawStream::open(
        server.address,
        DeltaDiscoveryRequest {
            node: Some(node(node_id)),
            type_url: THING.to_string(),
            resource_names_subscribe: names,
            ..DeltaDiscoveryRequest::default()
        },
    )
    .await
}

/// Subscribes `name` on an open stream and returns the answer.
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
async fn a_name_covers_what_goes_by_it_and_a_name_covering_nothing_is_answered_removed()
-> Result<()> {
    let (mut store, server) = serve_addresses().await?;
    let mut stream = open_named(&server, "on-demand", "node:n1").await?;
    let first = stream.next().await?;
    assert_eq!(response_names(&first), ["local"]);
    assert_eq!(
        first.resources[0].aliases,
        ["node:n1"],
        "only the alias asked by"
    );
    stream.ack(&first).await?;

    // The service's address: the service and its endpoint.
    let answer = ask(&mut stream, "/10.0.0.1").await?;
    assert_eq!(response_names(&answer), ["ep1", "ns/svc"]);
    assert!(answer.resources.iter().all(|r| r.aliases == ["/10.0.0.1"]));
    stream.ack(&answer).await?;

    // Nothing at this address: answered, with the name as removed.
    let nothing = ask(&mut stream, "/10.9.9.9").await?;
    assert!(nothing.resources.is_empty());
    assert_eq!(nothing.removed_resources, ["/10.9.9.9"]);
    stream.ack(&nothing).await?;

    // A new endpoint of the service follows; the workload nobody asked for does not.
    addresses(&mut store, &[("ep1", "1"), ("ep2", "1")]);
    let pushed = stream.next().await?;
    assert_eq!(response_names(&pushed), ["ep2"]);
    stream.ack(&pushed).await?;
    store.set(THING, "far", thing("changed"));
    stream.expect_quiet().await?;

    // Asked again (a proxy that lost track), the answer is sent again.
    assert_eq!(
        response_names(&ask(&mut stream, "/10.0.0.1").await?),
        ["ep1", "ep2", "ns/svc"]
    );
    drop(store);
    drop(stream);
    server.stop().await
}

/// A client of node n1 subscribed to its node's things, synced (holding `local`): its
/// demands, its updates, its task.
async fn on_demand_client(
    server: &RunningServer,
) -> Result<(
    crate::Demand,
    mpsc::UnboundedReceiver<Update>,
    tokio::task::JoinHandle<()>,
)> {
    let (sender, mut updates) = mpsc::unbounded_channel();
    let client = DeltaClient::new(server.target()?, node("on-demand"))
        .with_backoff(fast_backoff())
        .subscribe_names(
            THING,
            vec!["node:n1".to_string()],
            recording_handler(sender),
        );
    let demand = client.demand();
    let mut state = client.state();
    let task = tokio::spawn(async move {
        let _ = client.run_until(std::future::pending()).await;
    });
    tokio::time::timeout(STEP_TIMEOUT, state.wait_for(|s| s.synced)).await??;
    let first = updates.recv().await.context("client ended")?;
    assert_eq!(names(&first), ["local"]);
    Ok((demand, updates, task))
}

#[tokio::test]
async fn demands_share_one_request_and_settle_on_the_answer() -> Result<()> {
    let mut store = ResourceStore::new();
    addresses(&mut store, &[("ep1", "1")]);
    let server =
        RunningServer::bind(DeltaAdsServer::new(store.reader()).with_config(fast_config())).await?;
    let (demand, mut updates, task) = on_demand_client(&server).await?;

    // Two connections to the same address at once: one request, one answer, both settled
    // only after it is applied.
    let (a, b) = tokio::time::timeout(STEP_TIMEOUT, async {
        tokio::join!(
            demand.request(THING, "/10.0.0.1"),
            demand.request(THING, "/10.0.0.1")
        )
    })
    .await?;
    assert_eq!((a, b), (Ok(()), Ok(())));
    let answer = updates
        .try_recv()
        .context("settled before it was applied")?;
    assert_eq!(names(&answer), ["ep1", "ns/svc"]);
    if let Ok(Some(again)) = tokio::time::timeout(QUIET_PERIOD, updates.recv()).await {
        bail!("the second demand was sent on its own: {again:?}");
    }

    // An address nothing holds is answered too, and not kept subscribed: what appears there
    // later is not pushed.
    tokio::time::timeout(STEP_TIMEOUT, demand.request(THING, "/10.9.9.9")).await??;
    let nothing = updates.recv().await.context("client ended")?;
    assert_eq!(nothing.removed, ["/10.9.9.9"]);
    let mut later =
        vec![StoredResource::new("new", thing("new")).with_aliases(vec!["/10.9.9.9".to_string()])];
    later.extend(crate::test_support::stored(&store, THING));
    store.replace_type(THING, later);
    if let Ok(Some(pushed)) = tokio::time::timeout(QUIET_PERIOD, updates.recv()).await {
        bail!("an address asked for in vain stayed subscribed: {pushed:?}");
    }

    // Only types subscribed by name take demands.
    let wildcard =
        DeltaClient::new(server.target()?, node("wildcard")).subscribe(OTHER, |_: Update| Ok(()));
    let refused = wildcard.demand();
    let wildcard_task = tokio::spawn(async move {
        let _ = wildcard.run_until(std::future::pending()).await;
    });
    assert_eq!(
        tokio::time::timeout(STEP_TIMEOUT, refused.request(OTHER, "x")).await?,
        Err(DemandError::Refused {
            type_url: OTHER.to_string()
        })
    );
    wildcard_task.abort();
    task.abort();
    drop(store);
    server.stop().await
}

#[tokio::test]
async fn a_name_found_absent_while_watched_stays_subscribed_until_released() -> Result<()> {
    let mut store = ResourceStore::new();
    addresses(&mut store, &[("ep1", "1")]);
    let server =
        RunningServer::bind(DeltaAdsServer::new(store.reader()).with_config(fast_config())).await?;
    let (demand, mut updates, task) = on_demand_client(&server).await?;

    // Nothing there: answered as removed, and kept subscribed.
    tokio::time::timeout(
        STEP_TIMEOUT,
        demand.request_watching_absent(THING, "/10.9.9.9"),
    )
    .await??;
    let nothing = updates.recv().await.context("client ended")?;
    assert_eq!(nothing.removed, ["/10.9.9.9"]);

    // What appears there later is pushed without being asked again.
    let mut later =
        vec![StoredResource::new("new", thing("new")).with_aliases(vec!["/10.9.9.9".to_string()])];
    later.extend(crate::test_support::stored(&store, THING));
    store.replace_type(THING, later.clone());
    let pushed = tokio::time::timeout(STEP_TIMEOUT, updates.recv())
        .await?
        .context("client ended")?;
    assert_eq!(names(&pushed), ["new"]);

    // Released, it goes; what appears under it after that is not pushed.
    demand.release(THING, vec!["/10.9.9.9".to_string()])?;
    let dropped = tokio::time::timeout(STEP_TIMEOUT, updates.recv())
        .await?
        .context("client ended")?;
    assert_eq!(dropped.removed, ["new"]);
    later[0] =
        StoredResource::new("new", thing("newer")).with_aliases(vec!["/10.9.9.9".to_string()]);
    store.replace_type(THING, later);
    if let Ok(Some(pushed)) = tokio::time::timeout(QUIET_PERIOD, updates.recv()).await {
        bail!("a released name stayed subscribed: {pushed:?}");
    }
    task.abort();
    drop(store);
    server.stop().await
}

/// A name is resolved from the store's alias index as it is when the name is asked: an alias
/// that came, moved or went between two requests is answered as the store holds it then.
#[tokio::test]
async fn an_alias_moved_between_requests_is_answered_where_it_is_now() -> Result<()> {
    let (mut store, server) = serve_addresses().await?;
    let mut stream = open_named(&server, "on-demand", "node:n1").await?;
    let first = stream.next().await?;
    assert_eq!(response_names(&first), ["local"]);
    stream.ack(&first).await?;

    // The address is given to the endpoint after the index was first built.
    let moved = |store: &mut ResourceStore, holder: &str| {
        let mut resources = crate::test_support::stored(store, THING);
        for resource in &mut resources {
            let mut aliases = resource.aliases.clone();
            aliases.retain(|a| a != "/10.7.7.7");
            if &*resource.name == holder {
                aliases.push("/10.7.7.7".to_string());
            }
            *resource = resource.clone().with_aliases(aliases);
        }
        store.replace_type(THING, resources);
    };
    moved(&mut store, "ep1");
    let answer = ask(&mut stream, "/10.7.7.7").await?;
    assert_eq!(response_names(&answer), ["ep1"]);
    assert_eq!(answer.resources[0].aliases, ["/10.7.7.7"]);
    stream.ack(&answer).await?;

    // Moved to the far workload: pushed as what changed (the far workload now covered, the
    // endpoint no longer), then asked by another stream, answered where it is now.
    moved(&mut store, "far");
    let pushed = stream.next().await?;
    assert_eq!(response_names(&pushed), ["far"]);
    assert_eq!(pushed.removed_resources, ["ep1"]);
    stream.ack(&pushed).await?;
    let mut other = open_named(&server, "other", "/10.7.7.7").await?;
    assert_eq!(response_names(&other.next().await?), ["far"]);

    // Gone from every resource: a request for it covers nothing.
    moved(&mut store, "none");
    assert_eq!(stream.next().await?.removed_resources, ["far"]);
    let mut third = open_named(&server, "third", "/10.7.7.7").await?;
    let nothing = third.next().await?;
    assert!(nothing.resources.is_empty());
    assert_eq!(nothing.removed_resources, ["/10.7.7.7"]);
    drop((stream, other, third, store));
    server.stop().await
}

/// What one stream makes the server hold is bounded: a subscription of `MAX_NAMES` names is
/// served, one more name ends the stream with `RESOURCE_EXHAUSTED` naming the type and bound.
#[tokio::test]
async fn a_stream_subscribing_past_its_bound_of_names_is_ended_with_the_reason() -> Result<()> {
    let (store, server) = serve_addresses().await?;
    let names: Vec<String> = (0..crate::MAX_NAMES).map(|i| format!("/10.{i}")).collect();
    let mut stream = open_with_names(&server, "greedy", names).await?;
    let full = stream.next().await?;
    assert_eq!(full.removed_resources.len(), crate::MAX_NAMES);
    stream.ack(&full).await?;
    stream
        .send(DeltaDiscoveryRequest {
            type_url: THING.to_string(),
            resource_names_subscribe: vec!["/10.1".to_string(), "one-more".to_string()],
            ..DeltaDiscoveryRequest::default()
        })
        .await?;
    let ended = tokio::time::timeout(STEP_TIMEOUT, stream.responses.message())
        .await
        .context("no answer in time")?;
    let status = match ended {
        Err(status) => status,
        Ok(response) => bail!("the stream went on: {response:?}"),
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let expected = format!(
        "the subscription to {THING} would hold {} names, more than {}",
        crate::MAX_NAMES + 1,
        crate::MAX_NAMES
    );
    assert_eq!(status.message(), expected);
    drop(store);
    server.stop().await
}

#[tokio::test]
async fn a_released_name_is_unsubscribed_and_what_only_it_covered_is_removed() -> Result<()> {
    let mut store = ResourceStore::new();
    addresses(&mut store, &[("ep1", "1")]);
    let server =
        RunningServer::bind(DeltaAdsServer::new(store.reader()).with_config(fast_config())).await?;
    let (demand, mut updates, task) = on_demand_client(&server).await?;
    tokio::time::timeout(STEP_TIMEOUT, demand.request(THING, "/10.0.0.1")).await??;
    tokio::time::timeout(STEP_TIMEOUT, demand.request(THING, "/10.1.0.9")).await??;
    let mut held = BTreeSet::new();
    while held.len() < 3 {
        let update = tokio::time::timeout(STEP_TIMEOUT, updates.recv())
            .await?
            .context("client ended")?;
        held.extend(names(&update).into_iter().map(String::from));
    }
    assert_eq!(
        held,
        BTreeSet::from(["ep1", "far", "ns/svc"].map(String::from))
    );

    // Releasing the VIP removes the service and its endpoint; the node's own name cannot be
    // released, and the other name stays.
    demand.release(THING, vec!["/10.0.0.1".to_string(), "node:n1".to_string()])?;
    let removal = tokio::time::timeout(STEP_TIMEOUT, updates.recv())
        .await?
        .context("client ended")?;
    let mut removed = removal.removed.clone();
    removed.sort();
    assert_eq!(removed, ["ep1", "ns/svc"]);
    assert!(removal.added.is_empty());
    if let Ok(Some(more)) = tokio::time::timeout(QUIET_PERIOD, updates.recv()).await {
        bail!("more than the released name's resources changed: {more:?}");
    }

    // A resource released by its own name is dropped by the client (the server forgets it).
    tokio::time::timeout(STEP_TIMEOUT, demand.request(THING, "ns/svc")).await??;
    let fetched = tokio::time::timeout(STEP_TIMEOUT, updates.recv())
        .await?
        .context("client ended")?;
    assert_eq!(names(&fetched), ["ns/svc"]);
    demand.release(THING, vec!["ns/svc".to_string()])?;
    let dropped = tokio::time::timeout(STEP_TIMEOUT, updates.recv())
        .await?
        .context("client ended")?;
    assert_eq!(dropped.removed, ["ns/svc"]);
    if let Ok(Some(more)) = tokio::time::timeout(QUIET_PERIOD, updates.recv()).await {
        bail!("the released service came back: {more:?}");
    }
    task.abort();
    drop(store);
    server.stop().await
}
