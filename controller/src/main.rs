use clap::Parser;

/// The mesh controller: configuration, push and certificate authority.
#[derive(Debug, Parser)]
#[command(name = "controller", version, about, long_about = None)]
struct Args {
    /// Directory of Kubernetes and Istio YAML to serve (local mode).
    #[arg(long, env = "WEFT_CONFIG_DIR")]
    config_dir: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "the controller is not built yet (config dir {:?})",
        args.config_dir
    )
}
