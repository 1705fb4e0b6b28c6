//! The waypoint binary in the gateway role, in a pod of a [`Mesh`]: an ingress gateway for the
//! Istio Gateways selecting the pod, with its credentials from a directory (local mode), its
//! certificate from the controller's CA (with its node's token, as a pod of that node) and its
//! configuration over delta ADS. Stopped when dropped.

use std::path::Path;

use anyhow::Context as _;

use crate::{Mesh, Process, binary};

/// A running gateway proxy.
pub struct GatewayProcess {
    process: Process,
    pub pod: String,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.process.stop();
    }
}

impl Mesh {
    /// Starts the gateway proxy in pod `pod` (an Istio Gateway's `selector` must pick its
    /// labels) with credentials from `credentials`, and waits until it is ready: it has its
    /// certificate and has applied its configuration.
    pub fn start_gateway(&self, pod: &str, credentials: &Path) -> anyhow::Result<GatewayProcess> {
        let spec = self
            .pods
            .iter()
            .find(|p| p.name == pod)
            .with_context(|| format!("no pod {pod}"))?
            .clone();
        let controller = self.controller_address();
        let mut command = self
            .testbed
            .pod_command(pod, binary("waypoint")?.to_str().context("binary path")?);
        command
            .env("PROXY_ROLE", "gateway")
            .env("CREDENTIALS_DIR", credentials)
            .env("XDS_ADDRESS", &controller)
            .env("CA_ADDRESS", &controller)
            .env(
                "BOOTSTRAP_TOKEN_FILE",
                self.dir().join(format!("{}.token", spec.node)),
            )
            .env("NODE_NAME", &spec.node)
            .env("POD_NAME", pod)
            .env("POD_NAMESPACE", &spec.namespace)
            .env("SERVICE_ACCOUNT", &spec.service_account)
            .env("RUST_LOG", "info");
        let log = self.dir().join(format!("gateway-{pod}.log"));
        let process = Process::spawn(&format!("gateway {pod}"), command, log)?;
        let gateway = GatewayProcess {
            process,
            pod: pod.to_owned(),
        };
        let ip = self.testbed.pod(pod).ip;
        self.wait_until(&format!("gateway {pod} readiness"), || {
            self.node_curl(&spec.node, &format!("http://{ip}:15021/healthz/ready"))
                .is_ok_and(|(code, _)| code == 200)
        })?;
        Ok(gateway)
    }
}
