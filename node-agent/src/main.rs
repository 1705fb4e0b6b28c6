//! The node agent binary: configuration, then every long-running part, until SIGTERM/SIGINT.

use std::{collections::BTreeMap, process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::Parser;
use http::StatusCode;
use node_agent::{
    admin::{AdminServer, Endpoints},
    certificates::{CaToken, CertificateManager, GrpcCaClient},
    config::{self, Config, LogFormat},
    ebpf::{
        Enroller, OriginalDst, Redirection, RedirectionConfig, cgroup2_root, check_kernel_features,
        netns_cookie_of,
    },
    enrollment::EnrollmentServer,
    metrics::Metrics,
    netns::PodNetns,
    pods::PodManager,
    proxy::{ConnectionLimits, ProxyContext, Workers},
    state::WorkloadStore,
    xds,
};
use weft_hbone::admission;
use weft_identity::TrustRoots;

/// The mesh's node agent: one per node, carrying enrolled pods' TCP over mutual TLS.
///
/// Every option can also be set through the environment variable named in brackets.
#[derive(Debug, Parser)]
#[command(name = "node-agent", version, about, long_about = None)]
struct Args {
    /// This node's name (required).
    #[arg(long, env = config::NODE_NAME)]
    node_name: Option<String>,
    /// Cluster id reported in metrics.
    #[arg(long, env = config::CLUSTER_ID)]
    cluster_id: Option<String>,
    /// The mesh trust domain.
    #[arg(long, env = config::TRUST_DOMAIN)]
    trust_domain: Option<String>,
    /// The controller's xDS endpoint, e.g. http://10.0.0.2:15010.
    #[arg(long, env = config::XDS_ADDRESS)]
    xds_address: Option<String>,
    /// The CA endpoint (default: the xDS endpoint).
    #[arg(long, env = config::CA_ADDRESS)]
    ca_address: Option<String>,
    /// File with this node's bootstrap token.
    #[arg(long, env = config::BOOTSTRAP_TOKEN_FILE)]
    bootstrap_token_file: Option<String>,
    /// PEM trust roots to use instead of the CA's.
    #[arg(long, env = config::ROOT_CERT_FILE)]
    root_cert_file: Option<String>,
    /// Workload certificate lifetime in seconds.
    #[arg(long, env = config::CERTIFICATE_TTL_SECONDS)]
    certificate_ttl_seconds: Option<String>,
    /// Unix socket on which pods are enrolled.
    #[arg(long, env = config::ENROLLMENT_SOCKET)]
    enrollment_socket: Option<String>,
    /// bpffs directory for pinned programs and maps.
    #[arg(long, env = config::PIN_DIR)]
    pin_dir: Option<String>,
    /// The cgroup v2 hierarchy's root (default: its mount, from /proc/self/mountinfo).
    #[arg(long, env = config::CGROUP_ROOT)]
    cgroup_root: Option<String>,
    /// The node's own network namespace, whose connections to pods (the kubelet's probes) are
    /// let through (default: the agent's own).
    #[arg(long, env = config::NODE_NETNS)]
    node_netns: Option<String>,
    /// Same-node acceleration (sockops + sk_msg): true or false.
    #[arg(long, env = config::ACCELERATION)]
    acceleration: Option<String>,
    /// Admin address (config_dump), localhost only.
    #[arg(long, env = config::ADMIN_ADDRESS)]
    admin_address: Option<String>,
    /// Prometheus metrics address.
    #[arg(long, env = config::METRICS_ADDRESS)]
    metrics_address: Option<String>,
    /// Readiness address.
    #[arg(long, env = config::READINESS_ADDRESS)]
    readiness_address: Option<String>,
    /// First delay before reconnecting to the controller, in milliseconds (doubles each time).
    #[arg(long, env = config::XDS_RETRY_INITIAL_MS)]
    xds_retry_initial_ms: Option<String>,
    /// Longest delay between reconnects, in milliseconds.
    #[arg(long, env = config::XDS_RETRY_MAX_MS)]
    xds_retry_max_ms: Option<String>,
    /// Log filter (`info`, `node_agent=debug,access=info`); RUST_LOG, when set, wins.
    #[arg(long, env = config::LOG_LEVEL)]
    log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = config::LOG_FORMAT)]
    log_format: Option<String>,
    /// Proxy worker threads (thread per core: each serves the connections it accepted).
    #[arg(long, env = config::WORKER_THREADS)]
    worker_threads: Option<String>,
    /// Connections proxied at once (default: what the descriptor limit allows).
    #[arg(long, env = config::MAX_CONNECTIONS)]
    max_connections: Option<String>,
    /// Connections one source address may hold on one pod's HBONE port.
    #[arg(long, env = config::MAX_CONNECTIONS_PER_SOURCE)]
    max_connections_per_source: Option<String>,
}

impl Args {
    fn settings(self) -> BTreeMap<String, String> {
        [
            (config::NODE_NAME, self.node_name),
            (config::CLUSTER_ID, self.cluster_id),
            (config::TRUST_DOMAIN, self.trust_domain),
            (config::XDS_ADDRESS, self.xds_address),
            (config::CA_ADDRESS, self.ca_address),
            (config::BOOTSTRAP_TOKEN_FILE, self.bootstrap_token_file),
            (config::ROOT_CERT_FILE, self.root_cert_file),
            (
                config::CERTIFICATE_TTL_SECONDS,
                self.certificate_ttl_seconds,
            ),
            (config::ENROLLMENT_SOCKET, self.enrollment_socket),
            (config::PIN_DIR, self.pin_dir),
            (config::CGROUP_ROOT, self.cgroup_root),
            (config::NODE_NETNS, self.node_netns),
            (config::ACCELERATION, self.acceleration),
            (config::ADMIN_ADDRESS, self.admin_address),
            (config::METRICS_ADDRESS, self.metrics_address),
            (config::READINESS_ADDRESS, self.readiness_address),
            (config::XDS_RETRY_INITIAL_MS, self.xds_retry_initial_ms),
            (config::XDS_RETRY_MAX_MS, self.xds_retry_max_ms),
            (config::LOG_LEVEL, self.log_level),
            (config::LOG_FORMAT, self.log_format),
            (config::WORKER_THREADS, self.worker_threads),
            (config::MAX_CONNECTIONS, self.max_connections),
            (
                config::MAX_CONNECTIONS_PER_SOURCE,
                self.max_connections_per_source,
            ),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name.to_string(), v)))
        .collect()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::from_strings(&args.settings()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("node-agent: configuration: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => match tracing_subscriber::EnvFilter::try_new(&config.log_level) {
            Ok(filter) => filter,
            Err(error) => {
                eprintln!(
                    "node-agent: configuration: {}={:?}: {error}",
                    config::LOG_LEVEL,
                    config.log_level
                );
                return ExitCode::from(2);
            }
        },
    };
    // Colour codes only for a terminal: in a log file they are noise, and writing them is a
    // measurable part of each connection's access-log event.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    // The control plane (xDS, certificates, enrollment, admin) runs on this thread; pods'
    // connections run on the proxy workers, thread per core (`proxy::Workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("node-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The descriptor limit raised to the hard limit (a soft limit of 1024 would be a few hundred
/// connections), and the connection limits that follow from it.
fn connection_limits(config: &Config) -> anyhow::Result<ConnectionLimits> {
    let descriptors = admission::raise_open_files_limit().context("raising RLIMIT_NOFILE")?;
    let total = config
        .max_connections
        .unwrap_or_else(|| admission::connection_budget_for(descriptors));
    tracing::info!(
        open_files = descriptors,
        max_connections = total,
        max_connections_per_source = config.max_connections_per_source,
        "connection limits"
    );
    Ok(ConnectionLimits {
        budget: admission::ConnectionBudget::new(total),
        per_source: config.max_connections_per_source,
    })
}

async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(node = %config.node_name, xds = %config.xds_address, "node agent starting");
    let cgroup_root = match &config.cgroup_root {
        Some(root) => root.clone(),
        None => cgroup2_root().map_err(|e| {
            anyhow::anyhow!(
                "finding the cgroup v2 root (set {}): {e}",
                config::CGROUP_ROOT
            )
        })?,
    };
    let features = check_kernel_features(&cgroup_root);
    anyhow::ensure!(
        features.is_complete(),
        "this kernel cannot run the mesh's redirection: {features}"
    );
    let node_netns = netns_cookie_of(&config.node_netns).with_context(|| {
        format!(
            "the node's network namespace {} ({})",
            config.node_netns.display(),
            config::NODE_NETNS
        )
    })?;
    // Adopts what an earlier run pinned: enrolled pods stay captured (and fail closed) across
    // restarts.
    let redirection = Arc::new(
        Redirection::open(RedirectionConfig {
            pin_root: config.pin_dir.clone(),
            acceleration: config.acceleration,
            cgroup_root,
            node_netns,
        })
        .context("loading the eBPF redirection")?,
    );

    // Read now to fail early; read again for every request, as a projected token rotates.
    std::fs::read_to_string(&config.bootstrap_token_file)
        .with_context(|| format!("reading {}", config.bootstrap_token_file.display()))?;
    let token = CaToken::File(config.bootstrap_token_file.clone());
    let roots_pem = match &config.root_cert_file {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
    };
    let roots = match (&roots_pem, &config.root_cert_file) {
        (Some(pem), Some(path)) => Some(
            TrustRoots::from_pem(pem)
                .with_context(|| format!("trust roots in {}", path.display()))?,
        ),
        _ => None,
    };
    let ca = GrpcCaClient::connect(
        &config.ca_address,
        roots_pem.as_deref(),
        token.clone(),
        config.node_name.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    let certificates = CertificateManager::new(ca, config.certificate_ttl, roots);

    let store = WorkloadStore::new();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let registry = Arc::new(registry);
    let workers =
        Workers::start(config.worker_threads, "proxy").context("starting the proxy workers")?;
    let context = ProxyContext::with_workers(
        store.clone(),
        Arc::new(certificates.clone()),
        metrics,
        redirection.clone() as Arc<dyn OriginalDst>,
        config.trust_domain.clone(),
        workers,
        connection_limits(&config)?,
    );
    let pods = Arc::new(PodManager::new(
        context,
        PodNetns::current().context("opening the agent's network namespace")?,
        Some(redirection.clone() as Arc<dyn Enroller>),
    ));

    let target = weft_xds::Target::for_uri(&config.xds_address, roots_pem.as_deref())
        .map_err(|e| anyhow::anyhow!("xDS address {}: {e}", config.xds_address))?;
    // The CA's credential also admits the discovery stream (the controller checks it in
    // Kubernetes mode), read for every connection.
    let client = xds::client(target, &config.node_name, &config.cluster_id, &store)
        .with_backoff(config.xds_backoff())
        .with_bearer_token(Arc::new(move || token.current()));
    let xds_state = client.state();
    let (shutdown_sender, shutdown) = tokio::sync::watch::channel(false);
    let mut xds_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let _ = client
            .run_until(async move {
                let _ = xds_shutdown.wait_for(|s| *s).await;
            })
            .await;
    });

    let dump: Endpoints = {
        let (config, store, certificates, xds_state) = (
            config.clone(),
            store.clone(),
            certificates.clone(),
            xds_state.clone(),
        );
        Arc::new(move |path| match path {
            "/config_dump" => {
                let state = xds_state.borrow().clone();
                let dump = ConfigDump {
                    config: &config,
                    xds: XdsDump {
                        connected: state.connected,
                        synced: state.synced,
                        last_error: state.last_error,
                    },
                    state: store.dump(),
                    certificates: certificates.describe(),
                };
                Some(match serde_json::to_string_pretty(&dump) {
                    Ok(body) => (StatusCode::OK, "application/json", body),
                    Err(error) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("config dump: {error}\n"),
                    ),
                })
            }
            "/healthz" => Some((StatusCode::OK, "text/plain", "ok\n".into())),
            _ => None,
        })
    };
    let metrics_endpoint: Endpoints = {
        let registry = registry.clone();
        Arc::new(move |path| {
            (path == "/metrics" || path == "/stats/prometheus").then(|| {
                let mut text = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
                (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                )
            })
        })
    };
    let readiness: Endpoints = {
        let xds_state = xds_state.clone();
        Arc::new(move |path| {
            (path == "/healthz/ready").then(|| {
                if xds_state.borrow().synced {
                    (StatusCode::OK, "text/plain", "ready\n".into())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "waiting for configuration\n".into(),
                    )
                }
            })
        })
    };
    for (address, endpoints) in [
        (config.admin_address, dump),
        (config.metrics_address, metrics_endpoint),
        (config.readiness_address, readiness),
    ] {
        let server = AdminServer::bind(address, endpoints)
            .await
            .with_context(|| format!("binding {address}"))?;
        tokio::spawn(server.run());
    }

    let enrollment = EnrollmentServer::bind(&config.enrollment_socket)
        .with_context(|| format!("enrollment socket {}", config.enrollment_socket.display()))?;
    tracing::info!(socket = %config.enrollment_socket.display(), "waiting for enrollments");
    let enrollment_pods = pods.clone();
    tokio::spawn(async move {
        if let Err(error) = enrollment.run(enrollment_pods.as_ref()).await {
            tracing::error!(%error, "enrollment socket failed");
        }
    });

    // Start-up (the eBPF object, the first configuration) allocates and frees the most; once
    // configured, the agent gives back what it no longer holds.
    let mut synced = xds_state.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            synced.wait_for(|state| state.synced),
        )
        .await;
        match node_agent::memory::release_startup_pages() {
            Ok(released) => tracing::debug!(
                mappings = released.mappings,
                kib = released.kib,
                "released start-up pages"
            ),
            Err(error) => tracing::warn!(%error, "could not release start-up pages"),
        }
    });

    wait_for_signal().await;
    tracing::info!("shutting down; enrolled pods stay captured and fail closed until restart");
    let _ = shutdown_sender.send(true);
    drop(pods);
    Ok(())
}

/// What `/config_dump` shows: configuration, xDS state, the store and certificates (no keys).
#[derive(serde::Serialize)]
struct ConfigDump<'a> {
    config: &'a Config,
    xds: XdsDump,
    state: node_agent::state::StoreDump,
    certificates: Vec<node_agent::certificates::CertificateState>,
}

#[derive(serde::Serialize)]
struct XdsDump {
    connected: bool,
    synced: bool,
    last_error: Option<String>,
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
