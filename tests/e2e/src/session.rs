//! Long-lived client connections for tests that change the configuration while traffic flows:
//! `mesh-client http-session` keeps ONE HTTP/1.1 keep-alive connection (and `tcp-session` one
//! TCP connection) open inside a pod and sends on it what the test asks, one JSON command per
//! line on stdin, one JSON answer per line on stdout. [`Session`] is the test's end: it starts
//! the client in a pod and talks to it. Every exchange is bounded in time.
//!
//! Commands (HTTP): `{"method": "GET", "path": "/x", "headers": {..}, "count": n}` sends `n`
//! requests on the
//! connection and answers `{"answers": [{"status", "ms", "body", "error"}..], "connection":
//! "ip:port", "closed": bool}` (`body` parsed as JSON when it is); `{"reconnect": true}` opens a
//! new connection when the current one has closed. Both: `{"wait_closed_ms": n}` answers
//! `{"closed": bool, "ms"}`, whether the connection was closed (by the far end) within `n` ms.
//! TCP: `{"send": "text"}` writes a line and answers `{"echo": "text"}` with the line read back,
//! or an `error`.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
};

use crate::binary;

/// One request's bound, and the longest a session waits for anything.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The pod side of `http-session`: serves commands from stdin until it closes.
pub async fn run_http_session(target: SocketAddr, host: &str) -> anyhow::Result<()> {
    let mut connection = HttpConnection::open(target).await?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let command: Value = serde_json::from_str(&line).context("a command is one JSON line")?;
        let answer = if let Some(limit) = command["wait_closed_ms"].as_u64() {
            connection.wait_closed(Duration::from_millis(limit)).await
        } else if command["reconnect"].as_bool() == Some(true) {
            if connection.is_closed() {
                connection = HttpConnection::open(target).await?;
            }
            json!({ "connection": connection.local.to_string() })
        } else {
            connection.requests(&command, host).await
        };
        stdout.write_all(format!("{answer}\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    Ok(())
}

/// One HTTP/1.1 connection and a flag that turns true when it ends.
struct HttpConnection {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    local: SocketAddr,
    closed: watch::Receiver<bool>,
}

impl HttpConnection {
    async fn open(target: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(EXCHANGE_TIMEOUT, TcpStream::connect(target))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connecting to {target}"))?;
        let local = stream.local_addr()?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("http/1.1 handshake")?;
        let (closed_tx, closed) = watch::channel(false);
        tokio::spawn(async move {
            let _ = connection.await;
            let _ = closed_tx.send(true);
        });
        Ok(Self {
            sender,
            local,
            closed,
        })
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow() || self.sender.is_closed()
    }

    async fn wait_closed(&mut self, limit: Duration) -> Value {
        let started = Instant::now();
        let closed = tokio::time::timeout(limit, self.closed.wait_for(|c| *c))
            .await
            .is_ok();
        json!({ "closed": closed, "ms": started.elapsed().as_secs_f64() * 1000.0 })
    }

    async fn requests(&mut self, command: &Value, host: &str) -> Value {
        let count = command["count"].as_u64().unwrap_or(1);
        let path = command["path"].as_str().unwrap_or("/");
        let mut answers = Vec::new();
        for _ in 0..count {
            answers.push(self.request(command, path, host).await);
        }
        json!({
            "answers": answers,
            "connection": self.local.to_string(),
            "closed": self.is_closed(),
        })
    }

    async fn request(&mut self, command: &Value, path: &str, host: &str) -> Value {
        let started = Instant::now();
        let method = command["method"].as_str().unwrap_or("GET");
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host);
        if let Some(headers) = command["headers"].as_object() {
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str().unwrap_or_default());
            }
        }
        let Ok(request) = request.body(Empty::new()) else {
            return json!({ "status": 0, "error": "invalid request" });
        };
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let ms = || started.elapsed().as_secs_f64() * 1000.0;
        match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
            Ok(Ok((status, body))) => {
                let text = String::from_utf8_lossy(&body);
                let body = serde_json::from_str::<Value>(&text)
                    .unwrap_or_else(|_| Value::String(text.trim().to_owned()));
                json!({ "status": status, "ms": ms(), "body": body })
            }
            Ok(Err(error)) => json!({ "status": 0, "ms": ms(), "error": error.to_string() }),
            Err(_) => json!({ "status": 0, "ms": ms(), "error": "timed out" }),
        }
    }
}

/// The pod side of `tcp-session`: one TCP connection to a line echo.
pub async fn run_tcp_session(target: SocketAddr) -> anyhow::Result<()> {
    let stream = tokio::time::timeout(EXCHANGE_TIMEOUT, TcpStream::connect(target))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connecting to {target}"))?;
    let (read, mut write) = stream.into_split();
    let mut echoes = tokio::io::BufReader::new(read);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let command: Value = serde_json::from_str(&line).context("a command is one JSON line")?;
        let started = Instant::now();
        let ms = || started.elapsed().as_secs_f64() * 1000.0;
        let mut echo = String::new();
        let answer = if let Some(limit) = command["wait_closed_ms"].as_u64() {
            let read =
                tokio::time::timeout(Duration::from_millis(limit), echoes.read_line(&mut echo))
                    .await;
            json!({ "closed": matches!(read, Ok(Ok(0) | Err(_))), "ms": ms() })
        } else {
            let text = command["send"].as_str().unwrap_or_default();
            let exchange = async {
                write.write_all(format!("{text}\n").as_bytes()).await?;
                echoes.read_line(&mut echo).await
            };
            match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
                Ok(Ok(0)) => json!({ "error": "closed", "ms": ms() }),
                Ok(Ok(_)) => json!({ "echo": echo.trim_end(), "ms": ms() }),
                Ok(Err(error)) => json!({ "error": error.to_string(), "ms": ms() }),
                Err(_) => json!({ "error": "timed out", "ms": ms() }),
            }
        };
        stdout.write_all(format!("{answer}\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    Ok(())
}

impl crate::Mesh {
    /// Starts `mesh-client http-session` in `pod`: one keep-alive connection to `target`
    /// (`ip:port`) with requests for `host`, kept open until the session is dropped.
    pub fn http_session(&self, pod: &str, target: &str, host: &str) -> anyhow::Result<Session> {
        self.session(pod, &["http-session", "--target", target, "--host", host])
    }

    /// Starts `mesh-client tcp-session` in `pod`: one TCP connection to the line echo at
    /// `target` (`ip:port`).
    pub fn tcp_session(&self, pod: &str, target: &str) -> anyhow::Result<Session> {
        self.session(pod, &["tcp-session", "--target", target])
    }

    fn session(&self, pod: &str, args: &[&str]) -> anyhow::Result<Session> {
        let mut command = self
            .testbed
            .pod_command(pod, binary("mesh-client")?.to_str().unwrap());
        command.args(args);
        Session::spawn(command, &self.dir().join(format!("session-{pod}.log")))
    }
}

/// The test's end of a session client running in a pod.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Session {
    /// Starts `mesh-client` as `command` has it (its arguments, in a pod), its stderr to `log`.
    pub fn spawn(mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log)?;
        let child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        Self::start(child)
    }

    /// Talks to a started `mesh-client` (through [`crate::Mesh::spawn_in_pod`]).
    pub(crate) fn start(mut child: Child) -> anyhow::Result<Self> {
        let stdin = child.stdin.take().context("the session's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the session's stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends one command and reads its answer.
    pub fn send(&mut self, command: &Value) -> anyhow::Result<Value> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.try_wait()?;
            bail!("the session client ended ({status:?}) without answering {command}");
        }
        serde_json::from_str(&line).with_context(|| format!("the answer {line:?}"))
    }

    /// `count` GET requests for `path` with `headers` on the session's connection.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)], count: u32) -> Value {
        self.request("GET", path, headers, count)
    }

    /// `count` `method` requests for `path` with `headers` on the session's connection: the
    /// answer's `answers`, `connection` and `closed`.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        count: u32,
    ) -> Value {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        let command = json!({ "method": method, "path": path, "headers": headers, "count": count });
        self.send(&command).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Opens a new connection if the current one was closed; its local address.
    pub fn reconnect(&mut self) -> String {
        self.send(&json!({ "reconnect": true }))
            .unwrap_or_else(|e| panic!("{e:#}"))["connection"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// One line through a `tcp-session`: the echo, or `Err` with why there was none.
    pub fn echo(&mut self, text: &str) -> Result<String, String> {
        let answer = self
            .send(&json!({ "send": text }))
            .unwrap_or_else(|e| panic!("{e:#}"));
        match answer["echo"].as_str() {
            Some(echo) => Ok(echo.to_owned()),
            None => Err(answer["error"].as_str().unwrap_or("no answer").to_owned()),
        }
    }

    /// Whether the far end closed the connection within `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        self.send(&json!({ "wait_closed_ms": limit }))
            .unwrap_or_else(|e| panic!("{e:#}"))["closed"]
            == true
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
