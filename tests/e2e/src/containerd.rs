//! containerd as a node's container runtime, on a testbed node: the daemon runs in the node's
//! network namespace (so the bridge plugin's host side, `cni0` and the veths, are the node's)
//! and in its cgroup, with its own root, state and sockets under this test's directories, so
//! parallel runs never collide. Its CNI configuration is the bridge plugin (with host-local
//! addresses from the node's pod CIDR); the node agent's install-cni container appends
//! `weft-cni` to it, as it would on a real node. The images come from `cargo xtask images`
//! (`target/images/debug`), imported with `ctr`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::json;
use weft_testbed::{Node, Testbed};

use crate::{Process, cri::CriClient};

/// The reference plugins the bridge configuration uses (Debian's containernetworking-plugins).
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// The CNI configuration file (the primary one, first by name).
pub const CNI_CONFIG: &str = "10-pods.conflist";

/// One containerd daemon and its node's directories.
pub struct Containerd {
    /// The node's root of this test's files (`<test dir>/<node>`).
    pub dir: PathBuf,
    /// The runtime's CNI directories, as the install-cni container mounts them.
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub socket: PathBuf,
    /// The cgroup parent of this node's pods (one directory per pod below it, `pod<uid>`, as the
    /// kubelet's cgroupfs driver names them).
    pub cgroup_parent: String,
    process: Option<Process>,
}

impl Containerd {
    /// Starts containerd for `node` under `dir`, with a bridge configuration for the node's pod
    /// CIDR, and imports `images` (archives).
    pub fn start(
        testbed: &Testbed,
        node: &Node,
        dir: &Path,
        images: &[PathBuf],
    ) -> anyhow::Result<Self> {
        let prefix = testbed.prefix();
        let dir = dir.join(&node.name);
        let state = testbed.runtime_state_dir(&node.name);
        let (cni_bin_dir, cni_conf_dir) = (dir.join("cni/bin"), dir.join("cni/net.d"));
        for d in [
            &cni_bin_dir,
            &cni_conf_dir,
            &dir.join("ipam"),
            &dir.join("logs"),
            &state,
        ] {
            std::fs::create_dir_all(d)?;
        }
        for plugin in ["bridge", "host-local", "loopback"] {
            let link = cni_bin_dir.join(plugin);
            if !link.exists() {
                std::os::unix::fs::symlink(Path::new(REFERENCE_PLUGINS).join(plugin), &link)?;
            }
        }
        let network = node.pod_network.octets();
        let subnet = format!("{}.{}.{}.0/24", network[0], network[1], network[2]);
        let host = |last: u8| format!("{}.{}.{}.{last}", network[0], network[1], network[2]);
        std::fs::write(
            cni_conf_dir.join(CNI_CONFIG),
            serde_json::to_string_pretty(&json!({
                "cniVersion": "1.0.0",
                "name": format!("{prefix}-{}", node.name),
                "plugins": [{
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet, "rangeStart": host(100), "rangeEnd": host(199), "gateway": node.gateway.to_string()}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": dir.join("ipam"),
                    }
                }]
            }))?,
        )?;
        let socket = state.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
                root = dir.join("root").display(),
                state = state.join("state").display(),
                socket = socket.display(),
                pause = crate::kube_cluster::image_reference("pause")?,
                bin = cni_bin_dir.display(),
                conf = cni_conf_dir.display(),
            ),
        )?;
        let mut command = node.netns.command_in_cgroup(&node.cgroup, "containerd");
        command.arg("--config").arg(&config);
        // Its own process group: a Ctrl-C at the terminal must leave it running until the
        // pods are stopped and removed through it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let process = Process::spawn(
            &format!("containerd on {}", node.name),
            command,
            dir.join("containerd.log"),
        )?;
        let containerd = Self {
            cni_bin_dir,
            cni_conf_dir,
            socket,
            cgroup_parent: testbed.runtime_cgroup_parent(),
            process: Some(process),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = CriClient::connect(&containerd.socket)
                && client.version().is_ok()
            {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "containerd did not answer on {} within 30 s; see {}",
                containerd.socket.display(),
                containerd.dir.join("containerd.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        for image in images {
            let output = Command::new("ctr")
                .arg("--address")
                .arg(&containerd.socket)
                .args(["--namespace", "k8s.io", "images", "import"])
                .arg(image)
                .output()
                .context("running ctr")?;
            anyhow::ensure!(
                output.status.success(),
                "ctr images import {}: {}",
                image.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(containerd)
    }

    pub fn client(&self) -> anyhow::Result<CriClient> {
        CriClient::connect(&self.socket)
    }

    /// The CNI configuration the runtime reads (the bridge, and weft-cni once installed).
    pub fn cni_config(&self) -> anyhow::Result<serde_json::Value> {
        let text = std::fs::read_to_string(self.cni_conf_dir.join(CNI_CONFIG))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Stops the daemon (its containers must be gone already).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}
