//! Clients the end-to-end tests and the demo run inside pods (so that the node agent's eBPF
//! redirection catches their connections like any application's): a tonic gRPC client (unary
//! calls on one channel, or one long-lived bidirectional stream), a WebSocket client, an HTTP/2 rapid-reset burst beside a well-behaved connection, a
//! request-smuggling attempt, hand-written HTTP/1.x bytes, HTTP/2 frame floods, protocol
//! upgrades used to get past a proxy, a backend that accepts any upgrade, HTTP/2 uploads sent
//! piece by piece, and an upstream that breaks off its answers with a TCP reset beside an HTTP/2
//! client watching one such answer. Each prints one
//! JSON line saying what happened and exits non-zero only when it could not run at all; the
//! caller judges the result. The sessions (`http-session`, `tcp-session`) instead keep one
//! connection open and answer commands from stdin for as long as the test needs them
//! (`weft_e2e::session`).

mod flood;
mod raw;
mod reset;
mod upgrade;
mod upload;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use weft_proto::sample::{EchoRequest, echo_client::EchoClient};

/// Every exchange is bounded by this.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(name = "mesh-client", about = "Test clients run inside pods")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Calls the sample app's gRPC echo `count` times on one channel.
    Grpc {
        /// `http://host:port`
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// Opens one bidirectional `EchoStream` and sends `count` messages on it, `interval_ms`
    /// apart, each awaited before the next: the stream stays open for the whole exchange.
    GrpcStream {
        /// `http://host:port`
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 10)]
        count: u32,
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
    /// Opens a WebSocket and checks that `count` messages come back unchanged.
    Websocket {
        /// `ws://host:port/path`
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// HTTP/2 (prior knowledge) to `target`: a burst of `streams` requests each reset at once
    /// (CVE-2023-44487), while a second connection sends ordinary requests.
    RapidReset {
        /// `host:port`
        #[arg(long)]
        target: String,
        /// `:authority` of the requests.
        #[arg(long)]
        authority: String,
        #[arg(long, default_value_t = 1000)]
        streams: u32,
    },
    /// Sends one HTTP/1.1 request carrying both Content-Length and Transfer-Encoding, with a
    /// second request hidden in its body, then reports what came back.
    Smuggle {
        /// `host:port`
        #[arg(long)]
        target: String,
        /// Host header.
        #[arg(long)]
        host: String,
        /// Path of the hidden request.
        #[arg(long, default_value = "/smuggled")]
        hidden_path: String,
    },
    /// One HTTP/1.1 keep-alive connection to `target`, requests sent on it as stdin asks.
    HttpSession {
        /// `ip:port`
        #[arg(long)]
        target: std::net::SocketAddr,
        /// Host header.
        #[arg(long)]
        host: String,
    },
    /// One TCP connection to a line echo at `target`, lines sent on it as stdin asks.
    TcpSession {
        /// `ip:port`
        #[arg(long)]
        target: std::net::SocketAddr,
    },
    /// Sends bytes as they are (`\r`, `\n`, `\t`, `\\` and `\xNN` escapes) and reports every
    /// response status that came back.
    Raw {
        /// `host:port`
        #[arg(long)]
        target: String,
        #[arg(long)]
        payload: String,
    },
    /// Asks for a protocol upgrade with an innocent request, then requests `hidden_path` over the
    /// switched connection (HTTP/2 after `h2c`).
    Upgrade {
        /// `host:port`
        #[arg(long)]
        target: String,
        /// Host header.
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "h2c")]
        protocol: String,
        #[arg(long, default_value = "/admin")]
        hidden_path: String,
    },
    /// A backend that switches to any protocol it is asked for, and answers every request on a
    /// switched connection (runs until killed).
    UpgradeServer {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
    },
    /// An upstream that breaks off its answers with a TCP reset (runs until killed; see
    /// `reset.rs` for what each path gets).
    ResetServer {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
    },
    /// HTTP/2 (prior knowledge) to `target`: one request whose answer breaks off, beside a
    /// slow one sent before it and one sent after, all on one connection, under `prefix`.
    H2Reset {
        /// `host:port`
        #[arg(long)]
        target: String,
        /// `:authority` of the requests.
        #[arg(long)]
        authority: String,
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// POSTs a body over HTTP/2 (prior knowledge) in `pieces` of `piece_bytes`, `interval_ms`
    /// apart, declaring `content_length` if given, and reports the answer.
    H2Upload {
        /// `host:port`
        #[arg(long)]
        target: String,
        /// `:authority` of the request.
        #[arg(long)]
        authority: String,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long)]
        content_length: Option<u64>,
        #[arg(long, default_value_t = 16 * 1024)]
        piece_bytes: usize,
        #[arg(long, default_value_t = 1)]
        pieces: u32,
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
    /// Floods an HTTP/2 server (prior knowledge) with hand-made frames.
    H2Flood {
        /// `host:port`
        #[arg(long)]
        target: String,
        /// `:authority` of the requests.
        #[arg(long)]
        authority: String,
        #[arg(long, value_enum)]
        kind: weft_e2e::h2flood::Kind,
        #[arg(long, default_value_t = 10_000)]
        count: u32,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        match cli.command {
            Command::HttpSession { target, host } => {
                weft_e2e::session::run_http_session(target, &host).await?;
                return anyhow::Ok(None);
            }
            Command::TcpSession { target } => {
                weft_e2e::session::run_tcp_session(target).await?;
                return anyhow::Ok(None);
            }
            Command::Grpc { target, count } => grpc(&target, count).await,
            Command::GrpcStream {
                target,
                count,
                interval_ms,
            } => grpc_stream(&target, count, Duration::from_millis(interval_ms)).await,
            Command::Websocket { url, count } => websocket(&url, count).await,
            Command::RapidReset {
                target,
                authority,
                streams,
            } => rapid_reset(&target, &authority, streams).await,
            Command::Smuggle {
                target,
                host,
                hidden_path,
            } => smuggle(&target, &host, &hidden_path).await,
            Command::Raw { target, payload } => raw::send(&target, &raw::unescape(&payload)?).await,
            Command::Upgrade {
                target,
                host,
                protocol,
                hidden_path,
            } => upgrade::attempt(&target, &host, &protocol, &hidden_path).await,
            Command::UpgradeServer { listen } => upgrade::serve(listen).await,
            Command::ResetServer { listen } => reset::serve(listen).await,
            Command::H2Reset {
                target,
                authority,
                prefix,
            } => reset::h2_reset(&target, &authority, &prefix).await,
            Command::H2Upload {
                target,
                authority,
                path,
                content_length,
                piece_bytes,
                pieces,
                interval_ms,
            } => {
                upload::h2_upload(upload::Upload {
                    target: &target,
                    authority: &authority,
                    path: &path,
                    content_length,
                    piece_bytes,
                    pieces,
                    interval: Duration::from_millis(interval_ms),
                })
                .await
            }
            Command::H2Flood {
                target,
                authority,
                kind,
                count,
            } => flood::flood(&target, &authority, kind, count).await,
        }
        .map(Some)
    })?;
    if let Some(report) = report {
        println!("{report}");
    }
    Ok(())
}

async fn grpc(target: &str, count: u32) -> anyhow::Result<serde_json::Value> {
    let channel = tonic::transport::Endpoint::from_shared(target.to_string())?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let mut client = EchoClient::new(channel);
    let mut replies = Vec::new();
    let mut errors = Vec::new();
    for i in 0..count {
        let message = format!("echo-{i}");
        match client
            .echo(EchoRequest {
                message: message.clone(),
                fail_with_code: 0,
                delay_ms: 0,
            })
            .await
        {
            Ok(reply) => {
                let reply = reply.into_inner();
                replies.push(serde_json::json!({
                    "echoed": reply.message == message,
                    "version": reply.version,
                    "pod": reply.pod,
                }));
            }
            Err(status) => errors.push(format!("{:?}: {}", status.code(), status.message())),
        }
    }
    Ok(serde_json::json!({ "replies": replies, "errors": errors }))
}

async fn grpc_stream(
    target: &str,
    count: u32,
    interval: Duration,
) -> anyhow::Result<serde_json::Value> {
    let channel = tonic::transport::Endpoint::from_shared(target.to_string())?
        .connect_timeout(TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let mut client = EchoClient::new(channel);
    // One request at a time: each is sent once the previous answer is in.
    let (requests, outgoing) = tokio::sync::mpsc::channel::<EchoRequest>(1);
    let mut answers = tokio::time::timeout(
        TIMEOUT,
        client.echo_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing)),
    )
    .await
    .context("opening the stream timed out")?
    .context("opening the stream")?
    .into_inner();
    let (mut echoed, mut pods) = (0u32, std::collections::BTreeSet::new());
    let mut error = None;
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let message = format!("stream-{i}");
        let request = EchoRequest {
            message: message.clone(),
            fail_with_code: 0,
            delay_ms: 0,
        };
        if requests.send(request).await.is_err() {
            error = Some(format!("message {i}: the stream's sending side closed"));
            break;
        }
        match tokio::time::timeout(TIMEOUT, answers.message()).await {
            Ok(Ok(Some(reply))) if reply.message == message => {
                echoed += 1;
                pods.insert(reply.pod);
            }
            Ok(Ok(Some(reply))) => {
                error = Some(format!("message {i}: answered {:?}", reply.message));
                break;
            }
            Ok(Ok(None)) => {
                error = Some(format!("message {i}: the stream ended"));
                break;
            }
            Ok(Err(status)) => {
                error = Some(format!(
                    "message {i}: {:?}: {}",
                    status.code(),
                    status.message()
                ));
                break;
            }
            Err(_) => {
                error = Some(format!("message {i}: no answer within {TIMEOUT:?}"));
                break;
            }
        }
    }
    drop(requests);
    // The client's end of the stream closed: the server ends its side with an OK status.
    let ended = match error {
        Some(_) => false,
        None => matches!(
            tokio::time::timeout(TIMEOUT, answers.message()).await,
            Ok(Ok(None))
        ),
    };
    Ok(serde_json::json!({
        "echoed": echoed,
        "pods": pods,
        "ended": ended,
        "error": error,
    }))
}

async fn websocket(url: &str, count: u32) -> anyhow::Result<serde_json::Value> {
    let exchange = async {
        let (mut socket, response) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("opening {url}"))?;
        let pod = response
            .headers()
            .get("x-weft-pod")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut echoed = 0;
        for i in 0..count {
            let text = format!("message {i} through the mesh");
            socket.send(Message::text(text.clone())).await?;
            match socket.next().await {
                Some(Ok(Message::Text(reply))) if reply.as_str() == text => echoed += 1,
                other => anyhow::bail!("message {i}: unexpected answer {other:?}"),
            }
        }
        socket.close(None).await?;
        anyhow::Ok(serde_json::json!({
            "status": response.status().as_u16(),
            "pod": pod,
            "echoed": echoed,
        }))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .context("the WebSocket exchange timed out")?
}

/// Connects with HTTP/2 prior knowledge.
async fn h2_connect(
    target: &str,
) -> anyhow::Result<(
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
)> {
    let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(target))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connecting to {target}"))?;
    let (client, connection) = h2::client::handshake(stream).await?;
    Ok((client, tokio::spawn(connection)))
}

async fn rapid_reset(
    target: &str,
    authority: &str,
    streams: u32,
) -> anyhow::Result<serde_json::Value> {
    // The well-behaved neighbour: its own connection, one request at a time, for as long as the
    // burst lasts and a little longer.
    let (good, good_driver) = h2_connect(target).await?;
    let neighbour_authority = authority.to_string();
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let neighbour_answered = answered.clone();
    let neighbour = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, 0u32);
        let mut good = good;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if *stop.borrow() || Instant::now() > deadline {
                break;
            }
            let request = http::Request::get(format!("http://{neighbour_authority}/neighbour"))
                .body(())
                .expect("a valid request");
            let outcome = async {
                good = good.clone().ready().await?;
                let (response, _) = good.send_request(request, true)?;
                let response = response.await?;
                let status = response.status();
                let mut body = response.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                Ok::<_, h2::Error>(status)
            };
            match tokio::time::timeout(TIMEOUT, outcome).await {
                Ok(Ok(status)) if status.is_success() => {
                    ok += 1;
                    neighbour_answered.store(ok, std::sync::atomic::Ordering::Relaxed);
                }
                _ => failed += 1,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = stop.changed() => {}
            }
        }
        (ok, failed)
    });
    // The neighbour is being served before the burst starts...
    answered_at_least(&answered, 1).await;

    let (mut client, driver) = h2_connect(target).await?;
    let mut sent = 0u32;
    for i in 0..streams {
        let Ok(Ok(ready)) = tokio::time::timeout(TIMEOUT, client.clone().ready()).await else {
            break;
        };
        client = ready;
        let request = http::Request::get(format!("http://{authority}/reset/{i}"))
            .body(())
            .expect("a valid request");
        let Ok((_, mut stream)) = client.send_request(request, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    // The client stays open: a connection with no handle and no stream left would end itself,
    // and that must not be mistaken for the server closing it.
    let closed_by = match tokio::time::timeout(TIMEOUT, driver).await {
        Ok(Ok(Ok(()))) => "closed cleanly".to_string(),
        Ok(Ok(Err(error))) if error.is_go_away() && error.is_remote() => {
            format!("GOAWAY {:?}", error.reason())
        }
        Ok(Ok(Err(error))) => format!("error {error}"),
        Ok(Err(join)) => format!("driver failed: {join}"),
        Err(_) => "still open".to_string(),
    };
    drop(client);
    // ...and still after it ended.
    let before = answered.load(std::sync::atomic::Ordering::Relaxed);
    answered_at_least(&answered, before + 5).await;
    let _ = stop_tx.send(true);
    let (ok, failed) = neighbour.await?;
    good_driver.abort();
    Ok(serde_json::json!({
        "resets_sent": sent,
        "burst_connection": closed_by,
        "neighbour_ok": ok,
        "neighbour_failed": failed,
    }))
}

/// Waits (at most [`TIMEOUT`]) until `answered` reaches `count`; the caller reports the counts.
async fn answered_at_least(answered: &std::sync::atomic::AtomicU32, count: u32) {
    let deadline = Instant::now() + TIMEOUT;
    while answered.load(std::sync::atomic::Ordering::Relaxed) < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn smuggle(target: &str, host: &str, hidden_path: &str) -> anyhow::Result<serde_json::Value> {
    let hidden = format!("GET {hidden_path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let body = format!("0\r\n\r\n{hidden}");
    let request = format!(
        "POST /front HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(target).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        // The server answers and closes; a server that kept the connection open for a second
        // request would show up as a timeout with two responses read.
        let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .context("the smuggling attempt timed out")??;
    Ok(raw::report(&answer, true))
}
