use clap::Parser;

/// The mesh's node agent: one per node, carrying enrolled pods' TCP over mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "node-agent", version, about, long_about = None)]
struct Args {
    /// Address of the controller's xDS endpoint.
    #[arg(long, env = "WEFT_CONTROLLER", default_value = "127.0.0.1:15010")]
    controller: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "the node agent proxy is not built yet (controller {})",
        args.controller
    )
}
