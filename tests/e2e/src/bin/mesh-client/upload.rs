//! An HTTP/2 (prior knowledge) upload whose body is sent piece by piece, `interval` apart: a
//! slow client, or a large one with no declared length. Reports the answer's status and body,
//! when it came, and how much of the body had been handed over by then.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use super::TIMEOUT;

/// How the body is sent.
pub struct Upload<'a> {
    pub target: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub content_length: Option<u64>,
    pub piece_bytes: usize,
    pub pieces: u32,
    pub interval: Duration,
}

pub async fn h2_upload(upload: Upload<'_>) -> anyhow::Result<serde_json::Value> {
    let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(upload.target))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connecting to {}", upload.target))?;
    let (client, connection) = h2::client::handshake(stream).await?;
    let driver = tokio::spawn(connection);
    let mut request = http::Request::post(format!("http://{}{}", upload.authority, upload.path));
    if let Some(length) = upload.content_length {
        request = request.header(http::header::CONTENT_LENGTH, length);
    }
    let request = request.body(()).context("a valid request")?;
    let started = Instant::now();
    let mut client = client.ready().await?;
    let (response, mut body) = client.send_request(request, false)?;
    let mut sent = 0u64;
    let mut send_error = None;
    let sending = async {
        for piece in 0..upload.pieces {
            if piece > 0 && !upload.interval.is_zero() {
                tokio::time::sleep(upload.interval).await;
            }
            // The stream ends with the last piece unless a longer length was declared (the
            // client then stalls, as one that declared more than it sends).
            let whole = sent + upload.piece_bytes as u64;
            let last =
                piece + 1 == upload.pieces && upload.content_length.is_none_or(|l| l == whole);
            match body.send_data(Bytes::from(vec![b'x'; upload.piece_bytes]), last) {
                Ok(()) => sent += upload.piece_bytes as u64,
                Err(error) => {
                    send_error = Some(error.to_string());
                    break;
                }
            }
        }
        // The answer decides when the exchange is over.
        std::future::pending::<()>().await;
    };
    let exchange = async {
        tokio::select! {
            response = response => response,
            () = sending => unreachable!("sending never ends the exchange"),
        }
    };
    let report = match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(response)) => {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let status = response.status().as_u16();
            let mut answer = response.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = answer.data().await {
                let Ok(chunk) = chunk else { break };
                let _ = answer.flow_control().release_capacity(chunk.len());
                text.extend_from_slice(&chunk);
            }
            serde_json::json!({
                "status": status,
                "ms": ms,
                "body": String::from_utf8_lossy(&text),
                "sent": sent,
                "send_error": send_error,
            })
        }
        Ok(Err(error)) => serde_json::json!({
            "status": 0,
            "ms": started.elapsed().as_secs_f64() * 1000.0,
            "error": error.to_string(),
            "sent": sent,
        }),
        Err(_) => serde_json::json!({ "status": 0, "error": "timed out", "sent": sent }),
    };
    driver.abort();
    Ok(report)
}
