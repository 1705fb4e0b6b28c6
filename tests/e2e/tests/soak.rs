//! A soak with the real binaries: mixed load from a client pod through the agents and a
//! waypoint (a new connection per request, keep-alive connections of 50 requests, gRPC calls
//! on one HTTP/2 channel, long-lived bidirectional gRPC streams, WebSocket sessions) while the
//! service's VirtualService changes every 3 s, a pod of the service changes every 10 s (it
//! leaves the service by its label, comes back, is deleted, is created again) and every
//! workload certificate rotates every minute. No request may fail; the resident memory and the
//! open descriptors of both agents, the waypoint and the controller are sampled, and their
//! slope after the warm-up is reported and bounded; once the load stops and the waypoint exits,
//! every connection the agents counted opened is counted closed. Five minutes by default (CI's
//! form), `WEFT_SOAK_SECONDS` otherwise (`cargo xtask test --long`: 1800). Needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use weft_e2e::fixtures::{REVIEWS_VIP as VIP, reviews_behind_waypoint};
use weft_e2e::load::{Load, Outcome};
use weft_e2e::{Mesh, MeshOptions, PodSpec, binary};
use weft_test_support::prometheus::Exposition;

const WAYPOINT: &str = "waypoint";
/// The part of the run not measured for the slopes: caches and pools fill first.
const WARM_UP: Duration = Duration::from_secs(15);
/// How often a proxy's memory and descriptors are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Workload certificates live this long; renewed at half life, they rotate every minute.
const CERTIFICATE_TTL: Duration = Duration::from_secs(120);
/// A gRPC stream carries this many messages, this far apart (5 s a stream).
const STREAM_MESSAGES: u32 = 50;
const STREAM_INTERVAL_MS: u32 = 100;
/// The VirtualService changes this often, and a pod joins or leaves the service this often.
const EDIT_EVERY: Duration = Duration::from_secs(3);
const POD_EVERY: Duration = Duration::from_secs(10);
/// The bounds on the slopes after the warm-up: a leak of a few KiB or of one descriptor per
/// connection, at this load, is far above them.
const MAX_RSS_KIB_PER_MINUTE: f64 = 4096.0;
const MAX_FDS_PER_MINUTE: f64 = 30.0;

/// The `n`th VirtualService: every pod of the service by turns, then v1 and v2 weighted.
fn routes(n: u32) -> String {
    let route = if n.is_multiple_of(2) {
        "[{destination: {host: reviews.shop.svc.cluster.local}}]".to_owned()
    } else {
        let v1 = 10 + (n * 17) % 80;
        format!(
            "[{{destination: {{host: reviews.shop.svc.cluster.local, subset: v1}}, weight: {v1}}}, \
             {{destination: {{host: reviews.shop.svc.cluster.local, subset: v2}}, weight: {}}}]",
            100 - v1
        )
    };
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: reviews, namespace: shop}}\n\
         spec:\n  hosts: [reviews]\n  http:\n  - name: edit-{n}\n    route: {route}\n"
    )
}

/// How long the soak runs.
fn duration() -> Duration {
    let seconds = std::env::var("WEFT_SOAK_SECONDS")
        .ok()
        .map(|s| {
            s.parse::<u64>()
                .expect("WEFT_SOAK_SECONDS is a number of seconds")
        })
        .unwrap_or(300);
    assert!(
        seconds >= 2 * WARM_UP.as_secs(),
        "WEFT_SOAK_SECONDS must leave time after the {WARM_UP:?} warm-up"
    );
    Duration::from_secs(seconds)
}

/// One process's samples: (seconds since the start, resident KiB, open descriptors).
struct Samples {
    name: String,
    pid: u32,
    points: Vec<(f64, f64, f64)>,
}

impl Samples {
    fn take(&mut self, at: f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|e| panic!("{} (pid {}) is gone: {e}", self.name, self.pid));
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .expect("VmRSS");
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("the process's descriptors")
            .count() as f64;
        self.points.push((at, rss, fds));
    }

    /// The least-squares slopes per minute of memory (KiB) and descriptors, after `from`.
    fn slopes(&self, from: f64) -> (f64, f64) {
        let after: Vec<_> = self.points.iter().filter(|p| p.0 >= from).collect();
        let slope = |value: fn(&(f64, f64, f64)) -> f64| {
            let n = after.len() as f64;
            let mean_t = after.iter().map(|p| p.0).sum::<f64>() / n;
            let mean_v = after.iter().map(|p| value(p)).sum::<f64>() / n;
            let covariance: f64 = after
                .iter()
                .map(|p| (p.0 - mean_t) * (value(p) - mean_v))
                .sum();
            let variance: f64 = after.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
            covariance / variance * 60.0
        };
        (slope(|p| p.1), slope(|p| p.2))
    }
}

/// The expiry of every workload certificate a proxy's `/metrics` shows, by identity.
fn certificate_expiries(metrics: &str) -> Vec<(String, u64)> {
    Exposition::parse(metrics)
        .matching("weft_workload_certificate_expiry_timestamp_seconds", &[])
        .into_iter()
        .filter_map(|s| Some((s.label("identity")?.to_owned(), s.value as u64)))
        .collect()
}

/// The connections to the workload `workload` (on node2) its agent counted opened and closed.
fn connections_to(mesh: &Mesh, workload: &str) -> (f64, f64) {
    let metrics = Exposition::parse(&mesh.metrics("node2"));
    let labels = [
        ("reporter", "destination"),
        ("destination_workload", workload),
    ];
    (
        metrics.sum("istio_tcp_connections_opened_total", &labels),
        metrics.sum("istio_tcp_connections_closed_total", &labels),
    )
}

/// Each agent's connections counted opened and closed (every reporter).
fn connections(mesh: &Mesh, node: &str) -> (f64, f64) {
    let metrics = Exposition::parse(&mesh.metrics(node));
    (
        metrics.sum("istio_tcp_connections_opened_total", &[]),
        metrics.sum("istio_tcp_connections_closed_total", &[]),
    )
}

#[test]
fn mixed_load_through_edits_and_pod_changes_fails_nothing_and_leaks_nothing() {
    let duration = duration();
    let mut mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::app("reviews-v2", "node2", "shop", "reviews", "v2"),
            PodSpec::app("reviews-v3", "node2", "shop", "reviews", "v3"),
            PodSpec::waypoint(WAYPOINT, "node2", "shop"),
        ],
        MeshOptions {
            config: reviews_behind_waypoint(true, &["v1", "v2"]),
            config_files: vec![("20-reviews-vs.yaml".to_owned(), routes(0))],
            certificate_ttl: CERTIFICATE_TTL,
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    mesh.await_reachable("client", &format!("http://{VIP}/"))
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Every load stops by itself a minute after the soak's end at the latest.
    let bound = (duration.as_secs() + 60) as u32;
    let rounds = bound * 100;
    let url = format!("http://{VIP}/");
    let curl = |extra: &str, urls: &str| {
        format!(
            "curl -s -o /dev/null --max-time 30 {extra} \
             -w '%{{http_code}} %{{time_total}}\\n' '{urls}'"
        )
    };
    let grpc = format!(
        "{} grpc --target http://{VIP}:9090 --count 20 | python3 -c '\
         import json, sys; r = json.load(sys.stdin)\n\
         for _ in r[\"replies\"]: print(\"200 0\")\n\
         for _ in r[\"errors\"]: print(\"0 0\")' || echo '0 0'",
        binary("mesh-client").expect("mesh-client").display()
    );
    // One outcome per stream or session: 200 when every message came back in order and the
    // stream ended cleanly, else 0 (the client's report goes to the load's errors file).
    let session = |args: String, done: &str| {
        format!(
            "r=$({} {args}); python3 -c '\
             import json, sys; r = json.loads(sys.argv[1])\n\
             ok = {done}\n\
             print(\"200 0\" if ok else \"0 0\")\n\
             ok or print(sys.argv[1], file=sys.stderr)' \"$r\" || echo '0 0'",
            binary("mesh-client").expect("mesh-client").display()
        )
    };
    let stream = session(
        format!(
            "grpc-stream --target http://{VIP}:9090 --count {STREAM_MESSAGES} \
             --interval-ms {STREAM_INTERVAL_MS}"
        ),
        &format!("r[\"echoed\"] == {STREAM_MESSAGES} and r[\"ended\"]"),
    );
    let websocket = session(
        format!("websocket --url ws://{VIP}/ws --count 20"),
        "r[\"status\"] == 101 and r[\"echoed\"] == 20",
    );
    let loads: Vec<(&str, Load)> = [
        ("churn", curl("", &url)),
        ("keep-alive", curl("", &format!("{url}?n=[1-50]"))),
        ("grpc", grpc),
        ("grpc-stream", stream),
        ("websocket", websocket),
    ]
    .into_iter()
    .map(|(name, round)| {
        let load = mesh
            .repeat_in_pod("client", name, &round, rounds, bound)
            .expect("start a load");
        (name, load)
    })
    .collect();
    // Two outcomes each: a stream takes 5 s.
    for (name, load) in &loads {
        assert!(
            load.progressed(0, 2),
            "the {name} load does not run\n{}",
            mesh.logs()
        );
    }

    let mut samples: Vec<Samples> = ["node1", "node2"]
        .iter()
        .map(|node| Samples {
            name: format!("agent {node}"),
            pid: mesh.agent_pid(node).expect("the agent runs"),
            points: Vec::new(),
        })
        .chain([
            Samples {
                name: "waypoint".to_owned(),
                pid: mesh.waypoint_pid(WAYPOINT).expect("the waypoint runs"),
                points: Vec::new(),
            },
            Samples {
                name: "controller".to_owned(),
                pid: mesh.controller_pid().expect("the controller runs"),
                points: Vec::new(),
            },
        ])
        .collect();
    // Every certificate each proxy held during the soak, by proxy and identity.
    let mut certificates: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new();
    let mut note_certificates = |mesh: &Mesh| {
        let proxies = [
            ("agent node1", mesh.metrics("node1")),
            ("agent node2", mesh.metrics("node2")),
            ("waypoint", mesh.waypoint_metrics(WAYPOINT)),
        ];
        for (proxy, metrics) in proxies {
            for (identity, expiry) in certificate_expiries(&metrics) {
                certificates
                    .entry((proxy.to_owned(), identity))
                    .or_default()
                    .insert(expiry);
            }
        }
    };
    let start = Instant::now();
    let (mut next_sample, mut next_edit, mut next_pod) =
        (start, start + EDIT_EVERY, start + POD_EVERY);
    let (mut edits, mut pod_changes) = (0, 0);
    while start.elapsed() < duration {
        let now = Instant::now();
        if now >= next_sample {
            let at = start.elapsed().as_secs_f64();
            samples.iter_mut().for_each(|s| s.take(at));
            note_certificates(&mesh);
            next_sample += SAMPLE_EVERY;
        }
        if now >= next_edit {
            edits += 1;
            mesh.write_waypoint_config(WAYPOINT, "20-reviews-vs.yaml", &routes(edits))
                .unwrap_or_else(|e| panic!("{e:#}"));
            next_edit = Instant::now() + EDIT_EVERY;
        }
        if now >= next_pod {
            pod_changes += 1;
            let before = mesh.waypoint_config_version(WAYPOINT);
            // By turns: reviews-v3 leaves the service (its label), comes back, is deleted
            // (once the waypoint stopped sending to it) and is created again.
            match pod_changes % 4 {
                1 | 2 => {
                    let app = if pod_changes % 4 == 1 {
                        "parked"
                    } else {
                        "reviews"
                    };
                    mesh.update_pod("reviews-v3", |p| {
                        p.labels.insert("app".to_owned(), app.to_owned());
                    })
                    .expect("change the pod");
                }
                3 => {
                    // Terminating, it takes no new request; it stops once the waypoint
                    // applied that and closed its connections to it (requests in flight
                    // finished), as a `preStop` hook holds a pod until it is drained.
                    mesh.delete_pod("reviews-v3", |mesh| {
                        mesh.await_waypoint_since(WAYPOINT, &before, "the pod's deletion")?;
                        anyhow::ensure!(
                            mesh.eventually(Duration::from_secs(10), || {
                                let (opened, closed) = connections_to(mesh, "reviews-v3");
                                opened == closed
                            }),
                            "connections to the terminating pod stay open: {:?}\n{}",
                            connections_to(mesh, "reviews-v3"),
                            mesh.logs()
                        );
                        Ok(())
                    })
                    .unwrap_or_else(|e| panic!("{e:#}"));
                }
                _ => mesh
                    .create_pod("reviews-v3")
                    .unwrap_or_else(|e| panic!("{e:#}")),
            }
            mesh.await_waypoint_since(WAYPOINT, &before, "a pod change")
                .unwrap_or_else(|e| panic!("{e:#}"));
            next_pod = Instant::now() + POD_EVERY;
        }
        // The schedule's own pace: the next sample, edit or pod change.
        let next = next_sample.min(next_edit).min(next_pod);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }

    let mut failed: Vec<(&str, Outcome)> = Vec::new();
    let mut counts = Vec::new();
    for (name, load) in loads {
        let outcomes = load.finish().expect("stop the load");
        counts.push(format!("{name} {}", outcomes.len()));
        failed.extend(
            outcomes
                .into_iter()
                .filter(|o| o.status != 200)
                .map(|o| (name, o)),
        );
    }
    eprintln!(
        "soak of {duration:?}: requests {}; {edits} route edits, {pod_changes} pod changes",
        counts.join(", ")
    );
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}\n{}",
        failed.len(),
        mesh.logs()
    );
    assert!(
        edits >= 5 && pod_changes >= 4,
        "too few changes during the soak"
    );

    // Every proxy's certificates rotated about every minute: at least once for each full
    // minute of the soak but the first (renewal starts at half of the 2 min lifetime).
    let rotations = (duration.as_secs() / 60).saturating_sub(1).max(1) as usize;
    let mut too_few = Vec::new();
    for ((proxy, identity), expiries) in &certificates {
        eprintln!(
            "{proxy}: {identity}: {} certificates in the soak",
            expiries.len()
        );
        if expiries.len() < rotations + 1 {
            too_few.push(format!("{proxy} {identity}: {}", expiries.len()));
        }
    }
    let proxies: BTreeSet<&str> = certificates.keys().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        proxies.len(),
        3,
        "not every proxy showed its certificates: {certificates:?}"
    );
    assert!(
        too_few.is_empty(),
        "certificates did not rotate every minute ({} expected at least): {too_few:?}",
        rotations + 1
    );

    let mut too_steep = Vec::new();
    for s in &samples {
        let (rss, fds) = s.slopes(WARM_UP.as_secs_f64());
        let first = s.points.first().expect("a sample");
        let last = s.points.last().expect("a sample");
        eprintln!(
            "{}: RSS {:.0} -> {:.0} KiB, slope after warm-up {rss:.0} KiB/min; descriptors \
             {:.0} -> {:.0}, slope {fds:.1}/min",
            s.name, first.1, last.1, first.2, last.2
        );
        if rss > MAX_RSS_KIB_PER_MINUTE || fds > MAX_FDS_PER_MINUTE {
            too_steep.push(format!("{}: {rss:.0} KiB/min, {fds:.1} fds/min", s.name));
        }
    }
    assert!(
        too_steep.is_empty(),
        "growth after the warm-up: {too_steep:?}"
    );

    // No connection left open in the agents' counters once the load stopped and the waypoint,
    // whose pools keep connections to the apps open while it runs (as Envoy's, until their
    // idle timeout), drained and exited.
    let mut waypoint = mesh.signal_waypoint(WAYPOINT).expect("stop the waypoint");
    let stopping = Instant::now();
    while waypoint.try_wait().expect("the waypoint process").is_none() {
        assert!(
            stopping.elapsed() < Duration::from_secs(15),
            "the waypoint did not exit after its drain"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for node in ["node1", "node2"] {
        assert!(
            mesh.eventually(Duration::from_secs(10), || {
                let (opened, closed) = connections(&mesh, node);
                opened > 0.0 && opened == closed
            }),
            "agent {node} counts connections still open: {:?}\n{}",
            connections(&mesh, node),
            mesh.logs()
        );
    }
}
