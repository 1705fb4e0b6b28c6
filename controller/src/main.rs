use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use controller::loader::{self, LoadError};
use controller::server::{KubernetesMode, LocalMode, Mode, ServerConfig};
use controller::translate::auto_allocate;
use controller::validation;
use weft_istio::defaults::{
    DEFAULT_ROOT_NAMESPACE, DEFAULT_SYSTEM_NAMESPACE, DEFAULT_TRUST_DOMAIN,
};

/// The mesh controller: configuration, push and certificate authority.
#[derive(Debug, Parser)]
#[command(name = "controller", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

/// Where configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    /// Local mode with --config-dir, Kubernetes mode without.
    Auto,
    /// A directory of YAML (--config-dir), a CA directory and bootstrap tokens.
    Local,
    /// The API server (in-cluster config or KUBECONFIG), the CA in Secrets, TokenReview.
    Kubernetes,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Where configuration comes from.
    #[arg(long, env = "WEFT_MODE", value_enum, default_value = "auto")]
    mode: ModeArg,
    /// Directory of Kubernetes and Istio YAML to serve (local mode).
    #[arg(long, env = "WEFT_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Plaintext gRPC address for xDS and the CA [default: 0.0.0.0:15010 in local mode; none in
    /// Kubernetes mode, where callers send service-account tokens].
    #[arg(long, env = "WEFT_GRPC_ADDRESS")]
    grpc_address: Option<std::net::SocketAddr>,
    /// gRPC over TLS for xDS and the CA [default: 0.0.0.0:15012 in Kubernetes mode; none in
    /// local mode].
    #[arg(long, env = "WEFT_TLS_ADDRESS")]
    tls_address: Option<std::net::SocketAddr>,
    /// The validating admission webhook over TLS [default: 0.0.0.0:15017 in Kubernetes mode;
    /// none in local mode].
    #[arg(long, env = "WEFT_WEBHOOK_ADDRESS")]
    webhook_address: Option<std::net::SocketAddr>,
    /// The ValidatingWebhookConfiguration whose caBundle the controller keeps set to the mesh
    /// root (Kubernetes mode) [default: weft-validator-<namespace>].
    #[arg(long, env = "WEFT_WEBHOOK_CONFIGURATION")]
    webhook_configuration: Option<String>,
    /// DNS names (or IP addresses) of the TLS serving certificate, comma-separated [default:
    /// istiod.<namespace>.svc, istiod, istiod.<namespace>, istiod.<namespace>.svc.cluster.local].
    /// The addresses the TLS port is reached at are added (its own, or every interface address
    /// when it listens on all).
    #[arg(long, env = "WEFT_SERVING_NAMES", value_delimiter = ',')]
    serving_names: Vec<String>,
    /// TLS key exchanges of 15012 and the webhook: X25519MLKEM768 first, or (`pqc`, as
    /// Istio's) only it.
    #[arg(long, env = "COMPLIANCE_POLICY", default_value = "")]
    compliance_policy: String,
    /// Prometheus monitoring address.
    #[arg(long, env = "WEFT_MONITORING_ADDRESS", default_value = "0.0.0.0:15014")]
    monitoring_address: std::net::SocketAddr,
    /// The service-graph console's address (off unless given; Kiali listens on 20001).
    #[arg(long, env = "WEFT_CONSOLE_ADDRESS")]
    console_address: Option<std::net::SocketAddr>,
    /// The Prometheus the console reads traffic from.
    #[arg(
        long,
        env = "WEFT_PROMETHEUS_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    prometheus_url: String,
    /// Directory holding the root CA (local mode; created and persisted on first start).
    #[arg(long, env = "WEFT_CA_DIR", default_value = "/var/lib/weft/ca")]
    ca_dir: PathBuf,
    /// File of `<node> <token>` lines: the node agents' bootstrap tokens (local mode).
    #[arg(
        long,
        env = "WEFT_BOOTSTRAP_TOKENS",
        default_value = "/etc/weft/bootstrap-tokens"
    )]
    bootstrap_tokens: PathBuf,
    /// The controller's namespace (Kubernetes mode): its CA Secrets and root ConfigMap.
    #[arg(long, env = "WEFT_NAMESPACE", default_value = DEFAULT_SYSTEM_NAMESPACE)]
    namespace: String,
    /// Audiences callers' service-account tokens must carry, comma-separated (Kubernetes mode).
    #[arg(
        long,
        env = "WEFT_TOKEN_AUDIENCES",
        value_delimiter = ',',
        default_value = "istio-ca"
    )]
    token_audiences: Vec<String>,
    /// Service accounts of the node agents as namespace/name, comma-separated (Kubernetes
    /// mode) [default: <namespace>/weft-node-agent].
    #[arg(long, env = "WEFT_NODE_AGENT_SERVICE_ACCOUNTS", value_delimiter = ',')]
    node_agent_service_accounts: Vec<String>,
    /// The proxy image (the waypoint binary) the controller deploys for each Gateway of class
    /// istio and istio-waypoint, with a Service and a ServiceAccount (Kubernetes mode) [default:
    /// none: Gateways' proxies are deployed by hand].
    #[arg(long, env = "WEFT_PROXY_IMAGE", default_value = "")]
    proxy_image: String,
    /// The mesh trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Namespace whose selector-less policies apply mesh-wide.
    #[arg(long, env = "WEFT_ROOT_NAMESPACE", default_value = DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    /// Istio's mesh configuration file (`MeshConfig` YAML, the `mesh` key of the `istio`
    /// ConfigMap, istiod's `--meshConfig`), followed while running: the outbound traffic
    /// policy and the default tracing provider and sampling [default: none: Istio's defaults].
    #[arg(long, alias = "meshConfig", env = "WEFT_MESH_CONFIG")]
    mesh_config: Option<std::path::PathBuf>,
    /// Mirrored requests keep their Host, as istiod's `DISABLE_SHADOW_HOST_SUFFIX` (true
    /// since Istio 1.28); `false`: `-shadow` is appended to the host, as before 1.28.
    #[arg(
        long,
        env = "DISABLE_SHADOW_HOST_SUFFIX",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    disable_shadow_host_suffix: bool,
    /// Whether ServiceEntry hosts without addresses get some, as istiod's variable of the same
    /// name (on by default); off, they have none and the two ranges below are not read.
    #[arg(
        long,
        env = auto_allocate::ENABLE_ENV,
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    enable_ip_autoallocate: bool,
    /// The range ServiceEntry hosts without addresses get an IPv4 address from, as istiod's
    /// variable of the same name.
    #[arg(long, env = auto_allocate::IPV4_PREFIX_ENV, default_value = auto_allocate::DEFAULT_IPV4_PREFIX)]
    ip_autoallocate_ipv4_prefix: String,
    /// The range they get an IPv6 address from, as istiod's variable of the same name.
    #[arg(long, env = auto_allocate::IPV6_PREFIX_ENV, default_value = auto_allocate::DEFAULT_IPV6_PREFIX)]
    ip_autoallocate_ipv6_prefix: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (the default when no subcommand is given).
    Run(Box<RunArgs>),
    /// Load and validate YAML files or directories with Istio's rules, and check references
    /// between them as `istioctl analyze` does; exits non-zero on any error (warnings, such as
    /// fields accepted but not applied, keep it zero).
    Validate {
        /// Files or directories (walked recursively for .yaml/.yml files).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// A MeshConfig document (istiod's `--meshConfig`): its errors and what it declares
        /// without Weft applying it are reported, and the cross-resource checks read it.
        #[arg(long)]
        mesh_config: Option<PathBuf>,
    },
    /// Write the CustomResourceDefinitions of the Istio kinds into a directory.
    Crdgen {
        /// Output directory.
        #[arg(long, default_value = "deploy/crds")]
        out: PathBuf,
    },
}

async fn mode(args: &RunArgs) -> anyhow::Result<Mode> {
    match (args.mode, &args.config_dir) {
        (ModeArg::Auto | ModeArg::Local, Some(config_dir)) => Ok(Mode::Local(LocalMode {
            config_dir: config_dir.clone(),
            ca_dir: args.ca_dir.clone(),
            bootstrap_tokens: args.bootstrap_tokens.clone(),
        })),
        (ModeArg::Local, None) => anyhow::bail!("local mode needs --config-dir (WEFT_CONFIG_DIR)"),
        (ModeArg::Kubernetes, Some(_)) => {
            anyhow::bail!("--config-dir is for local mode; Kubernetes mode reads the API server")
        }
        (ModeArg::Auto | ModeArg::Kubernetes, None) => {
            let config = kube::Config::infer().await.map_err(|e| {
                anyhow::anyhow!(
                    "Kubernetes mode (no --config-dir given): no cluster found in-cluster or in KUBECONFIG: {e}"
                )
            })?;
            let client = kube::Client::try_from(config)
                .map_err(|e| anyhow::anyhow!("Kubernetes client: {e}"))?;
            let node_agents = if args.node_agent_service_accounts.is_empty() {
                vec![(args.namespace.clone(), "weft-node-agent".to_owned())]
            } else {
                args.node_agent_service_accounts
                    .iter()
                    .map(|account| {
                        let (namespace, name) = account
                            .split_once('/')
                            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                            .ok_or_else(|| {
                                anyhow::anyhow!(
                                    "--node-agent-service-accounts: {account:?} is not namespace/name"
                                )
                            })?;
                        Ok((namespace.to_owned(), name.to_owned()))
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            Ok(Mode::Kubernetes(KubernetesMode {
                client,
                namespace: args.namespace.clone(),
                token_audiences: args
                    .token_audiences
                    .iter()
                    .filter(|a| !a.is_empty())
                    .cloned()
                    .collect(),
                node_agents,
                provision: (!args.proxy_image.is_empty()).then(|| {
                    controller::translate::provision::ProvisionSettings {
                        proxy_image: args.proxy_image.clone(),
                        controller_namespace: args.namespace.clone(),
                        token_audience: args
                            .token_audiences
                            .first()
                            .cloned()
                            .unwrap_or_else(|| "istio-ca".to_owned()),
                        trust_domain: args.trust_domain.clone(),
                    }
                }),
            }))
        }
    }
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    // Refused before anything starts, as istiod's bootstrap refuses a prefix it cannot parse
    // (and, as there, only with allocation on).
    let auto_allocate = if args.enable_ip_autoallocate {
        Some(auto_allocate::Ranges::parse(
            &args.ip_autoallocate_ipv4_prefix,
            &args.ip_autoallocate_ipv6_prefix,
        )?)
    } else {
        None
    };
    let policy: weft_identity::CompliancePolicy = args.compliance_policy.parse()?;
    policy
        .install()
        .map_err(|installed| anyhow::anyhow!("the compliance policy is already {installed:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let mode = mode(args).await?;
        let (grpc_address, tls_address, webhook_address, webhook_configuration) = match &mode {
            Mode::Local(_) => (
                Some(args.grpc_address.unwrap_or(([0, 0, 0, 0], 15010).into())),
                args.tls_address,
                args.webhook_address,
                None,
            ),
            Mode::Kubernetes(_) => (
                args.grpc_address,
                Some(args.tls_address.unwrap_or(([0, 0, 0, 0], 15012).into())),
                Some(args.webhook_address.unwrap_or(([0, 0, 0, 0], 15017).into())),
                Some(
                    args.webhook_configuration
                        .clone()
                        .unwrap_or_else(|| format!("weft-validator-{}", args.namespace)),
                ),
            ),
        };
        let settings = controller::translate::agent::MeshSettings {
            trust_domain: args.trust_domain.clone(),
            root_namespace: args.root_namespace.clone(),
            mesh: match &args.mesh_config {
                Some(path) => std::sync::Arc::new(
                    controller::mesh_config::MeshConfigWatch::load(path.clone())
                        .map_err(|e| anyhow::anyhow!("mesh configuration: {e}"))?,
                ),
                None => Default::default(),
            },
            disable_shadow_host_suffix: args.disable_shadow_host_suffix,
            auto_allocate,
            ..Default::default()
        };
        let mut serving_names = if args.serving_names.is_empty() {
            controller::server::default_serving_names(&args.namespace, &settings.domain_suffix)
        } else {
            args.serving_names.clone()
        };
        if let Some(address) = tls_address {
            let local = controller::tls::local_addresses();
            for address in controller::tls::reached_at(address.ip(), local) {
                if !serving_names.contains(&address) {
                    serving_names.push(address);
                }
            }
        }
        let config = ServerConfig {
            mode,
            grpc_address,
            tls_address,
            serving_names,
            webhook_address,
            webhook_configuration,
            monitoring_address: args.monitoring_address,
            console: args
                .console_address
                .map(|address| controller::console::ConsoleConfig {
                    address,
                    prometheus_url: args.prometheus_url.clone(),
                }),
            settings,
        };
        let (sender, shutdown) = tokio::sync::watch::channel(false);
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = sender.send(true);
        });
        controller::server::run(config, shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn validate(paths: &[PathBuf], mesh_config: Option<&std::path::Path>) -> ExitCode {
    let report = loader::load_paths(paths);
    let files = report.files;
    let documents = report.documents;
    let skipped = report.skipped.len();
    let read_failures = report
        .errors
        .iter()
        .filter(|e| matches!(e, LoadError::Read { .. }))
        .count();
    let mut errors = 0usize;
    let mut warnings = 0usize;
    for error in &report.errors {
        errors += 1;
        println!("{error}");
    }
    for document in &report.skipped {
        warnings += 1;
        println!(
            "{} {}: warning: {}",
            document.location, document.identity, document.reason
        );
    }
    // Where each resource came from, for the cross-resource findings.
    let mut locations = std::collections::BTreeMap::new();
    let mut refused = 0usize;
    for loaded in &report.resources {
        let resource = &loaded.resource;
        let key = controller::index::key(resource);
        let prefix = format!("{} {} {key}", loaded.location, resource.kind());
        let result = validation::validate(resource);
        if !result.is_valid() {
            refused += 1;
        }
        for error in &result.errors {
            errors += 1;
            println!("{prefix}: {error}");
        }
        for warning in loaded.warnings.iter().chain(&result.warnings) {
            warnings += 1;
            println!("{prefix}: warning: {warning}");
        }
        // Like `kubectl apply` of the same files, a later definition replaces an earlier one.
        if let Some(earlier) = locations.insert((resource.kind(), key), loaded.location.clone()) {
            warnings += 1;
            println!(
                "{earlier} {} {}: warning: defined again at {}; that later definition is the one used",
                resource.kind(),
                controller::index::key(resource),
                loaded.location
            );
        }
    }
    let mut settings = controller::translate::MeshSettings::default();
    if let Some(path) = mesh_config {
        let origin = path.display().to_string();
        match controller::mesh_config::read_file(path) {
            Ok(mesh) => {
                for warning in mesh.not_applied() {
                    warnings += 1;
                    println!("{origin} MeshConfig: warning: {warning}");
                }
                settings.mesh =
                    std::sync::Arc::new(controller::mesh_config::MeshConfigWatch::fixed(mesh));
            }
            Err(error) => {
                errors += 1;
                println!("{error}");
            }
        }
    }
    let valid = report.resources.len() - refused;
    let (index, _) = controller::index::ConfigIndex::from_report(report, None);
    if let Some(path) = mesh_config {
        for warning in controller::translate::waypoint::collector_warnings(&index, &settings) {
            warnings += 1;
            println!("{} MeshConfig: warning: {warning}", path.display());
        }
    }
    for message in controller::analysis::analyze(&index, &settings) {
        warnings += 1;
        let key = controller::index::key_of(message.kind, &message.namespace, &message.name);
        let location = locations
            .get(&(message.kind, key.clone()))
            .map_or_else(String::new, |l| format!("{l} "));
        println!(
            "{location}{} {key}: warning: {}",
            message.kind, message.warning
        );
    }
    println!(
        "{files} file(s), {documents} document(s): {valid} valid, {refused} with errors, {skipped} skipped; {} error(s), {warnings} warning(s){}",
        errors,
        if read_failures > 0 {
            format!(" ({read_failures} unreadable path(s))")
        } else {
            String::new()
        },
    );
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn crdgen(out: &PathBuf) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out)?;
    for crd in controller::crd::crds() {
        let path = out.join(controller::crd::file_name(&crd));
        std::fs::write(&path, controller::crd::to_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    match &args.command {
        None => run(&args.run),
        Some(Command::Run(run_args)) => run(run_args),
        Some(Command::Validate { paths, mesh_config }) => {
            Ok(validate(paths, mesh_config.as_deref()))
        }
        Some(Command::Crdgen { out }) => crdgen(out),
    }
}
