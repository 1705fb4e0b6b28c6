//! The network-namespace testbed: a small cluster on one machine for end-to-end tests and the demo.
//!
//! A [`Topology`] declares nodes, the pods on each node and a control-plane host; [`Topology::build`]
//! creates one network namespace per node, pod and host, one cgroup v2 per pod and per node agent,
//! joins each pod to its node with a veth pair (the node is the pod's gateway) and the nodes and
//! the control-plane host with a bridge in a fabric namespace. Every pod reaches every pod and the
//! control-plane host; nothing has a route out of the machine, since no namespace is connected to
//! the root namespace at all. Everything carries a per-instance prefix, is removed on `Drop`, and
//! what a crashed earlier run left behind is swept at start.
//!
//! This crate builds the stage; it knows nothing of the mesh that runs on it.

mod capture;
mod cgroup;
mod netns;
mod runtime;
mod sweep;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

pub use capture::{Captured, FabricCapture};
pub use cgroup::Cgroup;
pub use netns::Netns;

/// Every testbed name starts with this, followed by the creating process id.
pub const PREFIX: &str = "wft";
/// The cgroup v2 hierarchy (hybrid hierarchies mount it here).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";
/// Where named network namespaces live (`ip netns`; container runtimes put theirs here too).
pub const NETNS_DIR: &str = "/run/netns";
/// bpffs. Tests pin under `<PIN_ROOT>/weft-<kind>/<prefix>` ([`Testbed::pin_dir`]), which the
/// sweep removes with the testbed's other resources once the owning process is gone: a pin is
/// what keeps a crashed run's programs attached (at the cgroup root, running for every process).
pub const PIN_ROOT: &str = "/sys/fs/bpf";
/// The first part of the name of every directory under [`PIN_ROOT`] the sweep looks into.
pub const PIN_BASE_PREFIX: &str = "weft-";

/// The fabric subnet joining nodes and the control-plane host.
const FABRIC_NET: [u8; 3] = [10, 250, 0];
/// The control-plane host's address on the fabric.
const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);

/// Errors of building or using a testbed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error(
        "the testbed needs root (network namespaces, veth, cgroups): run `sudo -E cargo xtask test`, \
         or the test binary as root"
    )]
    NotRoot,
    #[error("cgroup v2 is not mounted at {CGROUP_ROOT}")]
    NoCgroup2,
    #[error("invalid topology: {0}")]
    Topology(String),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {name}: {source}")]
    Netns {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = TestbedError> = std::result::Result<T, E>;

/// A declared cluster: nodes with their pods, and whether there is a control-plane host.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    nodes: Vec<(String, Vec<String>)>,
    control_plane: bool,
}

impl Topology {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node with the named pods. Names must be unique across the topology.
    pub fn node(mut self, name: &str, pods: &[&str]) -> Self {
        self.nodes.push((
            name.to_string(),
            pods.iter().map(|p| p.to_string()).collect(),
        ));
        self
    }

    /// Adds the control-plane host (for the controller) on the fabric.
    pub fn control_plane(mut self) -> Self {
        self.control_plane = true;
        self
    }

    fn check(&self) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        if self.nodes.is_empty() {
            return Err(TestbedError::Topology("no nodes".into()));
        }
        if self.nodes.len() > 200 {
            return Err(TestbedError::Topology("more than 200 nodes".into()));
        }
        for (node, pods) in &self.nodes {
            if pods.len() > 200 {
                return Err(TestbedError::Topology(format!(
                    "node {node} has more than 200 pods"
                )));
            }
            for name in std::iter::once(node).chain(pods) {
                let valid = !name.is_empty()
                    && name.len() <= 32
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !valid {
                    return Err(TestbedError::Topology(format!(
                        "name {name:?}: use 1-32 characters of [a-z0-9-]"
                    )));
                }
                if !seen.insert(name.clone()) {
                    return Err(TestbedError::Topology(format!(
                        "name {name:?} is used twice"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Creates the namespaces, links, addresses, routes and cgroups.
    pub fn build(self) -> Result<Testbed> {
        self.check()?;
        preflight()?;
        sweep::remove_stale()?;
        let prefix = unique_prefix();
        let cgroup = Cgroup::create(PathBuf::from(CGROUP_ROOT).join(&prefix))?;
        let mut testbed = Testbed {
            fabric: Netns::named(format!("{prefix}-fabric")),
            prefix,
            nodes: Vec::new(),
            pods: Vec::new(),
            control_plane: None,
            cgroup,
            namespaces: Vec::new(),
        };
        // On error, dropping the partly built testbed removes what was made.
        testbed.wire(&self)?;
        Ok(testbed)
    }
}

/// A pod: its own network namespace and cgroup, joined to its node.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub netns: Netns,
    pub cgroup: Cgroup,
}

/// A node: its network namespace (where the node agent runs), its pod CIDR, and the cgroup for
/// its agent.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub index: u8,
    /// The node's address on the fabric.
    pub ip: Ipv4Addr,
    /// The pod CIDR's network address (a /24).
    pub pod_network: Ipv4Addr,
    /// The node's address in its pod CIDR: the pods' gateway.
    pub gateway: Ipv4Addr,
    pub netns: Netns,
    /// Cgroup for the node agent.
    pub agent_cgroup: Cgroup,
    /// Cgroup for any other process run on the node.
    pub cgroup: Cgroup,
}

/// A host on the fabric outside any node (the controller's place).
#[derive(Debug)]
pub struct Host {
    pub ip: Ipv4Addr,
    pub netns: Netns,
    pub cgroup: Cgroup,
}

/// A running testbed. Dropping it removes everything it created.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    fabric: Netns,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    control_plane: Option<Host>,
    cgroup: Cgroup,
    /// Every namespace created, in creation order.
    namespaces: Vec<Netns>,
}

impl Testbed {
    /// The per-instance prefix carried by every namespace and cgroup of this testbed.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This testbed's pin directory under `<PIN_ROOT>/<base>` (`base` starts with
    /// [`PIN_BASE_PREFIX`], so the sweep finds it). Created by whoever pins there; removed by
    /// its owner, or by the sweep after a crash.
    pub fn pin_dir(&self, base: &str) -> PathBuf {
        assert!(
            base.starts_with(PIN_BASE_PREFIX),
            "pin base {base:?} must start with {PIN_BASE_PREFIX:?} to be swept"
        );
        PathBuf::from(PIN_ROOT).join(base).join(&self.prefix)
    }

    /// The fabric namespace (holds the bridge joining nodes).
    pub fn fabric(&self) -> &Netns {
        &self.fabric
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The named pod; panics on an unknown name (a test bug).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in this testbed"))
    }

    /// The named node; panics on an unknown name (a test bug).
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in this testbed"))
    }

    /// The control-plane host, if the topology declared one.
    pub fn control_plane(&self) -> Option<&Host> {
        self.control_plane.as_ref()
    }

    /// The testbed's parent cgroup (every pod's and node's cgroup is below it).
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    fn wire(&mut self, topology: &Topology) -> Result<()> {
        let fabric = self.add_netns("fabric")?;
        fabric.ip(&["link", "add", "br0", "type", "bridge"])?;
        fabric.ip(&["link", "set", "br0", "up"])?;

        let mut routes: Vec<(Ipv4Addr, Ipv4Addr)> = Vec::new();
        for (i, (name, _)) in topology.nodes.iter().enumerate() {
            let index = u8::try_from(i + 1).expect("at most 200 nodes");
            let netns = self.add_netns(&format!("n-{name}"))?;
            let ip = Ipv4Addr::new(FABRIC_NET[0], FABRIC_NET[1], FABRIC_NET[2], 10 + index);
            let pod_network = Ipv4Addr::new(10, 251, index, 0);
            let gateway = Ipv4Addr::new(10, 251, index, 1);
            self.attach_to_fabric(&netns, &format!("n{index}"), ip)?;
            netns.sysctl("net.ipv4.ip_forward", "1")?;
            netns.ip(&["link", "add", "cni0", "type", "bridge"])?;
            netns.ip(&["addr", "add", &format!("{gateway}/24"), "dev", "cni0"])?;
            netns.ip(&["link", "set", "cni0", "up"])?;
            routes.push((pod_network, ip));
            let agent_cgroup = self.cgroup.child(&format!("agent-{name}"))?;
            let cgroup = self.cgroup.child(&format!("node-{name}"))?;
            self.nodes.push(Node {
                name: name.clone(),
                index,
                ip,
                pod_network,
                gateway,
                netns,
                agent_cgroup,
                cgroup,
            });
        }

        if topology.control_plane {
            let netns = self.add_netns("cp")?;
            self.attach_to_fabric(&netns, "cp", CONTROL_PLANE_IP)?;
            let cgroup = self.cgroup.child("control-plane")?;
            self.control_plane = Some(Host {
                ip: CONTROL_PLANE_IP,
                netns,
                cgroup,
            });
        }

        // Each node routes the other nodes' pod CIDRs over the fabric; so does the host.
        for node in &self.nodes {
            for &(network, via) in &routes {
                if via != node.ip {
                    node.netns.ip(&[
                        "route",
                        "add",
                        &format!("{network}/24"),
                        "via",
                        &via.to_string(),
                    ])?;
                }
            }
        }
        if let Some(host) = &self.control_plane {
            for &(network, via) in &routes {
                host.netns.ip(&[
                    "route",
                    "add",
                    &format!("{network}/24"),
                    "via",
                    &via.to_string(),
                ])?;
            }
        }

        for (node_index, (node_name, pods)) in topology.nodes.iter().enumerate() {
            for (j, pod_name) in pods.iter().enumerate() {
                let host = u8::try_from(j + 10).expect("at most 200 pods per node");
                let node = &self.nodes[node_index];
                let ip = Ipv4Addr::new(10, 251, node.index, host);
                let gateway = node.gateway;
                let node_netns = node.netns.clone();
                let netns = self.add_netns(&format!("p-{pod_name}"))?;
                let node_side = format!("v{host}");
                // Both ends are created directly in their namespaces: nothing passes through the
                // root namespace, so parallel testbeds never collide on interface names.
                netns.ip(&[
                    "link",
                    "add",
                    "eth0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &node_side,
                    "netns",
                    node_netns.name(),
                ])?;
                node_netns.ip(&["link", "set", &node_side, "master", "cni0", "up"])?;
                netns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
                netns.ip(&["link", "set", "eth0", "up"])?;
                netns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
                let cgroup = self.cgroup.child(&format!("pod-{pod_name}"))?;
                self.pods.push(Pod {
                    name: pod_name.clone(),
                    node: node_name.clone(),
                    ip,
                    gateway,
                    netns,
                    cgroup,
                });
            }
        }
        Ok(())
    }

    fn add_netns(&mut self, suffix: &str) -> Result<Netns> {
        let netns = Netns::create(format!("{}-{suffix}", self.prefix))?;
        self.namespaces.push(netns.clone());
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Joins `netns` to the fabric bridge with `eth0` carrying `ip`.
    fn attach_to_fabric(&self, netns: &Netns, port: &str, ip: Ipv4Addr) -> Result<()> {
        netns.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.fabric.name(),
        ])?;
        self.fabric
            .ip(&["link", "set", port, "master", "br0", "up"])?;
        netns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// A command that runs `program` inside `pod`: in its network namespace and its cgroup.
    pub fn pod_command(&self, pod: &str, program: &str) -> Command {
        let pod = self.pod(pod);
        pod.netns.command_in_cgroup(&pod.cgroup, program)
    }

    /// A command that runs `program` on `node` (its network namespace, the node's cgroup).
    pub fn node_command(&self, node: &str, program: &str) -> Command {
        let node = self.node(node);
        node.netns.command_in_cgroup(&node.cgroup, program)
    }

    /// Every address the testbed uses, by name (for logs and the demo's directions).
    pub fn addresses(&self) -> BTreeMap<String, Ipv4Addr> {
        let mut map = BTreeMap::new();
        for node in &self.nodes {
            map.insert(format!("node/{}", node.name), node.ip);
        }
        for pod in &self.pods {
            map.insert(format!("pod/{}", pod.name), pod.ip);
        }
        if let Some(host) = &self.control_plane {
            map.insert("control-plane".to_string(), host.ip);
        }
        map
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Processes first (they keep namespaces alive), then namespaces, then cgroups.
        if let Err(error) = self.cgroup.kill_all() {
            tracing::warn!(prefix = %self.prefix, %error, "testbed teardown: killing processes");
        }
        for netns in self.namespaces.iter().rev() {
            if let Err(error) = netns.delete() {
                tracing::warn!(netns = %netns.name(), %error, "testbed teardown: deleting namespace");
            }
        }
        if let Err(error) = self.cgroup.remove_tree() {
            tracing::warn!(prefix = %self.prefix, %error, "testbed teardown: removing cgroups");
        }
        runtime::remove_leftovers(&self.prefix);
    }
}

fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(TestbedError::NotRoot);
    }
    if !PathBuf::from(CGROUP_ROOT).join("cgroup.procs").exists() {
        return Err(TestbedError::NoCgroup2);
    }
    Ok(())
}

/// `wft<pid>x<n>`: the creating process id lets the sweep tell stale testbeds from live ones.
fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{PREFIX}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `command`, failing with its stderr.
pub(crate) fn run(command: &mut Command) -> Result<String> {
    let describe = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let output = command.output().map_err(|source| TestbedError::Spawn {
        command: describe.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(TestbedError::Command {
            command: describe,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
