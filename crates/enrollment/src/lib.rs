//! The node agent's enrollment API: how the agent learns which pods on its node are in the mesh,
//! and where their network namespace is (all the capture needs: no cgroup, which a CNI plugin
//! never learns). It plays the role of Istio's ZDS: the CNI side's node daemon (`weft-cni`, in
//! Kubernetes) or the testbed connects to the agent's Unix socket and sends
//!
//! 1. the full set of enrolled pods as `pod_added` messages, then `snapshot_sent`, and after that
//! 2. `pod_added` / `pod_removed` as pods come and go.
//!
//! Every connection starts with a full snapshot, so after either side restarts, the agent
//! reconciles: pods missing from the new snapshot are removed. Messages are JSON, one per line;
//! the agent answers each with `ack` or `error`, so the sender knows the pod's traffic is
//! captured before it lets the pod start.
//!
//! This crate owns the wire format, the agent's server loop and the enrolling side's client; it
//! knows nothing of how a pod is captured or decided on.

use std::{
    collections::BTreeSet,
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use weft_ebpf_common::MAX_UID_LEN;

/// Longest message accepted; a snapshot line describes one pod, so this is generous.
const MAX_LINE: usize = 64 * 1024;

/// A pod handed to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledPod {
    /// Kubernetes pod uid: the key the controller's workloads carry too.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The pod's network namespace (a bind-mounted file such as `/run/netns/<name>`).
    pub netns: PathBuf,
    /// The pod's IP addresses (inbound capture applies to connections to them).
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
    /// Destination ports whose outbound connections bypass the mesh (from the pod's
    /// `traffic.sidecar.istio.io/excludeOutboundPorts` annotation).
    #[serde(default)]
    pub excluded_outbound_ports: Vec<u16>,
    /// Pod ports whose inbound connections bypass the mesh
    /// (`traffic.sidecar.istio.io/excludeInboundPorts`).
    #[serde(default)]
    pub excluded_inbound_ports: Vec<u16>,
    /// Whether the pod's DNS traffic (TCP and UDP to port 53) goes to the agent's DNS proxy:
    /// on unless the pod's `ambient.istio.io/dns-capture` annotation says `false`, as Istio's
    /// CNI decides. A change is applied in place, without touching the pod's connections.
    #[serde(default = "capture_by_default")]
    pub dns_capture: bool,
}

fn capture_by_default() -> bool {
    true
}

/// A pod uid the agent refuses: it names the pod's directory under the pin root and its eBPF
/// record, so it must be a single path component that fits the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pod uid {0:?} is invalid: use 1-{MAX_UID_LEN} characters of [A-Za-z0-9._-], and not . or .."
)]
pub struct InvalidPodUid(pub String);

/// Checks a uid from the enrolling side (a Kubernetes uid is a UUID) before anything uses it.
pub fn check_pod_uid(uid: &str) -> Result<(), InvalidPodUid> {
    let valid = !uid.is_empty()
        && uid.len() <= MAX_UID_LEN
        && uid != "."
        && uid != ".."
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(InvalidPodUid(uid.to_owned()))
    }
}

/// One message from the enrolling side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EnrollmentMessage {
    PodAdded(EnrolledPod),
    PodRemoved {
        uid: String,
    },
    /// Every pod enrolled at connection time has been sent.
    SnapshotSent,
}

/// The agent's answer to one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EnrollmentReply {
    Ack,
    Error { message: String },
}

/// Errors of the enrollment socket.
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    #[error("binding the enrollment socket {0}: {1}")]
    Bind(PathBuf, #[source] io::Error),
    #[error("connecting to the enrollment socket {0}: {1}")]
    Connect(PathBuf, #[source] io::Error),
    #[error("enrollment socket i/o: {0}")]
    Io(#[from] io::Error),
    #[error("malformed enrollment message: {0}")]
    Malformed(String),
    #[error("the agent refused: {0}")]
    Refused(String),
    #[error("the agent closed the enrollment connection")]
    Closed,
}

/// What the agent does with enrollment events. Implemented by the agent's pod manager.
pub trait PodLifecycle: Send + Sync {
    /// Starts capturing and serving `pod`. Called again for a pod already known (a snapshot after
    /// a reconnect): must then be idempotent.
    fn add(&self, pod: EnrolledPod) -> impl Future<Output = Result<(), String>> + Send;
    /// Stops serving the pod and removes its capture. Unknown uids are not an error.
    fn remove(&self, uid: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// The uids of the pods currently served.
    fn enrolled(&self) -> BTreeSet<String>;
    /// A snapshot is complete: its pods are served and the pods it omitted were removed.
    fn snapshot_applied(&self) {}
}

/// How often a server checks that its path still names its socket.
const TAKEOVER_CHECK: Duration = Duration::from_millis(100);

/// The agent's end: a Unix socket listener.
pub struct EnrollmentServer {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file this server bound (device, inode): another file at the path means the
    /// next agent took the path over.
    file: (u64, u64),
}

impl EnrollmentServer {
    /// Binds `path`, replacing the socket file left by an earlier run, or the one of an agent
    /// still running (the one this agent takes over from, see [`EnrollmentServer::run`]).
    pub fn bind(path: &Path) -> Result<Self, EnrollmentError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| EnrollmentError::Bind(path.into(), e))?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(EnrollmentError::Bind(path.into(), e));
            }
            _ => {}
        }
        let listener =
            UnixListener::bind(path).map_err(|e| EnrollmentError::Bind(path.into(), e))?;
        let file = socket_file(path)
            .map_err(|e| EnrollmentError::Bind(path.into(), e))?
            .ok_or_else(|| EnrollmentError::Bind(path.into(), io::ErrorKind::NotFound.into()))?;
        Ok(Self {
            listener,
            path: path.into(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves enrolling clients one at a time (there is one CNI agent per node) until the
    /// listener fails, or until the path names another socket: the next agent bound it (a
    /// rolling update, where it starts beside this one). This server then closes the
    /// connection it serves and returns `Ok`: the enrolling side reconnects, to the next agent,
    /// and sends it the snapshot from which it takes the pods over, while this agent goes on
    /// serving them until it drains.
    pub async fn run(self, pods: &impl PodLifecycle) -> Result<(), EnrollmentError> {
        let taken_over = self.taken_over();
        tokio::pin!(taken_over);
        loop {
            let stream = tokio::select! {
                accepted = self.listener.accept() => accepted?.0,
                () = &mut taken_over => break,
            };
            tokio::select! {
                served = serve_connection(stream, pods) => match served {
                    Ok(()) => tracing::info!("enrollment client disconnected"),
                    Err(error) => tracing::warn!(%error, "enrollment connection failed"),
                },
                () = &mut taken_over => break,
            }
        }
        tracing::info!(
            socket = %self.path.display(),
            "the enrollment socket was taken over by the next agent: enrolling side released"
        );
        Ok(())
    }

    /// Completes once the path no longer names this server's socket.
    async fn taken_over(&self) {
        let mut every = tokio::time::interval(TAKEOVER_CHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match socket_file(&self.path) {
                Ok(Some(file)) if file == self.file => {}
                // A failure to look is not a take-over.
                Err(_) => {}
                Ok(_) => return,
            }
        }
    }
}

/// The (device, inode) of the file at `path`; `None` when there is none.
fn socket_file(path: &Path) -> io::Result<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(metadata) => Ok(Some((metadata.dev(), metadata.ino()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

async fn serve_connection(
    stream: UnixStream,
    pods: &impl PodLifecycle,
) -> Result<(), EnrollmentError> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    // Pods named by the snapshot in progress; `None` once the snapshot is complete.
    let mut snapshot: Option<BTreeSet<String>> = Some(BTreeSet::new());
    loop {
        line.clear();
        let read = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await?;
        if read == 0 {
            return Ok(());
        }
        if line.len() > MAX_LINE {
            reply(
                &mut write,
                &EnrollmentReply::Error {
                    message: format!("message longer than {MAX_LINE} bytes"),
                },
            )
            .await?;
            return Err(EnrollmentError::Malformed("oversized message".into()));
        }
        let answer = match serde_json::from_str::<EnrollmentMessage>(line.trim_end()) {
            Err(error) => EnrollmentReply::Error {
                message: format!("malformed message: {error}"),
            },
            Ok(EnrollmentMessage::PodAdded(pod)) if check_pod_uid(&pod.uid).is_err() => {
                refuse_uid(&pod.uid)
            }
            Ok(EnrollmentMessage::PodRemoved { uid }) if check_pod_uid(&uid).is_err() => {
                refuse_uid(&uid)
            }
            Ok(EnrollmentMessage::PodAdded(pod)) => {
                let uid = pod.uid.clone();
                tracing::info!(uid = %pod.uid, pod = %pod.name, namespace = %pod.namespace, "enrolling pod");
                match pods.add(pod).await {
                    Ok(()) => {
                        if let Some(seen) = snapshot.as_mut() {
                            seen.insert(uid);
                        }
                        EnrollmentReply::Ack
                    }
                    Err(message) => {
                        tracing::warn!(%uid, %message, "enrolling pod failed");
                        EnrollmentReply::Error { message }
                    }
                }
            }
            Ok(EnrollmentMessage::PodRemoved { uid }) => {
                tracing::info!(%uid, "un-enrolling pod");
                if let Some(seen) = snapshot.as_mut() {
                    seen.remove(&uid);
                }
                match pods.remove(&uid).await {
                    Ok(()) => EnrollmentReply::Ack,
                    Err(message) => EnrollmentReply::Error { message },
                }
            }
            Ok(EnrollmentMessage::SnapshotSent) => match snapshot.take() {
                None => EnrollmentReply::Error {
                    message: "snapshot already complete on this connection".into(),
                },
                Some(seen) => {
                    let mut failures = Vec::new();
                    for uid in pods.enrolled().difference(&seen) {
                        tracing::info!(%uid, "pod absent from the snapshot: un-enrolling");
                        if let Err(message) = pods.remove(uid).await {
                            failures.push(format!("{uid}: {message}"));
                        }
                    }
                    pods.snapshot_applied();
                    if failures.is_empty() {
                        EnrollmentReply::Ack
                    } else {
                        EnrollmentReply::Error {
                            message: failures.join("; "),
                        }
                    }
                }
            },
        };
        reply(&mut write, &answer).await?;
    }
}

fn refuse_uid(uid: &str) -> EnrollmentReply {
    let message = check_pod_uid(uid)
        .err()
        .map_or_else(String::new, |e| e.to_string());
    tracing::warn!(%message, "enrollment message refused");
    EnrollmentReply::Error { message }
}

async fn reply(
    write: &mut (impl AsyncWriteExt + Unpin),
    answer: &EnrollmentReply,
) -> Result<(), EnrollmentError> {
    let mut text = serde_json::to_vec(answer).expect("replies always serialize");
    text.push(b'\n');
    write.write_all(&text).await?;
    Ok(())
}

/// The enrolling side (the CNI node daemon's role; the testbed uses it).
pub struct EnrollmentClient {
    lines: BufReader<UnixStream>,
}

impl EnrollmentClient {
    pub async fn connect(path: &Path) -> Result<Self, EnrollmentError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| EnrollmentError::Connect(path.into(), e))?;
        Ok(Self {
            lines: BufReader::new(stream),
        })
    }

    /// Sends the full set of enrolled pods; must be the first thing sent on a connection.
    pub async fn snapshot(&mut self, pods: &[EnrolledPod]) -> Result<(), EnrollmentError> {
        for pod in pods {
            self.send(&EnrollmentMessage::PodAdded(pod.clone())).await?;
        }
        self.send(&EnrollmentMessage::SnapshotSent).await
    }

    pub async fn add(&mut self, pod: &EnrolledPod) -> Result<(), EnrollmentError> {
        self.send(&EnrollmentMessage::PodAdded(pod.clone())).await
    }

    pub async fn remove(&mut self, uid: &str) -> Result<(), EnrollmentError> {
        self.send(&EnrollmentMessage::PodRemoved { uid: uid.into() })
            .await
    }

    /// Resolves when the agent closes the connection (it went away: the enrolling side reconnects
    /// and resends its snapshot). The agent writes only answers, so between requests there is
    /// nothing to read but the end of the stream.
    pub async fn closed(&mut self) {
        // End of stream, an error, or an unsolicited byte (a protocol error): all mean gone.
        // Cancel-safe: a read that has not completed consumed nothing.
        let mut byte = [0u8; 1];
        let _ = self.lines.read(&mut byte).await;
    }

    /// Sends one message and waits for the agent's answer.
    pub async fn send(&mut self, message: &EnrollmentMessage) -> Result<(), EnrollmentError> {
        let mut text = serde_json::to_vec(message).expect("messages always serialize");
        text.push(b'\n');
        self.lines.get_mut().write_all(&text).await?;
        let mut line = String::new();
        if self.lines.read_line(&mut line).await? == 0 {
            return Err(EnrollmentError::Closed);
        }
        match serde_json::from_str(line.trim_end())
            .map_err(|e| EnrollmentError::Malformed(e.to_string()))?
        {
            EnrollmentReply::Ack => Ok(()),
            EnrollmentReply::Error { message } => Err(EnrollmentError::Refused(message)),
        }
    }
}

/// A stand-in agent for the enrolling side's tests.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use std::{
        collections::{BTreeMap, BTreeSet},
        sync::Mutex,
    };

    use super::{EnrolledPod, PodLifecycle};

    /// Holds the pods it is given and records every add; refuses pods whose name starts with
    /// `bad` (their network namespace cannot be opened, as for a pod that ended).
    #[derive(Debug, Default)]
    pub struct RecordingAgent {
        pub pods: Mutex<BTreeMap<String, EnrolledPod>>,
        pub adds: Mutex<Vec<String>>,
    }

    impl PodLifecycle for RecordingAgent {
        async fn add(&self, pod: EnrolledPod) -> Result<(), String> {
            if pod.name.starts_with("bad") {
                return Err(format!("cannot open netns {}", pod.netns.display()));
            }
            self.adds.lock().unwrap().push(pod.uid.clone());
            self.pods.lock().unwrap().insert(pod.uid.clone(), pod);
            Ok(())
        }

        async fn remove(&self, uid: &str) -> Result<(), String> {
            self.pods.lock().unwrap().remove(uid);
            Ok(())
        }

        fn enrolled(&self) -> BTreeSet<String> {
            self.pods.lock().unwrap().keys().cloned().collect()
        }
    }
}

#[cfg(test)]
mod tests;
