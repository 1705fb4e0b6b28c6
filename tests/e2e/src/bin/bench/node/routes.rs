//! A waypoint's route table at three sizes, in this process with the waypoint's own code: a
//! generated `WaypointConfig` of `services` services, half of them routed by a VirtualService
//! of [`ROUTES_PER_ROUTED_SERVICE`] routes, half by plain service routing (no VirtualService),
//! so the whole table holds 10 routes per service. Per size: the time the store takes to
//! validate, convert and publish the configuration (the first one, then a replacement), the
//! memory it holds, and the cost of the routing decision per request, for a routed and for a
//! plain service: the steps the request pipeline takes, `target_for` (the tunnel's
//! `:authority`), `select_route` over the service's routes, then the cluster (the route's
//! destination, or the service's default cluster).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message;
use waypoint::model::RouteAction;
use waypoint::model::Target;
use weft_policy::route::{RequestView, select_route};
use weft_proto::waypoint as proto;

/// Routes of each routed service; the plain half has none, so a table has 10 per service.
pub const ROUTES_PER_ROUTED_SERVICE: usize = 20;
/// Endpoints of each service's cluster.
const ENDPOINTS: usize = 3;
/// Service counts of the curve; a quick run takes the first.
pub const SERVICES: [usize; 3] = [50, 500, 2_000];
/// Configuration applies timed per size (the median is reported).
const APPLIES: usize = 5;
/// Routing decisions per measurement, and the time a measurement may take at most.
const DECISIONS: usize = 200_000;
const DECISION_BUDGET: Duration = Duration::from_secs(2);
/// Distinct requests cycled through (services and routes spread evenly).
const REQUESTS: usize = 4_096;

/// What one size measured.
#[derive(Debug)]
pub struct RouteFigures {
    pub services: usize,
    pub routes: usize,
    /// Encoded size of the configuration, in bytes.
    pub encoded_bytes: usize,
    /// Median time of a first apply into an empty store, and of a replacement.
    pub first_apply: Duration,
    pub replace_apply: Duration,
    /// Process RSS growth from an empty store to one holding the configuration, in KiB.
    pub rss_kib: i64,
    /// Mean time of one routing decision: to a routed service, to a plain one.
    pub routed_ns: f64,
    pub plain_ns: f64,
    /// The same for a plain service, its cluster found by a scan (the baseline).
    pub plain_scan_ns: f64,
    /// At the edge, a virtual host per service: the routed requests' choice of virtual host
    /// and route, by the domain index and by ranking every virtual host (the baseline).
    pub edge_ns: f64,
    pub edge_scan_ns: f64,
}

fn hostname(i: usize) -> String {
    format!("svc-{i}.ns-{}.svc.cluster.local", i % 20)
}

fn vip(i: usize) -> Ipv4Addr {
    let [_, _, a, b] = u32::try_from(i).expect("small index").to_be_bytes();
    Ipv4Addr::new(10, 96, a, b)
}

fn cluster_name(i: usize) -> String {
    format!("outbound|80||{}", hostname(i))
}

fn is_routed(i: usize) -> bool {
    i.is_multiple_of(2)
}

fn route_prefix(r: usize) -> String {
    format!("/api/v1/resource-{r}/")
}

/// The configuration of a waypoint serving `services` services.
pub fn config(services: usize) -> proto::WaypointConfig {
    let mut config = proto::WaypointConfig {
        name: "waypoint".to_owned(),
        namespace: "ns-0".to_owned(),
        ..Default::default()
    };
    for i in 0..services {
        let host = hostname(i);
        let destination = proto::HttpRouteDestination {
            destination: Some(proto::Destination {
                host: host.clone(),
                subset: String::new(),
                port: 0,
                cluster: cluster_name(i),
            }),
            weight: 0,
            headers: None,
        };
        let http_routes = if is_routed(i) {
            (0..ROUTES_PER_ROUTED_SERVICE)
                .map(|r| proto::HttpRoute {
                    name: format!("r{r}"),
                    r#match: vec![proto::HttpMatchRequest {
                        uri: Some(proto::StringMatch {
                            match_type: Some(proto::string_match::MatchType::Prefix(route_prefix(
                                r,
                            ))),
                        }),
                        ..Default::default()
                    }],
                    route: vec![destination.clone()],
                    virtual_service: format!("ns-{}/svc-{i}", i % 20),
                    ..Default::default()
                })
                .collect()
        } else {
            Vec::new()
        };
        config.services.push(proto::WaypointService {
            hostname: host.clone(),
            name: format!("svc-{i}"),
            namespace: format!("ns-{}", i % 20),
            vips: vec![vip(i).to_string()],
            ports: vec![proto::ServicePort {
                port: 80,
                name: "http".to_owned(),
                protocol: proto::Protocol::Http as i32,
                target_port: 8080,
            }],
            http_routes,
            tcp_routes: Vec::new(),
            dynamic_dns: false,
            telemetry: None,
        });
        config.clusters.push(proto::Cluster {
            name: cluster_name(i),
            host,
            port: 80,
            endpoints: (0..ENDPOINTS)
                .map(|e| proto::Endpoint {
                    address: Ipv4Addr::new(
                        10,
                        200 + (e as u8),
                        vip(i).octets()[2],
                        vip(i).octets()[3],
                    )
                    .to_string(),
                    port: 8080,
                    identity: format!("spiffe://cluster.local/ns/ns-{}/sa/svc-{i}", i % 20),
                    labels: BTreeMap::from([("app".to_owned(), format!("svc-{i}"))]),
                    workload_uid: format!("uid-{i}-{e}"),
                    workload_name: format!("svc-{i}"),
                    tunnel: proto::EndpointTunnel::Hbone as i32,
                    healthy: true,
                    weight: 0,
                    hostname: String::new(),
                    tunnel_address: String::new(),
                    locality: None,
                    topology_labels: Default::default(),
                })
                .collect(),
            ..Default::default()
        });
    }
    config
}

/// The same services' routes at the edge: one HTTP server on port 80 with a virtual host per
/// service, named by its hostname (a plain service's a single route to its cluster).
fn edge_config(services: usize) -> proto::WaypointConfig {
    let mut mesh = config(services);
    let virtual_hosts = mesh
        .services
        .iter()
        .map(|s| proto::GatewayVirtualHost {
            domains: vec![s.hostname.clone()],
            http_routes: if s.http_routes.is_empty() {
                vec![proto::HttpRoute {
                    route: vec![proto::HttpRouteDestination {
                        destination: Some(proto::Destination {
                            host: s.hostname.clone(),
                            subset: String::new(),
                            port: 80,
                            cluster: format!("outbound|80||{}", s.hostname),
                        }),
                        weight: 0,
                        headers: None,
                    }],
                    ..Default::default()
                }]
            } else {
                s.http_routes.clone()
            },
            virtual_service: format!("{}/{}", s.namespace, s.name),
        })
        .collect();
    mesh.services.clear();
    mesh.gateway = Some(proto::GatewayConfig {
        listeners: vec![proto::GatewayListener {
            port: 80,
            servers: vec![proto::GatewayServer {
                gateway: "ns-0/edge".to_owned(),
                name: "http".to_owned(),
                protocol: proto::GatewayProtocol::Http as i32,
                hosts: vec!["*".to_owned()],
                virtual_hosts,
                ..Default::default()
            }],
        }],
        workload: None,
        num_trusted_proxies: 0,
    });
    mesh
}

/// The edge's choice for a request: its virtual host (by the server's domain index, or, as the
/// baseline, by ranking every virtual host as the gateway did before the index), then the
/// route: the cluster's name length, or `None`.
fn decide_at_edge(
    config: &waypoint::WaypointConfig,
    request: &Request,
    lookup: DefaultLookup,
) -> Option<usize> {
    use waypoint::model::gateway::{EdgeBinding, VirtualHost, host_match_rank};
    let gateway = config.gateway.as_ref()?;
    let binding = EdgeBinding::new(80, "http", None, gateway);
    let server = binding.server_in(gateway)?;
    let service = match lookup {
        DefaultLookup::Indexed => match server.target(None, Some(&request.host))? {
            Target::Service(target) => target.service,
            Target::Workload(_) => return None,
        },
        DefaultLookup::Scan => {
            let mut chosen: Option<(usize, &VirtualHost)> = None;
            for v in &server.virtual_hosts {
                let Some(rank) = v
                    .domains
                    .iter()
                    .filter_map(|d| host_match_rank(d, &request.host))
                    .max()
                else {
                    continue;
                };
                if chosen.as_ref().is_none_or(|(r, _)| rank > *r) {
                    chosen = Some((rank, v));
                }
            }
            &chosen?.1.table.service
        }
    };
    let headers = BTreeMap::new();
    let view = RequestView {
        method: "GET",
        scheme: "http",
        authority: &request.host,
        path: &request.path,
        query: None,
        headers: &headers,
        port: 80,
        source_labels: None,
        source_namespace: None,
    };
    let selection = select_route(&service.route_matches, &view)?;
    match &service.http_routes[selection.route_index].action {
        RouteAction::Forward(destinations) => {
            Some(config.cluster(&destinations.first()?.cluster)?.name.len())
        }
        _ => None,
    }
}

fn rss_kib() -> anyhow::Result<i64> {
    crate::host::status_kib(std::process::id(), "VmRSS")
        .map(|k| k as i64)
        .context("reading this process's RSS")
}

/// The subcommand [`memory_in_child`] runs.
pub const MEMORY_COMMAND: &str = "route-table-memory";

/// `bench route-table-memory <services>`: a fresh process's RSS growth from before the
/// configuration message is built to a store holding it converted (the message freed, though
/// the allocator may keep what it held), printed in KiB. A process of its own per size, so that
/// no memory an earlier size freed is reused.
pub fn memory_command(services: &str) -> anyhow::Result<()> {
    let services = services.parse()?;
    let store = waypoint::ConfigStore::default();
    let before = rss_kib()?;
    store.apply(config(services))?;
    let held = rss_kib()? - before;
    black_box(store.snapshot());
    println!("{held}");
    Ok(())
}

fn memory_in_child(services: usize) -> anyhow::Result<i64> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .args([MEMORY_COMMAND, &services.to_string()])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{MEMORY_COMMAND} {services}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

/// One request of the mix: where its tunnel goes, its Host and path.
struct Request {
    authority: SocketAddr,
    host: String,
    path: String,
}

/// `REQUESTS` requests spread evenly over the routed (or the plain) services and, for routed
/// ones, over their routes, in a scattered order.
fn requests(services: usize, routed: bool) -> Vec<Request> {
    let candidates: Vec<usize> = (0..services).filter(|i| is_routed(*i) == routed).collect();
    (0..REQUESTS)
        .map(|n| {
            // A multiplicative step coprime to the counts scatters the order.
            let i = candidates[(n * 7919) % candidates.len()];
            let r = (n * 104_729) % ROUTES_PER_ROUTED_SERVICE;
            Request {
                authority: SocketAddr::new(vip(i).into(), 80),
                host: hostname(i),
                path: format!("{}item", route_prefix(r)),
            }
        })
        .collect()
}

/// How a request no route matches finds its service's cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DefaultLookup {
    /// `WaypointConfig::default_cluster`, as the pipeline does.
    Indexed,
    /// A scan of every cluster for the service's hostname and port: how `default_cluster`
    /// found it before it was indexed, kept as the baseline measured in the same run.
    Scan,
}

/// The routing decision the pipeline takes for `request`: the cluster's name length (so that
/// nothing is optimized away), or `None` when nothing routes it.
fn decide(
    config: &waypoint::WaypointConfig,
    request: &Request,
    lookup: DefaultLookup,
) -> Option<usize> {
    let Some(Target::Service(target)) = config.target_for(request.authority) else {
        return None;
    };
    let headers = BTreeMap::new();
    let view = RequestView {
        method: "GET",
        scheme: "http",
        authority: &request.host,
        path: &request.path,
        query: None,
        headers: &headers,
        port: target.port.port,
        source_labels: None,
        source_namespace: None,
    };
    let cluster = match select_route(&target.service.route_matches, &view) {
        Some(selection) => match &target.service.http_routes[selection.route_index].action {
            RouteAction::Forward(destinations) => config.cluster(&destinations.first()?.cluster)?,
            _ => return None,
        },
        None => {
            let (host, port) = (&target.service.hostname, target.port.port);
            match lookup {
                DefaultLookup::Indexed => config.default_cluster(host, port)?,
                DefaultLookup::Scan => config
                    .clusters
                    .values()
                    .find(|c| &c.host == host && c.subset.is_empty() && c.port == port)?,
            }
        }
    };
    Some(cluster.name.len())
}

/// Mean nanoseconds per decision over `requests`, bounded by count and time; fails if any
/// request finds no route, or not the cluster a scan finds.
fn decision_ns(
    config: &waypoint::WaypointConfig,
    requests: &[Request],
    lookup: DefaultLookup,
    decide: fn(&waypoint::WaypointConfig, &Request, DefaultLookup) -> Option<usize>,
) -> anyhow::Result<f64> {
    for request in requests {
        anyhow::ensure!(
            decide(config, request, lookup) == decide(config, request, DefaultLookup::Scan)
                && decide(config, request, lookup).is_some(),
            "no route for {} {}",
            request.host,
            request.path
        );
    }
    let started = Instant::now();
    let mut done = 0;
    while done < DECISIONS && started.elapsed() < DECISION_BUDGET {
        for request in requests.iter().take(DECISIONS - done) {
            black_box(decide(config, black_box(request), lookup));
            done += 1;
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1e9 / done as f64)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn measure(services: usize) -> anyhow::Result<RouteFigures> {
    let generated = config(services);
    let encoded_bytes = generated.encoded_len();
    let routes = generated.services.iter().map(|s| s.http_routes.len()).sum();
    let (mut first, mut replace) = (Vec::new(), Vec::new());
    for _ in 0..APPLIES {
        let store = waypoint::ConfigStore::default();
        let copy = generated.clone();
        let started = Instant::now();
        store.apply(copy)?;
        first.push(started.elapsed());
        let copy = generated.clone();
        let started = Instant::now();
        store.apply(copy)?;
        replace.push(started.elapsed());
    }
    let store = waypoint::ConfigStore::default();
    store.apply(generated)?;
    let snapshot = store.snapshot();
    let edge_store = waypoint::ConfigStore::default();
    edge_store.apply(edge_config(services))?;
    let edge = edge_store.snapshot();
    let (routed, plain) = (requests(services, true), requests(services, false));
    Ok(RouteFigures {
        services,
        routes,
        encoded_bytes,
        first_apply: median(first),
        replace_apply: median(replace),
        rss_kib: memory_in_child(services)?,
        routed_ns: decision_ns(&snapshot, &routed, DefaultLookup::Indexed, decide)?,
        plain_ns: decision_ns(&snapshot, &plain, DefaultLookup::Indexed, decide)?,
        plain_scan_ns: decision_ns(&snapshot, &plain, DefaultLookup::Scan, decide)?,
        edge_ns: decision_ns(&edge, &routed, DefaultLookup::Indexed, decide_at_edge)?,
        edge_scan_ns: decision_ns(&edge, &routed, DefaultLookup::Scan, decide_at_edge)?,
    })
}

/// Runs the route-table part at its sizes.
pub fn run(quick: bool) -> anyhow::Result<Vec<RouteFigures>> {
    let sizes: &[usize] = if quick { &SERVICES[..1] } else { &SERVICES };
    sizes
        .iter()
        .map(|&services| {
            eprintln!("node: waypoint with {services} services");
            measure(services)
        })
        .collect()
}
