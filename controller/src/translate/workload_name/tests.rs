use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::workload_name;

/// A pod named `name`, generated from `generate_name` when given, with `labels` and owned by
/// `owners` (`(kind, name, controller)`).
fn pod(
    name: &str,
    generate_name: Option<&str>,
    labels: &[(&str, &str)],
    owners: &[(&str, &str, bool)],
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            generate_name: generate_name.map(Into::into),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            owner_references: Some(
                owners
                    .iter()
                    .map(|(kind, name, controller)| OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: (*kind).into(),
                        name: (*name).into(),
                        uid: format!("uid-{name}"),
                        controller: Some(*controller),
                        block_owner_deletion: None,
                    })
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Each case cites the rule of istio/istio `pkg/kube/util.go` it checks.
#[test]
fn workload_names_follow_istios_rules() {
    let rs = "reviews-v1-7d4f9c6b58";
    let hash = ("pod-template-hash", "7d4f9c6b58");
    let cases: Vec<(&str, Pod, &str)> = vec![
        (
            "GetDeployMetaFromPod: a ReplicaSet whose name ends with the pod-template-hash label \
             is a Deployment's, named without `-<hash>`",
            pod(
                "reviews-v1-7d4f9c6b58-x2k4p",
                Some("reviews-v1-7d4f9c6b58-"),
                &[hash],
                &[("ReplicaSet", rs, true)],
            ),
            "reviews-v1",
        ),
        (
            "GetDeployMetaFromPod: a ReplicaSet without the hash label keeps its own name",
            pod(
                "cache-abcde",
                Some("cache-"),
                &[],
                &[("ReplicaSet", "cache", true)],
            ),
            "cache",
        ),
        (
            "GetDeployMetaFromPod: a hash label the ReplicaSet's name does not end with is \
             not stripped",
            pod(
                "web-abcde",
                Some("web-"),
                &[("pod-template-hash", "zzz")],
                &[("ReplicaSet", "web-5f6d7", true)],
            ),
            "web-5f6d7",
        ),
        (
            "GetDeployMetaFromPod: an Argo Rollout's ReplicaSet, by rollouts-pod-template-hash",
            pod(
                "canary-6c9b8-q1w2e",
                Some("canary-6c9b8-"),
                &[("rollouts-pod-template-hash", "6c9b8")],
                &[("ReplicaSet", "canary-6c9b8", true)],
            ),
            "canary",
        ),
        (
            "GetDeployMetaFromPod: a Job named `<cronjob>-<8..10 digits>` belongs to the CronJob",
            pod(
                "backup-28930140-k9d2s",
                Some("backup-28930140-"),
                &[],
                &[("Job", "backup-28930140", true)],
            ),
            "backup",
        ),
        (
            "cronJobNameRegexp `(.+)-\\d{8,10}$`: a shorter timestamp leaves the Job's name",
            pod(
                "migrate-1234-k9d2s",
                Some("migrate-1234-"),
                &[],
                &[("Job", "migrate-1234", true)],
            ),
            "migrate-1234",
        ),
        (
            "cronJobNameRegexp: more than ten digits leaves the Job's name",
            pod(
                "batch-12345678901-x",
                Some("batch-12345678901-"),
                &[],
                &[("Job", "batch-12345678901", true)],
            ),
            "batch-12345678901",
        ),
        (
            "GetDeployMetaFromPod: a StatefulSet (any other controller) names the workload",
            pod(
                "ratings-0",
                Some("ratings-"),
                &[],
                &[("StatefulSet", "ratings", true)],
            ),
            "ratings",
        ),
        (
            "GetDeployMetaFromPod: a DaemonSet names the workload",
            pod(
                "logger-k2j4h",
                Some("logger-"),
                &[],
                &[("DaemonSet", "logger", true)],
            ),
            "logger",
        ),
        (
            "GetDeployMetaFromPod: a bare ReplicationController names the workload",
            pod(
                "legacy-k2j4h",
                Some("legacy-"),
                &[],
                &[("ReplicationController", "legacy", true)],
            ),
            "legacy",
        ),
        (
            "GetDeployMetaFromPod: an OpenShift DeploymentConfig's ReplicationController, by the \
             deploymentconfig label",
            pod(
                "front-3-k2j4h",
                Some("front-3-"),
                &[("deploymentconfig", "front")],
                &[("ReplicationController", "front-3", true)],
            ),
            "front",
        ),
        (
            "GetDeployMetaFromPod: only the `controller` owner reference counts",
            pod(
                "worker-k2j4h",
                Some("worker-"),
                &[],
                &[
                    ("ConfigMap", "settings", false),
                    ("StatefulSet", "worker", true),
                ],
            ),
            "worker",
        ),
        (
            "GetDeployMetaFromPod: without a controller reference, the pod's name",
            pod(
                "orphan-k2j4h",
                Some("orphan-"),
                &[],
                &[("ReplicaSet", "orphan-7d4f9c6b58", false)],
            ),
            "orphan-k2j4h",
        ),
        (
            "GetDeployMetaFromPod: a pod whose name was not generated is its own workload, \
             whatever owns it",
            pod("details-v1", None, &[hash], &[("ReplicaSet", rs, true)]),
            "details-v1",
        ),
        (
            "GetDeployMetaFromPod: a pod with neither owner nor generated name",
            pod("productpage-v1", None, &[("app", "productpage")], &[]),
            "productpage-v1",
        ),
        (
            "GetWorkloadMetaFromPod: the service.istio.io/workload-name label wins over the \
             controller",
            pod(
                "reviews-v1-7d4f9c6b58-x2k4p",
                Some("reviews-v1-7d4f9c6b58-"),
                &[hash, ("service.istio.io/workload-name", "reviews")],
                &[("ReplicaSet", rs, true)],
            ),
            "reviews",
        ),
        (
            "GetWorkloadMetaFromPod: the label names a pod that has no controller too",
            pod(
                "vm-proxy",
                None,
                &[("service.istio.io/workload-name", "edge")],
                &[],
            ),
            "edge",
        ),
        (
            "the app label is the canonical service, never the workload",
            pod("ratings-v1", None, &[("app", "ratings")], &[]),
            "ratings-v1",
        ),
    ];
    for (rule, pod, expected) in cases {
        assert_eq!(workload_name(&pod), expected, "{rule}");
    }
}
