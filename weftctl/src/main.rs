//! `weftctl`: operate a running mesh as `istioctl` does: analyze configuration, see what every
//! proxy was sent and answered, read a node agent's state, manage waypoints, check a node's
//! kernel, and report versions; against a local mesh (`--demo`, `--mesh-dir`), given addresses,
//! or a cluster (its kubeconfig; pods reached through the API server's port-forward).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use weftctl::output::Format;
use weftctl::{analyze, cluster, dashboard, mesh, node_config, precheck, status, waypoint};

/// The mesh's command line (istioctl's verbs), against a local mesh (--demo, --mesh-dir), given
/// addresses, or a cluster (its kubeconfig: pods found and port-forwarded through the API server).
#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about, long_about = None)]
struct Cli {
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    output: Format,
    /// The controller's monitoring address (its port 15014: /debug/syncz, /version)
    /// [default: a local mesh's, else the cluster's through a port-forward, else
    /// 127.0.0.1:15014].
    #[arg(long, global = true, env = "WEFT_CONTROLLER")]
    controller: Option<String>,
    /// Node agents' admin addresses (port 15000, the node's loopback), comma-separated
    /// [default: as --controller, else 127.0.0.1:15000].
    #[arg(
        long = "agent",
        global = true,
        env = "WEFT_AGENT_ADMIN",
        value_delimiter = ','
    )]
    agents: Vec<String>,
    /// A local mesh's directory (its addresses.json names the controller, the agents and the
    /// live configuration directory): overrides --controller, --agent and --config-dir.
    #[arg(long, global = true, env = "WEFT_MESH_DIR")]
    mesh_dir: Option<PathBuf>,
    /// The running demo (`cargo xtask demo`): as --mesh-dir with the demo's directory.
    #[arg(long, global = true)]
    demo: bool,
    /// Cluster mode: the kubeconfig [default: KUBECONFIG, else ~/.kube/config]. Without
    /// --demo, --mesh-dir or an address given, a command that reads the controller or an agent
    /// uses the cluster when a kubeconfig exists: it finds their pods and port-forwards to them
    /// through the API server, as istioctl does.
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context [default: its current context].
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace the weft chart is installed into (its controller's and node agents' pods).
    #[arg(short = 'i', long, global = true, default_value = cluster::DEFAULT_NAMESPACE)]
    istio_namespace: String,
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
    /// The service-graph console's address (and Prometheus'); `--open` opens it. On a cluster,
    /// forwards a local port to the controller's console port and keeps forwarding until
    /// interrupted (istioctl dashboard kiali).
    Dashboard {
        /// Open the graph of this namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// The console's address [default: a local mesh's, else the cluster's through a
        /// port-forward, else http://127.0.0.1:20001/] (the controller's --console-address).
        #[arg(long, env = "WEFT_CONSOLE")]
        console: Option<String>,
        /// Hand the page to the desktop's browser (xdg-open).
        #[arg(long)]
        open: bool,
        /// Cluster mode: the local port forwarded to the console [default: the console's
        /// port, else any free port] (0: any free port).
        #[arg(short, long)]
        port: Option<u16>,
        /// Cluster mode: the controller's console port (its --console-address).
        #[arg(long, default_value_t = cluster::CONSOLE_PORT)]
        ui_port: u16,
        /// Cluster mode: the local address the forward listens on.
        #[arg(long, default_value = "localhost")]
        address: String,
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
    let reads_agent = matches!(cli.command, Command::NodeConfig { .. });
    let reads_console = matches!(cli.command, Command::Dashboard { console: None, .. });
    // The cluster's forwards run as long as it is kept.
    let mut cluster = None;
    let mut controller_shown = None;
    if let Some(local) = &local {
        if reads_controller {
            mesh::enter_netns(&local.controller.netns)?;
            cli.controller = Some(local.controller.monitoring.clone());
        }
        if let Command::NodeConfig { node, .. } = &cli.command {
            let agent = local.agent(node.as_deref())?;
            mesh::enter_netns(&agent.netns)?;
            cli.agents = vec![agent.admin.clone()];
        }
    } else if ((reads_controller && cli.controller.is_none())
        || (reads_agent && cli.agents.is_empty())
        || reads_console)
        && cluster::kubeconfig_path(cli.kubeconfig.as_deref()).is_some()
    {
        let connected = cluster::Cluster::connect(
            cli.kubeconfig.as_deref(),
            cli.context.as_deref(),
            &cli.istio_namespace,
        )?;
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        if reads_controller && cli.controller.is_none() {
            // Every replica: each holds the streams of the proxies connected to it.
            let mut forwards = Vec::new();
            let mut names = Vec::new();
            for pod in connected.controller_pods()? {
                let local = connected.forward(&pod.name, cluster::MONITORING_PORT, any_port)?;
                forwards.push(local.to_string());
                names.push(format!("{}/{}", connected.namespace(), pod.name));
            }
            cli.controller = Some(forwards.join(","));
            controller_shown = Some(names.join(","));
        }
        if let Command::NodeConfig { node, .. } = &cli.command
            && cli.agents.is_empty()
        {
            let pod = connected.agent_pod(node.as_deref())?;
            let local = connected.forward(&pod.name, cluster::ADMIN_PORT, any_port)?;
            cli.agents = vec![local.to_string()];
        }
        cluster = Some(connected);
    }
    let controller = cli
        .controller
        .clone()
        .unwrap_or_else(|| "127.0.0.1:15014".to_owned());
    if cli.agents.is_empty() {
        cli.agents = vec!["127.0.0.1:15000".to_owned()];
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
            status::proxy_status(&controller, proxy.as_deref(), format)
        }
        Command::NodeConfig { section, node } => {
            node_config::run(&cli.agents, section, node.as_deref(), format)
        }
        Command::Precheck { cni_dir } => precheck::run(&cni_dir, format),
        Command::Dashboard {
            ref namespace,
            ref console,
            open,
            port,
            ui_port,
            ref address,
        } => {
            if let Some(cluster) = &cluster {
                let target = ConsoleForward {
                    address,
                    port,
                    ui_port,
                };
                return dashboard_forward(cluster, &target, namespace.as_deref(), open, format);
            }
            let addresses = match local_dir(&cli)? {
                Some(dir) => dashboard::load(&dir)?,
                None => dashboard::Dashboard {
                    console: console
                        .clone()
                        .unwrap_or_else(|| "http://127.0.0.1:20001/".to_owned()),
                    prometheus: String::new(),
                },
            };
            dashboard::run(&addresses, namespace.as_deref(), open, format)
        }
        Command::Version { short } => {
            let shown = controller_shown.as_deref().unwrap_or(&controller);
            status::version(&controller, shown, short, format)
        }
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
                Some(&controller),
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

/// Where `dashboard` listens on a cluster, and the console port it forwards to.
struct ConsoleForward<'a> {
    address: &'a str,
    port: Option<u16>,
    ui_port: u16,
}

/// `dashboard` on a cluster: forwards a local port (`--port`; else the console's own port,
/// else any free one, as istioctl dashboard) to the controller's console port, prints the local
/// address, and keeps forwarding until interrupted.
fn dashboard_forward(
    cluster: &cluster::Cluster,
    target: &ConsoleForward,
    namespace: Option<&str>,
    open: bool,
    format: Format,
) -> anyhow::Result<u8> {
    let address = target.address;
    let preferences = match target.port {
        Some(port) => vec![port],
        None => vec![target.ui_port, 0],
    };
    let mut listener = None;
    let mut failure = None;
    for port in preferences {
        let local = (address, port)
            .to_socket_addrs()
            .with_context(|| format!("--address {address} is not a local address"))?
            .next()
            .with_context(|| format!("{address} resolves to no address"))?;
        match std::net::TcpListener::bind(local) {
            Ok(bound) => {
                listener = Some(bound);
                break;
            }
            Err(error) => failure = Some(format!("listening on {local}: {error}")),
        }
    }
    let listener = listener.with_context(|| failure.unwrap_or_default())?;
    let pod = cluster.controller_pod()?;
    let bound = cluster.forward_from(listener, &pod.name, target.ui_port)?;
    let console = format!("http://{address}:{}/", bound.port());
    let shown = dashboard::Dashboard {
        console,
        prometheus: String::new(),
    };
    dashboard::run(&shown, namespace, open, format)?;
    eprintln!(
        "Forwarding {bound} to pod {}/{} port {} (the controller's console, on when it runs \
         with --console-address); Ctrl-C stops.",
        cluster.namespace(),
        pod.name,
        target.ui_port
    );
    cluster.wait_for_interrupt()?;
    Ok(0)
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
