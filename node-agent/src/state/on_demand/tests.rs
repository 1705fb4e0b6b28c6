//! The store asking a real controller-side server over a real stream: what a first
//! connection to an unknown destination makes the agent fetch.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::FutureExt;
use prost::Message;
use prost_types::Any;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use weft_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use weft_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use weft_proto::istio::workload::{
    self, GatewayAddress, NetworkAddress, address::Type, gateway_address::Destination,
};
use weft_xds::{DeltaAdsServer, ResourceStore, StoredResource, Target};

use super::super::WorkloadStore;
use super::Crowded;

/// Well under [`super::ON_DEMAND_WAIT`]: an answer, not the bound, ends each wait.
const ANSWERED_WITHIN: Duration = Duration::from_secs(3);

fn ip(last: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(last))
}

fn packed(address: &workload::Address) -> Any {
    Any {
        type_url: weft_proto::ADDRESS_TYPE_URL.to_string(),
        value: address.encode_to_vec(),
    }
}

fn workload(uid: &str, address: [u8; 4], aliases: &[&str]) -> StoredResource {
    let message = workload::Address {
        r#type: Some(Type::Workload(workload::Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "shop".into(),
            addresses: vec![address.to_vec()],
            service_account: uid.into(),
            tunnel_protocol: workload::TunnelProtocol::Hbone as i32,
            ..Default::default()
        })),
    };
    StoredResource::new(uid, packed(&message))
        .with_aliases(aliases.iter().map(|a| a.to_string()).collect())
}

/// Service `cart` at 10.96.0.10 behind the waypoint at 10.0.9.9, its endpoint at 10.0.1.1 on
/// node n2, the waypoint, and node n1's own pod.
fn mesh() -> Vec<StoredResource> {
    let service = workload::Address {
        r#type: Some(Type::Service(workload::Service {
            name: "cart".into(),
            namespace: "shop".into(),
            hostname: "cart.shop.svc.cluster.local".into(),
            addresses: vec![NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 10],
            }],
            waypoint: Some(GatewayAddress {
                destination: Some(Destination::Address(NetworkAddress {
                    network: String::new(),
                    address: vec![10, 0, 9, 9],
                })),
                hbone_mtls_port: 15008,
            }),
            ..Default::default()
        })),
    };
    let external = workload::Address {
        r#type: Some(Type::Service(workload::Service {
            name: "api.example.com".into(),
            namespace: "egress".into(),
            hostname: "api.example.com".into(),
            addresses: vec![NetworkAddress {
                network: String::new(),
                address: vec![240, 240, 0, 1],
            }],
            ..Default::default()
        })),
    };
    vec![
        StoredResource::new("egress/api.example.com", packed(&external))
            .with_aliases(vec!["/240.240.0.1".into(), "host:api.example.com".into()]),
        StoredResource::new("shop/cart.shop.svc.cluster.local", packed(&service))
            .with_aliases(vec!["/10.96.0.10".into(), "node:n2".into()]),
        workload(
            "cart-1",
            [10, 0, 1, 1],
            &[
                "/10.0.1.1",
                "/10.96.0.10",
                "shop/cart.shop.svc.cluster.local",
                "host:cart.shop.svc.cluster.local",
                "node:n2",
            ],
        ),
        workload("waypoint", [10, 0, 9, 9], &["/10.0.9.9", "node:n2"]),
        workload("client", [10, 0, 0, 1], &["/10.0.0.1", "node:n1"]),
    ]
}

/// An on-demand store of node n1 fed by a real server of `resources`; the tasks to abort.
async fn on_demand_store(resources: &ResourceStore) -> (WorkloadStore, [JoinHandle<()>; 2]) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let reader = resources.reader();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(DeltaAdsServer::new(reader).into_service())
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    let (store, agent) = agent_of(address);
    (store, [server, agent])
}

/// An on-demand store of node n1 and its client's task, asking the server at `address`.
fn agent_of(address: std::net::SocketAddr) -> (WorkloadStore, JoinHandle<()>) {
    let store = WorkloadStore::new();
    let client = crate::xds::client(
        Target::address(&format!("http://{address}")).unwrap(),
        "n1",
        "Kubernetes",
        &store,
        true,
    );
    let agent = tokio::spawn(async move {
        let _ = client.run_until(std::future::pending()).await;
    });
    (store, agent)
}

/// Waits, bounded, until `check` holds of the store (woken by its changes).
async fn until(store: &WorkloadStore, check: impl Fn(&WorkloadStore) -> bool) -> bool {
    let mut changes = store.subscribe();
    tokio::time::timeout(ANSWERED_WITHIN, async {
        while !check(store) {
            if changes.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false)
}

#[tokio::test]
async fn a_first_connection_fetches_the_destination_and_its_waypoint() {
    let mut resources = ResourceStore::new();
    resources.replace_type(weft_proto::ADDRESS_TYPE_URL, mesh());
    let (store, tasks) = on_demand_store(&resources).await;

    // Up front: the node's own pod, nothing of node n2.
    assert!(
        store
            .wait_for_workload_by_uid("client", ANSWERED_WITHIN)
            .await
            .is_some()
    );
    assert!(store.service_by_vip(ip([10, 96, 0, 10])).is_none());
    assert!(store.workload_by_uid("cart-1").is_none());
    assert!(store.workload_by_ip(ip([10, 0, 9, 9])).is_none());

    // The service's VIP: the service, its endpoint and its waypoint.
    let _lease = tokio::time::timeout(
        ANSWERED_WITHIN,
        store.fetch_destination(ip([10, 96, 0, 10])),
    )
    .await
    .expect("answered, not waited out")
    .expect("not crowded");
    assert!(store.service_by_vip(ip([10, 96, 0, 10])).is_some());
    assert!(store.workload_by_uid("cart-1").is_some());
    assert!(store.workload_by_ip(ip([10, 0, 9, 9])).is_some());

    // An address nobody holds is answered as such, and stays unknown.
    let _nothing =
        tokio::time::timeout(ANSWERED_WITHIN, store.fetch_destination(ip([10, 9, 9, 9])))
            .await
            .expect("answered, not waited out")
            .expect("not crowded");
    assert!(store.workload_by_ip(ip([10, 9, 9, 9])).is_none());
    tasks.iter().for_each(JoinHandle::abort);
}

#[tokio::test]
async fn a_fetched_name_is_released_once_idle_and_never_while_a_connection_holds_it() {
    let mut resources = ResourceStore::new();
    resources.replace_type(weft_proto::ADDRESS_TYPE_URL, mesh());
    let (store, tasks) = on_demand_store(&resources).await;
    assert!(until(&store, |s| s.workload_by_uid("client").is_some()).await);
    let vip = ip([10, 96, 0, 10]);
    let lease = tokio::time::timeout(ANSWERED_WITHIN, store.fetch_destination(vip))
        .await
        .expect("answered")
        .expect("not crowded");
    assert!(store.service_by_vip(vip).is_some());

    // An open connection holds what it uses, however long idle.
    assert_eq!(store.release_idle(Duration::ZERO), 0);
    drop(lease);
    // Closed, it is used now: not idle for an hour yet.
    assert_eq!(store.release_idle(Duration::from_secs(3600)), 0);
    // Idle for its period: unsubscribed (the VIP and the waypoint's address), and the
    // controller removes what only they covered.
    assert_eq!(store.release_idle(Duration::ZERO), 2);
    assert_eq!(store.on_demand_metrics.released_names.get(), 2);
    assert!(
        until(&store, |s| s.service_by_vip(vip).is_none()
            && s.workload_by_uid("cart-1").is_none()
            && s.workload_by_ip(ip([10, 0, 9, 9])).is_none())
        .await,
        "the released names' resources stayed"
    );
    assert!(
        store.workload_by_uid("client").is_some(),
        "the node's own stay"
    );

    // The next connection fetches it again.
    let _lease = tokio::time::timeout(ANSWERED_WITHIN, store.fetch_destination(vip))
        .await
        .expect("answered")
        .expect("not crowded");
    assert!(store.service_by_vip(vip).is_some());
    assert!(store.workload_by_uid("cart-1").is_some());
    tasks.iter().for_each(JoinHandle::abort);
}

#[tokio::test]
async fn a_dns_name_is_fetched_by_namespace_and_hostname_or_by_hostname_and_misses_remembered() {
    let mut resources = ResourceStore::new();
    resources.replace_type(weft_proto::ADDRESS_TYPE_URL, mesh());
    let (store, tasks) = on_demand_store(&resources).await;
    assert!(until(&store, |s| s.workload_by_uid("client").is_some()).await);
    assert!(
        store
            .services_by_hostname("cart.shop.svc.cluster.local")
            .is_empty()
    );

    let names = [
        "shop/cart.shop.svc.cluster.local".to_string(),
        "host:api.example.com".to_string(),
        "host:nothing.example.com".to_string(),
    ];
    tokio::time::timeout(ANSWERED_WITHIN, store.fetch_hostnames(&names))
        .await
        .expect("answered, not waited out");
    assert_eq!(
        store
            .services_by_hostname("cart.shop.svc.cluster.local")
            .len(),
        1
    );
    assert!(
        store.workload_by_uid("cart-1").is_some(),
        "with its endpoints"
    );
    assert_eq!(store.services_by_hostname("api.example.com").len(), 1);

    let on_demand = store.demand.get().expect("on demand");
    let used: Vec<String> = {
        let mut used: Vec<String> = on_demand.used.lock().unwrap().keys().cloned().collect();
        used.sort();
        used
    };
    assert_eq!(
        used,
        ["host:api.example.com", "shop/cart.shop.svc.cluster.local"]
    );
    let misses: Vec<String> = on_demand.misses.lock().unwrap().keys().cloned().collect();
    assert_eq!(misses, ["host:nothing.example.com"]);

    // A connection to the VIP of a service fetched by name holds that name.
    let lease = store
        .fetch_destination(ip([10, 96, 0, 10]))
        .await
        .expect("not crowded");
    assert!(
        lease
            .names
            .contains(&"shop/cart.shop.svc.cluster.local".to_string())
    );
    assert_eq!(
        store.release_idle(Duration::ZERO),
        1,
        "all but the held ones"
    );
    assert!(
        until(&store, |s| s
            .services_by_hostname("api.example.com")
            .is_empty())
        .await,
        "the idle hostname stayed"
    );
    assert_eq!(
        store
            .services_by_hostname("cart.shop.svc.cluster.local")
            .len(),
        1
    );
    drop(lease);
    tasks.iter().for_each(JoinHandle::abort);
}

/// A ServiceEntry-like service `hostname` in namespace `egress` at `vip`, going by it.
fn external_service(hostname: &str, vip: [u8; 4]) -> StoredResource {
    let message = workload::Address {
        r#type: Some(Type::Service(workload::Service {
            name: hostname.into(),
            namespace: "egress".into(),
            hostname: hostname.into(),
            addresses: vec![NetworkAddress {
                network: String::new(),
                address: vip.to_vec(),
            }],
            ..Default::default()
        })),
    };
    let vip = ip(vip);
    StoredResource::new(format!("egress/{hostname}"), packed(&message)).with_aliases(vec![
        weft_proto::address_subscription("", vip),
        format!("host:{hostname}"),
    ])
}

/// A connection to `ip` that waited for the controller's answer.
async fn connect(store: &WorkloadStore, ip: IpAddr) -> super::DemandLease {
    tokio::time::timeout(ANSWERED_WITHIN, store.fetch_destination(ip))
        .await
        .expect("answered, not waited out")
        .expect("not crowded")
}

/// A server of [`mesh`] and an on-demand store of node n1 whose first connection to
/// 203.0.113.`last` found nothing there: the server's resources, the store, the address
/// and its demand name, the tasks.
async fn store_with_a_miss(
    last: u8,
) -> (
    ResourceStore,
    WorkloadStore,
    IpAddr,
    String,
    [JoinHandle<()>; 2],
) {
    let mut resources = ResourceStore::new();
    resources.replace_type(weft_proto::ADDRESS_TYPE_URL, mesh());
    let (store, tasks) = on_demand_store(&resources).await;
    assert!(until(&store, |s| s.workload_by_uid("client").is_some()).await);
    let unknown = ip([203, 0, 113, last]);
    let name = weft_proto::address_subscription("", unknown);
    let _lease = connect(&store, unknown).await;
    let on_demand = store.demand.get().expect("on demand");
    assert!(on_demand.remembers_miss(&name), "not remembered");
    (resources, store, unknown, name, tasks)
}

#[tokio::test]
async fn an_address_answered_absent_is_not_asked_again_until_the_controller_pushes_it() {
    // The first connection asked and was answered "nothing there": remembered.
    let (mut resources, store, unknown, name, tasks) = store_with_a_miss(7).await;
    let on_demand = store.demand.get().expect("on demand");
    assert_eq!(store.on_demand_metrics.address_miss_hits.get(), 0);
    // The next ones do not ask (each returns at once, counted).
    for _ in 0..10 {
        let _lease = store
            .fetch_destination(unknown)
            .now_or_never()
            .expect("served from the miss, not asked")
            .expect("not crowded");
    }
    assert_eq!(store.on_demand_metrics.address_miss_hits.get(), 10);

    // A ServiceEntry created at the address is pushed (the miss stayed subscribed) and
    // served at once, not after the miss's memory.
    let mut later = mesh();
    later.push(external_service("new.example.com", [203, 0, 113, 7]));
    resources.replace_type(weft_proto::ADDRESS_TYPE_URL, later);
    assert!(
        until(&store, |s| s.service_by_vip(unknown).is_some()).await,
        "the new service was not pushed to the remembered miss"
    );
    let _lease = store
        .fetch_destination(unknown)
        .now_or_never()
        .expect("held, not asked")
        .expect("not crowded");
    assert_eq!(store.on_demand_metrics.address_miss_hits.get(), 10);
    // The sweep turns it into a fetched name, idling out like any.
    assert_eq!(store.release_idle(Duration::from_secs(3600)), 0);
    assert!(!on_demand.misses.lock().unwrap().contains_key(&name));
    assert!(on_demand.used.lock().unwrap().contains_key(&name));
    tasks.iter().for_each(JoinHandle::abort);
}

#[tokio::test]
async fn misses_are_bounded_and_unsubscribed_once_their_memory_runs_out() {
    let (mut resources, store, unknown, name, tasks) = store_with_a_miss(8).await;
    let on_demand = store.demand.get().expect("on demand");

    // Its memory ran out: the sweep unsubscribes it, and what appears there later is not
    // pushed; the next connection asks again.
    on_demand
        .misses
        .lock()
        .unwrap()
        .insert(name.clone(), tokio::time::Instant::now());
    assert!(!on_demand.remembers_miss(&name));
    store.release_idle(Duration::from_secs(3600));
    assert!(on_demand.misses.lock().unwrap().is_empty());
    // A demand after the release is answered after the server took the release (one
    // stream, in order).
    let _barrier = connect(&store, ip([10, 96, 0, 10])).await;
    assert!(store.service_by_vip(ip([10, 96, 0, 10])).is_some());
    let mut later = mesh();
    later.push(external_service("late.example.com", [203, 0, 113, 8]));
    resources.replace_type(weft_proto::ADDRESS_TYPE_URL, later);
    assert!(
        !until(&store, |s| s.service_by_vip(unknown).is_some()).await,
        "an expired miss stayed subscribed"
    );
    let _lease = connect(&store, unknown).await;
    assert!(store.service_by_vip(unknown).is_some(), "asked again");
    assert_eq!(store.on_demand_metrics.address_miss_hits.get(), 0);

    // At the bound, a new miss is not remembered (and not kept subscribed).
    {
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let mut misses = on_demand.misses.lock().unwrap();
        for n in 0..super::MAX_MISSES {
            misses.insert(format!("host:filler{n}.example.com"), far);
        }
    }
    let other = ip([203, 0, 113, 9]);
    let _lease = connect(&store, other).await;
    assert!(!on_demand.remembers_miss(&weft_proto::address_subscription("", other)));
    assert_eq!(on_demand.misses.lock().unwrap().len(), super::MAX_MISSES);
    tasks.iter().for_each(JoinHandle::abort);
}

/// A server of [`mesh`] and `entry`, and an on-demand store of node n1 that asked for what a
/// query for `name` from `shop` may mean: the store, the names asked, and the IPv4 address
/// answered, if the query is answered from the store.
async fn dns_fetch(
    entry: StoredResource,
    name: &str,
) -> (
    WorkloadStore,
    Vec<String>,
    Option<Ipv4Addr>,
    [JoinHandle<()>; 2],
) {
    use hickory_proto::op::{Message as DnsMessage, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::str::FromStr;

    let mut resources = ResourceStore::new();
    let mut with_entry = mesh();
    with_entry.push(entry);
    resources.replace_type(weft_proto::ADDRESS_TYPE_URL, with_entry);
    let (store, tasks) = on_demand_store(&resources).await;
    assert!(until(&store, |s| s.workload_by_uid("client").is_some()).await);

    let mut message = DnsMessage::query();
    message.add_query(Query::query(
        Name::from_str(&format!("{name}.")).unwrap(),
        RecordType::A,
    ));
    let packet = message.to_vec().unwrap();
    let reply = || crate::dns_proxy::reply(&store, "shop", "cluster.local", &packet);
    assert_eq!(reply(), crate::dns_proxy::Reply::Forward, "held up front");
    let names = crate::dns_proxy::demand_names(&packet, "shop", "cluster.local");
    tokio::time::timeout(ANSWERED_WITHIN, store.fetch_hostnames(&names))
        .await
        .expect("answered, not waited out");
    let answered = match reply() {
        crate::dns_proxy::Reply::Answer(bytes) | crate::dns_proxy::Reply::Wildcard(bytes) => {
            let answer = DnsMessage::from_vec(&bytes).unwrap();
            match &answer.answers[..] {
                [record] => match &record.data {
                    RData::A(a) => Some(a.0),
                    other => panic!("not an A record: {other:?}"),
                },
                records => panic!("not one record: {records:?}"),
            }
        }
        crate::dns_proxy::Reply::Forward => None,
    };
    (store, names, answered, tasks)
}

/// A name under a wildcard ServiceEntry host is asked for once, by itself, at any depth: the
/// controller answers it with the wildcard host, which the agent then holds it by.
#[tokio::test]
async fn a_dns_query_fetches_the_wildcard_service_entry_host_covering_it() {
    for name in ["api.wild.example", "a.b.c.d.e.f.wild.example"] {
        // As the controller names a wildcard ServiceEntry host: by `host:*.<suffix>`.
        let entry = external_service("*.wild.example", [240, 240, 0, 9]);
        let (store, names, answered, tasks) = dns_fetch(entry, name).await;
        let asked = format!("host:{name}");
        assert_eq!(names, std::slice::from_ref(&asked), "one name asked");
        assert_eq!(answered, Some(Ipv4Addr::new(240, 240, 0, 9)), "{name}");
        let on_demand = store.demand.get().expect("on demand");
        assert!(
            on_demand.used.lock().unwrap().contains_key(&asked),
            "{name}"
        );
        assert!(!on_demand.remembers_miss(&asked), "{name}: not a miss");
        tasks.iter().for_each(JoinHandle::abort);
    }
}

/// The A record the store answers a query for `name` from `shop` with, and whether it was
/// found by a wildcard host covering the name; the query's demand names.
fn wildcard_answer(store: &WorkloadStore, name: &str) -> (Option<(Ipv4Addr, bool)>, Vec<String>) {
    use crate::dns_proxy::Reply;
    use hickory_proto::op::{Message as DnsMessage, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::str::FromStr;

    let mut message = DnsMessage::query();
    message.add_query(Query::query(
        Name::from_str(&format!("{name}.")).unwrap(),
        RecordType::A,
    ));
    let packet = message.to_vec().unwrap();
    let names = crate::dns_proxy::demand_names(&packet, "shop", "cluster.local");
    let (bytes, wildcard) = match crate::dns_proxy::reply(store, "shop", "cluster.local", &packet) {
        Reply::Answer(bytes) => (bytes, false),
        Reply::Wildcard(bytes) => (bytes, true),
        Reply::Forward => return (None, names),
    };
    let answer = DnsMessage::from_vec(&bytes).unwrap();
    let [record] = &answer.answers[..] else {
        panic!("not one record: {:?}", answer.answers);
    };
    let RData::A(a) = &record.data else {
        panic!("not an A record: {record:?}");
    };
    (Some((a.0, wildcard)), names)
}

/// An agent already holding a less specific wildcard host (`*.example.com`) asks for a name
/// under a more specific one (`*.foo.example.com`) before answering from it: Istio answers
/// with the most specific wildcard host covering a name. The answer stands for later queries
/// (the name kept subscribed), also when nothing more specific exists: one request per name.
#[tokio::test]
async fn a_name_under_a_held_wildcard_is_asked_once_for_the_most_specific_wildcard() {
    let mut resources = ResourceStore::new();
    let mut with_entries = mesh();
    with_entries.push(external_service("*.example.com", [240, 240, 0, 9]));
    with_entries.push(external_service("*.foo.example.com", [240, 240, 0, 11]));
    resources.replace_type(weft_proto::ADDRESS_TYPE_URL, with_entries);
    let (store, tasks) = on_demand_store(&resources).await;
    assert!(until(&store, |s| s.workload_by_uid("client").is_some()).await);
    let asked = || store.on_demand_metrics.asked_hostnames.get();
    let fetch = |names: Vec<String>| {
        let store = store.clone();
        async move {
            tokio::time::timeout(ANSWERED_WITHIN, store.fetch_hostnames(&names))
                .await
                .expect("answered, not waited out");
        }
    };
    let (general, specific) = (
        Ipv4Addr::new(240, 240, 0, 9),
        Ipv4Addr::new(240, 240, 0, 11),
    );

    // The less specific wildcard, fetched for a first name.
    let (_, names) = wildcard_answer(&store, "b.example.com");
    fetch(names).await;
    assert_eq!(
        wildcard_answer(&store, "b.example.com").0,
        Some((general, true))
    );
    assert_eq!(asked(), 1);

    // A name under the more specific one: the store alone would answer the held one.
    let (held, names) = wildcard_answer(&store, "a.foo.example.com");
    assert_eq!(held, Some((general, true)));
    assert!(store.unasked_hostnames(&names), "asked before answering");
    fetch(names.clone()).await;
    assert_eq!(asked(), 2);
    assert_eq!(
        wildcard_answer(&store, "a.foo.example.com").0,
        Some((specific, true)),
        "the most specific wildcard host"
    );
    // Answered once: later queries are answered from the store.
    assert!(!store.unasked_hostnames(&names));
    fetch(names).await;
    assert_eq!(asked(), 2, "asked again");

    // Nothing more specific at the controller: the held wildcard stands, asked once.
    let (_, names) = wildcard_answer(&store, "a.bar.example.com");
    assert!(store.unasked_hostnames(&names));
    fetch(names.clone()).await;
    assert_eq!(asked(), 3);
    assert_eq!(
        wildcard_answer(&store, "a.bar.example.com").0,
        Some((general, true))
    );
    assert!(!store.unasked_hostnames(&names));
    fetch(names).await;
    assert_eq!(asked(), 3, "asked again");
    tasks.iter().for_each(JoinHandle::abort);
}

#[tokio::test]
async fn a_dns_query_fetches_a_service_entry_declaring_a_kubernetes_host_of_another_namespace() {
    // Declared in namespace `egress`, its host names namespace `b`.
    let entry = external_service("foo.b.svc.cluster.local", [240, 240, 0, 10]);
    let (_store, names, answered, tasks) = dns_fetch(entry, "foo.b.svc.cluster.local").await;
    assert_eq!(
        answered,
        Some(Ipv4Addr::new(240, 240, 0, 10)),
        "not fetched by {names:?}"
    );
    tasks.iter().for_each(JoinHandle::abort);
}

/// A discovery server that takes every request and answers none, reporting each name
/// subscribed: demands for one name pile up behind the first.
struct SilentAds {
    subscribed: tokio::sync::mpsc::UnboundedSender<String>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for SilentAds {
    type DeltaAggregatedResourcesStream =
        tokio_stream::wrappers::ReceiverStream<Result<DeltaDiscoveryResponse, tonic::Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let mut requests = request.into_inner();
        let (responses, stream) = tokio::sync::mpsc::channel(1);
        let subscribed = self.subscribed.clone();
        tokio::spawn(async move {
            let _responses = responses;
            while let Ok(Some(request)) = requests.message().await {
                for name in request.resource_names_subscribe {
                    let _ = subscribed.send(name);
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(stream),
        ))
    }
}

/// Whether the silent server is asked for `wanted` within the bound.
async fn saw(names: &mut tokio::sync::mpsc::UnboundedReceiver<String>, wanted: String) -> bool {
    tokio::time::timeout(ANSWERED_WITHIN, async {
        while let Some(name) = names.recv().await {
            if name == wanted {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

#[tokio::test]
async fn connections_beyond_the_waiters_bound_for_one_name_are_refused_and_counted() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (subscribed, mut names) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(SilentAds {
                subscribed,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    let (store, agent) = agent_of(address);
    assert!(
        saw(&mut names, "node:n1".to_string()).await,
        "the stream opened"
    );

    // Connections to one unknown address, in batches the demand queue takes whole; each
    // batch is followed by a connection to another address, whose request reaching the
    // server shows the client took the batch (the queue is in order).
    let unknown = ip([10, 9, 9, 9]);
    let mut waiting = Vec::new();
    let (mut marker, mut waiters) = (0u8, 0);
    while waiters < weft_xds::MAX_WAITERS_PER_NAME {
        let batch = (weft_xds::MAX_WAITERS_PER_NAME - waiters).min(200);
        waiters += batch;
        for _ in 0..batch {
            let store = store.clone();
            waiting.push(tokio::spawn(async move {
                store.fetch_destination(unknown).await.map(drop)
            }));
        }
        marker += 1;
        let other = ip([10, 8, 0, marker]);
        let store = store.clone();
        waiting.push(tokio::spawn(async move {
            store.fetch_destination(other).await.map(drop)
        }));
        assert!(
            saw(&mut names, weft_proto::address_subscription("", other)).await,
            "batch {marker} was not taken"
        );
    }
    // Markers wait for their own names: the unknown address has its full count of waiters.
    let refused = tokio::time::timeout(ANSWERED_WITHIN, store.fetch_destination(unknown))
        .await
        .expect("refused at once, not after the wait");
    assert_eq!(refused.err(), Some(Crowded("/10.9.9.9".to_string())));
    assert_eq!(store.on_demand_metrics.refused_connections.get(), 1);
    for task in waiting {
        assert!(!task.is_finished(), "a waiter was refused or answered");
        task.abort();
    }
    agent.abort();
    server.abort();
}
