//! The DNS proxy's answers (ztunnel's cases: full and short Kubernetes names, search domains,
//! ServiceEntry hosts, wildcards, families), forwarding, and the bounds a pod is held to.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

use super::{
    server::{self, DnsSettings, RateLimiter, nameservers},
    *,
};
use crate::{
    netns::PodNetns,
    state::{LoadBalancingMode, Service, TunnelProtocol, WorkloadStore},
    testing::workload,
};

fn service(namespace: &str, hostname: &str, vips: &[&str]) -> Service {
    Service {
        name: hostname.split('.').next().unwrap().into(),
        namespace: namespace.into(),
        hostname: hostname.into(),
        vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
        ports: BTreeMap::from([(80, 8080)]),
        subject_alt_names: vec![],
        waypoint: None,
        load_balancing: LoadBalancingMode::Standard,
        routing_preferences: vec![],
        allow_unhealthy: false,
    }
}

fn store() -> WorkloadStore {
    let store = WorkloadStore::new();
    store.insert_service(service(
        "shop",
        "orders.shop.svc.cluster.local",
        &["10.96.0.10"],
    ));
    store.insert_service(service(
        "bank",
        "ledger.bank.svc.cluster.local",
        &["10.96.0.20"],
    ));
    // The same hostname in two namespaces: the client's own wins.
    store.insert_service(service(
        "shop",
        "api.example.com",
        &["240.240.0.7", "2001:2::7"],
    ));
    store.insert_service(service("bank", "api.example.com", &["240.240.0.8"]));
    store.insert_service(service("shop", "*.wild.example.com", &["10.0.0.99"]));
    // No VIP and not a Kubernetes Service: never answered (an entry without addresses).
    store.insert_service(service("shop", "novip.example.com", &[]));
    // Kubernetes headless services, and their pods with a hostname (a StatefulSet's).
    store.insert_service(service("shop", "db.shop.svc.cluster.local", &[]));
    store.insert_service(service("bank", "db.bank.svc.cluster.local", &[]));
    for (name, namespace, addresses) in [
        ("db-0", "shop", &["10.1.0.30", "fd00::30"][..]),
        ("db-1", "shop", &["10.1.0.31"][..]),
        ("db-0", "bank", &["10.2.0.30"][..]),
    ] {
        let mut pod = workload(
            &format!("{name}-{namespace}"),
            namespace,
            "db",
            "node1",
            addresses[0].parse().unwrap(),
            TunnelProtocol::Hbone,
        );
        pod.addresses = addresses.iter().map(|a| a.parse().unwrap()).collect();
        pod.hostname = name.into();
        pod.services.insert(
            crate::state::NamespacedHostname {
                namespace: namespace.into(),
                hostname: format!("db.{namespace}.svc.cluster.local"),
            },
            BTreeMap::from([(5432, 5432)]),
        );
        store.insert_workload(pod);
    }
    store
}

fn query(name: &str, record_type: RecordType) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = 4242;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_str(name).unwrap(), record_type));
    message.to_vec().unwrap()
}

/// A response's code and records as (owner, "A 1.2.3.4" / "CNAME x.").
type Answered = (ResponseCode, Vec<(String, String)>);

/// The answer to `name`, `None` when forwarded.
fn answered(name: &str, record_type: RecordType) -> Option<Answered> {
    let (Reply::Answer(bytes) | Reply::Wildcard(bytes)) =
        reply(&store(), "shop", "cluster.local", &query(name, record_type))
    else {
        return None;
    };
    let message = Message::from_vec(&bytes).unwrap();
    assert_eq!(message.metadata.id, 4242);
    assert!(message.metadata.authoritative);
    assert!(message.metadata.recursion_desired);
    assert_eq!(message.queries.len(), 1);
    let records = message
        .answers
        .iter()
        .map(|r| {
            assert_eq!(r.ttl, TTL_SECONDS);
            let data = match &r.data {
                RData::A(a) => format!("A {}", a.0),
                RData::AAAA(a) => format!("AAAA {}", a.0),
                RData::CNAME(c) => format!("CNAME {}", c.0),
                other => format!("{other:?}"),
            };
            (r.name.to_ascii(), data)
        })
        .collect();
    Some((message.metadata.response_code, records))
}

fn a(owner: &str, data: &str) -> (String, String) {
    (owner.to_owned(), data.to_owned())
}

#[test]
fn mesh_names_are_answered_as_ztunnel_answers_them() {
    let ok = ResponseCode::NoError;
    let cases: Vec<(&str, RecordType, Option<Answered>)> = vec![
        // A Kubernetes Service: its full name, and the short forms of the client's namespace.
        (
            "orders.shop.svc.cluster.local.",
            RecordType::A,
            Some((
                ok,
                vec![a("orders.shop.svc.cluster.local.", "A 10.96.0.10")],
            )),
        ),
        (
            "orders.",
            RecordType::A,
            Some((ok, vec![a("orders.", "A 10.96.0.10")])),
        ),
        (
            "orders.shop.",
            RecordType::A,
            Some((ok, vec![a("orders.shop.", "A 10.96.0.10")])),
        ),
        (
            "orders.shop.svc.",
            RecordType::A,
            Some((ok, vec![a("orders.shop.svc.", "A 10.96.0.10")])),
        ),
        // Another namespace's service: by name.namespace, never by its short name.
        (
            "ledger.bank.",
            RecordType::A,
            Some((ok, vec![a("ledger.bank.", "A 10.96.0.20")])),
        ),
        ("ledger.", RecordType::A, None),
        // A name the client's resolver completed with a search domain: a CNAME to the name.
        (
            "api.example.com.shop.svc.cluster.local.",
            RecordType::A,
            Some((
                ok,
                vec![
                    a(
                        "api.example.com.shop.svc.cluster.local.",
                        "CNAME api.example.com.",
                    ),
                    a("api.example.com.", "A 240.240.0.7"),
                ],
            )),
        ),
        (
            "orders.shop.shop.svc.cluster.local.",
            RecordType::A,
            Some((
                ok,
                vec![
                    a("orders.shop.shop.svc.cluster.local.", "CNAME orders.shop."),
                    a("orders.shop.", "A 10.96.0.10"),
                ],
            )),
        ),
        // A ServiceEntry host: the client's namespace's entry; both families.
        (
            "api.example.com.",
            RecordType::A,
            Some((ok, vec![a("api.example.com.", "A 240.240.0.7")])),
        ),
        (
            "API.Example.COM.",
            RecordType::AAAA,
            Some((ok, vec![a("api.example.com.", "AAAA 2001:2::7")])),
        ),
        // Found without an address of the family: NOERROR and no record, not NXDOMAIN.
        (
            "orders.shop.svc.cluster.local.",
            RecordType::AAAA,
            Some((ok, vec![])),
        ),
        // A wildcard host answers the names under it, as asked (no CNAME).
        (
            "x.wild.example.com.",
            RecordType::A,
            Some((ok, vec![a("x.wild.example.com.", "A 10.0.0.99")])),
        ),
        (
            "x.wild.example.com.svc.cluster.local.",
            RecordType::A,
            Some((
                ok,
                vec![a("x.wild.example.com.svc.cluster.local.", "A 10.0.0.99")],
            )),
        ),
        // A headless service: its pods' addresses, one of the family asked per pod.
        (
            "db.shop.svc.cluster.local.",
            RecordType::A,
            Some((
                ok,
                vec![
                    a("db.shop.svc.cluster.local.", "A 10.1.0.30"),
                    a("db.shop.svc.cluster.local.", "A 10.1.0.31"),
                ],
            )),
        ),
        (
            "db.",
            RecordType::AAAA,
            Some((ok, vec![a("db.", "AAAA fd00::30")])),
        ),
        // A pod of a headless service by its hostname, in full and in the short forms.
        (
            "db-0.db.shop.svc.cluster.local.",
            RecordType::A,
            Some((
                ok,
                vec![a("db-0.db.shop.svc.cluster.local.", "A 10.1.0.30")],
            )),
        ),
        (
            "db-0.db.shop.svc.cluster.local.",
            RecordType::AAAA,
            Some((
                ok,
                vec![a("db-0.db.shop.svc.cluster.local.", "AAAA fd00::30")],
            )),
        ),
        (
            "db-1.db.",
            RecordType::A,
            Some((ok, vec![a("db-1.db.", "A 10.1.0.31")])),
        ),
        (
            "db-0.db.bank.",
            RecordType::A,
            Some((ok, vec![a("db-0.db.bank.", "A 10.2.0.30")])),
        ),
        (
            "db-0.db.bank.svc.",
            RecordType::A,
            Some((ok, vec![a("db-0.db.bank.svc.", "A 10.2.0.30")])),
        ),
        // A hostname no pod of the service has: upstream's.
        ("db-9.db.shop.svc.cluster.local.", RecordType::A, None),
        // Upstream's: unknown names, services without VIPs, other record types.
        ("www.example.org.", RecordType::A, None),
        ("novip.example.com.", RecordType::A, None),
        ("orders.shop.svc.cluster.local.", RecordType::TXT, None),
        ("orders.shop.svc.cluster.local.", RecordType::MX, None),
    ];
    for (name, record_type, expected) in cases {
        assert_eq!(
            answered(name, record_type),
            expected,
            "{name} {record_type}"
        );
    }
}

#[test]
fn anything_but_one_plain_question_is_forwarded() {
    let store = store();
    assert_eq!(
        reply(&store, "shop", "cluster.local", b"\x01"),
        Reply::Forward
    );
    let mut two = Message::from_vec(&query("orders.", RecordType::A)).unwrap();
    two.add_query(Query::query(
        Name::from_str("ledger.bank.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        reply(&store, "shop", "cluster.local", &two.to_vec().unwrap()),
        Reply::Forward
    );
    let mut response = Message::from_vec(&query("orders.", RecordType::A)).unwrap();
    response.metadata.message_type = hickory_proto::op::MessageType::Response;
    assert_eq!(
        reply(&store, "shop", "cluster.local", &response.to_vec().unwrap()),
        Reply::Forward
    );
}

#[test]
fn an_on_demand_agent_asks_for_the_names_a_query_may_mean() {
    let names = |name: &str, record_type: RecordType| {
        demand_names(&query(name, record_type), "shop", "cluster.local")
    };
    let cases: [(&str, RecordType, &[&str]); 12] = [
        // A Kubernetes Service by its hostname (covering a ServiceEntry declaring it in
        // any namespace), however completed.
        (
            "cart.shop.svc.cluster.local",
            RecordType::A,
            &["host:cart.shop.svc.cluster.local"],
        ),
        (
            "ledger.bank.svc.cluster.local.",
            RecordType::AAAA,
            &["host:ledger.bank.svc.cluster.local"],
        ),
        ("cart", RecordType::A, &["host:cart.shop.svc.cluster.local"]),
        (
            "ledger.bank",
            RecordType::A,
            &["host:ledger.bank", "host:ledger.bank.svc.cluster.local"],
        ),
        // A headless service's pod: its service.
        (
            "db-0.db.bank.svc.cluster.local",
            RecordType::A,
            &["host:db.bank.svc.cluster.local"],
        ),
        // Any other name by its hostname (a ServiceEntry host, of any namespace), alone at
        // any depth: the controller answers it with the wildcard host covering it.
        ("api.example.com", RecordType::A, &["host:api.example.com"]),
        (
            "a.b.c.d.e.example.com",
            RecordType::A,
            &["host:a.b.c.d.e.example.com"],
        ),
        // Two labels: a hostname, or a service and its namespace.
        (
            "example.com",
            RecordType::A,
            &["host:example.com", "host:example.com.svc.cluster.local"],
        ),
        // Under the cluster domain in no Kubernetes form, a single label with no
        // completion, another type: nothing to ask.
        ("www.example.com.shop.svc.cluster.local", RecordType::A, &[]),
        ("node1.cluster.local", RecordType::A, &[]),
        ("api.example.com", RecordType::MX, &[]),
        ("api.example.com", RecordType::TXT, &[]),
    ];
    for (name, record_type, expected) in cases {
        assert_eq!(names(name, record_type), expected, "{name} {record_type}");
    }
    assert!(demand_names(b"not dns", "shop", "cluster.local").is_empty());
}

#[test]
fn a_removed_service_is_no_longer_answered() {
    let store = store();
    store.remove_service(&crate::state::NamespacedHostname {
        namespace: "shop".into(),
        hostname: "orders.shop.svc.cluster.local".into(),
    });
    assert_eq!(
        reply(
            &store,
            "shop",
            "cluster.local",
            &query("orders.", RecordType::A)
        ),
        Reply::Forward
    );
}

#[test]
fn nameservers_are_read_as_glibc_reads_them() {
    let text = "# comment\nsearch shop.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\nnameserver fe80::1%eth0\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n";
    assert_eq!(
        nameservers(text),
        vec![
            "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
            "[fd00::a]:53".parse().unwrap(),
            "1.1.1.1:53".parse().unwrap(),
        ]
    );
}

#[test]
fn the_rate_limiter_admits_a_burst_then_the_rate() {
    let start = tokio::time::Instant::now();
    let mut limiter = RateLimiter::new(10, start);
    assert_eq!((0..20).filter(|_| limiter.admit(start)).count(), 10);
    let later = start + Duration::from_millis(500);
    assert_eq!((0..20).filter(|_| limiter.admit(later)).count(), 5);
}

// ---- the server, in a network namespace of its own ----

/// A fresh network namespace (lo up), kept open by a parked thread, as a pod's.
fn private_netns() -> (PodNetns, std::path::PathBuf) {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare a network namespace (run the tests as root)");
        std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap();
        let tid = nix::unistd::gettid();
        sender
            .send(std::path::PathBuf::from(format!(
                "/proc/self/task/{tid}/ns/net"
            )))
            .unwrap();
        std::thread::park();
    });
    let path = receiver.recv().unwrap();
    let netns = PodNetns::open(&path, PodNetns::current().unwrap()).unwrap();
    (netns, path)
}

/// An upstream resolver at `127.0.0.1:53` of `netns` that answers every query with `192.0.2.1` after `delay`,
/// counting what it received.
async fn upstream(
    netns: &PodNetns,
    delay: Duration,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let socket = netns
        .run(|| std::net::UdpSocket::bind("127.0.0.1:53"))
        .unwrap()
        .unwrap();
    socket.set_nonblocking(true).unwrap();
    let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
    let address = socket.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let socket = Arc::new(socket);
        let mut buffer = [0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buffer).await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut message = Message::from_vec(&buffer[..n]).unwrap();
            message.metadata.message_type = hickory_proto::op::MessageType::Response;
            let name = message.queries[0].name().clone();
            message.add_answer(hickory_proto::rr::Record::from_rdata(
                name,
                60,
                RData::A(hickory_proto::rr::rdata::A("192.0.2.1".parse().unwrap())),
            ));
            let bytes = message.to_vec().unwrap();
            let socket = socket.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = socket.send_to(&bytes, from).await;
            });
        }
    });
    (address, count)
}

struct Proxy {
    _dns: server::PodDns,
    client: tokio::net::UdpSocket,
    registry: prometheus_client::registry::Registry,
}

impl Proxy {
    /// The value of the sample of `family` whose labels contain every one of `labels`.
    fn sample(&self, family: &str, labels: &[&str]) -> Option<f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .find(|l| labels.iter().all(|label| l.contains(label)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

/// The proxy of pod `uid-client` (namespace `shop`) at 127.0.0.1:15053 and [::1]:15053 of
/// `netns`, forwarding to `upstream`, and a client socket beside it (IPv4).
async fn proxy(netns: &PodNetns, upstream: SocketAddr, dir: &std::path::Path) -> Proxy {
    let store = store();
    store.insert_workload(workload(
        "client",
        "shop",
        "client",
        "node1",
        "10.1.0.5".parse::<IpAddr>().unwrap(),
        TunnelProtocol::Hbone,
    ));
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {}\n", upstream.ip())).unwrap();
    let settings = Arc::new(DnsSettings::new("cluster.local".into(), resolv));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(crate::metrics::Metrics::new(&mut registry));
    let dns = server::start_on(
        store,
        settings,
        metrics,
        "uid-client".into(),
        netns.clone(),
        &[
            "127.0.0.1:15053".parse().unwrap(),
            "[::1]:15053".parse().unwrap(),
        ],
        &tokio::runtime::Handle::current(),
    )
    .unwrap();
    let client = netns
        .run(|| std::net::UdpSocket::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    client.set_nonblocking(true).unwrap();
    client.connect("127.0.0.1:15053").unwrap();
    Proxy {
        _dns: dns,
        client: tokio::net::UdpSocket::from_std(client).unwrap(),
        registry,
    }
}

async fn ask(client: &tokio::net::UdpSocket, name: &str) -> Option<Message> {
    client.send(&query(name, RecordType::A)).await.unwrap();
    let mut buffer = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), client.recv(&mut buffer))
        .await
        .ok()?
        .unwrap();
    Some(Message::from_vec(&buffer[..n]).unwrap())
}

#[tokio::test]
async fn the_server_answers_mesh_names_and_forwards_the_rest() {
    let dir = weft_test_support::temp::TempDir::new("dns-proxy");
    let (netns, _) = private_netns();
    let (upstream, count) = upstream(&netns, Duration::ZERO).await;
    let proxy = proxy(&netns, upstream, dir.path()).await;
    let local = ask(&proxy.client, "orders.").await.expect("an answer");
    assert_eq!(local.answers.len(), 1);
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a mesh name went upstream"
    );
    let forwarded = ask(&proxy.client, "www.example.org.")
        .await
        .expect("the upstream's answer");
    assert_eq!(forwarded.metadata.id, 4242);
    assert!(!forwarded.metadata.authoritative);
    assert!(matches!(&forwarded.answers[0].data, RData::A(a) if a.0.to_string() == "192.0.2.1"));
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    // ztunnel's DNS metrics: both queries counted, the second as forwarded and answered.
    let udp_a = [
        "request_query_type=\"a\"",
        "request_protocol=\"udp\"",
        "source_canonical_service=\"client\"",
    ];
    assert_eq!(proxy.sample("istio_dns_requests_total", &udp_a), Some(2.0));
    assert_eq!(
        proxy.sample("istio_dns_upstream_requests_total", &udp_a),
        Some(1.0)
    );
    assert_eq!(
        proxy.sample("istio_dns_upstream_failures_total", &udp_a),
        None
    );
    assert_eq!(
        proxy.sample("istio_dns_upstream_request_duration_seconds_count", &udp_a),
        Some(1.0)
    );
    // Oversized datagrams are dropped: the next query is still answered.
    proxy
        .client
        .send(&vec![0u8; server::MAX_MESSAGE + 1])
        .await
        .unwrap();
    assert!(ask(&proxy.client, "orders.").await.is_some());

    // Over IPv6 loopback, where the capture sends queries to IPv6 nameservers.
    let client6 = netns
        .run(|| std::net::UdpSocket::bind("[::1]:0"))
        .unwrap()
        .unwrap();
    client6.set_nonblocking(true).unwrap();
    client6.connect("[::1]:15053").unwrap();
    let client6 = tokio::net::UdpSocket::from_std(client6).unwrap();
    let local = ask(&client6, "orders.").await.expect("an answer over IPv6");
    assert_eq!(local.answers.len(), 1);
    let forwarded = ask(&client6, "www.example.org.")
        .await
        .expect("the upstream's answer over IPv6");
    assert!(matches!(&forwarded.answers[0].data, RData::A(a) if a.0.to_string() == "192.0.2.1"));
}

#[tokio::test]
async fn forwards_in_flight_are_bounded() {
    let dir = weft_test_support::temp::TempDir::new("dns-proxy");
    let (netns, _) = private_netns();
    // An upstream slower than the forward timeout keeps every forward in flight.
    let (upstream, _) = upstream(&netns, Duration::from_secs(10)).await;
    let proxy = proxy(&netns, upstream, dir.path()).await;
    for _ in 0..server::MAX_FORWARDS {
        proxy
            .client
            .send(&query("www.example.org.", RecordType::A))
            .await
            .unwrap();
    }
    // One more: refused at once with SERVFAIL, while the others wait for the upstream.
    let refused = ask(&proxy.client, "www.example.org.")
        .await
        .expect("an answer");
    assert_eq!(refused.metadata.response_code, ResponseCode::ServFail);
    // Mesh names are still answered.
    let mut buffer = [0u8; 4096];
    proxy
        .client
        .send(&query("orders.", RecordType::A))
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(1), proxy.client.recv(&mut buffer))
        .await
        .expect("a local answer while forwards are pending")
        .unwrap();
    let local = Message::from_vec(&buffer[..n]).unwrap();
    assert_eq!(local.answers.len(), 1, "{local:?}");
    // Each forward fails once its nameserver's time is up: counted as an upstream failure.
    let udp = ["request_protocol=\"udp\""];
    let failures = || proxy.sample("istio_dns_upstream_failures_total", &udp);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while failures() != Some(server::MAX_FORWARDS as f64) && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failures(), Some(server::MAX_FORWARDS as f64));
    assert_eq!(
        proxy.sample("istio_dns_requests_total", &udp),
        Some(server::MAX_FORWARDS as f64 + 2.0)
    );
}

#[tokio::test]
async fn queries_over_tcp_are_answered_and_forwarded_and_idle_connections_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = weft_test_support::temp::TempDir::new("dns-proxy");
    let (netns, _) = private_netns();
    // A TCP upstream at 127.0.0.1:53 answering one query per connection with 192.0.2.1.
    let listener = netns
        .run(|| std::net::TcpListener::bind("127.0.0.1:53"))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let length = usize::from(stream.read_u16().await.unwrap());
            let mut query = vec![0u8; length];
            stream.read_exact(&mut query).await.unwrap();
            let mut message = Message::from_vec(&query).unwrap();
            message.metadata.message_type = hickory_proto::op::MessageType::Response;
            let name = message.queries[0].name().clone();
            message.add_answer(hickory_proto::rr::Record::from_rdata(
                name,
                60,
                RData::A(hickory_proto::rr::rdata::A("192.0.2.1".parse().unwrap())),
            ));
            let bytes = message.to_vec().unwrap();
            stream.write_u16(bytes.len() as u16).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
        }
    });
    let proxy = proxy(&netns, "127.0.0.1:53".parse().unwrap(), dir.path()).await;
    let stream = netns
        .run(|| std::net::TcpStream::connect("127.0.0.1:15053"))
        .unwrap()
        .unwrap();
    stream.set_nonblocking(true).unwrap();
    let mut stream = tokio::net::TcpStream::from_std(stream).unwrap();
    let mut exchange = async |name: &str| {
        let bytes = query(name, RecordType::A);
        stream.write_u16(bytes.len() as u16).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        let length = usize::from(stream.read_u16().await.unwrap());
        let mut answer = vec![0u8; length];
        stream.read_exact(&mut answer).await.unwrap();
        Message::from_vec(&answer).unwrap()
    };
    // Both on one connection: a mesh name, then a name only the upstream knows.
    let local = exchange("orders.").await;
    assert!(matches!(&local.answers[0].data, RData::A(a) if a.0.to_string() == "10.96.0.10"));
    let forwarded = exchange("www.example.org.").await;
    assert!(matches!(&forwarded.answers[0].data, RData::A(a) if a.0.to_string() == "192.0.2.1"));
    // A length beyond the bound closes the connection.
    stream.write_u16(u16::MAX).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    drop(proxy);
}
