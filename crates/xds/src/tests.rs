//! Both ends over real tonic on 127.0.0.1: subscription, deltas, debouncing, NACKs, reconnects,
//! scoping and explicit subscriptions.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use prost_types::Any;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use weft_proto::envoy::config::core::v3::Node;
use weft_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use crate::{
    Backoff, ConnectionState, DeltaAdsServer, DeltaClient, ProxyIdentity, ResourceStore,
    ServerConfig, StoredResource, Target, Update, XdsCounters,
};

const THING: &str = "type.googleapis.com/test.Thing";
const OTHER: &str = "type.googleapis.com/test.Other";

/// Bound on every wait, so a broken stream fails the test instead of hanging it.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a test watches for updates that must not come.
const QUIET_PERIOD: Duration = Duration::from_millis(400);

fn thing(value: &str) -> Any {
    Any {
        type_url: THING.to_string(),
        value: value.as_bytes().to_vec(),
    }
}

fn node(id: &str) -> Node {
    Node {
        id: id.to_string(),
        ..Node::default()
    }
}

fn fast_config() -> ServerConfig {
    ServerConfig {
        debounce: Duration::from_millis(20),
        ..ServerConfig::default()
    }
}

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    }
}

struct RunningServer {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    async fn start(listener: TcpListener, server: DeltaAdsServer) -> Result<Self> {
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server.into_service())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Ok(Self {
            address,
            stop,
            task,
        })
    }

    async fn bind(server: DeltaAdsServer) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        Self::start(listener, server).await
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(STEP_TIMEOUT, self.task)
            .await
            .context("server did not stop")???;
        Ok(())
    }

    fn target(&self) -> Result<Target> {
        Ok(Target::address(&format!("http://{}", self.address))?)
    }
}

/// A handler that forwards every update to the test and rejects any resource whose bytes are
/// `bad`.
fn recording_handler(
    updates: mpsc::UnboundedSender<Update>,
) -> impl FnMut(Update) -> Result<(), String> + Send + 'static {
    move |update: Update| {
        let _ = updates.send(update.clone());
        match update.added.iter().find(|resource| {
            resource
                .resource
                .as_ref()
                .is_some_and(|any| any.value == b"bad")
        }) {
            Some(bad) => Err(format!("resource {} is bad", bad.name)),
            None => Ok(()),
        }
    }
}

struct RunningClient {
    updates: mpsc::UnboundedReceiver<Update>,
    state: watch::Receiver<ConnectionState>,
    task: JoinHandle<()>,
}

impl RunningClient {
    fn start(target: Target, node_id: &str, names: Vec<String>) -> Self {
        Self::start_with(target, node_id, names, None)
    }

    fn start_with(
        target: Target,
        node_id: &str,
        names: Vec<String>,
        token: Option<crate::TokenSource>,
    ) -> Self {
        let (sender, updates) = mpsc::unbounded_channel();
        let mut client = DeltaClient::new(target, node(node_id))
            .with_backoff(fast_backoff())
            .subscribe_names(THING, names, recording_handler(sender));
        if let Some(token) = token {
            client = client.with_bearer_token(token);
        }
        let state = client.state();
        let task = tokio::spawn(async move {
            let _ = client.run_until(std::future::pending()).await;
        });
        Self {
            updates,
            state,
            task,
        }
    }

    async fn next_update(&mut self) -> Result<Update> {
        tokio::time::timeout(STEP_TIMEOUT, self.updates.recv())
            .await
            .context("no update in time")?
            .context("client ended")
    }

    async fn expect_quiet(&mut self) -> Result<()> {
        if let Ok(Some(update)) = tokio::time::timeout(QUIET_PERIOD, self.updates.recv()).await {
            bail!("unexpected update {update:?}");
        }
        Ok(())
    }

    async fn wait_state(&mut self, predicate: impl Fn(&ConnectionState) -> bool) -> Result<()> {
        tokio::time::timeout(STEP_TIMEOUT, self.state.wait_for(|state| predicate(state)))
            .await
            .context("connection state not reached in time")??;
        Ok(())
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn names(update: &Update) -> Vec<&str> {
    let mut names: Vec<&str> = update.added.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names
}

fn value(update: &Update, name: &str) -> Option<Vec<u8>> {
    update
        .added
        .iter()
        .find(|resource| resource.name == name)
        .and_then(|resource| resource.resource.as_ref())
        .map(|any| any.value.clone())
}

async fn wait_until(mut condition: impl FnMut() -> bool) -> Result<()> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .context("condition not reached in time")
}

#[tokio::test]
async fn full_state_then_only_changes() -> Result<()> {
    let mut store = ResourceStore::new();
    store.set(THING, "a", thing("a1"));
    store.set(THING, "b", thing("b1"));
    store.set(OTHER, "unrelated", thing("o"));
    let counters = Arc::new(XdsCounters::default());
    let server = RunningServer::bind(
        DeltaAdsServer::new(store.reader())
            .with_config(fast_config())
            .with_metrics(counters.clone()),
    )
    .await?;
    let mut client = RunningClient::start(server.target()?, "proxy-1", Vec::new());

    let full = client.next_update().await?;
    assert!(full.full_state);
    assert_eq!(
        names(&full),
        ["a", "b"],
        "wildcard gets every resource of the type only"
    );
    assert!(full.removed.is_empty());
    client
        .wait_state(|state| state.connected && state.synced)
        .await?;
    assert_eq!(counters.connected(), 1);

    store.set(THING, "b", thing("b2"));
    let update = client.next_update().await?;
    assert!(!update.full_state);
    assert_eq!(names(&update), ["b"], "only the changed resource");
    assert_eq!(value(&update, "b"), Some(b"b2".to_vec()));
    assert!(update.removed.is_empty());

    store.remove(THING, "a");
    let update = client.next_update().await?;
    assert!(update.added.is_empty());
    assert_eq!(update.removed, ["a"]);

    // Identical content is no change, and changes to other types are not this client's.
    store.set(THING, "b", thing("b2"));
    store.set(OTHER, "unrelated", thing("o2"));
    client.expect_quiet().await?;
    assert_eq!(counters.pushes(), 3);
    assert_eq!(counters.rejects(), 0);

    drop(client);
    wait_until(|| counters.connected() == 0).await?;
    drop(store);
    server.stop().await
}

/// Convergence, as istiod's `pilot_proxy_convergence_time`: once per push that reached a
/// proxy, however many types it changed; a subscription's first responses are no push.
#[tokio::test]
async fn convergence_is_observed_once_per_push_to_a_proxy() -> Result<()> {
    let converged = |counters: &XdsCounters| -> u64 {
        counters.convergence_buckets().iter().map(|(_, n)| n).sum()
    };
    let mut store = ResourceStore::new();
    store.set(THING, "t", thing("t1"));
    store.set(OTHER, "o", thing("o1"));
    let counters = Arc::new(XdsCounters::default());
    let server = RunningServer::bind(
        DeltaAdsServer::new(store.reader())
            .with_config(ServerConfig {
                debounce: Duration::from_millis(100),
                ..ServerConfig::default()
            })
            .with_metrics(counters.clone()),
    )
    .await?;
    let (sender, mut updates) = mpsc::unbounded_channel();
    let client = DeltaClient::new(server.target()?, node("proxy-1"))
        .with_backoff(fast_backoff())
        .subscribe(THING, recording_handler(sender.clone()))
        .subscribe(OTHER, recording_handler(sender));
    let task = tokio::spawn(async move {
        let _ = client.run_until(std::future::pending()).await;
    });
    let mut next = async || {
        tokio::time::timeout(STEP_TIMEOUT, updates.recv())
            .await
            .context("no update in time")?
            .context("client ended")
    };
    next().await?;
    next().await?;
    wait_until(|| counters.pushes() == 2).await?;
    assert_eq!(converged(&counters), 0, "subscriptions are no push");

    // One change of both types: two responses, one push.
    store.set(THING, "t", thing("t2"));
    store.set(OTHER, "o", thing("o2"));
    next().await?;
    next().await?;
    wait_until(|| counters.pushes() == 4).await?;
    wait_until(|| converged(&counters) == 1).await?;
    // One type: one response, one push.
    store.set(THING, "t", thing("t3"));
    next().await?;
    wait_until(|| converged(&counters) == 2).await?;
    assert_eq!(counters.pushes(), 5);
    assert!(counters.convergence_total() <= counters.push_time_total());
    task.abort();
    drop(store);
    server.stop().await
}

#[tokio::test]
async fn bursts_are_debounced_into_one_push() -> Result<()> {
    let mut store = ResourceStore::new();
    store.set(THING, "x", thing("0"));
    let counters = Arc::new(XdsCounters::default());
    let server = RunningServer::bind(
        DeltaAdsServer::new(store.reader())
            .with_config(ServerConfig {
                debounce: Duration::from_millis(200),
                ..ServerConfig::default()
            })
            .with_metrics(counters.clone()),
    )
    .await?;
    let mut client = RunningClient::start(server.target()?, "proxy-1", Vec::new());
    client.next_update().await?;
    let pushes_before = counters.pushes();

    for edit in 1..=50 {
        store.set(THING, "x", thing(&edit.to_string()));
        store.set(
            THING,
            format!("burst-{}", edit % 5),
            thing(&edit.to_string()),
        );
        // Edits spread over time, each within the debounce window of the one before: the
        // burst under test, not a wait.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let mut received = vec![client.next_update().await?];
    while let Ok(Some(update)) = tokio::time::timeout(QUIET_PERIOD, client.updates.recv()).await {
        received.push(update);
    }
    assert!(
        received.len() <= 2,
        "{} pushes for one burst",
        received.len()
    );
    let last = received.last().context("no update")?;
    assert!(
        received
            .iter()
            .any(|update| value(update, "x") == Some(b"50".to_vec())),
        "the final value arrives: {last:?}"
    );
    let pushes = counters.pushes() - pushes_before;
    assert!((1..=2).contains(&pushes), "{pushes} pushes counted");
    drop(store);
    drop(client);
    server.stop().await
}

#[tokio::test]
async fn rejected_updates_are_counted_and_later_changes_still_arrive() -> Result<()> {
    let mut store = ResourceStore::new();
    store.set(THING, "good", thing("g1"));
    let counters = Arc::new(XdsCounters::default());
    let server = RunningServer::bind(
        DeltaAdsServer::new(store.reader())
            .with_config(fast_config())
            .with_metrics(counters.clone()),
    )
    .await?;
    let mut client = RunningClient::start(server.target()?, "proxy-nack", Vec::new());
    client.next_update().await?;

    store.set(THING, "broken", thing("bad"));
    let rejected = client.next_update().await?;
    assert_eq!(names(&rejected), ["broken"]);
    wait_until(|| counters.rejects() == 1).await?;
    let rejection = counters
        .recent_rejections()
        .pop()
        .context("rejection recorded")?;
    assert_eq!(rejection.proxy_id, "proxy-nack");
    assert_eq!(rejection.type_url, THING);
    assert_eq!(rejection.message, "resource broken is bad");
    assert!(!rejection.nonce.is_empty());

    store.set(THING, "good", thing("g2"));
    let update = client.next_update().await?;
    assert_eq!(
        names(&update),
        ["good"],
        "the rejected version is not sent again"
    );
    assert_eq!(value(&update, "good"), Some(b"g2".to_vec()));

    store.set(THING, "broken", thing("fixed"));
    let update = client.next_update().await?;
    assert_eq!(value(&update, "broken"), Some(b"fixed".to_vec()));
    client.expect_quiet().await?;
    assert_eq!(counters.rejects(), 1);
    drop(store);
    drop(client);
    server.stop().await
}

#[tokio::test]
async fn reconnect_gets_full_state_and_reports_vanished_resources() -> Result<()> {
    let mut first_store = ResourceStore::new();
    first_store.set(THING, "kept", thing("k1"));
    first_store.set(THING, "vanishes", thing("v1"));
    let first =
        RunningServer::bind(DeltaAdsServer::new(first_store.reader()).with_config(fast_config()))
            .await?;
    let address = first.address;
    let mut client = RunningClient::start(first.target()?, "proxy-1", Vec::new());
    let full = client.next_update().await?;
    assert_eq!(names(&full), ["kept", "vanishes"]);
    client
        .wait_state(|state| state.connected && state.connections == 1)
        .await?;

    // Dropping the store ends the streams, which lets the server shut down gracefully.
    drop(first_store);
    first.stop().await?;
    client
        .wait_state(|state| !state.connected && state.last_error.is_some())
        .await?;

    let mut second_store = ResourceStore::new();
    second_store.set(THING, "kept", thing("k2"));
    second_store.set(THING, "new", thing("n1"));
    let listener = bind_again(address).await?;
    let second = RunningServer::start(
        listener,
        DeltaAdsServer::new(second_store.reader()).with_config(fast_config()),
    )
    .await?;

    let full = client.next_update().await?;
    assert!(full.full_state);
    assert_eq!(names(&full), ["kept", "new"]);
    assert_eq!(value(&full, "kept"), Some(b"k2".to_vec()));
    assert_eq!(full.removed, ["vanishes"]);
    client
        .wait_state(|state| state.connected && state.connections == 2)
        .await?;

    second_store.set(THING, "new", thing("n2"));
    let update = client.next_update().await?;
    assert!(!update.full_state);
    assert_eq!(names(&update), ["new"]);
    drop(second_store);
    drop(client);
    second.stop().await
}

/// Rebinds a port just released by a stopped server, retrying briefly while the kernel lets go.
async fn bind_again(address: SocketAddr) -> Result<TcpListener> {
    for _ in 0..50 {
        match TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    bail!("could not bind {address} again")
}

#[tokio::test]
async fn scope_decides_what_each_proxy_sees() -> Result<()> {
    let mut store = ResourceStore::new();
    store.set(THING, "node-a/w1", thing("1"));
    store.set(THING, "node-b/w2", thing("2"));
    store.set(THING, "shared/s1", thing("3"));
    let scope = |proxy: &ProxyIdentity, _: &str, resource: &StoredResource| {
        resource.name.starts_with("shared/") || resource.name.starts_with(&format!("{}/", proxy.id))
    };
    let server = RunningServer::bind(
        DeltaAdsServer::new(store.reader())
            .with_config(fast_config())
            .with_scope(scope),
    )
    .await?;
    let mut node_a = RunningClient::start(server.target()?, "node-a", Vec::new());
    // The second proxy brings its own channel, as a TLS-configured caller would.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.address))?
        .connect_lazy();
    let mut node_b = RunningClient::start(Target::Channel(channel), "node-b", Vec::new());
    assert_eq!(
        names(&node_a.next_update().await?),
        ["node-a/w1", "shared/s1"]
    );
    assert_eq!(
        names(&node_b.next_update().await?),
        ["node-b/w2", "shared/s1"]
    );

    store.set(THING, "node-b/w3", thing("4"));
    assert_eq!(names(&node_b.next_update().await?), ["node-b/w3"]);
    node_a.expect_quiet().await?;
    drop(store);
    drop((node_a, node_b));
    server.stop().await
}

#[tokio::test]
async fn explicit_subscription_receives_only_named_resources() -> Result<()> {
    let mut store = ResourceStore::new();
    for name in ["a", "b", "c"] {
        store.set(THING, name, thing("1"));
    }
    let (shutdown, shutdown_signal) = watch::channel(false);
    let server = RunningServer::bind(
        DeltaAdsServer::new(store.reader())
            .with_config(fast_config())
            .with_shutdown(shutdown_signal),
    )
    .await?;
    let mut client = RunningClient::start(
        server.target()?,
        "waypoint-1",
        vec!["b".to_string(), "later".to_string()],
    );
    assert_eq!(names(&client.next_update().await?), ["b"]);

    store.set(THING, "a", thing("2"));
    client.expect_quiet().await?;
    store.set(THING, "later", thing("1"));
    assert_eq!(names(&client.next_update().await?), ["later"]);
    store.remove(THING, "b");
    assert_eq!(client.next_update().await?.removed, ["b"]);

    // The shutdown signal ends the stream while the store lives on; the server then stops.
    shutdown.send_replace(true);
    client
        .wait_state(|state| !state.connected && state.last_error.is_some())
        .await?;
    server.stop().await?;
    store.set(THING, "b", thing("3"));
    drop(store);
    Ok(())
}

#[tokio::test]
async fn client_stops_on_shutdown_and_refuses_to_run_without_subscriptions() -> Result<()> {
    let store = ResourceStore::new();
    let server = RunningServer::bind(DeltaAdsServer::new(store.reader())).await?;

    let empty = DeltaClient::new(server.target()?, node("idle"));
    let outcome =
        tokio::time::timeout(STEP_TIMEOUT, empty.run_until(std::future::pending())).await?;
    assert!(matches!(outcome, Err(crate::ClientError::NoSubscriptions)));

    let (updates, _received) = mpsc::unbounded_channel();
    let client = DeltaClient::new(server.target()?, node("stoppable"))
        .subscribe(THING, recording_handler(updates));
    let mut state = client.state();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(client.run_until(async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(STEP_TIMEOUT, state.wait_for(|state| state.synced)).await??;
    let _ = stop.send(());
    let outcome = tokio::time::timeout(STEP_TIMEOUT, task).await??;
    assert!(outcome.is_ok());
    drop(store);
    server.stop().await
}

#[tokio::test]
async fn stream_without_node_is_refused() -> Result<()> {
    let store = ResourceStore::new();
    let server = RunningServer::bind(DeltaAdsServer::new(store.reader())).await?;
    let mut raw =
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", server.address)).await?;
    let request = DeltaDiscoveryRequest {
        type_url: THING.to_string(),
        ..DeltaDiscoveryRequest::default()
    };
    let mut responses = raw
        .delta_aggregated_resources(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let outcome = tokio::time::timeout(STEP_TIMEOUT, responses.message())
        .await
        .context("no answer in time")?;
    let status = outcome.err().context("stream without node must fail")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    drop(store);
    server.stop().await
}

/// A hand-driven stream, for the request shapes `DeltaClient` does not send.
struct RawStream {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl RawStream {
    async fn open(address: SocketAddr, first: DeltaDiscoveryRequest) -> Result<Self> {
        let mut client =
            AggregatedDiscoveryServiceClient::connect(format!("http://{address}")).await?;
        let (requests, request_stream) = mpsc::channel(8);
        requests.send(first).await?;
        let responses = client
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(request_stream))
            .await?
            .into_inner();
        Ok(Self {
            requests,
            responses,
        })
    }

    async fn next(&mut self) -> Result<DeltaDiscoveryResponse> {
        tokio::time::timeout(STEP_TIMEOUT, self.responses.message())
            .await
            .context("no response in time")??
            .context("stream closed")
    }

    async fn expect_quiet(&mut self) -> Result<()> {
        if let Ok(response) = tokio::time::timeout(QUIET_PERIOD, self.responses.message()).await {
            bail!("unexpected response {response:?}");
        }
        Ok(())
    }

    async fn ack(&mut self, response: &DeltaDiscoveryResponse) -> Result<()> {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..DeltaDiscoveryRequest::default()
        })
        .await
    }

    async fn send(&mut self, request: DeltaDiscoveryRequest) -> Result<()> {
        self.requests.send(request).await?;
        Ok(())
    }
}

fn response_names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    let mut names: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names
}

mod admission;
mod on_demand;
mod subscriptions;
mod wildcard_hosts;
