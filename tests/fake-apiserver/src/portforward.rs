//! The pod port-forward endpoint (`/api/v1/namespaces/NS/pods/NAME/portforward?ports=P[,Q]`), as
//! the API server and the kubelet serve it over a WebSocket with the binary subprotocol
//! `v4.channel.k8s.io` (what `kubectl port-forward` and kube-rs's `Api::portforward` speak): each
//! requested port gets a data channel (`2i`) and an error channel (`2i + 1`); every frame starts
//! with its channel's byte, and the first frame of each channel carries the port number (two
//! bytes, little-endian). Data written on a port's data channel goes to the TCP address a test
//! registered for that pod and port ([`crate::FakeApiServer::forward_pod_port`]); what it answers
//! comes back on the same channel; a port that cannot be reached gets its error on its error
//! channel, as the kubelet writes it. When every port's connection has ended, the WebSocket is
//! closed.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::Shared;
use crate::request::{Body, status_response};

/// The subprotocol served (binary frames, a channel byte in front).
pub(crate) const PROTOCOL: &str = "v4.channel.k8s.io";

/// The namespace and pod of a port-forward path.
pub(crate) fn target(path: &str) -> Option<(String, String)> {
    match path
        .trim_matches('/')
        .split('/')
        .collect::<Vec<_>>()
        .as_slice()
    {
        [
            "api",
            "v1",
            "namespaces",
            namespace,
            "pods",
            pod,
            "portforward",
        ] => Some(((*namespace).to_owned(), (*pod).to_owned())),
        _ => None,
    }
}

/// Answers a port-forward request: an error status, or `101 Switching Protocols` and the
/// forwarding on the upgraded connection.
pub(crate) fn serve(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    namespace: &str,
    pod: &str,
    ports: Option<&String>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if let Some(status) = shared.take_failure(&path) {
        return if status == 403 {
            status_response(
                403,
                "Forbidden",
                &format!(
                    "pods \"{pod}\" is forbidden: User \"fake\" cannot create resource \
                     \"pods/portforward\" in API group \"\" in the namespace \"{namespace}\""
                ),
            )
        } else {
            status_response(status, "InternalError", "injected failure")
        };
    }
    let headers = request.headers();
    let header = |name: http::header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if !header(http::header::UPGRADE).eq_ignore_ascii_case("websocket") {
        return status_response(400, "BadRequest", "Upgrade request required");
    }
    let key = header(http::header::SEC_WEBSOCKET_KEY);
    if key.is_empty() {
        return status_response(400, "BadRequest", "no Sec-WebSocket-Key");
    }
    let offered = header(http::header::SEC_WEBSOCKET_PROTOCOL);
    if !offered.split(',').any(|p| p.trim() == PROTOCOL) {
        return status_response(
            400,
            "BadRequest",
            &format!("no supported subprotocol in {offered:?} (this server speaks {PROTOCOL})"),
        );
    }
    let ports: Result<Vec<u16>, _> = ports
        .map_or("", String::as_str)
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::parse::<u16>)
        .collect();
    let ports = match ports {
        Ok(ports) if !ports.is_empty() && !ports.contains(&0) => ports,
        _ => {
            return status_response(
                400,
                "BadRequest",
                "query parameter \"ports\" must name ports between 1 and 65535",
            );
        }
    };
    let (exists, targets) = {
        let store = shared.store();
        let exists = shared.kind_index("v1", "Pod").is_ok_and(|kind| {
            store
                .objects
                .contains_key(&(kind, namespace.to_owned(), pod.to_owned()))
        });
        let targets: Vec<(u16, Option<SocketAddr>)> = ports
            .iter()
            .map(|port| {
                let key = (namespace.to_owned(), pod.to_owned(), *port);
                (*port, store.pod_ports.get(&key).copied())
            })
            .collect();
        (exists, targets)
    };
    if !exists {
        return status_response(404, "NotFound", &format!("pods \"{pod}\" not found"));
    }
    let name = format!("{namespace}/{pod}");
    tokio::spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                let socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                forward(socket, &name, targets).await;
            }
            Err(error) => tracing::debug!(%error, "port-forward upgrade failed"),
        }
    });
    let mut response = Response::new(http_body_util::BodyExt::boxed(http_body_util::Empty::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(accept) = http::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    headers.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(PROTOCOL),
    );
    response
}

/// What a port's reader hands the WebSocket writer.
enum FromPort {
    Data(u8, Vec<u8>),
    End,
}

fn frame(channel: u8, payload: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(payload.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(payload);
    Message::binary(bytes)
}

/// Carries bytes between the WebSocket and each port's TCP connection until every port's
/// connection has ended or the client goes away.
async fn forward<S>(socket: WebSocketStream<S>, pod: &str, targets: Vec<(u16, Option<SocketAddr>)>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = socket.split();
    let (sender, mut receiver) = mpsc::channel::<FromPort>(16);
    let mut writers = Vec::new();
    let mut open = 0usize;
    for (index, (port, target)) in targets.into_iter().enumerate() {
        let Ok(data) = u8::try_from(2 * index) else {
            break;
        };
        let error = data + 1;
        let port_bytes = port.to_le_bytes();
        if sink.send(frame(data, &port_bytes)).await.is_err()
            || sink.send(frame(error, &port_bytes)).await.is_err()
        {
            return;
        }
        let connected = match target {
            Some(address) => TcpStream::connect(address)
                .await
                .map_err(|e| format!("dial tcp4 {address}: {e}")),
            None => Err(format!(
                "dial tcp4 127.0.0.1:{port}: connect: connection refused"
            )),
        };
        match connected {
            Ok(connection) => {
                let (mut reader, writer) = connection.into_split();
                writers.push(Some(writer));
                open += 1;
                let sender = sender.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    while let Ok(read @ 1..) = reader.read(&mut buffer).await {
                        let chunk = buffer[..read].to_vec();
                        if sender.send(FromPort::Data(data, chunk)).await.is_err() {
                            return;
                        }
                    }
                    let _ = sender.send(FromPort::End).await;
                });
            }
            Err(reason) => {
                writers.push(None);
                let message = format!("error forwarding port {port} to pod {pod}: {reason}");
                if sink.send(frame(error, message.as_bytes())).await.is_err() {
                    return;
                }
            }
        }
    }
    drop(sender);
    while open > 0 {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) if bytes.len() > 1 => {
                    let index = usize::from(bytes[0] / 2);
                    if bytes[0] % 2 == 0
                        && let Some(Some(writer)) = writers.get_mut(index)
                        && writer.write_all(&bytes[1..]).await.is_err()
                    {
                        writers[index] = None;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            from_port = receiver.recv() => match from_port {
                Some(FromPort::Data(channel, bytes)) => {
                    if sink.send(frame(channel, &bytes)).await.is_err() {
                        return;
                    }
                }
                Some(FromPort::End) => open -= 1,
                None => break,
            },
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}
