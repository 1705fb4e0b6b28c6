//! The node agent binary: configuration, then every long-running part, until SIGTERM/SIGINT;
//! then the drain: readiness fails, every pod's listeners close (the pinned capture stays: the
//! pods' new connections go to the next agent where one listens beside this one, a rolling
//! update, and fail closed until one serves them otherwise), connections in
//! flight finish within the termination deadline (inbound HBONE connections get a GOAWAY), and
//! the process exits.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::Parser;
use node_agent::{
    admin,
    agent::Agent,
    config::{self, Config, Environment, Layered},
    dns_proxy::server::DnsSettings,
    ebpf::{
        Enroller, OriginalDst, Redirection, RedirectionConfig, cgroup2_root, check_kernel_features,
        netns_cookie_of,
    },
    enrollment::EnrollmentServer,
    proxy::{ConnectionLimits, Workers},
    xds,
};
use weft_proxy_core::{
    certificates::CertificateManager,
    config::shutdown_signal,
    controller::ControllerAccess,
    drain::{self, Drained},
};

/// The mesh's node agent: one per node, carrying enrolled pods' TCP over mutual TLS.
///
/// Every option can also be set through the environment variable named in brackets; an option
/// given wins over its variable, and an empty variable counts as unset.
#[derive(Debug, Parser)]
#[command(name = "node-agent", version, about, long_about = None)]
struct Args {
    /// This node's name (required) [NODE_NAME]
    #[arg(long)]
    node_name: Option<String>,
    /// Cluster id reported in metrics [CLUSTER_ID]
    #[arg(long)]
    cluster_id: Option<String>,
    /// The mesh trust domain [TRUST_DOMAIN]
    #[arg(long)]
    trust_domain: Option<String>,
    /// The controller's xDS endpoint, e.g. http://10.0.0.2:15010 [XDS_ADDRESS]
    #[arg(long)]
    xds_address: Option<String>,
    /// The CA endpoint (default: the xDS endpoint) [CA_ADDRESS]
    #[arg(long)]
    ca_address: Option<String>,
    /// File with this node's bootstrap token [BOOTSTRAP_TOKEN_FILE]
    #[arg(long)]
    bootstrap_token_file: Option<String>,
    /// PEM trust roots to use instead of the CA's [ROOT_CERT_FILE]
    #[arg(long)]
    root_cert_file: Option<String>,
    /// Workload certificate lifetime in seconds [CERTIFICATE_TTL_SECONDS]
    #[arg(long)]
    certificate_ttl_seconds: Option<String>,
    /// Unix socket on which pods are enrolled [ENROLLMENT_SOCKET]
    #[arg(long)]
    enrollment_socket: Option<String>,
    /// bpffs directory for pinned programs and maps [PIN_DIR]
    #[arg(long)]
    pin_dir: Option<String>,
    /// The cgroup v2 hierarchy's root (default: its mount, from /proc/self/mountinfo)
    /// [CGROUP_ROOT]
    #[arg(long)]
    cgroup_root: Option<String>,
    /// The node's own network namespace, whose connections to pods (the kubelet's probes) are
    /// let through (default: the agent's own) [NODE_NETNS]
    #[arg(long)]
    node_netns: Option<String>,
    /// Same-node acceleration (sockops + sk_msg): true or false [ACCELERATION]
    #[arg(long)]
    acceleration: Option<String>,
    /// Admin address (config_dump), localhost only [ADMIN_ADDRESS]
    #[arg(long)]
    admin_address: Option<String>,
    /// Prometheus metrics address [METRICS_ADDRESS]
    #[arg(long)]
    metrics_address: Option<String>,
    /// Readiness address [READINESS_ADDRESS]
    #[arg(long)]
    readiness_address: Option<String>,
    /// First delay before reconnecting to the controller, in milliseconds (doubles each time)
    /// [XDS_RETRY_INITIAL_MS]
    #[arg(long)]
    xds_retry_initial_ms: Option<String>,
    /// Longest delay between reconnects, in milliseconds [XDS_RETRY_MAX_MS]
    #[arg(long)]
    xds_retry_max_ms: Option<String>,
    /// Log filter (`info`, `node_agent=debug,access=info`); RUST_LOG, when set, wins [LOG_LEVEL]
    #[arg(long)]
    log_level: Option<String>,
    /// Log format: text or json [LOG_FORMAT]
    #[arg(long)]
    log_format: Option<String>,
    /// Proxy worker threads (thread per core: each serves the connections it accepted)
    /// [WORKER_THREADS]
    #[arg(long)]
    worker_threads: Option<String>,
    /// Connections proxied at once (default: what the descriptor limit allows)
    /// [MAX_CONNECTIONS]
    #[arg(long)]
    max_connections: Option<String>,
    /// Connections one source address may hold on one pod's HBONE port
    /// [MAX_CONNECTIONS_PER_SOURCE]
    #[arg(long)]
    max_connections_per_source: Option<String>,
    /// Receive only this node's workloads up front, other addresses at the first connection
    /// to them (true or false) [XDS_ON_DEMAND]
    #[arg(long)]
    xds_on_demand: Option<String>,
    /// In on-demand mode, how long a fetched name stays subscribed unused (30m; 0s: while
    /// the agent runs) [XDS_ON_DEMAND_IDLE]
    #[arg(long)]
    xds_on_demand_idle: Option<String>,
}

impl Args {
    /// The flags over the process environment.
    fn settings(self) -> Layered<Environment> {
        Layered::new(
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
                (config::XDS_ON_DEMAND, self.xds_on_demand),
                (config::XDS_ON_DEMAND_IDLE, self.xds_on_demand_idle),
            ],
            Environment,
        )
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
    if let Err(error) = config.proxy.init() {
        eprintln!("node-agent: configuration: {error}");
        return ExitCode::from(2);
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

async fn run(config: Config) -> anyhow::Result<()> {
    let proxy = &config.proxy;
    tracing::info!(node = %config.node_name(), xds = %proxy.xds_address, "node agent starting");
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

    let controller =
        ControllerAccess::from_files(&proxy.bootstrap_token_file, proxy.root_cert_file.as_deref())?;
    let certificates = CertificateManager::new(
        controller.ca_client(&proxy.ca_address, proxy.node_name.clone())?,
        proxy.certificate_ttl,
        controller.trust_roots()?,
    );

    let workers =
        Workers::start(proxy.worker_threads, "proxy").context("starting the proxy workers")?;
    let limits =
        ConnectionLimits::for_process(proxy.max_connections, proxy.max_connections_per_source)
            .context("raising RLIMIT_NOFILE")?;
    let (trigger, drain_watch) = drain::channel();
    // Only the pods' listeners and connections take part in the drain.
    drop(drain_watch);
    let Agent {
        store,
        pods,
        registry,
    } = Agent::build(
        certificates.source(),
        redirection.clone() as Arc<dyn OriginalDst>,
    )
    .trust_domain(proxy.trust_domain.clone())
    .workers(workers, limits)
    .capture(redirection.clone() as Arc<dyn Enroller>)
    .drain(trigger.source())
    .dns(DnsSettings::new(
        config.cluster_domain.clone(),
        config.dns_resolv_conf.clone(),
    ))
    .start()
    .context("opening the agent's network namespace")?;

    // The CA's credential also admits the discovery stream (the controller checks it in
    // Kubernetes mode), read for every connection.
    let client = xds::client(
        controller.xds_target(&proxy.xds_address)?,
        config.node_name(),
        &proxy.cluster_id,
        &store,
        config.xds_on_demand,
    )
    .with_backoff(proxy.xds_backoff())
    .with_bearer_token(controller.bearer_token());
    let xds_state = client.state();
    tokio::spawn(weft_proxy_core::certificates::retry_on_reconnect(
        certificates.source(),
        xds_state.clone(),
    ));
    let (shutdown_sender, shutdown) = tokio::sync::watch::channel(false);
    let mut xds_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let _ = client
            .run_until(async move {
                let _ = xds_shutdown.wait_for(|s| *s).await;
            })
            .await;
    });

    // On-demand mode: names unused for their idle period are unsubscribed.
    if let (true, Some(idle)) = (config.xds_on_demand, config.xds_on_demand_idle) {
        tokio::spawn(store.clone().release_idle_forever(idle));
    }

    // ServiceEntry endpoints given by name: resolved off the connection path.
    tokio::spawn(node_agent::dns::run(store.clone()));

    let endpoints = admin::endpoints(
        config.clone(),
        store.clone(),
        Arc::new(move || certificates.describe()),
        xds_state.clone(),
        registry,
        trigger.status(),
        {
            let pods = pods.clone();
            Arc::new(move || pods.unserved())
        },
    );
    admin::serve(&config, endpoints).await?;

    let enrollment = EnrollmentServer::bind(&config.enrollment_socket)
        .with_context(|| format!("enrollment socket {}", config.enrollment_socket.display()))?;
    tracing::info!(socket = %config.enrollment_socket.display(), "waiting for enrollments");
    let enrollment_pods = pods.clone();
    tokio::spawn(async move {
        if let Err(error) = enrollment.run(enrollment_pods.as_ref()).await {
            tracing::error!(%error, "enrollment socket failed");
        }
    });

    // Start-up (the eBPF object, the first configuration, the pods already on the node)
    // allocates and frees the most, and touches code it will not run again: once configured,
    // and again once the first enrollment snapshot is served, the agent gives back what it no
    // longer holds.
    let mut synced = xds_state.clone();
    let mut snapshots = pods.snapshots();
    tokio::spawn(async move {
        let start_up = std::time::Duration::from_secs(60);
        let _ = tokio::time::timeout(start_up, synced.wait_for(|state| state.synced)).await;
        release_startup_pages("configured");
        let _ = tokio::time::timeout(start_up, snapshots.wait_for(|applied| *applied > 0)).await;
        release_startup_pages("pods on the node served");
    });

    shutdown_signal().await;
    let deadline = proxy.termination_deadline;
    tracing::info!(
        ?deadline,
        "draining: listeners closed, connections in flight finishing; enrolled pods stay \
         captured, served by the next agent where one took them over, else failing closed \
         until one does"
    );
    match trigger.drain(deadline).await {
        Drained::Complete => tracing::info!("drained"),
        Drained::DeadlinePassed { remaining } => {
            tracing::warn!(
                remaining,
                "termination deadline passed: closing what is left"
            );
        }
    }
    let _ = shutdown_sender.send(true);
    drop(pods);
    Ok(())
}

/// [`node_agent::memory::release_startup_pages`], logged.
fn release_startup_pages(after: &str) {
    match node_agent::memory::release_startup_pages() {
        Ok(released) => tracing::debug!(
            after,
            mappings = released.mappings,
            kib = released.kib,
            "released start-up pages"
        ),
        Err(error) => tracing::warn!(%error, "could not release start-up pages"),
    }
}
