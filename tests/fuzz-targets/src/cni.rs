//! The CNI plugin's input, as the container runtime hands it, and the pod it names as the API
//! server returns it (its labels and annotations are the pod author's).

use std::cell::RefCell;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use weft_cni::plugin::{self, Cluster, NodeDaemon};
use weft_cni::protocol::{Reply, Request};
use weft_cni::spec::{Command, Invocation};

struct OnePod(Pod);

impl Cluster for OnePod {
    async fn pod(
        &self,
        _namespace: &str,
        _name: &str,
    ) -> Result<(Pod, BTreeMap<String, String>), String> {
        let labels = BTreeMap::from([("istio.io/dataplane-mode".to_owned(), "ambient".to_owned())]);
        Ok((self.0.clone(), labels))
    }
}

#[derive(Default)]
struct Daemon(RefCell<Vec<Request>>);

impl NodeDaemon for Daemon {
    async fn send(&self, request: Request) -> Result<Reply, String> {
        let reply = match request {
            Request::Check { .. } => Reply::Enrolled { enrolled: true },
            _ => Reply::Ack,
        };
        self.0.borrow_mut().push(request);
        Ok(reply)
    }
}

/// Input: `KEY=VALUE` lines (the `CNI_*` environment), a blank line, stdin, then optionally
/// `\0` and the pod's JSON (an empty pod in an ambient namespace when absent or not a pod). The
/// plugin answers with a result or a CNI error, never a panic, and asks the node daemon to
/// enroll only on ADD and only a pod with a valid uid.
pub fn plugin(input: &[u8]) {
    let (environment, rest) = crate::split_once(input, b"\n\n");
    let (stdin, pod) = crate::split_once(rest, b"\0");
    let environment: BTreeMap<String, String> = String::from_utf8_lossy(environment)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let Ok(invocation) = Invocation::from_env(|name| environment.get(name).cloned()) else {
        return;
    };
    let pod = serde_json::from_slice::<Pod>(pod).unwrap_or_default();
    let daemon = Daemon::default();
    let result = crate::complete(plugin::run(&invocation, stdin, &OnePod(pod), &daemon));
    match result {
        Ok(Some(output)) => assert!(output.is_object(), "{output}"),
        Ok(None) => {}
        Err(error) => {
            let _ = error.to_json("1.0.0");
        }
    }
    for request in daemon.0.borrow().iter() {
        if let Request::Add { pod, .. } = request {
            assert_eq!(invocation.command, Command::Add);
            weft_enrollment::check_pod_uid(&pod.uid).expect("the plugin sends only valid uids");
        }
    }
}
