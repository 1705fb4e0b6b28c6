use std::net::SocketAddr;

use http::Version;
use weft_policy::PolicyRef;

use super::*;

fn endpoint() -> SocketAddr {
    "10.0.0.5:9080".parse().unwrap()
}

/// Each local reply as clients, metrics and the access log see it: status, body, content type,
/// `response_flags` and `response_code_details` (`None`: left as they were).
#[test]
fn local_replies_are_what_envoy_answers_in_the_same_case() {
    type Expected = (
        u16,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    );
    let mut cases: Vec<(LocalReply, Expected)> = vec![
        (
            Nonconforming::UnknownMethod("get".to_owned()).into(),
            (
                400,
                "Bad Request",
                Some("text/plain"),
                None,
                Some("invalid_method"),
            ),
        ),
        (
            Nonconforming::LowVersion(Version::HTTP_10).into(),
            (
                426,
                "Upgrade Required",
                Some("text/plain"),
                None,
                Some("low_version"),
            ),
        ),
        (
            Nonconforming::MissingHost.into(),
            (
                400,
                "Bad Request",
                Some("text/plain"),
                None,
                Some("missing_host_header"),
            ),
        ),
        (
            Nonconforming::DuplicateHost.into(),
            (
                400,
                "Bad Request",
                Some("text/plain"),
                None,
                Some("duplicate_host_header"),
            ),
        ),
        (
            Nonconforming::UpgradeRefused("h3".to_owned()).into(),
            (
                403,
                "Forbidden",
                Some("text/plain"),
                None,
                Some("upgrade_failed"),
            ),
        ),
        (
            LocalReply::NotServed {
                close_connection: false,
            },
            (
                503,
                "no healthy upstream",
                Some("text/plain"),
                Some("NR"),
                Some("filter_chain_not_found"),
            ),
        ),
        (
            LocalReply::InvalidPath,
            (
                400,
                "Bad Request",
                Some("text/plain"),
                None,
                Some("invalid_path"),
            ),
        ),
        (
            LocalReply::Denied(DenyReason::InvalidPath),
            (
                400,
                "Bad Request",
                Some("text/plain"),
                None,
                Some("invalid_path"),
            ),
        ),
        (
            LocalReply::Denied(DenyReason::NoAllowPolicyMatched),
            (
                403,
                "RBAC: access denied",
                Some("text/plain"),
                None,
                Some("rbac_access_denied_matched_policy[none]"),
            ),
        ),
        (
            LocalReply::Denied(DenyReason::DeniedBy(PolicyRef {
                namespace: "default".to_owned(),
                name: "deny-admin".to_owned(),
            })),
            (
                403,
                "RBAC: access denied",
                Some("text/plain"),
                None,
                Some("rbac_access_denied_matched_policy[ns[default]-policy[deny-admin]-rule[0]]"),
            ),
        ),
        (
            LocalReply::RouteNotFound,
            (404, "", None, Some("NR"), Some("route_not_found")),
        ),
        (
            LocalReply::NoDestination,
            (503, "no destination", Some("text/plain"), Some("NR"), None),
        ),
        (
            LocalReply::ClusterNotFound(StatusCode::SERVICE_UNAVAILABLE),
            (503, "", None, Some("NC"), Some("cluster_not_found")),
        ),
        // A Gateway API route's invalid backend: Envoy's cluster_not_found_response_code.
        (
            LocalReply::ClusterNotFound(StatusCode::INTERNAL_SERVER_ERROR),
            (500, "", None, Some("NC"), Some("cluster_not_found")),
        ),
        (
            LocalReply::CorsPreflight(HeaderMap::new()),
            (200, "", None, None, Some("cors_response")),
        ),
        (
            LocalReply::FaultAbort(AbortKind::Http(StatusCode::IM_A_TEAPOT)),
            (
                418,
                "fault filter abort",
                Some("text/plain"),
                Some("FI"),
                Some("fault_filter_abort"),
            ),
        ),
        (
            LocalReply::FaultAbort(AbortKind::Grpc(14)),
            (
                200,
                "",
                Some("application/grpc"),
                Some("FI"),
                Some("fault_filter_abort"),
            ),
        ),
        (
            LocalReply::DirectResponse {
                status: StatusCode::ACCEPTED,
                body: Bytes::from_static(b"{}"),
            },
            (202, "{}", None, None, Some("direct_response")),
        ),
        (
            LocalReply::Redirect {
                status: StatusCode::FOUND,
                location: None,
            },
            (302, "", None, None, Some("redirect")),
        ),
        (
            LocalReply::RateLimited,
            (
                429,
                "local_rate_limited",
                Some("text/plain"),
                Some("RL"),
                Some("local_rate_limited"),
            ),
        ),
        (
            LocalReply::DownstreamDisconnect,
            (400, "", None, Some("DC"), None),
        ),
        (
            LocalReply::PayloadTooLarge {
                close_connection: false,
            },
            (
                413,
                "Payload Too Large",
                Some("text/plain"),
                None,
                Some("request_payload_too_large"),
            ),
        ),
        (
            LocalReply::RequestTimeout {
                close_connection: false,
            },
            (
                408,
                "request timeout",
                Some("text/plain"),
                None,
                Some("request_overall_timeout"),
            ),
        ),
        (
            LocalReply::RouteTimeout,
            (
                504,
                "upstream request timeout",
                Some("text/plain"),
                Some("UT"),
                Some("upstream_response_timeout"),
            ),
        ),
        (
            LocalReply::PerTryTimeout,
            (
                504,
                "upstream request timeout",
                Some("text/plain"),
                Some("UT"),
                Some("upstream_per_try_timeout"),
            ),
        ),
        (
            UpstreamError::NoHealthyUpstream("c".to_owned()).into(),
            (
                503,
                "no healthy upstream",
                Some("text/plain"),
                Some("UH"),
                Some("no_healthy_upstream"),
            ),
        ),
        (
            UpstreamError::Overflow("c".to_owned()).into(),
            (
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                Some("text/plain"),
                Some("UO"),
                Some("upstream_reset_before_response_started{overflow}"),
            ),
        ),
        (
            UpstreamError::ConnectFailure {
                endpoint: endpoint(),
                reason: "refused".to_owned(),
            }
            .into(),
            (
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                Some("text/plain"),
                Some("UF"),
                Some("upstream_reset_before_response_started{connection_failure}"),
            ),
        ),
    ];
    // Before any head, the flag of the reset's reason (Envoy's `streamResetReasonToResponseFlag`).
    let reset = |cause| UpstreamError::Reset {
        endpoint: endpoint(),
        cause,
        reason: "reset".to_owned(),
    };
    cases.extend([
        (
            UpstreamError::RefusedStream {
                endpoint: endpoint(),
            }
            .into(),
            (
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset",
                Some("text/plain"),
                Some("UR"),
                Some("upstream_reset_before_response_started{remote_refused_stream_reset}"),
            ),
        ),
        (
            reset(ResetReason::RemoteReset).into(),
            (
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: remote reset",
                Some("text/plain"),
                Some("UR"),
                Some("upstream_reset_before_response_started{remote_reset}"),
            ),
        ),
        (
            reset(ResetReason::ConnectionTermination).into(),
            (
                503,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                Some("text/plain"),
                Some("UC"),
                Some("upstream_reset_before_response_started{connection_termination}"),
            ),
        ),
        (
            reset(ResetReason::ProtocolError).into(),
            (
                502,
                "upstream connect error or disconnect/reset before headers. reset reason: protocol error",
                Some("text/plain"),
                Some("UPE"),
                Some("upstream_reset_before_response_started{protocol_error}"),
            ),
        ),
    ]);
    for (local, (status, body, content_type, flags, details)) in cases {
        let name = format!("{local:?}");
        let reply = local.reply();
        assert_eq!(reply.status.as_u16(), status, "{name}");
        assert_eq!(reply.body, body.as_bytes(), "{name}");
        assert_eq!(
            reply
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap()),
            content_type,
            "{name}"
        );
        assert_eq!(
            reply.response_flags.map(ResponseFlag::as_str),
            flags,
            "{name}"
        );
        assert_eq!(reply.details.as_deref(), details, "{name}");
    }
}

#[test]
fn replies_carry_their_own_headers() {
    let reply = LocalReply::NotServed {
        close_connection: true,
    }
    .reply();
    assert_eq!(reply.headers[header::CONNECTION], "close");
    let reply = LocalReply::NotServed {
        close_connection: false,
    }
    .reply();
    assert!(!reply.headers.contains_key(header::CONNECTION));

    let reply = LocalReply::FaultAbort(AbortKind::Grpc(14)).reply();
    assert_eq!(reply.headers["grpc-status"], "14");

    let location = HeaderValue::from_static("http://a.b/v2");
    let reply = LocalReply::Redirect {
        status: StatusCode::MOVED_PERMANENTLY,
        location: Some(location.clone()),
    }
    .reply();
    assert_eq!(reply.headers[header::LOCATION], location);

    let reply = LocalReply::RateLimited.reply();
    assert_eq!(reply.headers["x-envoy-ratelimited"], "true");

    // An HTTP/1 request whose body was left unread ends its connection.
    for close_connection in [true, false] {
        for reply in [
            LocalReply::PayloadTooLarge { close_connection },
            LocalReply::RequestTimeout { close_connection },
        ] {
            let reply = reply.reply();
            assert_eq!(
                reply.headers.get(header::CONNECTION).is_some(),
                close_connection
            );
        }
    }
}

/// A reply that sets no flag keeps the one a fault delay set before it; one that sets a flag
/// adds it beside the delay's, as Envoy's stream info keeps every flag set (`UT,DI`).
#[test]
fn a_delay_flag_stays_beside_the_replys_own() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(&mut registry));
    let mut record = RequestRecord::new(std::sync::Arc::clone(&metrics));
    record.response_flags = ResponseFlag::DelayInjected.into();
    let response = LocalReply::DirectResponse {
        status: StatusCode::IM_A_TEAPOT,
        body: bytes::Bytes::new(),
    }
    .respond(&mut record);
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(record.response_flags, ResponseFlag::DelayInjected.into());
    assert_eq!(record.response_code_details, "direct_response");
    LocalReply::RouteTimeout.respond(&mut record);
    assert_eq!(record.response_flags.as_str(), "UT,DI");
    assert_eq!(record.response_code_details, "upstream_response_timeout");
}

/// A GET sent by a hyper client (HTTP/2 when `http2`) over an in-memory connection whose
/// other end `server` holds; what the client's `send_request` gave.
async fn send_to<F, Fut>(http2: bool, server: F) -> hyper::Result<Response<hyper::body::Incoming>>
where
    F: FnOnce(tokio::io::DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(server(server_io));
    let request = http::Request::get("http://upstream/")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_io))
                .await
                .unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await
    } else {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(client_io))
                .await
                .unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await
    }
}

/// The error a hyper client's response body ends with when `server` answers its request
/// ([`send_to`]); the server is told once the client has the response's head.
async fn body_error<F, Fut>(http2: bool, server: F) -> Box<dyn std::error::Error + Send + Sync>
where
    F: FnOnce(tokio::io::DuplexStream, tokio::sync::oneshot::Receiver<()>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use http_body_util::BodyExt;
    let (head_received, head) = tokio::sync::oneshot::channel();
    let response = send_to(http2, |io| server(io, head)).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = head_received.send(());
    response
        .into_body()
        .collect()
        .await
        .map(|_| ())
        .unwrap_err()
        .into()
}

/// A response cut short after its head: Envoy's flag and details for each way an upstream
/// can end it (its router's `onUpstreamReset` once the response started).
#[tokio::test]
async fn a_body_cut_short_upstream_is_flagged_as_envoy_flags_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // HTTP/1: the connection closes 100 bytes into a body of 1,000.
    let cut = body_error(false, |mut io, _| async move {
        let mut request = [0u8; 1024];
        let _ = io.read(&mut request).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
        io.write_all(format!("{head}{}", "x".repeat(100)).as_bytes())
            .await
            .unwrap();
        drop(io);
    })
    .await;
    // HTTP/2: the stream is reset after its head and a first piece of body...
    let reset = body_error(true, |io, head| async move {
        let mut connection = h2::server::handshake(io).await.unwrap();
        let (_, mut respond) = connection.accept().await.unwrap().unwrap();
        let mut body = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        body.send_data(Bytes::from_static(b"part"), false).unwrap();
        tokio::select! {
            _ = futures::future::poll_fn(|cx| connection.poll_closed(cx)) => {
                panic!("the connection ended on its own")
            }
            _ = head => body.send_reset(h2::Reason::INTERNAL_ERROR),
        }
        let _ = futures::future::poll_fn(|cx| connection.poll_closed(cx)).await;
    })
    .await;
    // ... or its whole connection ends under it.
    let terminated = body_error(true, |io, head| async move {
        let mut connection = h2::server::handshake(io).await.unwrap();
        let (_, mut respond) = connection.accept().await.unwrap().unwrap();
        let _body = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        tokio::select! {
            _ = futures::future::poll_fn(|cx| connection.poll_closed(cx)) => {
                panic!("the connection ended on its own")
            }
            _ = head => drop(connection),
        }
    })
    .await;
    for (error, flags, details) in [
        (
            cut,
            "UPE",
            "upstream_reset_after_response_started{protocol_error}",
        ),
        (
            reset,
            "UR",
            "upstream_reset_after_response_started{remote_reset}",
        ),
        (
            terminated,
            "UC",
            "upstream_reset_after_response_started{connection_termination}",
        ),
    ] {
        let (flag, detail) = late_upstream_reset(&*error);
        assert_eq!((flag.as_str(), detail), (flags, details), "{error:?}");
    }
}

/// A request failed before any response head: Envoy's status, flag and details for each way
/// an upstream can fail it (its router's `onUpstreamReset` before the response started, the
/// flag from `streamResetReasonToResponseFlag`).
#[tokio::test]
async fn an_upstream_failing_before_its_answer_is_flagged_as_envoy_flags_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // HTTP/1: the connection closes once the request is read.
    let closed = send_to(false, |mut io| async move {
        let mut request = [0u8; 1024];
        let _ = io.read(&mut request).await;
        drop(io);
    })
    .await;
    // HTTP/1: an answer that is not HTTP.
    let garbled = send_to(false, |mut io| async move {
        let mut request = [0u8; 1024];
        let _ = io.read(&mut request).await;
        io.write_all(b"SMTP ready\r\n\r\n").await.unwrap();
        let _ = io.read(&mut request).await;
    })
    .await;
    // HTTP/2: the stream is reset (RST_STREAM) before its head...
    let reset = send_to(true, |io| async move {
        let mut connection = h2::server::handshake(io).await.unwrap();
        let (_, mut respond) = connection.accept().await.unwrap().unwrap();
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
        let _ = futures::future::poll_fn(|cx| connection.poll_closed(cx)).await;
    })
    .await;
    // ... or its whole connection ends under it.
    let terminated = send_to(true, |io| async move {
        let mut connection = h2::server::handshake(io).await.unwrap();
        let _stream = connection.accept().await.unwrap().unwrap();
        drop(connection);
    })
    .await;
    for (answered, expected) in [
        (
            closed,
            (
                503,
                "UC",
                "upstream_reset_before_response_started{connection_termination}",
            ),
        ),
        (
            garbled,
            (
                502,
                "UPE",
                "upstream_reset_before_response_started{protocol_error}",
            ),
        ),
        (
            reset,
            (
                503,
                "UR",
                "upstream_reset_before_response_started{remote_reset}",
            ),
        ),
        (
            terminated,
            (
                503,
                "UC",
                "upstream_reset_before_response_started{connection_termination}",
            ),
        ),
    ] {
        let error = answered.expect_err("the upstream failed the request");
        let name = format!("{error:?}");
        let reply = LocalReply::from(UpstreamError::Reset {
            endpoint: endpoint(),
            cause: ResetReason::of(&error, false),
            reason: error.to_string(),
        })
        .reply();
        assert_eq!(
            (
                reply.status.as_u16(),
                reply.response_flags.map(ResponseFlag::as_str).unwrap(),
                reply.details.as_deref().unwrap(),
            ),
            expected,
            "{name}"
        );
    }
}
