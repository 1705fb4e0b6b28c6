//! The pod manager: what the agent does when a pod is enrolled or leaves. It opens the pod's
//! network namespace, starts the pod's listeners inside it, and asks the traffic capture (the
//! eBPF programs) to steer the pod's connections into them; removal undoes both.

use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    os::fd::AsFd,
    sync::Arc,
};

use weft_proxy_core::drain::DrainSource;

use crate::{
    dns_proxy::server::DnsSettings,
    ebpf::{Enroller, PodEnrollment, RedirectionError},
    enrollment::{EnrolledPod, PodLifecycle},
    netns::PodNetns,
    proxy::{PodProxy, ProxyContext},
};

/// Serves enrolled pods.
pub struct PodManager {
    context: Arc<ProxyContext>,
    home: Arc<File>,
    capture: Option<Arc<dyn Enroller>>,
    pods: std::sync::Mutex<HashMap<String, (EnrolledPod, PodProxy)>>,
    /// Each pod's listeners drain with the agent: they stop accepting, their connections
    /// finish. The capture stays: a pod's new connections fail closed until an agent serves it.
    drain: DrainSource,
    /// Each pod's DNS proxy: the cluster domain and the upstream resolver.
    dns: Arc<DnsSettings>,
    /// How many enrollment snapshots were applied (the first ends the agent's start-up).
    snapshots: tokio::sync::watch::Sender<u64>,
}

impl PodManager {
    /// `capture` (the eBPF redirection) is `None` only where something else steers traffic
    /// (tests of the proxy alone).
    pub fn new(
        context: Arc<ProxyContext>,
        home: Arc<File>,
        capture: Option<Arc<dyn Enroller>>,
    ) -> Self {
        Self {
            context,
            home,
            capture,
            pods: Default::default(),
            drain: DrainSource::never(),
            dns: Arc::default(),
            snapshots: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Follows how many enrollment snapshots were applied.
    pub fn snapshots(&self) -> tokio::sync::watch::Receiver<u64> {
        self.snapshots.subscribe()
    }

    /// The pods' DNS proxy settings (default: `cluster.local`, `/etc/resolv.conf`).
    pub fn with_dns(mut self, dns: DnsSettings) -> Self {
        self.dns = Arc::new(dns);
        self
    }

    /// Drains every pod's listeners with `drain` (the agent's, after SIGTERM).
    pub fn with_drain(mut self, drain: DrainSource) -> Self {
        self.drain = drain;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (EnrolledPod, PodProxy)>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enroll(&self, pod: EnrolledPod) -> Result<(), String> {
        if let Some((known, _)) = self.lock().get_mut(&pod.uid) {
            if *known == pod {
                return Ok(());
            }
            // Only its DNS capture changed (the pod's annotation): applied in place, its
            // listeners and connections untouched.
            let with_new_dns = EnrolledPod {
                dns_capture: pod.dns_capture,
                ..known.clone()
            };
            if with_new_dns == pod {
                if let Some(capture) = &self.capture {
                    capture
                        .set_dns_capture(&pod.uid, pod.dns_capture)
                        .map_err(|e| e.to_string())?;
                }
                known.dns_capture = pod.dns_capture;
                return Ok(());
            }
        }
        if self.drain.is_draining() {
            // Its listeners would close at once: the enrolling side retries with the next agent.
            return Err("the agent is draining".to_owned());
        }
        // A changed pod (new netns after a sandbox restart) is served anew. A pod this process
        // does not serve keeps its capture: an earlier run's or the draining agent's, which
        // `capture_pod` takes over in place, so the pod is never uncaptured meanwhile.
        if self.lock().contains_key(&pod.uid) {
            self.unenroll(&pod.uid)?;
        }
        let netns = PodNetns::open(&pod.netns, self.home.clone())
            .map_err(|e| format!("opening network namespace {}: {e}", pod.netns.display()))?;
        let netns = match netns.clone().keep_client_addresses() {
            Ok(netns) => netns,
            Err(error) => {
                tracing::warn!(uid = %pod.uid, %error, "clients' addresses cannot be kept: the application sees the pod's own address as its peer");
                netns
            }
        };
        let proxy = PodProxy::start(
            self.context.clone(),
            pod.uid.clone(),
            netns,
            self.drain.watch(),
            self.dns.clone(),
        )
        .map_err(|e| format!("starting listeners in {}: {e}", pod.netns.display()))?;
        if let Some(capture) = &self.capture {
            capture_pod(capture.as_ref(), &pod, &proxy)?;
        }
        self.lock().insert(pod.uid.clone(), (pod, proxy));
        Ok(())
    }

    /// Stops serving the pod and removes its capture, also a capture left by an earlier run
    /// for a pod this run never served (deleted while the agent was down).
    fn unenroll(&self, uid: &str) -> Result<(), String> {
        let served = self.lock().remove(uid);
        if let Some(capture) = &self.capture {
            match capture.unenroll(uid) {
                Ok(()) | Err(RedirectionError::NotEnrolled(_)) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
        drop(served);
        Ok(())
    }
}

/// Puts the pod under redirection, or, for a pod whose redirection survived an agent restart
/// (pinned programs stay attached, which is what keeps it failing closed meanwhile), takes it
/// over with the new listener. A pod enrolled in another netns (its sandbox was recreated while
/// the agent was down) is enrolled anew.
fn capture_pod(capture: &dyn Enroller, pod: &EnrolledPod, proxy: &PodProxy) -> Result<(), String> {
    // Closed only when the agent drained already: the pod stays captured, failing closed.
    let listener = proxy
        .inbound_plaintext_listener()
        .ok_or_else(|| "the agent is draining".to_owned())?;
    let enrollment = PodEnrollment {
        uid: pod.uid.clone(),
        netns: pod.netns.clone(),
        addresses: pod.addresses.clone(),
        excluded_outbound_ports: pod.excluded_outbound_ports.clone(),
        excluded_inbound_ports: pod.excluded_inbound_ports.clone(),
        dns_capture: pod.dns_capture,
        inbound_listener: listener.as_fd(),
    };
    let adopted = capture
        .enrolled()
        .map_err(|e| e.to_string())?
        .iter()
        .any(|p| p.uid == pod.uid);
    if adopted {
        match capture.adopt(&enrollment) {
            Ok(_) => {
                tracing::info!(uid = %pod.uid, "pod redirection taken over from an earlier or draining agent");
                return Ok(());
            }
            Err(RedirectionError::NetnsChanged { .. }) => {
                tracing::info!(uid = %pod.uid, "pod has a new network namespace: enrolling anew");
                capture.unenroll(&pod.uid).map_err(|e| e.to_string())?;
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    capture
        .enroll(&enrollment)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl PodManager {
    /// How many pods the capture holds that this process does not serve: pods of an earlier
    /// run (restart) or of the agent still running beside this one (rolling update), until the
    /// enrolling side's snapshot takes them over (or releases those that left).
    pub fn unserved(&self) -> usize {
        let Some(capture) = &self.capture else {
            return 0;
        };
        match capture.enrolled() {
            Ok(captured) => {
                let served = self.lock();
                captured
                    .iter()
                    .filter(|p| !served.contains_key(&p.uid))
                    .count()
            }
            Err(error) => {
                tracing::warn!(%error, "listing the captured pods");
                1
            }
        }
    }
}

impl PodLifecycle for PodManager {
    async fn add(&self, pod: EnrolledPod) -> Result<(), String> {
        self.enroll(pod)
    }

    async fn remove(&self, uid: &str) -> Result<(), String> {
        self.unenroll(uid)
    }

    fn snapshot_applied(&self) {
        self.snapshots.send_modify(|applied| *applied += 1);
    }

    /// The pods served, and those whose capture an earlier run left in place: a snapshot that
    /// omits one of these removes it.
    fn enrolled(&self) -> BTreeSet<String> {
        let mut uids: BTreeSet<String> = self.lock().keys().cloned().collect();
        if let Some(capture) = &self.capture {
            match capture.enrolled() {
                Ok(pods) => uids.extend(pods.into_iter().map(|p| p.uid)),
                Err(error) => tracing::warn!(%error, "listing the captured pods"),
            }
        }
        uids
    }
}
