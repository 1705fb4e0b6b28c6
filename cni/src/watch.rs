//! The node daemon's watcher: pods on this node and every namespace. A running pod whose
//! namespace gains `istio.io/dataplane-mode=ambient` (or that gains it itself) joins the mesh
//! without a restart; one that loses it leaves; a pod deleted while enrolled is released. New
//! pods are the plugin's: the watcher only enrolls pods already running.
//!
//! On start the watcher's first full view gives the daemon its initial snapshot, so a restarted
//! daemon hands the agent every running pod of the mesh before anything else (an empty snapshot
//! would release them all).

use std::{collections::BTreeMap, time::Duration};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use weft_enrollment::EnrolledPod;

use crate::{
    daemon::AgentLink,
    decide::{Decision, Exclusions, decide},
    netns::NetnsFinder,
};

/// Every this often the watcher reconciles even without events (a pod whose netns could not be
/// found is tried again).
const RESYNC: Duration = Duration::from_secs(5);

/// What the watcher needs to know of its node.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    pub node_name: String,
    pub excluded_namespaces: Vec<String>,
    pub finder: NetnsFinder,
}

enum Update {
    Pod(Box<Event<Pod>>),
    Namespace(Box<Event<Namespace>>),
    Failed(String),
}

/// What reconciling decided for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Enroll(Box<Pod>, Exclusions),
    Release(String),
}

pub struct NodeWatch {
    settings: WatchSettings,
    events: BoxStream<'static, Update>,
    pods: BTreeMap<String, Pod>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods_listed: bool,
    namespaces_listed: bool,
}

impl NodeWatch {
    pub fn new(client: Client, settings: WatchSettings) -> Self {
        let on_node =
            watcher::Config::default().fields(&format!("spec.nodeName={}", settings.node_name));
        let pods = watcher::watcher(Api::<Pod>::all(client.clone()), on_node)
            .default_backoff()
            .map(|e| match e {
                Ok(event) => Update::Pod(Box::new(event)),
                Err(error) => Update::Failed(format!("watching pods: {error}")),
            });
        let namespaces =
            watcher::watcher(Api::<Namespace>::all(client), watcher::Config::default())
                .default_backoff()
                .map(|e| match e {
                    Ok(event) => Update::Namespace(Box::new(event)),
                    Err(error) => Update::Failed(format!("watching namespaces: {error}")),
                });
        Self {
            settings,
            events: futures::stream::select(pods, namespaces).boxed(),
            pods: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            pods_listed: false,
            namespaces_listed: false,
        }
    }

    /// Waits for the first full list of pods and namespaces; the running pods of the mesh, with
    /// their network namespaces (pods whose namespace cannot be found are logged and left out).
    pub async fn initial(&mut self) -> Vec<EnrolledPod> {
        while !(self.pods_listed && self.namespaces_listed) {
            let Some(update) = self.events.next().await else {
                break;
            };
            self.apply(update);
        }
        let mut pods = Vec::new();
        for action in plan(
            &self.pods,
            &self.namespaces,
            &BTreeMap::new(),
            &self.settings.excluded_namespaces,
        ) {
            if let Action::Enroll(pod, exclusions) = action {
                match enrollment(&pod, &exclusions, &self.settings.finder) {
                    Ok(enrolled) => pods.push(enrolled),
                    Err(error) => tracing::warn!(%error, "a running pod of the mesh is left out"),
                }
            }
        }
        pods
    }

    /// Follows changes until the watch ends, enrolling and releasing through `link`.
    pub async fn run(mut self, link: AgentLink) {
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            let mut released = Vec::new();
            tokio::select! {
                update = self.events.next() => match update {
                    None => return,
                    Some(Update::Pod(event)) if matches!(*event, Event::Delete(_)) => {
                        if let Event::Delete(pod) = *event
                            && let Some(uid) = pod.metadata.uid.clone()
                        {
                            self.pods.remove(&uid);
                            released.push(uid);
                        }
                    }
                    Some(update) => self.apply(update),
                },
                _ = resync.tick() => {}
            }
            let held: BTreeMap<String, bool> = link
                .held()
                .await
                .into_iter()
                .map(|(uid, pod)| (uid, pod.dns_capture))
                .collect();
            for uid in released.into_iter().filter(|u| held.contains_key(u)) {
                if let Err(error) = link.remove(&uid).await {
                    tracing::warn!(%uid, %error, "releasing a deleted pod");
                }
            }
            if !(self.pods_listed && self.namespaces_listed) {
                continue;
            }
            for action in plan(
                &self.pods,
                &self.namespaces,
                &held,
                &self.settings.excluded_namespaces,
            ) {
                carry_out(&self.settings.finder, action, &link).await;
            }
        }
    }
}

async fn carry_out(finder: &NetnsFinder, action: Action, link: &AgentLink) {
    match action {
        Action::Enroll(pod, exclusions) => {
            let enrolled = match enrollment(&pod, &exclusions, finder) {
                Ok(enrolled) => enrolled,
                Err(error) => {
                    tracing::warn!(%error, "cannot enroll a running pod yet");
                    return;
                }
            };
            let (uid, name) = (enrolled.uid.clone(), enrolled.name.clone());
            match link.add(enrolled).await {
                Ok(()) => tracing::info!(%uid, pod = %name, "running pod joined the mesh"),
                Err(error) => tracing::warn!(%uid, pod = %name, %error, "enrolling a running pod"),
            }
        }
        Action::Release(uid) => match link.remove(&uid).await {
            Ok(()) => tracing::info!(%uid, "pod left the mesh"),
            Err(error) => tracing::warn!(%uid, %error, "releasing a pod"),
        },
    }
}

impl NodeWatch {
    fn apply(&mut self, update: Update) {
        match update {
            Update::Failed(error) => tracing::warn!(%error, "watch failed; it retries"),
            Update::Pod(event) => match *event {
                Event::Init => self.pods.clear(),
                Event::InitApply(pod) | Event::Apply(pod) => {
                    if let Some(uid) = pod.metadata.uid.clone() {
                        self.pods.insert(uid, pod);
                    }
                }
                Event::Delete(pod) => {
                    if let Some(uid) = &pod.metadata.uid {
                        self.pods.remove(uid);
                    }
                }
                Event::InitDone => self.pods_listed = true,
            },
            Update::Namespace(event) => match *event {
                Event::Init => self.namespaces.clear(),
                Event::InitApply(ns) | Event::Apply(ns) => {
                    let name = ns.metadata.name.clone().unwrap_or_default();
                    self.namespaces
                        .insert(name, ns.metadata.labels.unwrap_or_default());
                }
                Event::Delete(ns) => {
                    self.namespaces
                        .remove(ns.metadata.name.as_deref().unwrap_or_default());
                }
                Event::InitDone => self.namespaces_listed = true,
            },
        }
    }
}

/// What to do for each pod: enroll running pods of the mesh that are not held, enroll again
/// held pods whose DNS capture annotation changed (the agent applies the change in place),
/// release held pods that left the mesh. `held` maps each held pod to whether its DNS is
/// captured. Pods that are not running yet are the plugin's; pods being deleted are left to
/// DEL.
pub fn plan(
    pods: &BTreeMap<String, Pod>,
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
    held: &BTreeMap<String, bool>,
    excluded_namespaces: &[String],
) -> Vec<Action> {
    let no_labels = BTreeMap::new();
    let mut actions = Vec::new();
    for (uid, pod) in pods {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let labels = namespaces.get(namespace).unwrap_or(&no_labels);
        let decision = match decide(pod, labels, excluded_namespaces) {
            Ok(decision) => decision,
            Err(error) => {
                tracing::warn!(%uid, %error, "pod cannot join the mesh");
                Decision::Skip("invalid mesh annotations")
            }
        };
        match (decision, held.get(uid)) {
            (Decision::Enroll(exclusions), None) if running(pod) => {
                actions.push(Action::Enroll(Box::new(pod.clone()), exclusions));
            }
            (Decision::Enroll(exclusions), Some(&dns_capture))
                if exclusions.dns_capture != dns_capture && running(pod) =>
            {
                actions.push(Action::Enroll(Box::new(pod.clone()), exclusions));
            }
            (Decision::Skip(_), Some(_)) => actions.push(Action::Release(uid.clone())),
            _ => {}
        }
    }
    actions
}

fn running(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && !pod_ips(pod).is_empty()
}

fn pod_ips(pod: &Pod) -> Vec<std::net::IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let listed = status.pod_ips.iter().flatten().map(|ip| ip.ip.as_str());
    let ips: Vec<_> = listed.filter_map(|ip| ip.parse().ok()).collect();
    if ips.is_empty() {
        status
            .pod_ip
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect()
    } else {
        ips
    }
}

/// The enrollment of a running pod: its addresses from its status, its netns from the node.
fn enrollment(
    pod: &Pod,
    exclusions: &Exclusions,
    finder: &NetnsFinder,
) -> Result<EnrolledPod, String> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone().unwrap_or_default();
    let netns = finder.find(&uid)?;
    Ok(EnrolledPod {
        uid,
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name: meta.name.clone().unwrap_or_default(),
        netns,
        addresses: pod_ips(pod),
        excluded_outbound_ports: exclusions.outbound_ports.clone(),
        excluded_inbound_ports: exclusions.inbound_ports.clone(),
        dns_capture: exclusions.dns_capture,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodIP, PodStatus};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::decide::DATAPLANE_MODE;

    fn pod(uid: &str, namespace: &str, phase: &str, labels: &[(&str, &str)]) -> Pod {
        let annotations = (uid == "dns-off").then(|| {
            [(
                weft_istio::labels::DNS_CAPTURE.to_string(),
                "false".to_string(),
            )]
            .into()
        });
        Pod {
            metadata: ObjectMeta {
                annotations,
                uid: Some(uid.into()),
                name: Some(uid.into()),
                namespace: Some(namespace.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ips: Some(vec![PodIP {
                    ip: "10.0.0.9".into(),
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn running_pods_follow_their_labels() {
        let pods: BTreeMap<String, Pod> = [
            pod("joins", "shop", "Running", &[]),
            pod("starting", "shop", "Pending", &[]),
            pod("held", "shop", "Running", &[]),
            pod("opted-out", "shop", "Running", &[(DATAPLANE_MODE, "none")]),
            pod("plain", "web", "Running", &[]),
            pod("left", "web", "Running", &[]),
            pod("dns-off", "shop", "Running", &[]),
        ]
        .into_iter()
        .map(|p| (p.metadata.uid.clone().unwrap(), p))
        .collect();
        let namespaces: BTreeMap<String, BTreeMap<String, String>> = [
            (
                "shop".to_string(),
                [(DATAPLANE_MODE.to_string(), "ambient".to_string())].into(),
            ),
            ("web".to_string(), BTreeMap::new()),
        ]
        .into();
        // `dns-off` is held with DNS captured and now carries `dns-capture: "false"`.
        let held: BTreeMap<String, bool> = ["held", "opted-out", "left", "dns-off"]
            .map(|uid| (uid.to_string(), true))
            .into();
        let actions: Vec<String> = plan(&pods, &namespaces, &held, &[])
            .into_iter()
            .map(|a| match a {
                Action::Enroll(p, _) => format!("enroll {}", p.metadata.uid.unwrap()),
                Action::Release(uid) => format!("release {uid}"),
            })
            .collect();
        assert_eq!(
            actions,
            [
                "enroll dns-off",
                "enroll joins",
                "release left",
                "release opted-out"
            ]
        );
    }
}
