//! The plugin's commands. ADD looks the pod and its namespace up, decides ([`crate::decide`]) and,
//! for a pod in the mesh, returns only once the node daemon reports the agent's ack: an ambient
//! pod's application never runs uncaptured. Pods outside the mesh never wait for the agent. The
//! previous plugin's result is passed through unchanged. I/O sits behind [`Cluster`] and
//! [`NodeDaemon`], so every path is tested without a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use weft_enrollment::EnrolledPod;

use crate::{
    decide::{Decision, decide},
    protocol::{Reply, Request},
    spec::{self, CniError, Command, Invocation, NetConf, codes},
};

/// Reads pods and namespaces (the API server, with the installer's kubeconfig).
pub trait Cluster {
    /// The pod and its namespace's labels.
    fn pod(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<(Pod, BTreeMap<String, String>), String>>;
}

/// The node daemon, which enrolls with the agent.
pub trait NodeDaemon {
    fn send(&self, request: Request) -> impl Future<Output = Result<Reply, String>>;
}

/// Runs one command; `Ok(Some)` is printed on stdout, `Ok(None)` prints nothing.
pub async fn run(
    invocation: &Invocation,
    stdin: &[u8],
    cluster: &impl Cluster,
    daemon: &impl NodeDaemon,
) -> Result<Option<Value>, CniError> {
    match invocation.command {
        Command::Version => Ok(Some(spec::version_result(
            spec::requested_version(stdin).as_deref(),
        ))),
        Command::Status => NetConf::parse(stdin, Command::Status).map(|_| None),
        Command::Add => {
            let conf = NetConf::parse(stdin, Command::Add)?;
            add(invocation, &conf, cluster, daemon).await?;
            Ok(Some(conf.passthrough()))
        }
        Command::Del => {
            NetConf::parse(stdin, Command::Del)?;
            del(invocation, daemon).await.map(|()| None)
        }
        Command::Check => {
            let conf = NetConf::parse(stdin, Command::Check)?;
            check(invocation, &conf, cluster, daemon)
                .await
                .map(|()| None)
        }
    }
}

/// The pod a mesh-eligible call is about, looked up and decided; `None` when it stays out.
async fn in_mesh(
    invocation: &Invocation,
    conf: &NetConf,
    cluster: &impl Cluster,
) -> Result<Option<(Pod, spec::PodRef, crate::decide::Exclusions)>, CniError> {
    // Not a Kubernetes pod (no pod named in CNI_ARGS): nothing to decide on.
    let Some(pod_ref) = invocation.pod() else {
        return Ok(None);
    };
    if conf.exclude_namespaces.contains(&pod_ref.namespace) {
        return Ok(None);
    }
    let (pod, namespace_labels) = cluster
        .pod(&pod_ref.namespace, &pod_ref.name)
        .await
        .map_err(|e| {
            CniError::new(
                codes::TRY_AGAIN_LATER,
                format!(
                    "reading pod {}/{} from the API server",
                    pod_ref.namespace, pod_ref.name
                ),
                e,
            )
        })?;
    match decide(&pod, &namespace_labels, &conf.exclude_namespaces) {
        Ok(Decision::Enroll(exclusions)) => Ok(Some((pod, pod_ref, exclusions))),
        Ok(Decision::Skip(_)) => Ok(None),
        Err(reason) => Err(CniError::new(
            codes::INVALID_POD,
            format!(
                "pod {}/{} is in the mesh but cannot be enrolled",
                pod_ref.namespace, pod_ref.name
            ),
            reason,
        )),
    }
}

async fn add(
    invocation: &Invocation,
    conf: &NetConf,
    cluster: &impl Cluster,
    daemon: &impl NodeDaemon,
) -> Result<(), CniError> {
    let Some((pod, pod_ref, exclusions)) = in_mesh(invocation, conf, cluster).await? else {
        return Ok(());
    };
    let who = format!("pod {}/{}", pod_ref.namespace, pod_ref.name);
    let prev_result = conf
        .prev_result
        .as_ref()
        .expect("checked by NetConf::parse");
    let addresses = spec::pod_addresses(prev_result)?;
    if addresses.ips.is_empty() {
        return Err(CniError::new(
            codes::INVALID_CONFIG,
            format!("{who} is in the mesh but the previous plugin gave it no address"),
            "weft-cni must come after the plugin that assigns pod addresses",
        ));
    }
    let uid = pod
        .metadata
        .uid
        .clone()
        .or(pod_ref.uid.clone())
        .ok_or_else(|| {
            CniError::new(
                codes::TRY_AGAIN_LATER,
                format!("{who} has no uid"),
                "the API server returned the pod without metadata.uid",
            )
        })?;
    // The node agent names the pod's pinned state by its uid and refuses any other: say so here,
    // where the runtime reports it, rather than as the agent's refusal.
    weft_enrollment::check_pod_uid(&uid).map_err(|error| {
        CniError::new(
            codes::INVALID_POD,
            format!("{who} cannot be enrolled: {error}"),
            "the API server assigns pods UUIDs: this pod's metadata did not come from one",
        )
    })?;
    let netns = invocation.netns.clone().expect("checked by Invocation");
    // Not fatal: without them the application sees the pod's own address as its clients'.
    if let Err(error) = crate::netns::enable_pod_sysctls(&netns) {
        eprintln!("weft-cni: ADD {who}: {error}");
    }
    let request = Request::Add {
        pod: EnrolledPod {
            uid,
            namespace: pod_ref.namespace.clone(),
            name: pod_ref.name.clone(),
            netns,
            addresses: addresses.ips,
            excluded_outbound_ports: exclusions.outbound_ports,
            excluded_inbound_ports: exclusions.inbound_ports,
            dns_capture: exclusions.dns_capture,
        },
        sandbox: invocation.container_id.clone(),
    };
    let refused = |details: String| {
        CniError::new(
            codes::TRY_AGAIN_LATER,
            format!(
                "{who} is in the mesh (istio.io/dataplane-mode=ambient) but the node agent did not enroll it"
            ),
            details,
        )
    };
    match daemon.send(request).await.map_err(refused)? {
        Reply::Ack => Ok(()),
        Reply::Error { message } => Err(refused(message)),
        other => Err(refused(format!("unexpected reply {other:?}"))),
    }
}

async fn del(invocation: &Invocation, daemon: &impl NodeDaemon) -> Result<(), CniError> {
    let request = Request::Del {
        uid: invocation.pod().and_then(|p| p.uid),
        sandbox: invocation.container_id.clone(),
    };
    match daemon.send(request).await {
        Ok(Reply::Ack) => Ok(()),
        Ok(Reply::Error { message }) => Err(CniError::new(
            codes::TRY_AGAIN_LATER,
            format!(
                "releasing sandbox {} from the mesh",
                invocation.container_id
            ),
            message,
        )),
        Ok(other) => Err(CniError::new(
            codes::TRY_AGAIN_LATER,
            format!(
                "releasing sandbox {} from the mesh",
                invocation.container_id
            ),
            format!("unexpected reply {other:?}"),
        )),
        // No daemon: nothing can be released now, and nothing needs to be. When it comes back it
        // rebuilds its pods from the API server, where this one is gone, and the agent releases
        // whatever that snapshot omits. DEL must not fail for that.
        Err(reason) => {
            eprintln!("weft-cni: DEL {}: {reason}", invocation.container_id);
            Ok(())
        }
    }
}

async fn check(
    invocation: &Invocation,
    conf: &NetConf,
    cluster: &impl Cluster,
    daemon: &impl NodeDaemon,
) -> Result<(), CniError> {
    let Some((pod, pod_ref, _)) = in_mesh(invocation, conf, cluster).await? else {
        return Ok(());
    };
    let who = format!("pod {}/{}", pod_ref.namespace, pod_ref.name);
    let uid = pod.metadata.uid.or(pod_ref.uid).unwrap_or_default();
    let not_enrolled = |details: String| {
        CniError::new(
            codes::NOT_ENROLLED,
            format!("{who} is in the mesh but not enrolled"),
            details,
        )
    };
    match daemon
        .send(Request::Check { uid })
        .await
        .map_err(not_enrolled)?
    {
        Reply::Enrolled { enrolled: true } => Ok(()),
        Reply::Enrolled { enrolled: false } => Err(not_enrolled(
            "the node daemon does not hold it (the kubelet re-adds it)".into(),
        )),
        Reply::Error { message } => Err(not_enrolled(message)),
        Reply::Ack => Err(not_enrolled("unexpected reply to a check".into())),
    }
}

#[cfg(test)]
mod tests;
