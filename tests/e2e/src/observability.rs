//! Prometheus and the console beside a mesh, as Istio's Prometheus addon and Kiali run beside
//! istiod: Debian's `prometheus` runs on the control-plane host with a generated configuration
//! scraping every node agent, waypoint, ingress and egress gateway and the controller (each
//! runtime says at which addresses: [`Scraped`]), its storage in the mesh's directory;
//! the controller serves the console ([`CONSOLE_PORT`]) from it. Prometheus evaluates the
//! shipped alerting rules (`deploy/prometheus/alerts.yaml`), copied into its rules directory
//! ([`Observability::replace_rules`] puts another copy in their place). Both are reached from the
//! machine's loopback through [`HostForward`]s, since no testbed namespace is connected to the
//! root namespace.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use weft_testbed::{Host, Netns};

use crate::{Mesh, Process, STARTUP, WAYPOINT_METRICS_PORT};

/// Where Prometheus listens on the control-plane host (its loopback only).
pub const PROMETHEUS_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
/// The controller's console port on the control-plane host (Kiali's 20001).
pub const CONSOLE_PORT: u16 = 20001;
/// How often Prometheus scrapes (short, so tests and the demo see traffic within seconds).
const SCRAPE_INTERVAL: &str = "1s";
/// The agents' and the controller's metrics ports.
pub const AGENT_METRICS_PORT: u16 = 15020;
pub const CONTROLLER_MONITORING_PORT: u16 = 15014;
/// Prometheus' job names for the agents, the waypoint binary in either role (waypoints and
/// gateways, as the chart's `weft-waypoint` job finds both) and the controller.
pub const AGENT_JOB: &str = "weft-node-agent";
pub const WAYPOINT_JOB: &str = "weft-waypoint";
pub const CONTROLLER_JOB: &str = "weft-controller";
/// Connections a forward carries at once; more are refused.
const MAX_FORWARDED: usize = 32;

/// The file in a mesh's directory that says where its console and Prometheus are reached
/// (`weftctl dashboard` reads it).
pub const CONSOLE_FILE: &str = "console.json";

/// Prometheus scraping a mesh, and the loopback addresses of it and of the console.
pub struct Observability {
    prometheus: Process,
    /// The directory whose `*.yaml` Prometheus loads as rule files.
    rules_dir: PathBuf,
    prometheus_forward: HostForward,
    console_forward: HostForward,
    targets: usize,
}

impl Observability {
    /// Prometheus' address on the machine's loopback.
    pub fn prometheus(&self) -> SocketAddr {
        self.prometheus_forward.address()
    }

    /// The console's address on the machine's loopback.
    pub fn console(&self) -> SocketAddr {
        self.console_forward.address()
    }

    /// An instant query's result vector (Prometheus' `/api/v1/query`).
    pub fn query(&self, query: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let path = format!(
            "/api/v1/query?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("query", query)
                .finish()
        );
        let data = self.api(&path)?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `query`'s single value is at least `at_least` (Prometheus has scraped what
    /// a test did), for up to a minute.
    pub fn wait_for_value(&self, query: &str, at_least: f64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let value = self.value(query)?;
            if value >= at_least {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Prometheus has {value} of {at_least} for {query}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The `data` of a GET of Prometheus' HTTP API (`/api/v1/...`), failing on its errors.
    pub fn api(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = http_request(self.prometheus(), "GET", path, None)?;
        let mut answer: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("Prometheus answered {body}"))?;
        if status != 200 || answer["status"] != "success" {
            bail!("Prometheus answered {status} to {path}: {body}");
        }
        Ok(answer["data"].take())
    }

    /// Replaces the rule file `name` (`alerts.yaml` holds the shipped rules) with `yaml` and
    /// has Prometheus reload it (SIGHUP); returns once `loaded` holds of `/api/v1/rules`.
    pub fn replace_rules(
        &self,
        name: &str,
        yaml: &str,
        loaded: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<()> {
        std::fs::write(self.rules_dir.join(name), yaml)?;
        self.prometheus.signal(nix::sys::signal::Signal::SIGHUP)?;
        let deadline = Instant::now() + STARTUP;
        loop {
            let rules = self.api("/api/v1/rules")?;
            if loaded(&rules) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Prometheus did not load {name} as expected: {rules}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The single value of a query answering one series (0 when it answers none).
    pub fn value(&self, query: &str) -> anyhow::Result<f64> {
        let result = self.query(query)?;
        Ok(result
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0))
    }

    /// The targets whose last scrape succeeded (`up == 1`), as (job, instance).
    pub fn targets_up(&self) -> anyhow::Result<std::collections::BTreeSet<(String, String)>> {
        Ok(self
            .query("up == 1")?
            .iter()
            .map(|series| {
                let label = |name: &str| series["metric"][name].as_str().unwrap_or_default();
                (label("job").to_string(), label("instance").to_string())
            })
            .collect())
    }

    /// Waits until Prometheus has a sample of every target up.
    fn wait_targets_up(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP;
        loop {
            let up = self.value("count(up == 1)").unwrap_or(0.0);
            if up as usize >= self.targets {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Prometheus scrapes {up} of {} targets", self.targets);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Observability {
    fn drop(&mut self) {
        self.prometheus.stop();
    }
}

/// What Prometheus scrapes and where it runs: the runtime's part of [`Observability::start`].
pub struct Scraped<'a> {
    /// The control-plane host, where Prometheus and the controller's console run.
    pub host: &'a Host,
    /// The mesh's directory: Prometheus' configuration, storage, rules, log and
    /// [`CONSOLE_FILE`].
    pub dir: &'a Path,
    /// Every node agent's metrics address.
    pub agents: Vec<SocketAddr>,
    /// Every waypoint's metrics address.
    pub waypoints: Vec<SocketAddr>,
    /// Every ingress and egress gateway's metrics address (the waypoint binary in the gateway
    /// role serves Istio's metrics on the same port, `reporter="source"` for what it sends into
    /// the mesh).
    pub gateways: Vec<SocketAddr>,
    /// The controller's monitoring address, as reached from the control-plane host.
    pub controller: SocketAddr,
}

impl Scraped<'_> {
    /// The Prometheus configuration, and how many targets it scrapes.
    pub fn prometheus_config(&self) -> (String, usize) {
        let controller = [self.controller];
        let proxies: Vec<SocketAddr> = self
            .waypoints
            .iter()
            .chain(&self.gateways)
            .copied()
            .collect();
        let mut yaml = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\nrule_files: ['{}/*.yaml']\nscrape_configs:\n",
            self.rules_dir().display()
        );
        let jobs: [(&str, &[SocketAddr]); 3] = [
            (AGENT_JOB, &self.agents),
            (WAYPOINT_JOB, &proxies),
            (CONTROLLER_JOB, &controller),
        ];
        for (job, targets) in jobs {
            if targets.is_empty() {
                continue;
            }
            let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
            let _ = writeln!(
                yaml,
                "- job_name: {job}\n  metrics_path: /metrics\n  static_configs:\n  - targets: [{}]",
                list.join(", ")
            );
        }
        (yaml, self.agents.len() + proxies.len() + 1)
    }

    /// Where Prometheus' rule files are.
    fn rules_dir(&self) -> PathBuf {
        self.dir.join("prometheus-rules")
    }
}

impl Observability {
    /// Starts Prometheus on the control-plane host scraping `scraped`, and forwards it and the
    /// console to the machine's loopback; returns once every target has been scraped (`logs`
    /// says why not).
    pub fn start(scraped: &Scraped, logs: impl FnOnce() -> String) -> anyhow::Result<Self> {
        let (host, dir) = (scraped.host, scraped.dir);
        let (config, targets) = scraped.prometheus_config();
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let rules_dir = scraped.rules_dir();
        std::fs::create_dir_all(&rules_dir)?;
        let shipped = crate::dashboards::alert_rules_file();
        std::fs::copy(&shipped, rules_dir.join("alerts.yaml"))
            .with_context(|| format!("copying {}", shipped.display()))?;
        let mut command = host.netns.command_in_cgroup(&host.cgroup, "prometheus");
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS_ADDRESS}"))
            .arg("--storage.tsdb.retention.time=2h");
        let prometheus = Process::spawn("prometheus", command, dir.join("prometheus.log"))
            .context(
            "starting Debian's prometheus (`apt-get install prometheus`, or `cargo xtask setup`)",
        )?;
        let prometheus_forward = HostForward::start(host.netns.clone(), PROMETHEUS_ADDRESS)?;
        let console_forward = HostForward::start(
            host.netns.clone(),
            SocketAddr::new(std::net::IpAddr::V4(host.ip), CONSOLE_PORT),
        )?;
        let observability = Observability {
            prometheus,
            rules_dir,
            prometheus_forward,
            console_forward,
            targets,
        };
        observability.wait_targets_up().with_context(logs)?;
        std::fs::write(
            dir.join(CONSOLE_FILE),
            serde_json::to_string_pretty(&serde_json::json!({
                "console": format!("http://{}/", observability.console()),
                "prometheus": format!("http://{}/", observability.prometheus()),
            }))?,
        )?;
        Ok(observability)
    }
}

impl Mesh {
    /// What Prometheus scrapes on the testbed: every node's agent, every waypoint pod and the
    /// controller on the control-plane host; no gateway (a [`Mesh`] starts none of its own: the
    /// demo adds the ones its edge runs).
    pub fn scraped(&self) -> Scraped<'_> {
        let host = self.testbed.control_plane().expect("a control plane host");
        Scraped {
            host,
            dir: self.dir(),
            agents: self
                .testbed
                .nodes()
                .iter()
                .map(|n| SocketAddr::from((n.ip, AGENT_METRICS_PORT)))
                .collect(),
            waypoints: self
                .pods
                .iter()
                .filter(|p| p.is_waypoint())
                .map(|p| SocketAddr::from((self.testbed.pod(&p.name).ip, WAYPOINT_METRICS_PORT)))
                .collect(),
            gateways: Vec::new(),
            controller: SocketAddr::from((host.ip, CONTROLLER_MONITORING_PORT)),
        }
    }

    /// Starts Prometheus scraping the mesh, and the loopback forwards ([`Observability::start`]).
    pub fn start_observability(&self) -> anyhow::Result<Observability> {
        Observability::start(&self.scraped(), || self.logs())
    }
}

/// A listener on the machine's loopback whose connections are carried to `target` inside a
/// namespace (as `kubectl port-forward` reaches a pod). Stops when dropped.
pub struct HostForward {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl HostForward {
    pub fn start(netns: Netns, target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let address = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let open = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                if open.load(Ordering::Relaxed) >= MAX_FORWARDED {
                    continue;
                }
                let upstream =
                    netns.run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)));
                let Ok(Ok(upstream)) = upstream else { continue };
                open.fetch_add(1, Ordering::Relaxed);
                let open = open.clone();
                std::thread::spawn(move || {
                    splice(client, upstream);
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Ok(Self { address, stop })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for HostForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
    }
}

/// Copies both ways until either side closes.
fn splice(client: TcpStream, upstream: TcpStream) {
    let (Ok(mut client_read), Ok(mut upstream_read)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let (mut client_write, mut upstream_write) = (client, upstream);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut upstream_write);
        let _ = upstream_write.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut upstream_read, &mut client_write);
    let _ = client_write.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// One HTTP/1.1 request on its own connection (`Connection: close`): status and body. Small
/// and blocking, for Prometheus' API, the console's and WebDriver's, all on loopback.
pub fn http_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    // Read by the answer's framing: some servers (chromedriver) keep the connection open.
    let mut answer = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let context = || format!("{method} {path} at {address}");
    let (head, body_start) = loop {
        let read = stream.read(&mut buffer).with_context(context)?;
        if read == 0 {
            bail!(
                "{address} closed before its answer's head: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        answer.extend_from_slice(&buffer[..read]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break (
                String::from_utf8_lossy(&answer[..end]).into_owned(),
                end + 4,
            );
        }
    };
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head}"))?;
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_ascii_lowercase())
        })
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length: Option<usize> = header("content-length").and_then(|v| v.parse().ok());
    loop {
        let body = &answer[body_start..];
        let complete = match (chunked, length) {
            (true, _) => body.ends_with(b"0\r\n\r\n"),
            (false, Some(length)) => body.len() >= length,
            (false, None) => false,
        };
        if complete {
            break;
        }
        let read = stream.read(&mut buffer).with_context(context)?;
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
    }
    let body = String::from_utf8_lossy(&answer[body_start..]).into_owned();
    Ok((status, if chunked { dechunk(&body) } else { body }))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
