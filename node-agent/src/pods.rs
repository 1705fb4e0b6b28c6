//! The pod manager: what the agent does when a pod is enrolled or leaves. It opens the pod's
//! network namespace, starts the pod's listeners inside it, and asks the traffic capture (the
//! eBPF programs) to steer the pod's connections into them; removal undoes both.

use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    os::fd::BorrowedFd,
    sync::Arc,
};

use crate::{
    certificates::CertificateSource,
    enrollment::{EnrolledPod, PodLifecycle},
    netns::PodNetns,
    proxy::{PodProxy, ProxyContext},
};

/// Steers an enrolled pod's connections into its listeners. Implemented by the eBPF loader.
pub trait TrafficCapture: Send + Sync + 'static {
    /// Starts capturing `pod`'s traffic; `inbound_listener` is the pod's 15006 listener.
    fn attach(&self, pod: &EnrolledPod, inbound_listener: BorrowedFd<'_>) -> Result<(), String>;
    /// Stops capturing the pod's traffic and removes what `attach` installed.
    fn detach(&self, uid: &str) -> Result<(), String>;
}

/// Serves enrolled pods.
pub struct PodManager<C> {
    context: Arc<ProxyContext<C>>,
    home: Arc<File>,
    capture: Option<Arc<dyn TrafficCapture>>,
    pods: std::sync::Mutex<HashMap<String, (EnrolledPod, PodProxy)>>,
}

impl<C: CertificateSource> PodManager<C> {
    /// `capture` is `None` only where something else steers traffic (tests of the proxy alone).
    pub fn new(
        context: Arc<ProxyContext<C>>,
        home: Arc<File>,
        capture: Option<Arc<dyn TrafficCapture>>,
    ) -> Self {
        Self {
            context,
            home,
            capture,
            pods: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (EnrolledPod, PodProxy)>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enroll(&self, pod: EnrolledPod) -> Result<(), String> {
        if let Some((known, _)) = self.lock().get(&pod.uid)
            && *known == pod
        {
            return Ok(());
        }
        // A changed pod (new netns after a sandbox restart) is served anew.
        self.unenroll(&pod.uid)?;
        let netns = PodNetns::open(&pod.netns, self.home.clone())
            .map_err(|e| format!("opening network namespace {}: {e}", pod.netns.display()))?;
        let proxy = PodProxy::start(self.context.clone(), pod.uid.clone(), netns)
            .map_err(|e| format!("starting listeners in {}: {e}", pod.netns.display()))?;
        if let Some(capture) = &self.capture {
            capture.attach(&pod, proxy.inbound_plaintext_listener())?;
        }
        self.lock().insert(pod.uid.clone(), (pod, proxy));
        Ok(())
    }

    fn unenroll(&self, uid: &str) -> Result<(), String> {
        let Some(_served) = self.lock().remove(uid) else {
            return Ok(());
        };
        if let Some(capture) = &self.capture {
            capture.detach(uid)?;
        }
        Ok(())
    }
}

impl<C: CertificateSource> PodLifecycle for PodManager<C> {
    async fn add(&self, pod: EnrolledPod) -> Result<(), String> {
        self.enroll(pod)
    }

    async fn remove(&self, uid: &str) -> Result<(), String> {
        self.unenroll(uid)
    }

    fn enrolled(&self) -> BTreeSet<String> {
        self.lock().keys().cloned().collect()
    }
}
