//! The demo on the testbed: the end-to-end harness's [`Mesh`], the controller in local mode
//! playing the examples' files as written (the harness generates the pods' placement and
//! addresses), each process started in its pod's namespace and cgroup; then the mesh's edge
//! ([`edge`](super::edge)): the external server, the examples' files that name it (held back
//! until its address is known), the in-mesh TLS server and the gateways.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, process::Command};

use anyhow::Context;
use weft_testbed::Testbed;

use super::{
    CaptureScope, Cluster, Examples, Place,
    edge::{self, Edge, RunningEdge},
};
use crate::fixtures::STDOUT_ACCESS_LOG;
use crate::{Mesh, MeshOptions, PodSpec};

/// The mesh and its edge.
pub struct OnTestbed {
    /// Declared first: stopped before the mesh.
    edge: RunningEdge,
    mesh: Mesh,
}

/// Starts the mesh with `options` (the examples' files in place of its `config_files`) and
/// its edge.
pub fn start(
    examples: &Examples,
    pods: &[PodSpec],
    options: MeshOptions,
) -> anyhow::Result<OnTestbed> {
    let (held_back, files): (Vec<_>, Vec<_>) = examples
        .files
        .iter()
        .cloned()
        .partition(|(_, yaml)| edge::names_external(yaml));
    let mesh_config = if options.mesh_config.is_empty() {
        STDOUT_ACCESS_LOG.to_owned()
    } else {
        options.mesh_config.clone()
    };
    let mesh = Mesh::start(
        pods.to_vec(),
        MeshOptions {
            config_files: files,
            mesh_config,
            ..options
        },
    )
    .context("starting the mesh")?;
    let edge = edge::start(&mesh, pods, &examples.files, &held_back)
        .with_context(|| format!("starting the edge\n{}", mesh.logs()))?;
    Ok(OnTestbed { edge, mesh })
}

impl std::ops::Deref for OnTestbed {
    type Target = Mesh;

    fn deref(&self) -> &Mesh {
        &self.mesh
    }
}

impl Cluster for OnTestbed {
    fn testbed(&self) -> &Testbed {
        &self.testbed
    }

    fn summary(&self) -> String {
        "the controller in local mode playing the examples' files; every process started in its pod's namespace and cgroup".into()
    }

    fn pod_ip(&self, pod: &str) -> Ipv4Addr {
        self.pod(pod).ip
    }

    fn pod_command(&self, pod: &str, program: &str) -> Command {
        self.testbed.pod_command(pod, program)
    }

    fn agent(&self, node: &str) -> (String, Ipv4Addr) {
        (node.to_string(), self.testbed.node(node).ip)
    }

    fn apply(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        self.write_config(file, yaml)
    }

    /// Prometheus scraping the mesh ([`Mesh::scraped`]) and the edge's gateways.
    fn start_observability(&self) -> anyhow::Result<Option<crate::observability::Observability>> {
        let mut scraped = self.mesh.scraped();
        scraped.gateways = self.edge.edge.metrics_addresses(|pod| self.pod_ip(pod));
        crate::observability::Observability::start(&scraped, || self.logs()).map(Some)
    }

    fn edge(&self) -> &Edge {
        &self.edge.edge
    }

    fn set_outbound_traffic_policy(&self, mode: &str) -> anyhow::Result<()> {
        self.set_mesh_config(&format!(
            "{STDOUT_ACCESS_LOG}outboundTrafficPolicy:\n  mode: {mode}\n"
        ))?;
        self.await_agents(mode, |state| state["outbound_traffic_policy"] == mode)
    }

    fn kill_agent(&mut self, node: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.mesh.runs_agent(node), "no agent runs on {node}");
        self.mesh.kill_agent(node);
        Ok(())
    }

    fn stop_controller(&mut self) -> anyhow::Result<()> {
        self.mesh.stop_controller();
        Ok(())
    }

    fn capture_scope(&self) -> CaptureScope {
        CaptureScope {
            filter: "tcp.len > 0",
            description: "everything between the nodes and the control plane",
            // Prometheus on the control-plane host scrapes the agents' and the waypoint's 15020
            // and the controller's 15014 in plaintext, as Istio's Prometheus does; metrics
            // carry no request's content (the marker check still covers them).
            ports: &[
                ("15008", "HBONE"),
                ("15010", "the controller"),
                ("15020", "metrics scraped by Prometheus"),
                ("15014", "the controller's metrics scraped by Prometheus"),
            ],
        }
    }

    fn places(&self) -> BTreeMap<String, Place> {
        let mut places = super::host_places(&self.testbed);
        for pod in self.testbed.pods() {
            places.insert(pod.name.clone(), Place::of(&pod.netns, &pod.cgroup, pod.ip));
        }
        places
    }

    fn dir(&self) -> &Path {
        Mesh::dir(&self.mesh)
    }

    fn logs(&self) -> String {
        Mesh::logs(&self.mesh)
    }
}
