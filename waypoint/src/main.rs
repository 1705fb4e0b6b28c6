//! The waypoint binary: settings from the environment (and flags), the pod's network namespace,
//! the certificate from the controller's CA (a manager of one identity, as the node agent's
//! manages many), configuration over delta ADS, then the HBONE
//! listener (15008), metrics (15020), readiness (15021) and the admin page (127.0.0.1:15000,
//! `/config_dump`) until SIGTERM or Ctrl-C, then the drain, as Envoy's under pilot-agent:
//! readiness fails, the listeners keep accepting while every connection, old and new, is told
//! to go away (HTTP/1.1 responses carry `Connection: close`, HTTP/2 and the HBONE connections
//! get a GOAWAY), and the process exits when the termination period has run out.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use prost::Message as _;
use tracing::{Instrument as _, info, warn};
use waypoint::config::{self, CertificateSettings, Config, DrainEnd, Environment, Layered, Role};
use waypoint::gateway::credentials::CredentialSource;
use waypoint::gateway::credentials::xds::XdsCredentials;
use waypoint::upstream::OriginationCredentials;
use waypoint::{Waypoint, WaypointOptions, Workers};
use weft_hbone::admission::ConnectionLimits;
use weft_identity::{CertificateAuthority, CertificateSource, SpiffeId};
use weft_proxy_core::certificates::{CertificateManager, LocalCa};
use weft_proxy_core::config::shutdown_signal;
use weft_proxy_core::controller::ControllerAccess;
use weft_proxy_core::drain::{self, Drained};

/// The mesh's L7 proxy for the services that use it (`istio.io/use-waypoint`), or with
/// `PROXY_ROLE=gateway` an ingress gateway for Istio's `Gateway` resources. Every flag can
/// also be set through the environment variable named in its help; a flag given wins over its
/// variable, and an empty variable counts as unset. The settings every proxy has (`NODE_NAME`,
/// `TRUST_DOMAIN`, `ROOT_CERT_FILE`, `CERTIFICATE_TTL_SECONDS`, the admin, metrics and
/// readiness addresses, `WORKER_THREADS`, `MAX_CONNECTIONS`, `LOG_LEVEL`, ...) are read as the
/// node agent reads them.
#[derive(Debug, Parser)]
#[command(name = "waypoint", version, about, long_about = None)]
struct Args {
    /// Controller's xDS endpoint, or "none" [XDS_ADDRESS; default
    /// http://istiod.istio-system.svc:15010]
    #[arg(long)]
    controller: Option<String>,
    /// Waypoint name [WAYPOINT_NAME; default waypoint]
    #[arg(long)]
    name: Option<String>,
    /// Waypoint namespace [POD_NAMESPACE; default default]
    #[arg(long)]
    namespace: Option<String>,
    /// Network namespace to enter before opening sockets [NETNS]
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Certificate authority address [CA_ADDRESS]
    #[arg(long)]
    ca_address: Option<String>,
    /// File holding the CA bootstrap token [BOOTSTRAP_TOKEN_FILE]
    #[arg(long)]
    ca_token_file: Option<PathBuf>,
    /// Local CA directory for tests and demos [CA_DIR]
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Binary WaypointConfig applied at start [CONFIG_FILE]
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// The pod's IP, for the xDS node id [INSTANCE_IP; default: the pod's first address]
    #[arg(long)]
    instance_ip: Option<String>,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    dump_config: bool,
}

impl Args {
    /// The flags over the process environment.
    fn settings(&self) -> Layered<Environment> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        Layered::new(
            [
                (config::XDS_ADDRESS, self.controller.clone()),
                (config::WAYPOINT_NAME, self.name.clone()),
                (config::POD_NAMESPACE, self.namespace.clone()),
                (config::NETNS, path(&self.netns)),
                (config::CA_ADDRESS, self.ca_address.clone()),
                (config::BOOTSTRAP_TOKEN_FILE, path(&self.ca_token_file)),
                (config::CA_DIR, path(&self.ca_dir)),
                (config::CONFIG_FILE, path(&self.config_file)),
                (config::INSTANCE_IP, self.instance_ip.clone()),
            ],
            Environment,
        )
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::from_strings(&args.settings())?;
    if args.dump_config {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    config.proxy.init()?;
    // Entered before any thread starts, so every thread (created by this one) lives in the
    // pod's network namespace and every socket belongs to the pod.
    if let Some(netns) = &config.netns {
        let file = std::fs::File::open(netns)
            .with_context(|| format!("opening network namespace {}", netns.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering network namespace {}", netns.display()))?;
        info!(netns = %netns.display(), "entered the pod network namespace");
    }
    // Workers are started here too, after the namespace, which threads inherit.
    let workers = Workers::start(config.proxy.worker_threads, "waypoint")
        .context("starting the worker threads")?;
    info!(workers = workers.len(), "worker threads started");
    // The control plane (certificates, xDS, the admin, metrics and readiness ports, accepting
    // HBONE connections) runs on this thread; connections are served on the workers.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(config, workers))
}

/// The waypoint's certificates: a manager of its one identity, signed by the controller's CA
/// (with `controller`'s credential) or by a CA directory of its own.
fn certificates(
    config: &Config,
    controller: Option<&ControllerAccess>,
) -> anyhow::Result<Arc<dyn CertificateSource>> {
    let proxy = &config.proxy;
    match (&config.certificate, controller) {
        (CertificateSettings::LocalCaDir(dir), _) => {
            let ca = CertificateAuthority::load(dir)
                .with_context(|| format!("loading the CA from {}", dir.display()))?;
            let manager =
                CertificateManager::new(LocalCa(Arc::new(ca)), proxy.certificate_ttl, None);
            Ok(manager.source())
        }
        (CertificateSettings::Ca, Some(controller)) => {
            let manager = CertificateManager::new(
                controller.ca_client(&proxy.ca_address, proxy.node_name.clone())?,
                proxy.certificate_ttl,
                controller.trust_roots()?,
            );
            Ok(manager.source())
        }
        (CertificateSettings::Ca, None) => anyhow::bail!("no credential for the CA"),
    }
}

async fn run(config: Config, workers: Workers) -> anyhow::Result<()> {
    let proxy = &config.proxy;
    let identity = SpiffeId::new(
        &proxy.trust_domain,
        &config.namespace,
        &config.service_account,
    )?;
    // The credential that obtains the certificate also admits the discovery stream, and the
    // roots that verify the controller's CA port also verify its xDS port.
    let controller = match config.certificate {
        CertificateSettings::Ca => Some(ControllerAccess::from_files(
            &proxy.bootstrap_token_file,
            proxy.root_cert_file.as_deref(),
        )?),
        CertificateSettings::LocalCaDir(_) => None,
    };
    let certificates = certificates(&config, controller.as_ref())?;
    // Serving starts with a certificate: the manager retries with backoff for a while before
    // this gives up.
    certificates.fetch(&identity).await?;
    info!(%identity, "waypoint certificate obtained");
    let (trigger, drain) = drain::channel();
    // The listeners hold no watch: they accept until the process exits.
    drop(drain);
    let pod_ip = config.pod_ip(&interface_addresses());
    // Credentials the controller serves (Kubernetes mode): a gateway's servers', and the TLS
    // origination credentials of a proxy's DestinationRules.
    let delivered_credentials = XdsCredentials::default();
    let waypoint = Waypoint::new(WaypointOptions {
        node_id: pod_ip.map(|ip| config.node_id(ip)).unwrap_or_default(),
        instance_ip: pod_ip,
        workers: Some(workers),
        drain: trigger.status(),
        upgrades: config.upgrades.clone(),
        connection_limits: ConnectionLimits::for_process(
            proxy.max_connections,
            proxy.max_connections_per_source,
        )
        .context("raising RLIMIT_NOFILE")?,
        origination_credentials: OriginationCredentials {
            directory: config.origination_credentials.as_deref().map(Arc::from),
            delivered: delivered_credentials.clone(),
        },
        dns_resolv_conf: config.dns_resolv_conf.clone(),
        ..WaypointOptions::new(identity, certificates.clone())
    });
    if let Some(file) = &config.config_file {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let initial = weft_proto::waypoint::WaypointConfig::decode(bytes.as_slice())
            .with_context(|| format!("decoding {}", file.display()))?;
        waypoint
            .apply_config(initial)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    }
    let client = match config.controller() {
        Some(address) => {
            let pod_ip = pod_ip
                .context("no address for the xDS node id: set INSTANCE_IP to the pod's IP")?;
            let node = weft_proto::envoy::config::core::v3::Node {
                id: config.node_id(pod_ip),
                cluster: config.name.clone(),
                ..Default::default()
            };
            info!(node = %node.id, controller = %address, "connecting to the controller");
            let target = match &controller {
                Some(controller) => controller.xds_target(address)?,
                None => weft_xds::Target::for_uri(address, None)?,
            };
            let client = weft_xds::DeltaClient::new(target, node)
                .with_backoff(proxy.xds_backoff())
                .subscribe(
                    weft_proto::SOURCE_WORKLOAD_TYPE_URL,
                    waypoint.store().source_handler(),
                )
                .subscribe_names(
                    weft_proto::WAYPOINT_CONFIG_TYPE_URL,
                    vec![config.resource_name()],
                    waypoint.store().xds_handler(),
                )
                // Every credential the controller lets the proxy have: a gateway's servers',
                // and the credentials its clusters originate TLS with.
                .subscribe(weft_proto::SECRET_TYPE_URL, delivered_credentials.handler());
            Some(match &controller {
                Some(controller) => client.with_bearer_token(controller.bearer_token()),
                None => client,
            })
        }
        None => None,
    };
    if let Some(client) = &client {
        tokio::spawn(weft_proxy_core::certificates::retry_on_reconnect(
            certificates,
            client.state(),
        ));
    }
    // A waypoint takes the mesh's traffic over HBONE; a gateway the edge's on the ports its
    // configuration names.
    let hbone = match &config.role {
        Role::Waypoint => Some(waypoint.bind_hbone(config.hbone_address).await?),
        Role::Gateway { .. } => None,
    };
    let metrics = waypoint.bind_metrics(proxy.metrics_address).await?;
    let readiness = waypoint.bind_readiness(proxy.readiness_address).await?;
    let admin = waypoint
        .bind_admin(
            proxy.admin_address,
            client.as_ref().map(weft_xds::DeltaClient::state),
            serde_json::to_value(&config)?,
        )
        .await?;
    info!(role = ?config.role, hbone = %config.hbone_address, metrics = %proxy.metrics_address, readiness = %proxy.readiness_address, admin = %proxy.admin_address, "waypoint listening");
    // Readiness, metrics and the admin page answer until the process exits (readiness
    // "draining" during the drain); they hold no drain watch, so they never delay it.
    tokio::spawn(metrics.run());
    tokio::spawn(readiness.run());
    tokio::spawn(admin.run());
    tokio::spawn(
        waypoint::dns::run(waypoint.store().clone(), config.dns_resolv_conf.clone())
            .instrument(tracing::info_span!("endpoint_names")),
    );
    match (hbone, &config.role) {
        (Some(hbone), _) => {
            tokio::spawn(hbone.run(trigger.source()));
        }
        (None, Role::Gateway { credentials_dir }) => {
            let edge = waypoint.edge_listeners(
                CredentialSource {
                    directory: credentials_dir.clone(),
                    xds: delivered_credentials.clone(),
                },
                config.gateway_address,
            );
            tokio::spawn(edge.run(trigger.source()));
        }
        (None, Role::Waypoint) => {}
    }
    if let Some(client) = client {
        // Configuration keeps arriving while requests drain; the stream ends with the process.
        tokio::spawn(async move {
            if let Err(error) = client.run_until(std::future::pending()).await {
                warn!(%error, "xds client stopped");
            }
        });
    }
    shutdown_signal().await;
    // Envoy under pilot-agent: `drain_listeners?graceful` with `--drain-strategy immediate`,
    // then the whole `terminationDrainDuration` before the exit. Clients move to the other
    // replicas while the endpoint's removal reaches every agent; one that has not heard yet
    // is still served here.
    // Under `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`, pilot-agent exits once no connection is left
    // after its `MINIMUM_DRAIN_DURATION`, still within the deadline.
    let period = config.proxy.termination_deadline;
    info!(
        ?period,
        drain_end = ?config.drain_end,
        "draining: still accepting, every connection told to go away"
    );
    let drained = match config.drain_end {
        DrainEnd::Deadline => trigger.drain_for(period).await,
        DrainEnd::NoConnectionLeft { minimum } => trigger.drain_until_idle(minimum, period).await,
    };
    match drained {
        Drained::Complete => info!("drained"),
        Drained::DeadlinePassed { remaining } => {
            warn!(
                remaining,
                "termination period over: closing the connections left"
            );
        }
    }
    Ok(())
}

/// The addresses of this network namespace's interfaces (the pod's), in the kernel's order.
fn interface_addresses() -> Vec<std::net::IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter_map(|interface| interface.address)
        .filter_map(|address| {
            address
                .as_sockaddr_in()
                .map(|v4| std::net::IpAddr::V4(v4.ip()))
                .or_else(|| {
                    address
                        .as_sockaddr_in6()
                        .map(|v6| std::net::IpAddr::V6(v6.ip()))
                })
        })
        .collect()
}
