//! `weftctl`: operate a running mesh as `istioctl` does: analyze configuration, see what every
//! proxy was sent and answered, read a node agent's state, manage waypoints, check a node's
//! kernel, and report versions.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use weftctl::output::Format;
use weftctl::{analyze, dashboard, mesh, node_config, precheck, status, waypoint};

/// The mesh's command line (istioctl's verbs).
#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about, long_about = None)]
struct Cli {
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    output: Format,
    /// The controller's monitoring address (its port 15014: /debug/syncz, /version).
    #[arg(
        long,
        global = true,
        env = "WEFT_CONTROLLER",
        default_value = "127.0.0.1:15014"
    )]
    controller: String,
    /// Node agents' admin addresses (port 15000, the node's loopback), comma-separated.
    #[arg(
        long = "agent",
        global = true,
        env = "WEFT_AGENT_ADMIN",
        value_delimiter = ',',
        default_value = "127.0.0.1:15000"
    )]
    agents: Vec<String>,
    /// A local mesh's directory (its addresses.json names the controller, the agents and the
    /// live configuration directory): overrides --controller, --agent and --config-dir.
    #[arg(long, global = true, env = "WEFT_MESH_DIR")]
    mesh_dir: Option<PathBuf>,
    /// The running demo (`cargo xtask demo`): as --mesh-dir with the demo's directory.
    #[arg(long, global = true)]
    demo: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate configuration files or directories and check references between them, with
    /// Istio's IST codes; exits 79 when any finding is an error.
    Analyze {
        /// Files or directories (walked for .yaml/.yml).
        paths: Vec<PathBuf>,
        /// Report only findings about this namespace.
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Every connected agent and waypoint: what was sent, ACKed and NACKed, synced or stale.
    ProxyStatus {
        /// Only proxies whose id contains this.
        proxy: Option<String>,
    },
    /// A node agent's state from its /config_dump (istioctl ztunnel-config's role).
    NodeConfig {
        #[arg(value_enum)]
        section: node_config::Section,
        /// The agent's node name [default: the only --agent].
        node: Option<String>,
    },
    /// Generate, apply, list, check and delete waypoints.
    Waypoint {
        #[command(subcommand)]
        command: WaypointCommand,
    },
    /// Whether this machine can run a node agent.
    Precheck {
        /// Where the CNI configuration lives.
        #[arg(long, default_value = "/etc/cni/net.d")]
        cni_dir: PathBuf,
    },
    /// The service-graph console's address (and Prometheus'); `--open` opens it.
    Dashboard {
        /// Open the graph of this namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// The console's address when no local mesh is named (the controller's
        /// --console-address).
        #[arg(long, env = "WEFT_CONSOLE", default_value = "http://127.0.0.1:20001/")]
        console: String,
        /// Hand the page to the desktop's browser (xdg-open).
        #[arg(long)]
        open: bool,
    },
    /// Versions of weftctl, the controller and every connected proxy.
    Version {
        /// Only weftctl's own version.
        #[arg(long)]
        short: bool,
    },
}

#[derive(Debug, clap::Args)]
struct WaypointTarget {
    /// The waypoint's namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// The waypoint's (Gateway's) name.
    #[arg(long, default_value = "waypoint")]
    name: String,
    /// Which traffic it takes (istio.io/waypoint-for).
    #[arg(long = "for", value_enum, default_value = "service")]
    waypoint_for: waypoint::WaypointFor,
}

#[derive(Debug, Subcommand)]
enum WaypointCommand {
    /// Print the waypoint's Gateway.
    Generate(WaypointTarget),
    /// Write the waypoint's Gateway into the live configuration directory (stdout without one).
    Apply {
        #[command(flatten)]
        target: WaypointTarget,
        /// The directory the controller serves.
        #[arg(long, env = "WEFT_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
    },
    /// The waypoints in the live configuration directory.
    List {
        /// Only this namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(long, env = "WEFT_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
    },
    /// The waypoints and their proxies' sync state at the controller.
    Status {
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(long, env = "WEFT_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
    },
    /// Remove waypoints that `apply` wrote.
    Delete {
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Names of the waypoints.
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, env = "WEFT_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
    },
}

/// The local mesh named by --mesh-dir or --demo.
fn local_mesh(cli: &Cli) -> anyhow::Result<Option<mesh::Addresses>> {
    local_dir(cli)?.map(|dir| mesh::load(&dir)).transpose()
}

/// The directory of the local mesh named by --mesh-dir or --demo.
fn local_dir(cli: &Cli) -> anyhow::Result<Option<PathBuf>> {
    Ok(match (&cli.mesh_dir, cli.demo) {
        (Some(dir), _) => Some(dir.clone()),
        (None, true) => Some(mesh::demo_dir()?),
        (None, false) => None,
    })
}

fn run(mut cli: Cli) -> anyhow::Result<u8> {
    let format = cli.output;
    let local = local_mesh(&cli)?;
    // Commands that read the controller run in its network namespace on a local mesh.
    let reads_controller = match &cli.command {
        Command::ProxyStatus { .. } => true,
        Command::Version { short } => !short,
        Command::Waypoint { command } => matches!(command, WaypointCommand::Status { .. }),
        _ => false,
    };
    if let Some(local) = &local {
        if reads_controller {
            mesh::enter_netns(&local.controller.netns)?;
            cli.controller = local.controller.monitoring.clone();
        }
        if let Command::NodeConfig { node, .. } = &cli.command {
            let agent = local.agent(node.as_deref())?;
            mesh::enter_netns(&agent.netns)?;
            cli.agents = vec![agent.admin.clone()];
        }
    }
    let config_dir =
        |given: Option<PathBuf>| given.or_else(|| local.as_ref().map(|l| l.config_dir.clone()));
    match cli.command {
        Command::Analyze {
            mut paths,
            namespace,
        } => {
            if paths.is_empty()
                && let Some(local) = &local
            {
                paths.push(local.config_dir.clone());
            }
            analyze::run(&paths, namespace.as_deref(), format)
        }
        Command::ProxyStatus { proxy } => {
            status::proxy_status(&cli.controller, proxy.as_deref(), format)
        }
        Command::NodeConfig { section, node } => {
            node_config::run(&cli.agents, section, node.as_deref(), format)
        }
        Command::Precheck { cni_dir } => precheck::run(&cni_dir, format),
        Command::Dashboard {
            ref namespace,
            ref console,
            open,
        } => {
            let addresses = match local_dir(&cli)? {
                Some(dir) => dashboard::load(&dir)?,
                None => dashboard::Dashboard {
                    console: console.clone(),
                    prometheus: String::new(),
                },
            };
            dashboard::run(&addresses, namespace.as_deref(), open, format)
        }
        Command::Version { short } => status::version(&cli.controller, short, format),
        Command::Waypoint { command } => match command {
            WaypointCommand::Generate(target) => {
                print!(
                    "{}",
                    waypoint::gateway_yaml(&target.namespace, &target.name, target.waypoint_for)
                );
                Ok(0)
            }
            WaypointCommand::Apply {
                target,
                config_dir: dir,
            } => waypoint::apply(
                &target.namespace,
                &target.name,
                target.waypoint_for,
                config_dir(dir).as_deref(),
            ),
            WaypointCommand::List {
                namespace,
                config_dir: dir,
            } => waypoint::list(
                &waypoint::require_dir(config_dir(dir))?,
                namespace.as_deref(),
                None,
                format,
            ),
            WaypointCommand::Status {
                namespace,
                config_dir: dir,
            } => waypoint::list(
                &waypoint::require_dir(config_dir(dir))?,
                namespace.as_deref(),
                Some(&cli.controller),
                format,
            ),
            WaypointCommand::Delete {
                namespace,
                names,
                config_dir: dir,
            } => waypoint::delete(&namespace, &names, &waypoint::require_dir(config_dir(dir))?),
        },
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
