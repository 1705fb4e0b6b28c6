//! `addresses.json` in a mesh's directory: where its controller and agents listen and in which
//! network namespace, and the live configuration directory, so `weftctl --mesh-dir` (and
//! `weftctl --demo`, through the demo's state file) can find them.

use serde::Serialize;

use crate::{GRPC_PORT, Mesh};

/// The file's name in [`Mesh::dir`].
pub const ADDRESSES_FILE: &str = "addresses.json";
/// The controller's monitoring port (its default) and the agents' admin address (their
/// default, on the node's loopback).
const MONITORING_PORT: u16 = 15014;
const AGENT_ADMIN: &str = "127.0.0.1:15000";

#[derive(Debug, Serialize)]
struct Addresses {
    config_dir: String,
    controller: Endpoint,
    agents: Vec<Agent>,
}

#[derive(Debug, Serialize)]
struct Endpoint {
    netns: String,
    monitoring: String,
    xds: String,
}

#[derive(Debug, Serialize)]
struct Agent {
    node: String,
    netns: String,
    admin: String,
}

impl Mesh {
    /// Writes [`ADDRESSES_FILE`].
    pub(crate) fn publish_addresses(&self) -> anyhow::Result<()> {
        let host = self
            .testbed
            .control_plane()
            .ok_or_else(|| anyhow::anyhow!("a mesh without a control plane host"))?;
        let addresses = Addresses {
            config_dir: self.dir.join("config").display().to_string(),
            controller: Endpoint {
                netns: host.netns.name().to_owned(),
                monitoring: format!("{}:{MONITORING_PORT}", host.ip),
                xds: format!("{}:{GRPC_PORT}", host.ip),
            },
            agents: self
                .testbed
                .nodes()
                .iter()
                .map(|node| Agent {
                    node: node.name.clone(),
                    netns: node.netns.name().to_owned(),
                    admin: AGENT_ADMIN.to_owned(),
                })
                .collect(),
        };
        std::fs::write(
            self.dir.join(ADDRESSES_FILE),
            serde_json::to_string_pretty(&addresses)?,
        )?;
        Ok(())
    }
}
