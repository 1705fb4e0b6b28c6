//! The waypoint binary: settings from the environment (and flags), the pod's network namespace,
//! the certificate from the controller's CA, configuration over delta ADS, then the HBONE
//! listener (15008), metrics (15020), readiness (15021) and the admin page (127.0.0.1:15000,
//! `/config_dump`) until SIGTERM or Ctrl-C.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use prost::Message as _;
use tokio::sync::watch;
use tracing::{info, warn};
use waypoint::ca_client::{self, CaClientConfig};
use waypoint::config::{self, CertificateSettings, Config, Environment, Strings};
use waypoint::{RotatingCertificate, TlsMaterial, Waypoint, WaypointOptions, Workers};
use weft_hbone::admission;
use weft_identity::{CertificateAuthority, SpiffeId};

/// The mesh's L7 proxy for the services that use it (`istio.io/use-waypoint`). Every flag can
/// also be set through the environment variable named in its help.
#[derive(Debug, Parser)]
#[command(name = "waypoint", version, about, long_about = None)]
struct Args {
    /// Controller's xDS endpoint, or "none" [WEFT_CONTROLLER; default http://127.0.0.1:15010]
    #[arg(long)]
    controller: Option<String>,
    /// Waypoint name [WEFT_WAYPOINT_NAME; default waypoint]
    #[arg(long)]
    name: Option<String>,
    /// Waypoint namespace [WEFT_WAYPOINT_NAMESPACE; default default]
    #[arg(long)]
    namespace: Option<String>,
    /// Network namespace to enter before opening sockets [WEFT_NETNS]
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Certificate authority address [WEFT_CA_ADDRESS]
    #[arg(long)]
    ca_address: Option<String>,
    /// File holding the CA bootstrap token [WEFT_CA_TOKEN_FILE]
    #[arg(long)]
    ca_token_file: Option<PathBuf>,
    /// Local CA directory for tests and demos [WEFT_CA_DIR]
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Binary WaypointConfig applied at start [WEFT_CONFIG_FILE]
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// The pod's IP, for the xDS node id [INSTANCE_IP; default: the pod's first address]
    #[arg(long)]
    instance_ip: Option<String>,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    dump_config: bool,
}

/// Flags first, then the environment.
struct Layered {
    flags: HashMap<&'static str, String>,
}

impl Strings for Layered {
    fn get(&self, name: &str) -> Option<String> {
        self.flags
            .get(name)
            .cloned()
            .or_else(|| Environment.get(name))
    }
}

impl Args {
    fn layered(&self) -> Layered {
        let mut flags = HashMap::new();
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        for (name, value) in [
            (config::ENV_CONTROLLER, self.controller.clone()),
            (config::ENV_NAME, self.name.clone()),
            (config::ENV_NAMESPACE, self.namespace.clone()),
            (config::ENV_NETNS, path(&self.netns)),
            (config::ENV_CA_ADDRESS, self.ca_address.clone()),
            (config::ENV_CA_TOKEN_FILE, path(&self.ca_token_file)),
            (config::ENV_CA_DIR, path(&self.ca_dir)),
            (config::ENV_CONFIG_FILE, path(&self.config_file)),
            (config::ENV_INSTANCE_IP, self.instance_ip.clone()),
        ] {
            if let Some(value) = value {
                flags.insert(name, value);
            }
        }
        Layered { flags }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::from_strings(&args.layered())?;
    if args.dump_config {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
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
    let workers =
        Workers::start(config.worker_threads, "waypoint").context("starting the worker threads")?;
    info!(workers = workers.len(), "worker threads started");
    // The control plane (certificates, xDS, the admin, metrics and readiness ports, accepting
    // HBONE connections) runs on this thread; connections are served on the workers.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(config, workers))
}

async fn certificate(
    config: &Config,
    identity: &SpiffeId,
) -> anyhow::Result<(TlsMaterial, Option<CaClientConfig>)> {
    match &config.certificate {
        CertificateSettings::Ca {
            address,
            token_file,
            root_file,
        } => {
            let token = weft_identity::CaToken::File(token_file.clone());
            let roots_pem = root_file
                .as_ref()
                .map(|f| {
                    std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))
                })
                .transpose()?;
            let ca = CaClientConfig {
                address: address.clone(),
                roots_pem,
                token,
                node: config.node_name.clone(),
            };
            let material = ca_client::fetch_certificate(&ca, identity).await?;
            Ok((material, Some(ca)))
        }
        CertificateSettings::LocalCaDir(dir) => {
            let ca = CertificateAuthority::load(dir)
                .with_context(|| format!("loading the CA from {}", dir.display()))?;
            Ok((TlsMaterial::issue(&ca, identity)?, None))
        }
    }
}

async fn run(config: Config, workers: Workers) -> anyhow::Result<()> {
    let identity = SpiffeId::new(
        &config.trust_domain,
        &config.namespace,
        &config.service_account,
    )?;
    let (material, ca) = certificate(&config, &identity).await?;
    info!(%identity, "waypoint certificate obtained");
    let certificates = Arc::new(RotatingCertificate::new(material));
    // The roots that verify the controller's CA port also verify its xDS port.
    let controller_roots = ca.as_ref().and_then(|ca| ca.roots_pem.clone());
    // So does its token: in Kubernetes mode the controller admits discovery streams with it.
    let controller_token = ca.as_ref().map(|ca| ca.token.clone());
    if let Some(ca) = ca {
        ca_client::spawn_rotation(ca, identity.clone(), Arc::clone(&certificates));
    }
    // A soft limit of 1024 descriptors would be a few hundred connections.
    let descriptors = admission::raise_open_files_limit().context("raising RLIMIT_NOFILE")?;
    let waypoint = Waypoint::new(WaypointOptions {
        workers: Some(workers),
        upgrades: config.upgrades.clone(),
        max_connections: admission::connection_budget_for(descriptors),
        ..WaypointOptions::new(certificates)
    });
    if let Some(file) = &config.config_file {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let initial = weft_proto::waypoint::WaypointConfig::decode(bytes.as_slice())
            .with_context(|| format!("decoding {}", file.display()))?;
        waypoint
            .apply_config(initial)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    }
    let (drain_tx, drain) = watch::channel(false);
    let client = match &config.controller {
        Some(controller) => {
            let pod_ip = config
                .pod_ip(&interface_addresses())
                .context("no address for the xDS node id: set INSTANCE_IP to the pod's IP")?;
            let node = weft_proto::envoy::config::core::v3::Node {
                id: config.node_id(pod_ip),
                cluster: config.name.clone(),
                ..Default::default()
            };
            info!(node = %node.id, %controller, "connecting to the controller");
            let client = weft_xds::DeltaClient::new(
                weft_xds::Target::for_uri(controller, controller_roots.as_deref())?,
                node,
            )
            .subscribe_names(
                weft_proto::WAYPOINT_CONFIG_TYPE_URL,
                vec![config.resource_name()],
                waypoint.store().xds_handler(),
            );
            Some(match controller_token {
                Some(token) => client.with_bearer_token(Arc::new(move || token.current())),
                None => client,
            })
        }
        None => None,
    };
    let hbone = waypoint.bind_hbone(config.hbone_address).await?;
    let metrics = waypoint.bind_metrics(config.metrics_address).await?;
    let readiness = waypoint.bind_readiness(config.readiness_address).await?;
    let admin = waypoint
        .bind_admin(
            config.admin_address,
            client.as_ref().map(weft_xds::DeltaClient::state),
            serde_json::to_value(&config)?,
        )
        .await?;
    info!(hbone = %config.hbone_address, metrics = %config.metrics_address, readiness = %config.readiness_address, admin = %config.admin_address, "waypoint listening");
    let mut tasks = vec![
        tokio::spawn(hbone.run(drain.clone())),
        tokio::spawn(metrics.run(drain.clone())),
        tokio::spawn(readiness.run(drain.clone())),
        tokio::spawn(admin.run(drain.clone())),
    ];
    if let Some(client) = client {
        let mut shutdown = drain.clone();
        tasks.push(tokio::spawn(async move {
            let stop = async move {
                let _ = shutdown.wait_for(|draining| *draining).await;
            };
            if let Err(error) = client.run_until(stop).await {
                warn!(%error, "xds client stopped");
            }
        }));
    }
    shutdown_signal().await;
    info!("shutting down");
    let _ = drain_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
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

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                warn!(%error, "cannot watch SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
