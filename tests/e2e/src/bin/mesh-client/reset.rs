//! An upstream that breaks off its answers, and an HTTP/2 client that watches one such answer
//! beside its neighbours on the same connection.
//!
//! The server speaks HTTP/1.1, one request per connection, and HTTP/2 (prior knowledge, as a
//! proxy that keeps its client's protocol talks to it), and answers by the request's path:
//! - `/count`: `200` with how many requests it has broken off so far (`{"broken": N}`);
//! - a path holding `ok`: a complete `200` (after 300 ms when it also holds `slow`);
//! - a path holding `once`: the first such request reset before any byte of the answer (as
//!   `early`), every later one answered whole;
//! - a path holding `early`: the connection reset before any byte of the answer;
//! - a path holding `chunked`: the head of a chunked `200` and one chunk, then a reset;
//! - over HTTP/2, a path holding `goaway`: the whole connection ends under the stream, a
//!   `GOAWAY` (`INTERNAL_ERROR`) and the TCP close, before any answer when the path also holds
//!   `early`, else after the head and 100 bytes of the answer below;
//! - any other path: the head of a `200` of `Content-Length: 1000` and 100 bytes of it, then a
//!   reset.
//!
//! Over HTTP/1.1 a reset is a close with `SO_LINGER` 0: the kernel sends RST, not FIN. Over
//! HTTP/2 it is the stream's `RST_STREAM` (`INTERNAL_ERROR`), the connection's other streams
//! going on, as a reset of the connection would take them all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{TIMEOUT, h2_connect};

/// The declared length of a broken-off answer, and how much of it is sent.
pub const DECLARED_BYTES: usize = 1000;
pub const SENT_BYTES: usize = 100;
/// Largest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// How long the part of the answer has to reach the peer before the reset, which would
/// discard what is still queued.
const BEFORE_RESET: Duration = Duration::from_millis(50);
/// How long a `slow` answer waits.
const SLOW: Duration = Duration::from_millis(300);

/// What the server keeps across connections.
#[derive(Default)]
struct Served {
    /// Answers broken off (or reset before any byte) so far.
    broken: AtomicU64,
    /// Whether the one `once` request to fail has been failed.
    once_failed: AtomicBool,
}

impl Served {
    /// Whether the request for `path` is answered whole: `ok`, or `once` after the first.
    fn answers_whole(&self, path: &str) -> bool {
        path.contains("ok")
            || (path.contains("once") && self.once_failed.swap(true, Ordering::SeqCst))
    }
}

/// Serves on `listen` until killed.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let served = Arc::new(Served::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TIMEOUT, answer(stream, &served)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, served: &Served) -> std::io::Result<()> {
    let mut start = [0u8; 3];
    if stream.peek(&mut start).await? == start.len() && &start == b"PRI" {
        return answer_h2(stream, served).await;
    }
    let Some(path) = read_path(&mut stream).await? else {
        return Ok(());
    };
    let broken = &served.broken;
    if path == "/count" || path.ends_with("/count") {
        let body = serde_json::json!({ "broken": broken.load(Ordering::SeqCst) }).to_string();
        return complete(stream, &body).await;
    }
    if served.answers_whole(&path) {
        if path.contains("slow") {
            tokio::time::sleep(SLOW).await;
        }
        return complete(stream, &format!("{{\"path\":\"{path}\"}}")).await;
    }
    broken.fetch_add(1, Ordering::SeqCst);
    if !path.contains("early") && !path.contains("once") {
        let part = "x".repeat(SENT_BYTES);
        let answer = if path.contains("chunked") {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n{SENT_BYTES:x}\r\n{part}\r\n"
            )
        } else {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {DECLARED_BYTES}\r\n\r\n{part}"
            )
        };
        stream.write_all(answer.as_bytes()).await?;
        stream.flush().await?;
        tokio::time::sleep(BEFORE_RESET).await;
    }
    let stream = stream.into_std()?;
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    drop(stream);
    Ok(())
}

/// Serves the HTTP/2 connection on `stream` until its client closes it, or until a `goaway`
/// stream ends it.
async fn answer_h2(stream: TcpStream, served: &Served) -> std::io::Result<()> {
    let end_connection = Notify::new();
    let mut connection = h2::server::handshake(stream).await.map_err(h2_io)?;
    let mut streams = futures::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    let path = request.uri().path().to_owned();
                    streams.push(answer_h2_stream(path, respond, served, &end_connection));
                }
                Some(Err(error)) => return Err(h2_io(error)),
                None => return Ok(()),
            },
            Some(()) = futures::StreamExt::next(&mut streams) => {}
            () = end_connection.notified() => {
                // The GOAWAY goes out as the connection is driven to its end; the socket
                // closes when it is dropped.
                connection.abrupt_shutdown(h2::Reason::INTERNAL_ERROR);
                while let Some(Ok(_)) = connection.accept().await {}
                return Ok(());
            }
        }
    }
}

async fn answer_h2_stream(
    path: String,
    mut respond: h2::server::SendResponse<Bytes>,
    served: &Served,
    end_connection: &Notify,
) {
    let whole = |respond: &mut h2::server::SendResponse<Bytes>, body: String| {
        let response = http::Response::builder()
            .header("content-length", body.len())
            .body(())
            .expect("a valid response");
        if let Ok(mut stream) = respond.send_response(response, false) {
            let _ = stream.send_data(Bytes::from(body), true);
        }
    };
    let broken = &served.broken;
    if path == "/count" || path.ends_with("/count") {
        let body = serde_json::json!({ "broken": broken.load(Ordering::SeqCst) }).to_string();
        return whole(&mut respond, body);
    }
    if served.answers_whole(&path) {
        if path.contains("slow") {
            tokio::time::sleep(SLOW).await;
        }
        return whole(&mut respond, format!("{{\"path\":\"{path}\"}}"));
    }
    broken.fetch_add(1, Ordering::SeqCst);
    let goaway = path.contains("goaway");
    if path.contains("early") || path.contains("once") {
        if goaway {
            // The stream stays open (a dropped one would be reset) until the connection ends
            // under it.
            end_connection.notify_one();
            return std::future::pending().await;
        }
        return respond.send_reset(h2::Reason::INTERNAL_ERROR);
    }
    let response = http::Response::builder()
        .header("content-length", DECLARED_BYTES)
        .body(())
        .expect("a valid response");
    let Ok(mut stream) = respond.send_response(response, false) else {
        return;
    };
    let _ = stream.send_data(Bytes::from("x".repeat(SENT_BYTES)), false);
    tokio::time::sleep(BEFORE_RESET).await;
    if goaway {
        end_connection.notify_one();
        return std::future::pending().await;
    }
    stream.send_reset(h2::Reason::INTERNAL_ERROR);
}

fn h2_io(error: h2::Error) -> std::io::Error {
    error
        .into_io()
        .unwrap_or_else(|| std::io::Error::other("HTTP/2 error"))
}

/// The path of the request on `stream`, once its head has been read; `None` when the peer
/// closed first.
async fn read_path(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 || head.len() > MAX_HEAD {
            return Ok(None);
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let line = String::from_utf8_lossy(&head);
    Ok(line.split_whitespace().nth(1).map(str::to_owned))
}

async fn complete(mut stream: TcpStream, body: &str) -> std::io::Result<()> {
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// What became of one HTTP/2 request.
#[derive(Debug, Default)]
struct Outcome {
    status: Option<u16>,
    body_bytes: usize,
    /// The error that ended it, if any.
    error: Option<String>,
    /// The RST_STREAM code, when the stream was reset by the server.
    reset_reason: Option<String>,
    finished: Option<Instant>,
}

impl Outcome {
    fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "status": self.status,
            "body_bytes": self.body_bytes,
            "error": self.error,
            "reset_reason": self.reset_reason,
        })
    }
}

/// Sends `path` on `client` and reads its answer to the end.
async fn exchange(client: h2::client::SendRequest<Bytes>, authority: &str, path: &str) -> Outcome {
    let mut outcome = Outcome::default();
    let run = async {
        let mut client = client.ready().await?;
        let request = http::Request::get(format!("http://{authority}{path}"))
            .body(())
            .expect("a valid request");
        let (response, _) = client.send_request(request, true)?;
        let response = response.await?;
        outcome.status = Some(response.status().as_u16());
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            outcome.body_bytes += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        Ok::<_, h2::Error>(())
    };
    match tokio::time::timeout(TIMEOUT, run).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            outcome.reset_reason = error
                .is_reset()
                .then(|| error.reason().map(|r| format!("{r:?}")))
                .flatten();
            outcome.error = Some(error.to_string());
        }
        Err(_) => outcome.error = Some("timed out".to_owned()),
    }
    outcome.finished = Some(Instant::now());
    outcome
}

/// On one HTTP/2 connection (prior knowledge) to `target`: a slow request under `prefix` that
/// completes, sent first; while it is in flight, one whose answer breaks off; then another
/// that completes. Reports each outcome, whether the slow one finished after the broken one
/// ended, and whether the connection is still open at the end.
pub async fn h2_reset(
    target: &str,
    authority: &str,
    prefix: &str,
) -> anyhow::Result<serde_json::Value> {
    let (client, driver) = h2_connect(target).await?;
    let slow = tokio::spawn({
        let (client, authority, path) = (
            client.clone(),
            authority.to_owned(),
            format!("{prefix}/ok/slow"),
        );
        async move { exchange(client, &authority, &path).await }
    });
    let broken = exchange(client.clone(), authority, &format!("{prefix}/length")).await;
    let slow = slow.await?;
    let after = exchange(client.clone(), authority, &format!("{prefix}/ok")).await;
    let connection_open = !driver.is_finished();
    drop(client);
    driver.abort();
    Ok(serde_json::json!({
        "broken": broken.report(),
        "concurrent": slow.report(),
        "concurrent_finished_after_broken": slow.finished > broken.finished,
        "after": after.report(),
        "connection_open": connection_open,
    }))
}
