//! A CRI client of containerd, over its Unix socket, making the calls the kubelet makes for a
//! pod: RunPodSandbox (which runs the CNI chain), CreateContainer and StartContainer, and their
//! stops and removals. Blocking wrappers over the generated tonic client (`weft_proto::cri`).

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use weft_proto::cri::{self, runtime_service_client::RuntimeServiceClient};

/// How long one CRI call may take (image unpacking and the CNI chain included).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// A container to create in a sandbox.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    /// The kubelet's attempt count (a restarted container is the next attempt of its name).
    pub attempt: u32,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<cri::Mount>,
    /// `None`: the runtime's defaults (what a pod without a security context gets).
    pub security: Option<cri::LinuxContainerSecurityContext>,
    /// The container's log file, relative to its sandbox's log directory.
    pub log_path: String,
}

impl CriClient {
    /// Connects to the CRI socket at `socket`.
    pub fn connect(socket: &Path) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let socket = socket.to_path_buf();
        let channel = runtime.block_on(async move {
            Endpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                }))
                .await
        })?;
        Ok(Self {
            runtime,
            client: RuntimeServiceClient::new(channel),
        })
    }

    fn call<T>(
        &self,
        what: &str,
        call: impl AsyncFnOnce(
            RuntimeServiceClient<Channel>,
        ) -> Result<tonic::Response<T>, tonic::Status>,
    ) -> anyhow::Result<T> {
        let client = self.client.clone();
        let response = self
            .runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, call(client)).await })
            .with_context(|| format!("{what}: no answer within {CALL_TIMEOUT:?}"))?
            .with_context(|| what.to_string())?;
        Ok(response.into_inner())
    }

    /// The runtime's name and version.
    pub fn version(&self) -> anyhow::Result<cri::VersionResponse> {
        self.call("Version", async |mut c| {
            c.version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    /// Creates and starts a sandbox; returns its id.
    pub fn run_pod_sandbox(&self, config: &cri::PodSandboxConfig) -> anyhow::Result<String> {
        let config = config.clone();
        Ok(self
            .call("RunPodSandbox", async |mut c| {
                c.run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
            })?
            .pod_sandbox_id)
    }

    /// The sandbox's status, with containerd's verbose information (JSON by key).
    pub fn pod_sandbox_status(
        &self,
        id: &str,
    ) -> anyhow::Result<(cri::PodSandboxStatus, HashMap<String, String>)> {
        let id = id.to_string();
        let response = self.call("PodSandboxStatus", async |mut c| {
            c.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true,
            })
            .await
        })?;
        Ok((response.status.context("no sandbox status")?, response.info))
    }

    /// Stops the sandbox (its containers, then the CNI DEL).
    pub fn stop_pod_sandbox(&self, id: &str) -> anyhow::Result<()> {
        let id = id.to_string();
        self.call("StopPodSandbox", async |mut c| {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(|_| ())
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> anyhow::Result<()> {
        let id = id.to_string();
        self.call("RemovePodSandbox", async |mut c| {
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(|_| ())
    }

    /// Creates a container in the sandbox; returns its id.
    pub fn create_container(
        &self,
        sandbox: &str,
        sandbox_config: &cri::PodSandboxConfig,
        spec: &ContainerSpec,
    ) -> anyhow::Result<String> {
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.to_string(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: spec.name.clone(),
                    attempt: spec.attempt,
                }),
                image: Some(cri::ImageSpec {
                    image: spec.image.clone(),
                    annotations: HashMap::new(),
                }),
                command: spec.command.clone(),
                args: spec.args.clone(),
                envs: spec
                    .env
                    .iter()
                    .map(|(key, value)| cri::KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                mounts: spec.mounts.clone(),
                log_path: spec.log_path.clone(),
                linux: Some(cri::LinuxContainerConfig {
                    security_context: spec.security.clone(),
                }),
                ..cri::ContainerConfig::default()
            }),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let what = format!("CreateContainer {}", spec.name);
        Ok(self
            .call(&what, async |mut c| c.create_container(request).await)?
            .container_id)
    }

    pub fn start_container(&self, id: &str) -> anyhow::Result<()> {
        let id = id.to_string();
        self.call("StartContainer", async |mut c| {
            c.start_container(cri::StartContainerRequest { container_id: id })
                .await
        })
        .map(|_| ())
    }

    /// Stops the container, killing it after `timeout` seconds (0: at once).
    pub fn stop_container(&self, id: &str, timeout: i64) -> anyhow::Result<()> {
        let id = id.to_string();
        self.call("StopContainer", async |mut c| {
            c.stop_container(cri::StopContainerRequest {
                container_id: id,
                timeout,
            })
            .await
        })
        .map(|_| ())
    }

    pub fn remove_container(&self, id: &str) -> anyhow::Result<()> {
        let id = id.to_string();
        self.call("RemoveContainer", async |mut c| {
            c.remove_container(cri::RemoveContainerRequest { container_id: id })
                .await
        })
        .map(|_| ())
    }

    pub fn container_status(&self, id: &str) -> anyhow::Result<cri::ContainerStatus> {
        let id = id.to_string();
        self.call("ContainerStatus", async |mut c| {
            c.container_status(cri::ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await
        })?
        .status
        .context("no container status")
    }
}

/// The network namespace file of a sandbox, from containerd's verbose status (the runtime spec's
/// network namespace).
pub fn sandbox_netns(info: &HashMap<String, String>) -> anyhow::Result<String> {
    let text = info.get("info").context("no verbose sandbox information")?;
    let info: serde_json::Value = serde_json::from_str(text)?;
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .map(String::from)
        .context("the sandbox's runtime spec names no network namespace")
}

/// A host directory or file mounted into a container.
pub fn mount(host: impl AsRef<Path>, container: &str, readonly: bool) -> cri::Mount {
    cri::Mount {
        container_path: container.into(),
        host_path: host.as_ref().to_string_lossy().into_owned(),
        readonly,
        selinux_relabel: false,
        propagation: cri::MountPropagation::PropagationPrivate as i32,
    }
}

/// Like [`mount`], with mounts made on the host later showing inside (`rslave`), as the chart's
/// `mountPropagation: HostToContainer`.
pub fn mount_following_host(host: impl AsRef<Path>, container: &str) -> cri::Mount {
    cri::Mount {
        propagation: cri::MountPropagation::PropagationHostToContainer as i32,
        ..mount(host, container, false)
    }
}
