//! The ingress section: TLS termination at the edge, the ingress gateway (the waypoint binary
//! in the gateway role) against nginx terminating TLS with the same certificate and routes,
//! measured in the same run, each round measuring both back to back.
//!
//! Three nodes, no pod enrolled (the section measures the edge, not the mesh behind it):
//! - node1: `outside`, the client (a network namespace outside the mesh);
//! - node2: `web`, the sample app behind Service `web`;
//! - node3: `ingress`, the gateway's pod (an Istio `Gateway` selects it by `istio:
//!   ingressgateway`; a VirtualService bound to it by `gateways:` routes), and `nginx-edge`.
//!
//! Both proxies terminate TLS 1.3 with one certificate and key (ECDSA P-256, local mode's
//! credential files for the gateway, the same files for nginx), route `end-user: jason` and
//! the prefix `/api` to `web` and answer 404 to the rest, and send plain HTTP/1.1 to `web`
//! (not enrolled, so the gateway's upstream is plain TCP like nginx's) over kept-alive
//! connections. The load is [`super::https_load`]'s client, the same for both; its requests
//! are `GET /api/bench` without the header, so each goes through the header match to the
//! prefix route.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use weft_e2e::{Mesh, MeshOptions, PodSpec, server_certificate};

use super::host::cgroup_cpu_seconds;
use super::l7::proxy_workers;
use super::nginx::{self, Nginx};
use super::{Settings, median};

const NAMESPACE: &str = "edge";
const OUTSIDE: &str = "outside";
const BACKEND: &str = "web";
const GATEWAY: &str = "ingress";
const NGINX: &str = "nginx-edge";
const PROXY_NODE: &str = "node3";
/// The host both proxies serve, and their certificate's name.
const HOST: &str = "ingress.bench.test";
const HTTPS_PORT: u16 = 443;
/// The credential's name (a directory of the credentials directory, as a Secret's keys).
const CREDENTIAL: &str = "edge-cert";
/// What the load requests.
const LOAD_PATH: &str = "/api/bench";
/// Loops of the new-connection figure.
const NEW_CONNECTION_LOOPS: u32 = 8;

const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: edge}
spec:
  clusterIP: 10.96.0.40
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge-gateway, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [ingress.bench.test]
    tls:
      mode: SIMPLE
      credentialName: edge-cert
      minProtocolVersion: TLSV1_3
      maxProtocolVersion: TLSV1_3
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: edge}
spec:
  hosts: [ingress.bench.test]
  gateways: [edge-gateway]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: web, port: {number: 80}}}]
  - name: api
    match: [{uri: {prefix: /api}}]
    route: [{destination: {host: web, port: {number: 80}}}]
"#;

/// nginx's TLS server with the gateway's routes: TLS 1.3 only, `cert`/`key` the gateway's
/// credential files; OpenSSL's defaults otherwise (as the gateway has rustls's), so both take
/// the client's one suite and group, and both issue TLS 1.3 session tickets after each
/// handshake (two each: OpenSSL's default, rustls's default) that the client never uses.
fn nginx_config(
    workers: usize,
    backend: &str,
    tls: (&Path, &Path),
    ip: Ipv4Addr,
    dir: &Path,
) -> String {
    let (cert, key) = tls;
    let http = format!(
        r#"    map $http_end_user $by_user {{
        jason 1;
        default 0;
    }}
    server {{
        listen {ip}:{HTTPS_PORT} ssl;
        server_name {HOST};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_tickets on;
        location /api {{
{proxy}
        }}
        location / {{
            if ($by_user = 0) {{
                return 404;
            }}
{proxy}
        }}
    }}
"#,
        cert = cert.display(),
        key = key.display(),
        proxy = nginx::proxy_to(BACKEND),
    );
    nginx::proxy_config(workers, &[(BACKEND, backend)], &http, dir)
}

fn pods() -> Vec<PodSpec> {
    let mut gateway = PodSpec::client(GATEWAY, PROXY_NODE, NAMESPACE)
        .not_enrolled()
        .with_service_account("ingress");
    gateway.labels = [("istio".to_string(), "ingressgateway".to_string())].into();
    vec![
        PodSpec::client(OUTSIDE, "node1", "outside").not_enrolled(),
        PodSpec::app(BACKEND, "node2", NAMESPACE, BACKEND, "v1").not_enrolled(),
        gateway,
        PodSpec::client(NGINX, PROXY_NODE, NAMESPACE).not_enrolled(),
    ]
}

/// One of the two proxies.
#[derive(Debug, Clone, Copy)]
enum Proxy {
    Gateway,
    Nginx,
}

const PROXIES: [Proxy; 2] = [Proxy::Gateway, Proxy::Nginx];

impl Proxy {
    fn pod(self) -> &'static str {
        match self {
            Proxy::Gateway => GATEWAY,
            Proxy::Nginx => NGINX,
        }
    }
}

/// One figure on both proxies: `rounds[proxy]`.
pub struct EdgeRow {
    name: String,
    unit: &'static str,
    rounds: [Vec<f64>; 2],
    /// CPU ms per 1,000 requests (or connections) of each proxy's pod, median over the rounds.
    cpu: Option<[f64; 2]>,
}

impl EdgeRow {
    fn median(&self, proxy: Proxy) -> f64 {
        median(self.rounds[proxy as usize].clone())
    }

    /// gateway / nginx of the medians, and in brackets the range of the per-round ratios.
    fn ratio(&self) -> String {
        let overall = self.median(Proxy::Gateway) / self.median(Proxy::Nginx);
        let per_round: Vec<f64> = self.rounds[0]
            .iter()
            .zip(&self.rounds[1])
            .map(|(g, n)| g / n)
            .collect();
        let low = per_round.iter().copied().fold(f64::INFINITY, f64::min);
        let high = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if per_round.len() > 1 {
            format!("{overall:.2} ({low:.2}-{high:.2})")
        } else {
            format!("{overall:.2}")
        }
    }
}

/// What one run of the load client measured.
struct LoadResult {
    completed: f64,
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    /// Protocol version, cipher suite and key exchange group the servers chose.
    negotiated: String,
}

/// The section's figures and settings, for the report.
pub struct IngressReport {
    rows: Vec<EdgeRow>,
    workers: usize,
    gateway_threads: usize,
    negotiated: String,
    errors: u64,
    /// `nginx -V`'s first lines: its version and the OpenSSL it runs with.
    nginx_version: String,
}

/// What `nginx -V` says of its version and OpenSSL, on one line.
fn nginx_version() -> String {
    std::process::Command::new("nginx")
        .arg("-V")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .filter(|l| l.starts_with("nginx version") || l.starts_with("built with"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Runs the HTTPS load client in the outside pod against `proxy`.
fn https_load(
    mesh: &Mesh,
    proxy: Proxy,
    certificate: &Path,
    connections: u32,
    seconds: u32,
    new_per_request: bool,
) -> anyhow::Result<LoadResult> {
    let exe = std::env::current_exe()?;
    let output = mesh
        .testbed
        .pod_command(OUTSIDE, exe.to_str().context("executable path")?)
        .args([
            "https-load",
            &format!("{}:{HTTPS_PORT}", mesh.pod(proxy.pod()).ip),
            HOST,
            certificate.to_str().context("certificate path")?,
            LOAD_PATH,
            &connections.to_string(),
            &seconds.to_string(),
            if new_per_request { "new" } else { "keep-alive" },
        ])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let parsed = match fields[..] {
        [completed, elapsed, p50, p99, errors, version, suite, group] => Some((
            completed
                .parse::<f64>()
                .ok()
                .zip(elapsed.parse::<f64>().ok()),
            p50.parse().ok().zip(p99.parse().ok()),
            errors.parse().ok(),
            format!("{version}, {suite}, {group}"),
        )),
        _ => None,
    };
    match parsed {
        Some((Some((completed, elapsed)), Some((p50_us, p99_us)), Some(errors), negotiated))
            if output.status.success() =>
        {
            Ok(LoadResult {
                completed,
                per_second: completed / elapsed,
                p50_us,
                p99_us,
                errors,
                negotiated,
            })
        }
        _ => anyhow::bail!(
            "https-load against {proxy:?}: {text} {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Checks that both proxies route alike: the prefix route and the header route reach `web`,
/// anything else is 404.
fn check_routes(mesh: &Mesh, ca: &Path) -> anyhow::Result<()> {
    let ca = ca.to_str().context("CA path")?;
    for proxy in PROXIES {
        let resolve = format!("{HOST}:{HTTPS_PORT}:{}", mesh.pod(proxy.pod()).ip);
        let status = |path: &str, extra: &[&str]| {
            let url = format!("https://{HOST}{path}");
            let mut args = vec!["--cacert", ca, "--resolve", &resolve];
            args.extend_from_slice(extra);
            args.push(&url);
            mesh.curl_with(OUTSIDE, &args).status
        };
        for (path, extra, expected) in [
            (LOAD_PATH, &[][..], 200),
            ("/other", &["-H", "end-user: jason"][..], 200),
            ("/other", &[][..], 404),
        ] {
            let got = status(path, extra);
            anyhow::ensure!(
                got == expected,
                "{proxy:?}: {path} {extra:?} answered {got}, expected {expected}"
            );
        }
    }
    Ok(())
}

/// Threads of the gateway process named as its workers (`waypoint-<index>`).
fn gateway_worker_threads(mesh: &Mesh) -> usize {
    let Some(&pid) = mesh.pod(GATEWAY).cgroup.procs().unwrap_or_default().first() else {
        return 0;
    };
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|task| {
                    std::fs::read_to_string(task.path().join("comm"))
                        .is_ok_and(|name| name.starts_with("waypoint-"))
                })
                .count()
        })
        .unwrap_or(0)
}

fn pod_cpu(mesh: &Mesh, proxy: Proxy) -> Option<f64> {
    cgroup_cpu_seconds(&mesh.pod(proxy.pod()).cgroup)
}

pub fn run(settings: &Settings) -> anyhow::Result<IngressReport> {
    let mesh = Mesh::start(
        pods(),
        MeshOptions {
            config: CONFIG.to_owned(),
            ..settings.mesh_options()
        },
    )?;
    let (ca, cert, key) = server_certificate(HOST);
    let credentials = mesh.dir().join("credentials");
    let credential = credentials.join(CREDENTIAL);
    std::fs::create_dir_all(&credential)?;
    let (cert_file, key_file) = (credential.join("tls.crt"), credential.join("tls.key"));
    std::fs::write(&cert_file, &cert)?;
    std::fs::write(&key_file, &key)?;
    let ca_file = mesh.dir().join("edge-ca.pem");
    std::fs::write(&ca_file, &ca)?;

    let workers = proxy_workers();
    let backend = format!("{}:8080", mesh.pod(BACKEND).ip);
    let _nginx = Nginx::start(&mesh, NGINX, HTTPS_PORT, |ip, dir| {
        nginx_config(workers, &backend, (&cert_file, &key_file), ip, dir)
    })?;
    let _gateway = mesh.start_gateway(GATEWAY, &credentials)?;
    anyhow::ensure!(
        mesh.eventually(Duration::from_secs(15), || check_routes(&mesh, &ca_file)
            .is_ok()),
        "the proxies do not route alike: {:#}\n{}",
        check_routes(&mesh, &ca_file)
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("?")),
        mesh.logs()
    );
    let gateway_threads = gateway_worker_threads(&mesh);

    let seconds = settings.seconds;
    let mut rows = Vec::new();
    let mut negotiated = Vec::new();
    let mut errors = 0;
    // (connections, new per request, the figures taken from each run).
    let loads: [(u32, bool, &[RowSpec]); 3] = [
        (
            NEW_CONNECTION_LOOPS,
            true,
            &[(
                "new TLS connections / s (full handshake + one request each)",
                "conn/s",
                Figure::Rate,
            )],
        ),
        (
            1,
            false,
            &[
                ("HTTPS rps, 1 keep-alive connection", "req/s", Figure::Rate),
                ("HTTPS p50 latency, 1 connection", "µs", Figure::P50),
                ("HTTPS p99 latency, 1 connection", "µs", Figure::P99),
            ],
        ),
        (
            64,
            false,
            &[(
                "HTTPS rps, 64 keep-alive connections",
                "req/s",
                Figure::Rate,
            )],
        ),
    ];
    for (connections, new_per_request, figures) in loads {
        let mut results: [Vec<LoadResult>; 2] = Default::default();
        let mut cpu: [Vec<f64>; 2] = Default::default();
        for _ in 0..settings.rounds {
            for proxy in PROXIES {
                let before = pod_cpu(&mesh, proxy);
                let result = https_load(
                    &mesh,
                    proxy,
                    &cert_file,
                    connections,
                    seconds,
                    new_per_request,
                )?;
                if let (Some(before), Some(after)) = (before, pod_cpu(&mesh, proxy)) {
                    cpu[proxy as usize].push((after - before) * 1e6 / result.completed);
                }
                negotiated.push(result.negotiated.clone());
                errors += result.errors;
                results[proxy as usize].push(result);
            }
        }
        for (index, (name, unit, figure)) in figures.iter().enumerate() {
            let row = EdgeRow {
                name: (*name).to_owned(),
                unit,
                rounds: std::array::from_fn(|p| results[p].iter().map(|r| figure.of(r)).collect()),
                cpu: (index == 0 && cpu.iter().all(|c| !c.is_empty()))
                    .then(|| std::array::from_fn(|p| median(cpu[p].clone()))),
            };
            eprintln!(
                "measured: {}: gateway {:.2}, nginx {:.2}",
                row.name,
                row.median(Proxy::Gateway),
                row.median(Proxy::Nginx)
            );
            rows.push(row);
        }
    }
    negotiated.dedup();
    anyhow::ensure!(
        negotiated.len() == 1,
        "the proxies negotiated different TLS settings: {negotiated:?}"
    );
    Ok(IngressReport {
        rows,
        workers,
        gateway_threads,
        negotiated: negotiated.remove(0),
        errors,
        nginx_version: nginx_version(),
    })
}

/// A row a load gives: its name, unit and figure.
type RowSpec = (&'static str, &'static str, Figure);

/// Which figure of a load run a row shows.
#[derive(Clone, Copy)]
enum Figure {
    Rate,
    P50,
    P99,
}

impl Figure {
    fn of(self, result: &LoadResult) -> f64 {
        match self {
            Figure::Rate => result.per_second,
            Figure::P50 => result.p50_us,
            Figure::P99 => result.p99_us,
        }
    }
}

/// The section of the report.
pub fn report(out: &mut String, ingress: &IngressReport) -> std::fmt::Result {
    writeln!(
        out,
        "\n## Ingress: TLS termination, the gateway and nginx\n\n\
         A client outside the mesh (node1) -> TLS terminated at the proxy (node3) -> plain \
         HTTP/1.1 to the backend (node2), for the ingress gateway (the waypoint binary in the \
         gateway role: an Istio `Gateway` with a SIMPLE TLS server, its credential from files, \
         a VirtualService bound by `gateways:`) and for nginx with the same certificate and key \
         files (ECDSA P-256) and the same routes (`end-user: jason` and the prefix `/api` to the \
         backend, 404 otherwise), each round measuring both back to back. The load is `GET {LOAD_PATH}` \
         from this binary's HTTPS client (`bench https-load`), the same for both: TLS 1.3 only, \
         one suite and one group offered, no resumption (every new connection is a full \
         handshake; both servers issue their default two session tickets, which the client \
         drops), the server's leaf pinned and its handshake signature verified. Negotiated with \
         both: {}. The gateway runs {} worker threads (its default, one per CPU; {} found), \
         nginx {} worker processes ({}); both write an access-log line per request. New \
         connections: {NEW_CONNECTION_LOOPS} loops, each a connection, a handshake and one \
         request with `Connection: close`. Latencies are closed-loop, one request after \
         another. Failed requests over the section: {}.\n",
        ingress.negotiated,
        ingress.workers,
        ingress.gateway_threads,
        ingress.workers,
        ingress.nginx_version,
        ingress.errors,
    )?;
    writeln!(
        out,
        "| figure | gateway | nginx | gateway / nginx | CPU per 1k (ms): gateway | nginx |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    for row in &ingress.rows {
        let (gateway_cpu, nginx_cpu) = row.cpu.map_or((String::new(), String::new()), |[g, n]| {
            (format!("{g:.1}"), format!("{n:.1}"))
        });
        writeln!(
            out,
            "| {} ({}) | {:.2} | {:.2} | {} | {gateway_cpu} | {nginx_cpu} |",
            row.name,
            row.unit,
            row.median(Proxy::Gateway),
            row.median(Proxy::Nginx),
            row.ratio(),
        )?;
    }
    writeln!(
        out,
        "\nRates: higher is better; latencies: lower is better. CPU: the proxy's pod (cgroup) per \
         1,000 requests or connections, median over the rounds."
    )
}
