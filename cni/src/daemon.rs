//! The node daemon: the one enrolling client of the node's agent, and the server the plugin
//! asks.
//!
//! [`AgentLink`] owns the enrollment connection. Every (re)connect starts with the snapshot of
//! the pods the daemon holds, so when the agent restarts (its pinned capture kept those pods
//! failing closed meanwhile) it takes every pod back without any pod being re-created. A pod is
//! held only once the agent acknowledged it. [`PluginServer`] answers the plugin's requests
//! ([`crate::protocol`]) through the link.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use weft_enrollment::{EnrolledPod, EnrollmentClient, EnrollmentError, EnrollmentMessage};

use crate::protocol::{self, MAX_MESSAGE, Reply, Request};

/// How often a lost agent is looked for again.
const RECONNECT_EVERY: Duration = Duration::from_millis(250);
/// How long a plugin connection may take to send its request.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

enum Op {
    Add(EnrolledPod, oneshot::Sender<Result<(), String>>),
    Remove(String, oneshot::Sender<Result<(), String>>),
    Held(oneshot::Sender<BTreeMap<String, EnrolledPod>>),
}

/// A handle on the enrollment link; cheap to clone.
#[derive(Clone)]
pub struct AgentLink {
    ops: mpsc::Sender<Op>,
}

impl AgentLink {
    /// Starts the link to the agent at `socket`, holding `pods` (sent as the first snapshot).
    pub fn start(socket: PathBuf, pods: Vec<EnrolledPod>) -> Self {
        let (ops, receiver) = mpsc::channel(64);
        let held = pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
        tokio::spawn(run_link(socket, held, receiver));
        Self { ops }
    }

    /// Enrolls `pod`; `Ok` once the agent acknowledged it.
    pub async fn add(&self, pod: EnrolledPod) -> Result<(), String> {
        self.ask(|reply| Op::Add(pod, reply)).await?
    }

    /// Releases the pod. Unknown pods are fine.
    pub async fn remove(&self, uid: &str) -> Result<(), String> {
        self.ask(|reply| Op::Remove(uid.to_string(), reply)).await?
    }

    /// The pods held (acknowledged by the agent, or waiting for it to come back).
    pub async fn held(&self) -> BTreeMap<String, EnrolledPod> {
        self.ask(Op::Held).await.unwrap_or_default()
    }

    async fn ask<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(op(reply))
            .await
            .map_err(|_| "the enrollment link stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the enrollment link stopped".to_string())
    }
}

/// The link's state: the pods held and the connection, if any.
struct Link {
    socket: PathBuf,
    pods: BTreeMap<String, EnrolledPod>,
    client: Option<EnrollmentClient>,
}

async fn run_link(
    socket: PathBuf,
    pods: BTreeMap<String, EnrolledPod>,
    mut ops: mpsc::Receiver<Op>,
) {
    let mut link = Link {
        socket,
        pods,
        client: None,
    };
    loop {
        if link.client.is_none()
            && let Err(error) = link.connect().await
        {
            tracing::debug!(%error, "node agent not reachable yet");
        }
        tokio::select! {
            op = ops.recv() => match op {
                None => return,
                Some(op) => link.handle(op).await,
            },
            () = closed(&mut link.client) => {
                tracing::warn!(socket = %link.socket.display(), "the node agent went away; its capture stays in place until it is back");
                link.client = None;
            }
            () = tokio::time::sleep(RECONNECT_EVERY), if link.client.is_none() => {}
        }
    }
}

/// Resolves when the connected agent closes; never without a connection.
async fn closed(client: &mut Option<EnrollmentClient>) {
    match client {
        Some(client) => client.closed().await,
        None => std::future::pending().await,
    }
}

impl Link {
    /// Connects and sends the snapshot of the pods held. A pod the agent refuses (its netns is
    /// gone: the pod ended while nobody was looking) is dropped.
    async fn connect(&mut self) -> Result<(), EnrollmentError> {
        let mut client = EnrollmentClient::connect(&self.socket).await?;
        let mut refused = Vec::new();
        for pod in self.pods.values() {
            match client.add(pod).await {
                Ok(()) => {}
                Err(EnrollmentError::Refused(reason)) => {
                    tracing::warn!(uid = %pod.uid, pod = %pod.name, namespace = %pod.namespace, %reason, "the agent refused a held pod; dropping it");
                    refused.push(pod.uid.clone());
                }
                Err(error) => return Err(error),
            }
        }
        for uid in refused {
            self.pods.remove(&uid);
        }
        match client.send(&EnrollmentMessage::SnapshotSent).await {
            Ok(()) | Err(EnrollmentError::Refused(_)) => {}
            Err(error) => return Err(error),
        }
        tracing::info!(socket = %self.socket.display(), pods = self.pods.len(), "enrollment snapshot sent to the node agent");
        self.client = Some(client);
        Ok(())
    }

    async fn handle(&mut self, op: Op) {
        match op {
            Op::Add(pod, reply) => {
                let _ = reply.send(self.add(pod).await);
            }
            Op::Remove(uid, reply) => {
                let _ = reply.send(self.remove(&uid).await);
            }
            Op::Held(reply) => {
                let _ = reply.send(self.pods.clone());
            }
        }
    }

    async fn add(&mut self, pod: EnrolledPod) -> Result<(), String> {
        // One retry: a connection found broken is re-established (with its snapshot) once.
        for attempt in 0..2 {
            if self.client.is_none() {
                self.connect().await.map_err(|e| {
                    format!(
                        "the node agent at {} is unreachable: {e}",
                        self.socket.display()
                    )
                })?;
            }
            let client = self.client.as_mut().expect("connected above");
            match client.add(&pod).await {
                Ok(()) => {
                    tracing::info!(uid = %pod.uid, pod = %pod.name, namespace = %pod.namespace, "pod enrolled");
                    self.pods.insert(pod.uid.clone(), pod);
                    return Ok(());
                }
                Err(EnrollmentError::Refused(reason)) => return Err(reason),
                Err(error) => {
                    self.client = None;
                    if attempt == 1 {
                        return Err(format!("enrolling with the node agent: {error}"));
                    }
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn remove(&mut self, uid: &str) -> Result<(), String> {
        if self.pods.remove(uid).is_none() {
            return Ok(());
        }
        let Some(client) = self.client.as_mut() else {
            // The snapshot sent on reconnect omits the pod: the agent releases it then.
            return Ok(());
        };
        match client.remove(uid).await {
            Ok(()) => {
                tracing::info!(%uid, "pod released");
                Ok(())
            }
            Err(EnrollmentError::Refused(reason)) => Err(reason),
            Err(error) => {
                tracing::warn!(%uid, %error, "releasing the pod; the next snapshot will");
                self.client = None;
                Ok(())
            }
        }
    }
}

/// Sandbox ids of the pods enrolled through the plugin, so that a DEL naming only its sandbox
/// finds the pod.
#[derive(Default)]
struct Sandboxes(Mutex<BTreeMap<String, String>>);

/// Serves the plugin on a Unix socket.
pub struct PluginServer {
    listener: UnixListener,
    link: AgentLink,
    sandboxes: Arc<Sandboxes>,
}

impl PluginServer {
    /// Binds `path` (replacing a stale socket file), owner-only: only root on the node (the
    /// runtime running the plugin) may enroll pods.
    pub fn bind(path: &Path, link: AgentLink) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            listener,
            link,
            sandboxes: Arc::default(),
        })
    }

    /// Serves each plugin connection on a task of its own until the listener fails.
    pub async fn run(self) -> std::io::Result<()> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            let (link, sandboxes) = (self.link.clone(), self.sandboxes.clone());
            tokio::spawn(async move {
                if let Err(error) = serve(stream, &link, &sandboxes).await {
                    tracing::warn!(%error, "plugin request failed");
                }
            });
        }
    }
}

async fn serve(stream: UnixStream, link: &AgentLink, sandboxes: &Sandboxes) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_READ_TIMEOUT,
        BufReader::new(read)
            .take(MAX_MESSAGE as u64 + 1)
            .read_line(&mut line),
    )
    .await;
    let reply = match read {
        Err(_) => Reply::Error {
            message: format!("no request within {REQUEST_READ_TIMEOUT:?}"),
        },
        Ok(Err(error)) => return Err(error),
        Ok(Ok(_)) if line.len() > MAX_MESSAGE => Reply::Error {
            message: format!("request longer than {MAX_MESSAGE} bytes"),
        },
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim_end()) {
            Err(error) => Reply::Error {
                message: format!("malformed request: {error}"),
            },
            Ok(request) => answer(request, link, sandboxes).await,
        },
    };
    write.write_all(&protocol::line(&reply)).await
}

async fn answer(request: Request, link: &AgentLink, sandboxes: &Sandboxes) -> Reply {
    let result = match request {
        Request::Add { pod, sandbox } => {
            let uid = pod.uid.clone();
            let result = link.add(pod).await;
            if result.is_ok() {
                sandboxes.0.lock().unwrap().insert(sandbox, uid);
            }
            result
        }
        Request::Del { uid, sandbox } => {
            let by_sandbox = sandboxes.0.lock().unwrap().remove(&sandbox);
            match uid.or(by_sandbox) {
                Some(uid) => link.remove(&uid).await,
                None => Ok(()),
            }
        }
        Request::Check { uid } => {
            return Reply::Enrolled {
                enrolled: link.held().await.contains_key(&uid),
            };
        }
    };
    match result {
        Ok(()) => Reply::Ack,
        Err(message) => Reply::Error { message },
    }
}

#[cfg(test)]
mod tests;
