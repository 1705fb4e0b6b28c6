//! Finding a local mesh: `addresses.json` in a mesh's directory (the e2e harness and the demo
//! write it) says where the controller and each node agent listen and in which network
//! namespace; `--demo` finds the running demo's directory through its state file. The ports
//! listen inside those namespaces (the agents' admin port on the node's loopback), so weftctl
//! enters the namespace (`setns`, as root) before it connects.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// Where a running demo describes itself (`cargo xtask demo`).
pub const DEMO_STATE_FILE: &str = "/run/weft-demo/state.json";
/// The file in a mesh's directory.
pub const ADDRESSES_FILE: &str = "addresses.json";

#[derive(Debug, Clone, Deserialize)]
pub struct Addresses {
    pub config_dir: PathBuf,
    pub controller: Controller,
    pub agents: Vec<Agent>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Controller {
    pub netns: String,
    pub monitoring: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Agent {
    pub node: String,
    pub netns: String,
    pub admin: String,
}

#[derive(Debug, Deserialize)]
struct DemoState {
    pid: u32,
    prefix: String,
}

/// The running demo's directory.
pub fn demo_dir() -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(DEMO_STATE_FILE).with_context(|| {
        format!("no demo is running ({DEMO_STATE_FILE}): start one with `cargo xtask demo`")
    })?;
    let state: DemoState =
        serde_json::from_str(&text).with_context(|| format!("reading {DEMO_STATE_FILE}"))?;
    if !Path::new(&format!("/proc/{}", state.pid)).exists() {
        anyhow::bail!(
            "the demo that wrote {DEMO_STATE_FILE} is gone: start one with `cargo xtask demo`"
        );
    }
    Ok(std::env::temp_dir().join(format!("{}-mesh", state.prefix)))
}

/// The addresses a mesh's directory publishes.
pub fn load(dir: &Path) -> anyhow::Result<Addresses> {
    let path = dir.join(ADDRESSES_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} publishes no addresses ({}): is it a mesh's directory?",
            dir.display(),
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

impl Addresses {
    /// The agent of `node`, or the first one.
    pub fn agent(&self, node: Option<&str>) -> anyhow::Result<&Agent> {
        self.agents
            .iter()
            .find(|a| node.is_none_or(|n| a.node == n))
            .with_context(|| {
                let nodes: Vec<&str> = self.agents.iter().map(|a| a.node.as_str()).collect();
                format!(
                    "the mesh has no node {:?}; its nodes: {}",
                    node.unwrap_or(""),
                    nodes.join(", ")
                )
            })
    }
}

/// Moves this (single-threaded) process into the named network namespace.
pub fn enter_netns(name: &str) -> anyhow::Result<()> {
    let path = Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| {
        format!("entering network namespace {name} (weftctl needs root for a local mesh)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_published_addresses() {
        let addresses: Addresses = serde_json::from_str(
            r#"{"config_dir": "/tmp/m/config",
                "controller": {"netns": "cp", "monitoring": "10.0.0.1:15014", "xds": "10.0.0.1:15010"},
                "agents": [{"node": "node1", "netns": "n1", "admin": "127.0.0.1:15000"},
                           {"node": "node2", "netns": "n2", "admin": "127.0.0.1:15000"}]}"#,
        )
        .unwrap();
        assert_eq!(addresses.agent(None).unwrap().node, "node1");
        assert_eq!(addresses.agent(Some("node2")).unwrap().netns, "n2");
        let error = addresses.agent(Some("node9")).unwrap_err().to_string();
        assert!(error.contains("node1, node2"), "{error}");
    }
}
