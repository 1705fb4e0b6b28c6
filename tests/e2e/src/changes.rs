//! Changing a running mesh as its users do, and knowing when the mesh followed: objects
//! applied as `kubectl apply` applies them (each replaces the object of the same kind,
//! namespace and name), pods changed by their owners (labels, joining or leaving the mesh), and
//! waits on what the waypoint and the agents say they applied (the version in the waypoint's
//! `/config_dump`, the agents' stores), never on a log line.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::{Mesh, PodPhase, PodSpec, STARTUP};

impl Mesh {
    /// Waits until `curl` from `pod` gets 200 from `url`: the agents (and the waypoint, where
    /// one is in the way) learned how to reach it.
    pub fn await_reachable(&self, pod: &str, url: &str) -> anyhow::Result<()> {
        if !self.eventually(Duration::from_secs(20), || {
            self.curl_with(pod, &[url]).status == 200
        }) {
            bail!("{url} does not answer {pod}\n{}", self.logs());
        }
        Ok(())
    }

    /// Changes the pod `name` as its owner would (labels, say) and rewrites the pods' file; a
    /// pod whose enrollment changed joins or leaves the mesh: its node's enrollment snapshot
    /// is sent again (the CNI's role).
    pub fn update_pod(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut PodSpec),
    ) -> anyhow::Result<()> {
        let spec = self
            .pods
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))?;
        let enrolled = spec.enrolled;
        change(spec);
        let (node, rejoined) = (spec.node.clone(), spec.enrolled != enrolled);
        self.write_config("00-pods.yaml", &self.pods_yaml())?;
        if rejoined {
            self.enroll(&node)?;
        }
        Ok(())
    }

    /// Deletes the pod `name` as Kubernetes does when its owner scales it down: the Pod object
    /// is marked terminating (`deletionTimestamp`), so the mesh stops sending it new requests;
    /// `settled` waits for the proxies that route to it; then its app stops, its node's agent
    /// stops capturing it (the enrollment snapshot without it: the CNI's DEL), and last the
    /// Pod object leaves the API ([`PodPhase::Absent`]). The pod's network namespace stays, as
    /// a sandbox the testbed reuses for [`Mesh::create_pod`].
    pub fn delete_pod(
        &mut self,
        name: &str,
        settled: impl FnOnce(&Self) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.set_pod_phase(name, PodPhase::Terminating)?;
        settled(self)?;
        if let Some(at) = self.apps.iter().position(|p| p.name == name) {
            self.apps.remove(at).stop();
        }
        self.set_pod_phase(name, PodPhase::Absent)?;
        let node = self.pod_spec(name)?.node.clone();
        self.enroll(&node)
    }

    /// Creates the pod `name` (one [`Mesh::delete_pod`] deleted) in its old sandbox, as its
    /// owner's next replica: its Pod object appears not Ready, its node's agent captures it
    /// (the CNI's ADD), its app starts, and once the app accepts the Pod turns Ready, so its
    /// endpoints follow.
    pub fn create_pod(&mut self, name: &str) -> anyhow::Result<()> {
        let spec = self.pod_spec(name)?.clone();
        anyhow::ensure!(spec.phase == PodPhase::Absent, "pod {name} exists");
        self.set_pod_phase(name, PodPhase::Starting)?;
        self.enroll(&spec.node)?;
        self.spawn_app(&spec)?;
        self.wait_app(&spec)?;
        self.set_pod_phase(name, PodPhase::Running)
    }

    fn pod_spec(&self, name: &str) -> anyhow::Result<&PodSpec> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))
    }

    /// What `kubectl apply -f` does with `yaml`: each object it holds replaces the object of
    /// the same kind, namespace and name (one file per object in the watched directory).
    pub fn kubectl_apply(&self, yaml: &str) -> anyhow::Result<()> {
        for document in split_documents(yaml) {
            let value: serde_yaml::Value =
                serde_yaml::from_str(&document).with_context(|| format!("parsing {document}"))?;
            let text = |path: &[&str]| {
                path.iter()
                    .try_fold(&value, |v, key| v.get(key))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            let kind = text(&["kind"]).with_context(|| format!("no kind in {document}"))?;
            let name = text(&["metadata", "name"])
                .with_context(|| format!("no metadata.name in {document}"))?;
            let namespace =
                text(&["metadata", "namespace"]).unwrap_or_else(|| "default".to_owned());
            self.write_config(&object_file(&kind, &namespace, &name), &document)?;
        }
        Ok(())
    }

    /// What `kubectl delete <kind> <name> -n <namespace>` does to objects applied with
    /// [`Mesh::kubectl_apply`].
    pub fn kubectl_delete(&self, kind: &str, namespace: &str, name: &str) -> anyhow::Result<()> {
        self.remove_config(&object_file(kind, namespace, name))
    }

    /// The version of the `WaypointConfig` the waypoint of pod `name` applied last, as its
    /// `/config_dump` says (empty before the first).
    pub fn waypoint_config_version(&self, name: &str) -> String {
        self.waypoint_config_dump(name)
            .map(|dump| applied_version(&dump))
            .unwrap_or_default()
    }

    /// Writes a configuration file and waits until the waypoint of pod `waypoint` has applied the
    /// configuration that follows from it (the controller pushed a new `WaypointConfig`).
    pub fn write_waypoint_config(
        &self,
        waypoint: &str,
        file: &str,
        yaml: &str,
    ) -> anyhow::Result<()> {
        self.await_waypoint(waypoint, file, || self.write_config(file, yaml))
    }

    /// Makes `change` (to the configuration or the pods) and waits until the waypoint of pod
    /// `waypoint` has applied a new configuration because of it.
    pub fn await_waypoint<T>(
        &self,
        waypoint: &str,
        what: &str,
        change: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let before = self.waypoint_config_version(waypoint);
        let changed = change()?;
        self.await_waypoint_since(waypoint, &before, what)?;
        Ok(changed)
    }

    /// Waits until the waypoint of pod `waypoint` applied another configuration than the
    /// version `before` ([`Mesh::waypoint_config_version`] before a change).
    pub fn await_waypoint_since(
        &self,
        waypoint: &str,
        before: &str,
        what: &str,
    ) -> anyhow::Result<()> {
        if !self.eventually(STARTUP, || {
            let now = self.waypoint_config_version(waypoint);
            !now.is_empty() && now != before
        }) {
            bail!(
                "waypoint {waypoint} applied no new configuration after {what}\n{}",
                self.logs()
            );
        }
        Ok(())
    }

    /// Waits until every agent's store (its `/config_dump` `state`) satisfies `ready`: the
    /// agents applied the configuration the test just wrote.
    pub fn await_agents(
        &self,
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<()> {
        let nodes: Vec<String> = self.agents.keys().cloned().collect();
        if !self.eventually(STARTUP, || {
            nodes.iter().all(|node| {
                self.node_curl(node, "http://127.0.0.1:15000/config_dump")
                    .ok()
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .is_some_and(|dump| ready(&dump["state"]))
            })
        }) {
            bail!("the agents did not apply {what}\n{}", self.logs());
        }
        Ok(())
    }
}

/// The version of the last configuration a proxy applied, from its `/config_dump` (empty
/// before the first).
pub fn applied_version(dump: &serde_json::Value) -> String {
    dump["xds"]["last_applied"]["version"]
        .as_str()
        .map(String::from)
        .unwrap_or_default()
}

/// The file holding one object applied with [`Mesh::kubectl_apply`].
fn object_file(kind: &str, namespace: &str, name: &str) -> String {
    format!("50-{}-{namespace}-{name}.yaml", kind.to_lowercase())
}

/// The documents of a YAML stream, as text (comments kept).
pub fn split_documents(content: &str) -> Vec<String> {
    let mut documents = vec![String::new()];
    for line in content.lines() {
        if line.trim_end() == "---" {
            documents.push(String::new());
        } else if let Some(last) = documents.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    documents
        .into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}
