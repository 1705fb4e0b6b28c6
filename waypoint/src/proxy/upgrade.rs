//! Protocol upgrades (WebSocket, or what `UPGRADES` allows; [`crate::conformance`]
//! refuses the others): the request goes to one endpoint with its `Connection` and `Upgrade`
//! headers, and after the endpoint's `101` the bytes are copied both ways, the connection
//! registered with the L4 ones so that a configuration change can end it.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tracing::{Instrument, debug, debug_span};

use super::context::RequestContext;
use super::forward::Outgoing;
use super::{BoxError, LocalReply, ProxyBody, VIA_UPSTREAM, full};
use crate::model::{Cluster, HeaderOps};
use crate::tcp::Carried;
use crate::upstream::HashInput;

/// Whether the request asks for an HTTP/1.1 protocol upgrade.
pub(super) fn requested<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Sends `outgoing` (with its upgrade headers) to one endpoint of `cluster`; once it answers
/// `101`, joins the upgraded `downstream` connection to the upstream one. `response_ops` are
/// the destination's response header operations.
pub(super) async fn forward(
    cx: &mut RequestContext<'_>,
    cluster: &Arc<Cluster>,
    outgoing: Outgoing,
    downstream: Request<Incoming>,
    response_ops: &HeaderOps,
) -> Result<Response<ProxyBody>, LocalReply> {
    let shared = cx.shared;
    let upstream = &shared.upstream;
    let source_ip = cx.tunnel.source_ip;
    cx.generate_cookie(cluster, &outgoing.headers);
    let hash = HashInput {
        session_endpoint: cx.session_endpoint,
        generated_cookie: cx.generated_cookie.as_ref().map(|c| c.value.as_str()),
        headers: &outgoing.headers,
        query: None,
        source_ip,
    };
    let endpoint = upstream.choose_endpoint(cluster, &hash, &[])?;
    cx.record_endpoint(endpoint);
    let mut upstream_response = upstream
        .send_upgrade(
            cluster,
            endpoint,
            outgoing.build(None, Full::new(Bytes::new())),
            &cx.tunnel.downstream,
        )
        .await?;
    cx.record.response_code_details = Cow::Borrowed(VIA_UPSTREAM);
    if upstream_response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let mut response = upstream_response.map(|b| b.map_err(BoxError::from).boxed());
        cx.set_generated_cookie(response.headers_mut());
        cx.update_session(response.headers_mut());
        response_ops.apply(response.headers_mut());
        return Ok(response);
    }
    let upstream_upgrade = hyper::upgrade::on(&mut upstream_response);
    let (mut parts, _) = upstream_response.into_parts();
    let downstream_upgrade = hyper::upgrade::on(downstream);
    // Registered from the `101` on: a configuration that no longer sends its destination
    // through this waypoint ends it (see `crate::tcp::Carried::Upgraded`).
    let registration = shared
        .tcp_connections
        .register(Carried::Upgraded, Arc::new(cx.tunnel.clone()));
    tokio::spawn(
        async move {
            let (Ok(up), Ok(down)) = (upstream_upgrade.await, downstream_upgrade.await) else {
                debug!("upgrade did not complete on both sides");
                return;
            };
            let mut up = hyper_util::rt::TokioIo::new(up);
            let mut down = registration.wrap(hyper_util::rt::TokioIo::new(down));
            if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                debug!(%error, "upgraded stream ended");
            }
        }
        .instrument(debug_span!("upgrade")),
    );
    cx.set_generated_cookie(&mut parts.headers);
    cx.update_session(&mut parts.headers);
    response_ops.apply(&mut parts.headers);
    Ok(Response::from_parts(parts, full(Bytes::new())))
}
