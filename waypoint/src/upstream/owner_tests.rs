//! Idle connections that carry a PROXY header are let go when their downstream connection
//! ends, looking only at that connection's pools: the work per new connection and per ended
//! downstream connection does not grow with the connections pooled for other downstream
//! connections.

use std::cell::Cell;

use super::*;
use crate::model::{LoadBalancer, Tunnel};

thread_local! {
    /// Pooled connections whose downstream connection was checked, on this thread.
    pub(super) static LOOKED_AT: Cell<usize> = const { Cell::new(0) };
}

fn proxied(endpoint: Endpoint) -> Cluster {
    Cluster {
        name: "outbound|80||web.shop.svc.cluster.local".to_owned(),
        host: "web.shop.svc.cluster.local".to_owned(),
        service: Arc::new(crate::model::service_of_host("web.shop.svc.cluster.local")),
        subset: String::new(),
        port: 80,
        endpoints: vec![endpoint],
        priorities: 1,
        locality_weights: Vec::new(),
        load_balancer: LoadBalancer::RoundRobin,
        slow_start: None,
        limits: crate::model::ConnectionLimits::default(),
        outlier: None,
        destination_rule: String::new(),
        hostnames: Vec::new(),
        tls: None,
        dynamic_dns: false,
        proxy_protocol: Some(ProxyProtocolVersion::V1),
        upstream_protocol: Default::default(),
        tcp_tunneling: None,
        plan: std::sync::OnceLock::new(),
    }
}

/// An HTTP/1.1 client connection over an in-memory pipe, whose other end `ends` keeps open.
async fn connection(ends: &mut Vec<tokio::io::DuplexStream>) -> H1Connection {
    let (client, server) = tokio::io::duplex(64);
    ends.push(server);
    let (sender, connection) = http1::handshake::<_, RequestBody>(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(connection);
    H1Connection {
        sender,
        uses: 1,
        owner: Weak::new(),
    }
}

/// Pools `connection` idle for `downstream`, as a request of it leaves it.
fn pool_for(upstream: &Upstream, cluster: &Cluster, downstream: &Downstream, mut c: H1Connection) {
    let key = PoolKey::new(cluster, &cluster.endpoints[0], downstream);
    c.owner = upstream.owner(cluster, downstream, &key);
    upstream.idle_http1(key, c);
}

/// With `live` downstream connections holding an idle PROXY-header connection each: the
/// pooled connections looked at while one more downstream connection opens a connection, uses
/// it and ends, and one of the others ends; and the idle connections left.
async fn looked_at(live: usize) -> (usize, usize) {
    let mesh = crate::testing::TestMesh::new();
    let upstream = Upstream::new(
        crate::testing::TestMesh::spiffe("shop", "waypoint"),
        mesh.material("shop", "waypoint").source(),
        default_hbone_address(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint {
        address: listener.local_addr().unwrap(),
        identity: None,
        principal: None,
        workload: Arc::clone(&OUTSIDE_THE_MESH),
        tunnel: Tunnel::Plain,
        tunnel_via: None,
        host: None,
        healthy: true,
        weight: 1,
        priority: 0,
        locality: 0,
    };
    let cluster = proxied(endpoint);
    let destination: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let client = |i: usize| {
        let port = u16::try_from(10_000 + i).unwrap();
        Downstream::new(SocketAddr::from(([10, 0, 0, 1], port)), destination)
    };
    let mut ends = Vec::new();
    let mut downstreams = Vec::new();
    for i in 0..live {
        let downstream = client(i);
        let c = connection(&mut ends).await;
        pool_for(&upstream, &cluster, &downstream, c);
        downstreams.push(downstream);
    }
    LOOKED_AT.with(|n| n.set(0));
    let another = client(live);
    let _stream = upstream
        .open_stream(&cluster, &cluster.endpoints[0], &another)
        .await
        .unwrap();
    let c = connection(&mut ends).await;
    pool_for(&upstream, &cluster, &another, c);
    drop(another);
    drop(downstreams.swap_remove(0));
    let looked = LOOKED_AT.with(Cell::get);
    let idle: usize = lock(&upstream.pools().http1).values().map(Vec::len).sum();
    (looked, idle)
}

#[tokio::test]
async fn an_ended_downstream_connection_looks_only_at_its_own_pooled_connections() {
    let (small, large) = (looked_at(10).await, looked_at(1_000).await);
    // Each ended downstream connection looks at its one connection; the others stay pooled.
    assert_eq!(small, (2, 9), "10 live downstream connections");
    assert_eq!(large, (2, 999), "1,000 live downstream connections");
}
