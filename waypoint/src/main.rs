use clap::Parser;

/// The mesh's L7 proxy for the services that use it (`istio.io/use-waypoint`).
#[derive(Debug, Parser)]
#[command(name = "waypoint", version, about, long_about = None)]
struct Args {
    /// Address of the controller's xDS endpoint.
    #[arg(long, env = "WEFT_CONTROLLER", default_value = "127.0.0.1:15010")]
    controller: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "the waypoint proxy is not built yet (controller {})",
        args.controller
    )
}
