//! Protocol upgrades as a way around a proxy's L7 checks: a backend that switches to whatever
//! protocol it is asked for, and a client that asks for one with a request the proxy lets
//! through, then sends what the proxy would refuse over the switched connection.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::TIMEOUT;

/// A valid `HTTP2-Settings` value (one SETTINGS_MAX_CONCURRENT_STREAMS = 100).
const HTTP2_SETTINGS: &str = "AAMAAABk";

/// Serves on `listen` until killed: any request carrying `Upgrade` is answered `101` and the
/// connection switched (HTTP/2 for `h2c`, raw HTTP/1.1 after any other token), every request on a
/// switched connection is answered `200 smuggled <method> <path>`; other requests get `200` with
/// a JSON echo of their method, path and headers.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(answer);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn answer(mut request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(protocol) = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
    else {
        let headers: serde_json::Map<String, serde_json::Value> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let echo = serde_json::json!({
            "method": request.method().as_str(),
            "path": request.uri().to_string(),
            "headers": headers,
        });
        return Ok(Response::new(Full::new(Bytes::from(echo.to_string()))));
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let switched_to = protocol.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        if switched_to == "h2c" {
            let service = hyper::service::service_fn(smuggled);
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(upgraded, service)
                .await;
        } else {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(upgraded, hyper::service::service_fn(smuggled))
                .await;
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, protocol)
        .body(Full::new(Bytes::new()))
        .expect("a valid response"))
}

async fn smuggled(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = format!("smuggled {} {}", request.method(), request.uri().path());
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// Asks `target` to switch `host`'s connection to `protocol` with a plain `GET /upgrade-front`,
/// then, if it did, requests `hidden_path` over the switched connection (HTTP/2 for `h2c`).
pub async fn attempt(
    target: &str,
    host: &str,
    protocol: &str,
    hidden_path: &str,
) -> anyhow::Result<serde_json::Value> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(target)
            .await
            .with_context(|| format!("connecting to {target}"))?;
        let settings = if protocol.eq_ignore_ascii_case("h2c") {
            format!("HTTP2-Settings: {HTTP2_SETTINGS}\r\n")
        } else {
            String::new()
        };
        let request = format!(
            "GET /upgrade-front HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {protocol}\r\n{settings}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let (status, body) = read_response(&mut stream).await?;
        if status != 101 {
            return anyhow::Ok(serde_json::json!({
                "status": status,
                "upgraded": false,
                "body": body,
            }));
        }
        let hidden = if protocol.eq_ignore_ascii_case("h2c") {
            let (mut client, connection) = h2::client::handshake(stream).await?;
            tokio::spawn(connection);
            let request = Request::get(format!("http://{host}{hidden_path}"))
                .body(())
                .expect("a valid request");
            client = client.ready().await?;
            let (response, _) = client.send_request(request, true)?;
            let response = response.await?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                text.extend_from_slice(&chunk);
            }
            serde_json::json!({ "status": status, "body": String::from_utf8_lossy(&text) })
        } else {
            let request = format!("GET {hidden_path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
            stream.write_all(request.as_bytes()).await?;
            let (status, body) = read_response(&mut stream).await?;
            serde_json::json!({ "status": status, "body": body })
        };
        anyhow::Ok(serde_json::json!({
            "status": 101,
            "upgraded": true,
            "hidden": hidden,
        }))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .context("the upgrade attempt timed out")?
}

/// One HTTP/1.1 response: its status and its body (read by `Content-Length`; none for 101).
async fn read_response(stream: &mut tokio::net::TcpStream) -> anyhow::Result<(u16, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            anyhow::bail!(
                "the connection closed in a response head: {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    if status != 101 {
        stream.read_exact(&mut body).await?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
