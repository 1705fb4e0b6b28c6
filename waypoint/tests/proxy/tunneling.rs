//! DestinationRule `tunnel`: a TCP connection to a cluster with tunnel settings goes through
//! its endpoint, a tunnel proxy, by an HTTP/1.1 CONNECT (or POST) to the target, and its bytes
//! are relayed once the proxy answers 2xx, as Envoy's tcp_proxy `tunneling_config` does.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use weft_proto::waypoint as proto;

use waypoint::testing::{LOCALHOST, TestMesh, hbone_tunnel};

use crate::harness::*;

/// A request head as the tunnel proxy read it: the request line and the `host` header.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    line: String,
    host: String,
}

/// Reads a request head up to its blank line (bytes after it are the tunnel's, and the
/// waypoint sends none before the answer).
async fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 || head.len() > 8192 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let line = lines.next()?.to_owned();
    let host = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.trim().to_owned())?;
    Some(Head { line, host })
}

/// A tunnel proxy on loopback: it records each request head and answers `answer`; on a 2xx it
/// connects to the `host` the request names and relays bytes both ways.
async fn tunnel_proxy(answer: &'static str) -> (SocketAddr, mpsc::UnboundedReceiver<Head>) {
    let listener = TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let (heads, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let target = head.host.clone();
                let _ = heads.send(head);
                stream.write_all(answer.as_bytes()).await.unwrap();
                if !answer.starts_with("HTTP/1.1 2") {
                    return;
                }
                let mut upstream = TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
            });
        }
    });
    (address, received)
}

/// The tunnel's target: it reads five bytes, answers `target:` and them, and closes.
async fn target() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let (accepted, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = accepted.send(());
            let mut bytes = [0u8; 5];
            if stream.read_exact(&mut bytes).await.is_ok() {
                let _ = stream.write_all(b"target:").await;
                let _ = stream.write_all(&bytes).await;
            }
        }
    });
    (address, received)
}

/// The service's port declared TCP, routed to one cluster whose endpoint is the tunnel proxy
/// at `proxy` (outside the mesh), tunnelling to `target` with `method`.
fn tunnelled_config(
    proxy: SocketAddr,
    target: SocketAddr,
    method: proto::tcp_tunneling::Method,
) -> proto::WaypointConfig {
    let cluster = proto::Cluster {
        endpoints: vec![proto::Endpoint {
            address: proxy.ip().to_string(),
            port: u32::from(proxy.port()),
            tunnel: proto::EndpointTunnel::None as i32,
            healthy: true,
            weight: 1,
            ..Default::default()
        }],
        tcp_tunneling: Some(proto::TcpTunneling {
            method: method as i32,
            target_host: target.ip().to_string(),
            target_port: u32::from(target.port()),
        }),
        ..cluster("", &[])
    };
    let mut cfg = config(Vec::new(), vec![cluster]);
    cfg.services[0].ports[0].protocol = proto::Protocol::Tcp as i32;
    cfg.services[0].tcp_routes.push(proto::TcpRoute {
        r#match: Vec::new(),
        route: vec![proto::RouteDestination {
            destination: destination("", 0).destination,
            weight: 0,
        }],
        virtual_service: "default/reviews".to_owned(),
    });
    cfg
}

/// The head the proxy read, waited for 5 s at most.
async fn next(heads: &mut mpsc::UnboundedReceiver<Head>) -> Head {
    tokio::time::timeout(std::time::Duration::from_secs(5), heads.recv())
        .await
        .expect("the proxy read a request head within 5 s")
        .expect("the proxy runs")
}

#[tokio::test]
async fn tcp_bytes_reach_the_target_through_a_connect_tunnel() {
    let (proxy, mut heads) = tunnel_proxy("HTTP/1.1 200 Connection established\r\n\r\n").await;
    let (target, _) = target().await;
    let harness = Harness::start(TestMesh::new(), &[]).await;
    let cfg = tunnelled_config(proxy, target, proto::tcp_tunneling::Method::Connect);
    harness.waypoint.apply_config(cfg).unwrap();

    let mut tunnel = harness.tunnel().await;
    let (answer, ended) = exchange_raw(&mut tunnel, b"hello").await;
    assert_eq!((answer.as_str(), ended), ("target:hello", true));
    assert_eq!(
        next(&mut heads).await,
        Head {
            line: format!("CONNECT {target} HTTP/1.1"),
            host: target.to_string(),
        }
    );
}

/// `protocol: POST`: Envoy's `use_post`, to its default path, the target as `host`.
#[tokio::test]
async fn the_post_variant_names_the_target_as_its_host() {
    let (proxy, mut heads) = tunnel_proxy("HTTP/1.1 200 OK\r\n\r\n").await;
    let (target, _) = target().await;
    let harness = Harness::start(TestMesh::new(), &[]).await;
    let cfg = tunnelled_config(proxy, target, proto::tcp_tunneling::Method::Post);
    harness.waypoint.apply_config(cfg).unwrap();

    let mut tunnel = harness.tunnel().await;
    let (answer, ended) = exchange_raw(&mut tunnel, b"howdy").await;
    assert_eq!((answer.as_str(), ended), ("target:howdy", true));
    assert_eq!(
        next(&mut heads).await,
        Head {
            line: "POST / HTTP/1.1".to_owned(),
            host: target.to_string(),
        }
    );
}

/// A proxy that refuses the tunnel fails the connection: the client's HBONE tunnel is refused
/// (503, as for any connect failure) and the target never sees a connection.
#[tokio::test]
async fn a_non_2xx_answer_closes_the_downstream_connection() {
    let (proxy, mut heads) = tunnel_proxy("HTTP/1.1 403 Forbidden\r\n\r\n").await;
    let (target, mut accepted) = target().await;
    let harness = Harness::start(TestMesh::new(), &[]).await;
    let cfg = tunnelled_config(proxy, target, proto::tcp_tunneling::Method::Connect);
    harness.waypoint.apply_config(cfg).unwrap();

    let tunnel = hbone_tunnel(
        &harness.client,
        harness.address,
        &harness.waypoint_identity,
        service_addr(),
        CLIENT_IP,
    )
    .await;
    let error = tunnel.expect_err("the tunnel is refused");
    assert!(error.to_string().contains("503"), "{error:#}");
    assert_eq!(
        next(&mut heads).await.line,
        format!("CONNECT {target} HTTP/1.1")
    );
    assert!(accepted.try_recv().is_err(), "the target was never reached");
}
