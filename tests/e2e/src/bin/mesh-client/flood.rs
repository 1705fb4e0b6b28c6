//! Floods an HTTP/2 server from inside a pod, through the mesh, with the frames of
//! [`weft_e2e::h2flood`], and reports what the server did about it.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_e2e::h2flood::{Kind, Seen, frames, opening};

use super::TIMEOUT;

/// A write that makes no progress for this long means the server stopped reading.
const STALL: Duration = Duration::from_secs(3);
/// Send and receive buffer of the flooding socket.
const SOCKET_BUFFER: u32 = 16 * 1024;
/// How long the server's answer is read after the flood.
const AFTERMATH: Duration = Duration::from_secs(5);

/// Floods `target` (HTTP/2 with prior knowledge) without reading, then reads what came back:
/// whether the server cut the connection, with a GOAWAY or otherwise, and what it answered.
pub async fn flood(
    target: &str,
    authority: &str,
    kind: Kind,
    count: u32,
) -> anyhow::Result<serde_json::Value> {
    let address: std::net::SocketAddr = target.parse().context("target is ip:port")?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    // Small buffers on the attacker's side, so that what the server queues shows up as the
    // sender stalling rather than as bytes piling up in this socket.
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    let stream = tokio::time::timeout(TIMEOUT, socket.connect(address))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connecting to {target}"))?;
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(&opening()).await?;

    let mut sent = 0u64;
    let mut stalled = false;
    let mut write_error = None;
    let mut frames = frames(kind, authority, count).peekable();
    while frames.peek().is_some() {
        let batch: Vec<Vec<u8>> = frames.by_ref().take(64).collect();
        match tokio::time::timeout(STALL, writer.write_all(&batch.concat())).await {
            Ok(Ok(())) => sent += batch.len() as u64,
            Ok(Err(error)) => {
                write_error = Some(error.to_string());
                break;
            }
            Err(_) => {
                stalled = true;
                break;
            }
        }
    }

    let mut seen = Seen::default();
    let mut closed = false;
    let mut buffer = Vec::new();
    let deadline = tokio::time::Instant::now() + AFTERMATH;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
        seen.parse(&mut buffer);
        if seen.goaway.is_some() {
            // Give the server a moment to close after its GOAWAY, then stop reading.
            let _ = tokio::time::timeout(Duration::from_millis(500), reader.read(&mut chunk)).await;
            break;
        }
    }
    seen.parse(&mut buffer);
    Ok(serde_json::json!({
        "kind": format!("{kind:?}").to_lowercase(),
        "frames_sent": sent,
        "stalled": stalled,
        "write_error": write_error,
        "closed": closed,
        "seen": seen,
    }))
}
