//! Envoy's stateful session (`source/extensions/filters/http/stateful_session`, with the
//! `cookie` and `header` session states): a request carries, base64-encoded, the address of
//! the endpoint its session is on; when that address is an endpoint of the cluster the request
//! is routed to, healthy and not ejected, the request goes there (Envoy's override host, which
//! it takes only from the cluster's own hosts); otherwise it is balanced as without a session.
//! The response carries the address of the endpoint chosen when it is not the one the request
//! carried (Envoy's `onUpdate`).
//!
//! The value is only ever looked up among the cluster's endpoints, so a forged one can steer a
//! request to no address the cluster does not already hold.

use std::net::SocketAddr;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderName, HeaderValue};

use super::cookie::request_cookie;
use super::{EndpointStates, Tried};
use crate::model::{Cluster, Endpoint, StatefulSession};

/// The endpoint address a request's session names, if its cookie or header holds a
/// base64-encoded `ip:port` (Envoy's `Base64::decode` of the value, then the address parsed).
pub fn session_endpoint(
    session: &StatefulSession,
    headers: &http::HeaderMap,
) -> Option<SocketAddr> {
    let value = match session {
        StatefulSession::Cookie { name, .. } => request_cookie(headers, name)?,
        StatefulSession::Header { name } => headers.get(name)?.to_str().ok()?,
    };
    let decoded = STANDARD.decode(value.trim()).ok()?;
    std::str::from_utf8(&decoded).ok()?.parse().ok()
}

/// The header a response carries so that the client's next requests name `chosen`: none when
/// the request already named it.
pub fn session_update(
    session: &StatefulSession,
    requested: Option<SocketAddr>,
    chosen: SocketAddr,
) -> Option<(HeaderName, HeaderValue)> {
    if requested == Some(chosen) {
        return None;
    }
    let encoded = STANDARD.encode(chosen.to_string());
    match session {
        StatefulSession::Cookie { name, template } => Some((
            http::header::SET_COOKIE,
            // Checked when the configuration was read, with a value of the same alphabet.
            HeaderValue::try_from(template.set_cookie(name, &encoded)).ok()?,
        )),
        StatefulSession::Header { name } => {
            Some((name.clone(), HeaderValue::try_from(encoded).ok()?))
        }
    }
}

/// The endpoint of `cluster` at `address`, when a request may be sent there: healthy, not
/// ejected, and not among the endpoints a retry avoids. Found through the plan's address index
/// ([`super::BalancingPlan::endpoint_at`], built once per configuration), so that the lookup
/// costs the same whatever the number of endpoints; a cluster of one endpoint (a workload's
/// own) is answered without building a plan.
pub(super) fn session_choice<'c>(
    states: &EndpointStates,
    cluster: &'c Cluster,
    address: SocketAddr,
    tried: &Tried<'_>,
    now: Instant,
) -> Option<&'c Endpoint> {
    let endpoint = match cluster.endpoints.as_slice() {
        [only] => only,
        endpoints => &endpoints[cluster.plan().endpoint_at(address)?],
    };
    #[cfg(test)]
    tests::LOOKED_AT.with(|n| n.set(n.get() + 1));
    if endpoint.address != address {
        return None;
    }
    let ejected = states.ejections_end.is_some_and(|end| end > now)
        && states
            .get(&address)
            .and_then(|s| s.ejected_until)
            .is_some_and(|until| until > now);
    (endpoint.healthy && !ejected && !tried.endpoints.contains(&address)).then_some(endpoint)
}

#[cfg(test)]
mod tests;
