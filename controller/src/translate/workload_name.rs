//! The name of the workload a pod belongs to, as istiod computes it for the `workload_name` of
//! its xDS Workload and for the `source_workload` / `destination_workload` metric labels
//! (`GetWorkloadMetaFromPod` and `GetDeployMetaFromPod` in istio/istio `pkg/kube/util.go`): the
//! `service.istio.io/workload-name` label when the pod has it; otherwise, for a pod whose name
//! was generated, the name of its controller with the suffix its controller adds stripped (a
//! Deployment's ReplicaSet, a CronJob's Job); otherwise the pod's own name. A WorkloadEntry's
//! workload is the WorkloadGroup it was registered from, else the label, else the entry itself
//! (`WorkloadNameFromWorkloadEntry` in `pkg/kube/labels/labels.go`).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use std::collections::BTreeMap;

use weft_istio::labels::{
    AUTO_REGISTRATION_GROUP, DEPLOYMENT_CONFIG, POD_TEMPLATE_HASH, ROLLOUTS_POD_TEMPLATE_HASH,
    WORKLOAD_NAME,
};

use super::resolve::label;

/// The pod's workload name (Istio's `GetWorkloadMetaFromPod(pod).Name`).
pub fn workload_name(pod: &Pod) -> String {
    // Istio takes the label whenever it is present, even with an empty value.
    if let Some(name) = label(&pod.metadata, WORKLOAD_NAME) {
        return name.to_owned();
    }
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let derived = controller_derived_name(pod).unwrap_or(pod_name);
    if derived.is_empty() {
        pod_name
    } else {
        derived
    }
    .to_owned()
}

/// A WorkloadEntry's workload name (Istio's `WorkloadNameFromWorkloadEntry`): the
/// `istio.io/autoRegistrationGroup` annotation, else the `service.istio.io/workload-name` label
/// (of its labels, `spec.labels` merged in), else its own name. Present but empty counts, as in
/// Istio.
pub fn workload_entry_workload_name(
    name: &str,
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> String {
    annotations
        .get(AUTO_REGISTRATION_GROUP)
        .or_else(|| labels.get(WORKLOAD_NAME))
        .map_or_else(|| name.to_owned(), Clone::clone)
}

/// Istio's `GetDeployMetaFromPod`: only a pod whose name was generated is looked into, and only
/// its `controller` owner reference counts.
fn controller_derived_name(pod: &Pod) -> Option<&str> {
    if pod
        .metadata
        .generate_name
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        return None;
    }
    let controller = pod
        .metadata
        .owner_references
        .as_deref()?
        .iter()
        .find(|r| r.controller == Some(true))?;
    Some(name_from_controller(pod, controller))
}

fn name_from_controller<'a>(pod: &'a Pod, controller: &'a OwnerReference) -> &'a str {
    let name = controller.name.as_str();
    let hash_label = |key| label(&pod.metadata, key).filter(|hash| !hash.is_empty());
    match controller.kind.as_str() {
        "ReplicaSet" => {
            // A Deployment's (or an Argo Rollout's) ReplicaSet is `<owner>-<pod-template-hash>`.
            let hash = hash_label(POD_TEMPLATE_HASH)
                .filter(|hash| name.ends_with(hash))
                .or_else(|| {
                    hash_label(ROLLOUTS_POD_TEMPLATE_HASH).filter(|hash| name.ends_with(hash))
                });
            match hash {
                Some(hash) => trim_dash_suffix(name, hash),
                None => name,
            }
        }
        // An OpenShift DeploymentConfig's ReplicationController: its pods name the config.
        "ReplicationController" => label(&pod.metadata, DEPLOYMENT_CONFIG)
            .filter(|config| !config.is_empty())
            .unwrap_or(name),
        "Job" => cron_job_name(name).unwrap_or(name),
        // StatefulSet, DaemonSet, a bare ReplicaSet or ReplicationController, any other kind.
        _ => name,
    }
}

/// `name` without `-<suffix>`; unchanged when it does not end so (Go's `strings.TrimSuffix`).
fn trim_dash_suffix<'a>(name: &'a str, suffix: &str) -> &'a str {
    name.strip_suffix(suffix)
        .and_then(|rest| rest.strip_suffix('-'))
        .unwrap_or(name)
}

/// The CronJob that created a Job named `<cronjob>-<8 to 10 digit timestamp>` (Istio's
/// `cronJobNameRegexp`, `(.+)-\d{8,10}$`).
fn cron_job_name(job: &str) -> Option<&str> {
    let (cron_job, timestamp) = job.rsplit_once('-')?;
    let is_timestamp =
        (8..=10).contains(&timestamp.len()) && timestamp.bytes().all(|b| b.is_ascii_digit());
    (is_timestamp && !cron_job.is_empty()).then_some(cron_job)
}

#[cfg(test)]
mod tests;
