//! What the plugin asks the node daemon, over the daemon's Unix socket: one JSON request per
//! connection, one JSON reply. The daemon holds the node's single enrollment connection to the
//! agent (whose snapshot semantics need one long-lived sender), so the short-lived plugin talks
//! to it rather than to the agent.

use std::{path::Path, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};
use weft_enrollment::EnrolledPod;

/// Longest request or reply accepted.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A plugin's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Enroll the pod; answered once the agent acknowledged it (the pod is captured).
    Add {
        pod: EnrolledPod,
        /// The sandbox container, so a DEL that names only it finds the pod.
        sandbox: String,
    },
    /// Release the pod (by uid, else by sandbox). Unknown pods are not an error.
    Del {
        uid: Option<String>,
        sandbox: String,
    },
    /// Whether the pod is enrolled.
    Check { uid: String },
}

/// The daemon's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Ack,
    Enrolled { enrolled: bool },
    Error { message: String },
}

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the node daemon's socket {0} is unreachable: {1}")]
    Unreachable(String, #[source] std::io::Error),
    #[error("talking to the node daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the node daemon sent no reply within {0:?}")]
    Timeout(Duration),
    #[error("the node daemon's reply is malformed: {0}")]
    Malformed(String),
}

/// Sends `request` to the daemon at `socket` and waits (at most `timeout`) for its reply.
pub async fn send(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Reply, RequestError> {
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| RequestError::Unreachable(socket.display().to_string(), e))?;
        let mut stream = BufReader::new(stream);
        stream.get_mut().write_all(&line(request)).await?;
        let mut reply = String::new();
        stream.read_line(&mut reply).await?;
        serde_json::from_str(reply.trim_end()).map_err(|e| {
            RequestError::Malformed(format!("{e} (reply {:?})", truncate(&reply, 200)))
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| RequestError::Timeout(timeout))?
}

/// A message as one line of JSON.
pub fn line(message: &impl Serialize) -> Vec<u8> {
    let mut text = serde_json::to_vec(message).expect("protocol messages always serialize");
    text.push(b'\n');
    text
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}
