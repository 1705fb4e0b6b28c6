use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use controller::loader::{self, LoadError};
use controller::validation;

/// The mesh controller: configuration, push and certificate authority.
#[derive(Debug, Parser)]
#[command(name = "controller", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Directory of Kubernetes and Istio YAML to serve (local mode).
    #[arg(long, env = "WEFT_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Plaintext gRPC address for xDS and the CA (local mode).
    #[arg(long, env = "WEFT_GRPC_ADDRESS", default_value = "0.0.0.0:15010")]
    grpc_address: std::net::SocketAddr,
    /// Prometheus monitoring address.
    #[arg(long, env = "WEFT_MONITORING_ADDRESS", default_value = "0.0.0.0:15014")]
    monitoring_address: std::net::SocketAddr,
    /// Directory holding the root CA (created and persisted on first start).
    #[arg(long, env = "WEFT_CA_DIR", default_value = "/var/lib/weft/ca")]
    ca_dir: PathBuf,
    /// File of `<node> <token>` lines: the node agents' bootstrap tokens.
    #[arg(
        long,
        env = "WEFT_BOOTSTRAP_TOKENS",
        default_value = "/etc/weft/bootstrap-tokens"
    )]
    bootstrap_tokens: PathBuf,
    /// The mesh trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Namespace whose selector-less policies apply mesh-wide.
    #[arg(long, env = "WEFT_ROOT_NAMESPACE", default_value = "istio-system")]
    root_namespace: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (the default when no subcommand is given).
    Run(RunArgs),
    /// Load and validate YAML files or directories; exits non-zero on any error.
    Validate {
        /// Files or directories (walked recursively for .yaml/.yml files).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Write the CustomResourceDefinitions of the Istio kinds into a directory.
    Crdgen {
        /// Output directory.
        #[arg(long, default_value = "deploy/crds")]
        out: PathBuf,
    },
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Some(config_dir) = args.config_dir.clone() else {
        anyhow::bail!(
            "--config-dir is required: only local mode (a directory of YAML) is available in this build"
        );
    };
    let config = controller::server::ServerConfig {
        config_dir,
        grpc_address: args.grpc_address,
        monitoring_address: args.monitoring_address,
        ca_dir: args.ca_dir.clone(),
        bootstrap_tokens: args.bootstrap_tokens.clone(),
        settings: controller::translate::agent::MeshSettings {
            trust_domain: args.trust_domain.clone(),
            root_namespace: args.root_namespace.clone(),
            ..Default::default()
        },
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let (sender, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = sender.send(true);
        });
        controller::server::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn validate(paths: &[PathBuf]) -> ExitCode {
    let report = loader::load_paths(paths);
    let mut error_count = 0usize;
    for error in &report.errors {
        error_count += 1;
        println!("{error}");
    }
    let mut valid = 0usize;
    for loaded in &report.resources {
        let errors = validation::validate(&loaded.resource);
        if errors.is_empty() {
            valid += 1;
        }
        let resource = &loaded.resource;
        let identity = if resource.namespace().is_empty() {
            resource.name().to_owned()
        } else {
            format!("{}/{}", resource.namespace(), resource.name())
        };
        for error in errors {
            error_count += 1;
            println!(
                "{} {} {identity}: {}: {}",
                loaded.location,
                resource.kind(),
                error.path,
                error.reason
            );
        }
    }
    let read_failures = report
        .errors
        .iter()
        .filter(|e| matches!(e, LoadError::Read { .. }))
        .count();
    println!(
        "{} file(s), {} document(s): {} valid, {} with errors; {} error(s){}",
        report.files,
        report.documents,
        valid,
        report.documents - valid,
        error_count,
        if read_failures > 0 {
            format!(" ({read_failures} unreadable path(s))")
        } else {
            String::new()
        },
    );
    if error_count == 0 {
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
        Some(Command::Validate { paths }) => Ok(validate(paths)),
        Some(Command::Crdgen { out }) => crdgen(out),
    }
}
