use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
};

use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
    proto::{
        op::{Message, OpCode},
        rr::{RData, Record, RecordType, rdata::A},
    },
};
use tokio::net::UdpSocket;

use std::{net::IpAddr, time::Duration};

use hickory_resolver::{TokioResolver, config::LookupIpStrategy};
use tokio::time::Instant;
use weft_proxy_core::dns::{
    Answer, MAX_REFRESH, MIN_REFRESH, lookup, refresh_after, system_resolver,
};

use crate::state::{TunnelProtocol, WorkloadStore};

/// The shared resolution loop over the agent's store.
async fn resolve_with<F, R>(store: WorkloadStore, resolve: F)
where
    F: Fn(String) -> R,
    R: std::future::Future<Output = Result<Answer, String>>,
{
    let changes = store.subscribe();
    weft_proxy_core::dns::resolve_with(store, changes, resolve).await;
}

fn by_name(name: &str, hostname: &str) -> crate::state::Workload {
    let mut workload = crate::testing::workload(
        name,
        "shop",
        "default",
        "",
        "192.0.2.1".parse().unwrap(),
        TunnelProtocol::None,
    );
    workload.addresses.clear();
    workload.hostname = hostname.into();
    workload
}

fn answer(address: &str, ttl: Duration) -> Answer {
    Answer {
        addresses: vec![address.parse().unwrap()],
        ttl,
    }
}

#[test]
fn the_ttl_sets_the_refresh_within_bounds() {
    let cases = [
        (Duration::ZERO, MIN_REFRESH),
        (Duration::from_millis(300), MIN_REFRESH),
        (Duration::from_secs(7), Duration::from_secs(7)),
        (MAX_REFRESH, MAX_REFRESH),
        // A day, or a hosts-file entry (hickory gives those its longest TTL).
        (Duration::from_secs(86_400), MAX_REFRESH),
        (Duration::from_secs(u64::from(u32::MAX)), MAX_REFRESH),
    ];
    for (ttl, expected) in cases {
        assert_eq!(refresh_after(ttl), expected, "{ttl:?}");
    }
}

#[tokio::test]
async fn names_resolve_through_the_system_resolver() {
    // From the hosts file: no query leaves the machine.
    let resolver = system_resolver().expect("the system's resolver configuration");
    let answer = lookup(&resolver, "localhost")
        .await
        .expect("localhost resolves");
    assert!(
        answer.addresses.iter().all(IpAddr::is_loopback),
        "{answer:?}"
    );
    assert!(answer.addresses[0].is_ipv4(), "{answer:?}");
    assert_eq!(refresh_after(answer.ttl), MAX_REFRESH, "{answer:?}");
}

#[tokio::test]
async fn failures_keep_the_last_answer_and_unused_names_are_forgotten() {
    let store = WorkloadStore::new();
    let last_good: IpAddr = "192.0.2.7".parse().unwrap();
    // Looked up before `b.example` (names go in order), so failed once `b.example` is known.
    store.insert_workload(by_name("failing", "a.example"));
    store.insert_workload(by_name("answering", "b.example"));
    store.set_resolved("a.example", vec![last_good]);
    store.set_resolved("nobody.example", vec![last_good]);
    let task = tokio::spawn(resolve_with(store.clone(), |name| async move {
        match name.as_str() {
            "b.example" => Ok(answer("192.0.2.8", MAX_REFRESH)),
            _ => Err("refused".to_string()),
        }
    }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.resolved_address("b.example").is_none()
        || store.resolved_address("nobody.example").is_some()
    {
        assert!(Instant::now() < deadline, "the names were not resolved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        store.resolved_address("b.example"),
        Some("192.0.2.8".parse().unwrap())
    );
    assert_eq!(store.resolved_address("a.example"), Some(last_good));
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn each_name_is_resolved_again_when_its_ttl_runs_out() {
    // Paused time: the minute below passes at once, and exactly.
    let store = WorkloadStore::new();
    let ttls = [
        ("short.example", Duration::from_secs(5)),
        ("long.example", Duration::from_secs(3600)),
        ("zero.example", Duration::ZERO),
    ];
    for (name, _) in ttls {
        store.insert_workload(by_name(name, name));
    }
    let lookups: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counted = lookups.clone();
    let task = tokio::spawn(resolve_with(store.clone(), move |name| {
        let counted = counted.clone();
        async move {
            *counted.lock().unwrap().entry(name.clone()).or_default() += 1;
            let ttl = ttls.iter().find(|(n, _)| *n == name).unwrap().1;
            Ok(answer("192.0.2.9", ttl))
        }
    }));
    tokio::time::sleep(Duration::from_millis(59_500)).await;
    let lookups = lookups.lock().unwrap().clone();
    task.abort();
    // At 0, 5, ..., 55 s; at 0 only (the next is at the 60 s bound); at every second.
    assert_eq!(lookups["short.example"], 12, "{lookups:?}");
    assert_eq!(lookups["long.example"], 1, "{lookups:?}");
    assert_eq!(lookups["zero.example"], 60, "{lookups:?}");
}

/// A DNS server on loopback answering every A query with `192.0.2.<n>` for its n-th query,
/// valid for `ttl` seconds, and AAAA queries with nothing.
async fn dns_server(ttl: u32) -> (SocketAddr, Arc<AtomicU8>, tokio::task::JoinHandle<()>) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = socket.local_addr().unwrap();
    let queries = Arc::new(AtomicU8::new(0));
    let counted = queries.clone();
    let task = tokio::spawn(async move {
        let mut buffer = [0; 512];
        loop {
            let Ok((length, from)) = socket.recv_from(&mut buffer).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buffer[..length]) else {
                continue;
            };
            let mut reply = Message::response(query.metadata.id, OpCode::Query);
            reply.metadata.recursion_desired = query.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            for question in &query.queries {
                reply.queries.push(question.clone());
                if question.query_type() == RecordType::A {
                    let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                    reply.add_answer(Record::from_rdata(
                        question.name().clone(),
                        ttl,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, n))),
                    ));
                }
            }
            let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
        }
    });
    (address, queries, task)
}

fn resolver_at(server: SocketAddr) -> TokioResolver {
    let mut connection = ConnectionConfig::udp();
    connection.port = server.port();
    let config = ResolverConfig::from_parts(
        None,
        vec![],
        vec![NameServerConfig::new(server.ip(), true, vec![connection])],
    );
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build().unwrap()
}

#[tokio::test]
async fn a_dns_answer_is_replaced_once_its_ttl_runs_out() {
    // A real query over UDP: the answer's TTL (1 s) is what the lookup reports, and the store
    // holds the next answer soon after, long before a fixed refresh would ask again.
    let (server, queries, server_task) = dns_server(1).await;
    let resolver = resolver_at(server);
    let first = lookup(&resolver, "api.example.test.").await.unwrap();
    assert_eq!(first.addresses, vec![IpAddr::from([192, 0, 2, 1])]);
    assert!(first.ttl <= Duration::from_secs(1), "{first:?}");

    let store = WorkloadStore::new();
    store.insert_workload(by_name("api", "api.example.test."));
    let task = tokio::spawn(resolve_with(store.clone(), move |name| {
        let resolver = resolver.clone();
        async move { lookup(&resolver, &name).await }
    }));
    let started = Instant::now();
    let seen = queries.load(Ordering::SeqCst);
    let deadline = started + Duration::from_secs(10);
    loop {
        let now_answered = store.resolved_address("api.example.test.");
        // A later query's answer than the test's own lookup.
        if now_answered.is_some_and(|a| matches!(a, IpAddr::V4(v4) if v4.octets()[3] > seen)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not resolved again after its TTL: {now_answered:?}, {} queries",
            queries.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() < MAX_REFRESH);
    task.abort();
    server_task.abort();
}
