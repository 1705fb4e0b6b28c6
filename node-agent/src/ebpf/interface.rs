//! What the agent's proxy sees of redirection: enrolling pods and recovering original
//! destinations. Behind traits so the proxy's tests run without a kernel ([`fake`]).
use std::{
    net::{IpAddr, SocketAddr},
    os::fd::BorrowedFd,
    path::PathBuf,
};

/// Identifies a network namespace (`SO_NETNS_COOKIE`, `bpf_get_netns_cookie`). Every pod has its
/// own, so it tells pods apart where their loopback addresses do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsCookie(pub u64);

/// A pod to enroll: where its sockets live, and how it wants to be treated. Its network
/// namespace is all the programs need: the connect and sockops programs know its sockets by the
/// namespace's cookie (taken from `inbound_listener`, created inside it).
#[derive(Debug)]
pub struct PodEnrollment<'a> {
    /// The pod's uid: names its pins, so 1-64 characters of `[A-Za-z0-9._-]`.
    pub uid: String,
    /// The pod's network namespace file, e.g. `/run/netns/<name>` (inbound steering attaches here).
    pub netns: PathBuf,
    /// The pod's own addresses (at most 2): inbound steering applies to them, outbound capture
    /// leaves connections to them alone.
    pub addresses: Vec<IpAddr>,
    /// Destination ports never captured outbound (at most 16).
    pub excluded_outbound_ports: Vec<u16>,
    /// Local ports never steered inbound (at most 16).
    pub excluded_inbound_ports: Vec<u16>,
    /// Whether the pod's DNS (port 53) goes to the agent's DNS proxy (Istio's
    /// `ambient.istio.io/dns-capture`, on unless the pod says `false`).
    pub dns_capture: bool,
    /// The agent's inbound (15006) listener, created inside the pod's netns.
    pub inbound_listener: BorrowedFd<'a>,
}

/// An enrolled pod as the agent needs to address it afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledPod {
    pub uid: String,
    pub netns_cookie: NetnsCookie,
}

/// Errors of redirection: loading, pinning, enrolling, map access.
#[derive(Debug, thiserror::Error)]
pub enum RedirectionError {
    #[error("the kernel cannot run the redirection programs: {0}")]
    KernelFeatures(super::KernelFeatures),
    #[error(transparent)]
    Ebpf(#[from] super::EbpfError),
    #[error("pin directory {0}: {1}")]
    PinDirectory(PathBuf, #[source] std::io::Error),
    #[error("pinning link {0}: {1}")]
    PinLink(PathBuf, #[source] aya::pin::PinError),
    #[error("opening pinned link {0}: {1}")]
    OpenPinnedLink(PathBuf, #[source] aya::programs::links::LinkError),
    #[error("removing pinned link {0}: {1}")]
    Unpin(PathBuf, #[source] std::io::Error),
    #[error("link of program {0}: {1}")]
    Link(&'static str, #[source] aya::programs::links::LinkError),
    #[error(transparent)]
    InvalidUid(#[from] crate::enrollment::InvalidPodUid),
    #[error("pod {uid}: {reason}")]
    InvalidEnrollment { uid: String, reason: String },
    #[error("pod {0} is already enrolled")]
    AlreadyEnrolled(String),
    #[error("pod {0} is not enrolled")]
    NotEnrolled(String),
    #[error("pod {uid} is enrolled in network namespace {enrolled}, its listener is in {listener}")]
    NetnsChanged {
        uid: String,
        enrolled: u64,
        listener: u64,
    },
    #[error("pod {uid}: opening {path}: {source}")]
    OpenPodPath {
        uid: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {uid}: reading the netns cookie of the inbound listener: {source}")]
    ListenerNetns {
        uid: String,
        #[source]
        source: std::io::Error,
    },
}

/// Enrolling and un-enrolling pods.
pub trait Enroller: Send + Sync {
    /// Puts the pod under redirection: from now on its outbound TCP goes to the agent's
    /// `127.0.0.1:15001` / `[::1]:15001` in its netns and inbound TCP to its application ports
    /// goes to `pod.inbound_listener`.
    fn enroll(&self, pod: &PodEnrollment<'_>) -> Result<EnrolledPod, RedirectionError>;

    /// Takes over a pod enrolled by an earlier run (its redirection stayed in place, failing
    /// closed): rewrites its configuration, points inbound steering at the new listener and
    /// attaches what is missing. Refused for a pod not enrolled, or enrolled in another netns.
    fn adopt(&self, pod: &PodEnrollment<'_>) -> Result<EnrolledPod, RedirectionError>;

    /// Takes the pod out: its netns link detached, its configuration and records removed.
    fn unenroll(&self, uid: &str) -> Result<(), RedirectionError>;

    /// Turns an enrolled pod's DNS capture on or off in place, for its next DNS connects and
    /// datagrams; the rest of its capture is untouched.
    fn set_dns_capture(&self, uid: &str, capture: bool) -> Result<(), RedirectionError>;

    /// The pods currently enrolled (including those adopted from an earlier run).
    fn enrolled(&self) -> Result<Vec<EnrolledPod>, RedirectionError>;
}

/// Recovering where a captured connection was going.
pub trait OriginalDst: Send + Sync {
    /// The original destination of the connection the agent accepted on its outbound listener
    /// inside the netns with cookie `netns`, from the accepted socket's peer address. Removes the
    /// record: each connection is looked up once. `None`: no record (not a captured connection,
    /// or looked up already).
    fn take_original_dst(
        &self,
        netns: NetnsCookie,
        peer: SocketAddr,
    ) -> Result<Option<SocketAddr>, RedirectionError>;
}

/// In-memory stand-ins for the agent's unit tests.
#[cfg(any(test, feature = "testing"))]
pub mod fake {
    use std::{collections::HashMap, sync::Mutex};

    use super::*;

    /// Records enrollments and answers original destinations from a table the test fills.
    #[derive(Debug, Default)]
    pub struct FakeRedirection {
        pods: Mutex<Vec<EnrolledPod>>,
        original: Mutex<HashMap<(NetnsCookie, SocketAddr), SocketAddr>>,
        /// The last DNS capture setting changed in place, by pod uid.
        pub dns_capture: Mutex<HashMap<String, bool>>,
    }

    impl FakeRedirection {
        /// Makes `take_original_dst(netns, peer)` answer `original` (once).
        pub fn record(&self, netns: NetnsCookie, peer: SocketAddr, original: SocketAddr) {
            self.original
                .lock()
                .unwrap()
                .insert((netns, peer), original);
        }
    }

    impl Enroller for FakeRedirection {
        fn enroll(&self, pod: &PodEnrollment<'_>) -> Result<EnrolledPod, RedirectionError> {
            let mut pods = self.pods.lock().unwrap();
            if pods.iter().any(|p| p.uid == pod.uid) {
                return Err(RedirectionError::AlreadyEnrolled(pod.uid.clone()));
            }
            let enrolled = EnrolledPod {
                uid: pod.uid.clone(),
                netns_cookie: NetnsCookie(pods.len() as u64 + 1),
            };
            pods.push(enrolled.clone());
            Ok(enrolled)
        }

        fn unenroll(&self, uid: &str) -> Result<(), RedirectionError> {
            let mut pods = self.pods.lock().unwrap();
            let before = pods.len();
            pods.retain(|p| p.uid != uid);
            if pods.len() == before {
                return Err(RedirectionError::NotEnrolled(uid.to_string()));
            }
            Ok(())
        }

        fn adopt(&self, pod: &PodEnrollment<'_>) -> Result<EnrolledPod, RedirectionError> {
            self.pods
                .lock()
                .unwrap()
                .iter()
                .find(|p| p.uid == pod.uid)
                .cloned()
                .ok_or_else(|| RedirectionError::NotEnrolled(pod.uid.clone()))
        }

        fn set_dns_capture(&self, uid: &str, capture: bool) -> Result<(), RedirectionError> {
            if !self.pods.lock().unwrap().iter().any(|p| p.uid == uid) {
                return Err(RedirectionError::NotEnrolled(uid.to_string()));
            }
            self.dns_capture
                .lock()
                .unwrap()
                .insert(uid.to_owned(), capture);
            Ok(())
        }

        fn enrolled(&self) -> Result<Vec<EnrolledPod>, RedirectionError> {
            Ok(self.pods.lock().unwrap().clone())
        }
    }

    impl OriginalDst for FakeRedirection {
        fn take_original_dst(
            &self,
            netns: NetnsCookie,
            peer: SocketAddr,
        ) -> Result<Option<SocketAddr>, RedirectionError> {
            Ok(self.original.lock().unwrap().remove(&(netns, peer)))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn fake_answers_each_record_once_and_tracks_pods() {
            let fake = FakeRedirection::default();
            let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
            let original: SocketAddr = "10.0.0.1:80".parse().unwrap();
            fake.record(NetnsCookie(7), peer, original);
            assert_eq!(fake.take_original_dst(NetnsCookie(8), peer).unwrap(), None);
            assert_eq!(
                fake.take_original_dst(NetnsCookie(7), peer).unwrap(),
                Some(original)
            );
            assert_eq!(fake.take_original_dst(NetnsCookie(7), peer).unwrap(), None);

            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            use std::os::fd::AsFd;
            let pod = PodEnrollment {
                uid: "a".into(),
                netns: "/nonexistent".into(),
                addresses: vec![],
                excluded_outbound_ports: vec![],
                excluded_inbound_ports: vec![],
                dns_capture: true,
                inbound_listener: listener.as_fd(),
            };
            fake.enroll(&pod).unwrap();
            assert_eq!(fake.adopt(&pod).unwrap().uid, "a");
            assert!(matches!(
                fake.enroll(&pod),
                Err(RedirectionError::AlreadyEnrolled(_))
            ));
            assert_eq!(fake.enrolled().unwrap().len(), 1);
            fake.unenroll("a").unwrap();
            assert!(fake.enrolled().unwrap().is_empty());
        }
    }
}
