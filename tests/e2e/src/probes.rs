//! What tests read from the mesh's processes and start beside them: an agent's process id (its
//! resource limits, its descriptors), the CA directory and the per-node bootstrap tokens (to act
//! as a node, or as whoever stole a node's credentials), the controller's monitoring text,
//! `mesh-client` runs inside pods, and further processes in pods that stop with the mesh.

use std::{path::PathBuf, process::Stdio};

use anyhow::Context;

use crate::{Mesh, Process, binary};

impl Mesh {
    /// The process id of `node`'s agent, while it runs.
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.agents.get(node).map(|agent| agent.child.id())
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
        self.controller_metrics()
            .lines()
            .find_map(|line| line.strip_prefix("weft_configuration_rejections "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Runs `mesh-client` inside `pod` (so its connections are captured like an application's)
    /// and returns the JSON line it printed; panics when it could not run at all.
    pub fn mesh_client(&self, pod: &str, args: &[&str]) -> serde_json::Value {
        let binary = binary("mesh-client").expect("mesh-client is built");
        let output = self
            .testbed
            .pod_command(pod, binary.to_str().unwrap())
            .args(args)
            .output()
            .expect("run mesh-client");
        assert!(
            output.status.success(),
            "mesh-client {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "mesh-client output {e}: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Starts `mesh-client <args>` inside `pod` as a long-running server (logged as
    /// `<name>.log`, stopped with the mesh) and waits until `port` accepts in the pod.
    pub fn start_in_pod(
        &mut self,
        pod: &str,
        name: &str,
        args: &[&str],
        port: u16,
    ) -> anyhow::Result<()> {
        let mut command = self
            .testbed
            .pod_command(pod, binary("mesh-client")?.to_str().unwrap());
        command.args(args);
        let log = self.dir.join(format!("{name}.log"));
        self.apps.push(Process::spawn(name, command, log)?);
        let ip = self.testbed.pod(pod).ip;
        self.wait_until(&format!("{name} in {pod}"), || {
            self.testbed
                .pod_command(pod, "bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }
}
