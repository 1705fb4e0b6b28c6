//! What tests read of the running mesh: its directory, the agents' redirection counters,
//! metrics and `/config_dump`, the waypoints' metrics and `/config_dump`, the controller's
//! monitoring text and rejections, the agents' process ids and credentials, and every log.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;
use weft_test_support::prometheus::Exposition;
use weft_testbed::Pod;

use crate::*;

impl Mesh {
    /// The directory holding the configuration, logs, tokens and sockets of this mesh.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A counter of `node`'s redirection programs (a slot of `weft_ebpf_common::stats`), summed
    /// over CPUs, read from the pinned map.
    pub fn redirect_stat(&self, node: &str, slot: u32) -> anyhow::Result<u64> {
        let map = self.pin_dir(node).join("maps/REDIRECT_STATS");
        let output = Command::new("bpftool")
            .args(["map", "lookup", "pinned"])
            .arg(&map)
            .args(["key"])
            .args(slot.to_le_bytes().map(|b| b.to_string()))
            .arg("-j")
            .output()
            .context("run bpftool")?;
        if !output.status.success() {
            bail!(
                "bpftool map lookup {}: {}",
                map.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let entry: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let values = entry["values"]
            .as_array()
            .with_context(|| format!("per-CPU values in {entry}"))?;
        values
            .iter()
            .map(|v| {
                let bytes = v["value"]
                    .as_array()
                    .with_context(|| format!("value bytes in {v}"))?
                    .iter()
                    .map(|b| match b {
                        serde_json::Value::String(hex) => {
                            u8::from_str_radix(hex.trim_start_matches("0x"), 16).ok()
                        }
                        other => other.as_u64().and_then(|n| u8::try_from(n).ok()),
                    })
                    .collect::<Option<Vec<u8>>>()
                    .with_context(|| format!("value bytes in {v}"))?;
                let bytes: [u8; 8] = bytes.try_into().map_err(|_| anyhow::anyhow!("not a u64"))?;
                Ok(u64::from_le_bytes(bytes))
            })
            .sum()
    }

    /// The waypoint's Prometheus metrics (its 15020, read from its node).
    pub fn waypoint_metrics(&self, name: &str) -> String {
        let pod = self.testbed.pod(name);
        self.node_curl(
            &pod.node,
            &format!("http://{}:{WAYPOINT_METRICS_PORT}/metrics", pod.ip),
        )
        .map(|(_, body)| body)
        .unwrap_or_default()
    }

    /// The waypoint's `/config_dump`, read inside its pod (the admin port listens on the pod's
    /// loopback only).
    pub fn waypoint_config_dump(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let output = self
            .testbed
            .pod_command(name, "curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "http://127.0.0.1:15000/config_dump",
            ])
            .output()?;
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "waypoint {name}'s config dump: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// The agent's Prometheus metrics.
    pub fn metrics(&self, node: &str) -> String {
        let ip = self.testbed.node(node).ip;
        let port = self.agent_port(node, 15020);
        self.node_curl(node, &format!("http://{ip}:{port}/metrics"))
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The agent's `/config_dump`.
    pub fn config_dump(&self, node: &str) -> serde_json::Value {
        let (status, body) = self
            .node_curl(
                node,
                &format!(
                    "http://127.0.0.1:{}/config_dump",
                    self.agent_port(node, 15000)
                ),
            )
            .expect("run curl");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("config_dump answered {status}: {e}: {body:?}"))
    }

    /// Every component's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let _ = writeln!(out, "==> {} <==", file.display());
            for line in tail.into_iter().rev() {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.testbed.pod(name)
    }

    /// The process id of the controller, while it runs.
    pub fn controller_pid(&self) -> Option<u32> {
        self.controller
            .as_ref()
            .map(|controller| controller.child.id())
    }

    /// The process id of `node`'s agent, while it runs.
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.agents.get(node).map(|agent| agent.child.id())
    }

    /// The process id of the waypoint of pod `name`, while it runs.
    pub fn waypoint_pid(&self, name: &str) -> Option<u32> {
        self.waypoints.get(name).map(|waypoint| waypoint.child.id())
    }

    /// The controller's CA directory (local mode: the root certificate and its key).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// The bootstrap token the agent of `node` authenticates to the controller with.
    pub fn node_token(&self, node: &str) -> anyhow::Result<String> {
        let path = self.dir.join(format!("{node}.token"));
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The controller's monitoring text (15014), read from the first node.
    pub fn controller_metrics(&self) -> String {
        let host = self.testbed.control_plane().expect("a control plane host");
        let node = &self.testbed.nodes()[0].name;
        self.node_curl(node, &format!("http://{}:15014/metrics", host.ip))
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The controller's `weft_configuration_rejections`: resources it refused so far.
    pub fn controller_rejections(&self) -> u64 {
        Exposition::parse(&self.controller_metrics())
            .samples()
            .iter()
            .find(|s| s.name == "weft_configuration_rejections" && s.labels.is_empty())
            .map_or(0, |s| s.value as u64)
    }
}
