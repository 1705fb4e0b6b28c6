//! The cookie a consistent hash keys on (Istio's `consistentHash.httpCookie`), read from the
//! request as Envoy's `Utility::parseCookieValue` reads it, and generated for a request without
//! it as Envoy's router generates it (`Filter::addDownstreamSetCookie`,
//! source/common/router/router.h): the value is the hex of the xxHash64 of the downstream
//! connection's remote and local addresses, so that the requests of one connection get one
//! cookie; the request is hashed on that value, and its response carries the `Set-Cookie`
//! that makes the client's next requests carry it.

use std::net::SocketAddr;

use http::HeaderValue;

use super::plan::hash64;
use crate::model::{Cluster, HashCookie, HashKey, LoadBalancer};

/// The value of cookie `name` in the request's `Cookie` headers, as Envoy's `parseCookie`
/// finds it: the first pair of that name across the headers, split on `;`, the name read from
/// the pair's first non-space character to its `=`, and a value in double quotes unquoted.
/// May be empty (a consistent hash then has no key).
pub fn request_cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim_start_matches(' ').split_once('=')?;
            (key == name).then(|| {
                value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value)
            })
        })
}

/// A cookie generated for a request: its value, which the request is hashed on, and the
/// `Set-Cookie` its response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedCookie {
    pub value: String,
    pub set_cookie: HeaderValue,
}

/// The cookie `cluster`'s consistent hash generates for a request with `headers` on a
/// connection from `remote` to `local`: only for a cookie key with a `ttl` (Envoy's
/// `CookieHashMethod` calls its cookie callback when the cookie's value is empty and the ttl
/// set) and a cluster whose endpoints are chosen by hash (not a `DYNAMIC_DNS` one, whose
/// endpoint is the request's host).
pub fn generate_cookie(
    cluster: &Cluster,
    headers: &http::HeaderMap,
    remote: SocketAddr,
    local: SocketAddr,
) -> Option<GeneratedCookie> {
    let LoadBalancer::ConsistentHash(HashKey::Cookie(cookie), _) = &cluster.load_balancer else {
        return None;
    };
    if cluster.dynamic_dns || request_cookie(headers, &cookie.name).is_some_and(|v| !v.is_empty()) {
        return None;
    }
    generated(cookie, remote, local)
}

/// Envoy's `addDownstreamSetCookie`: `Hex::uint64ToHex(xxHash64(remote + local))`, both
/// addresses as `asString` writes them (`ip:port`, IPv6 in brackets), and its `Set-Cookie`.
fn generated(
    cookie: &HashCookie,
    remote: SocketAddr,
    local: SocketAddr,
) -> Option<GeneratedCookie> {
    let template = cookie.generated.as_ref()?;
    let value = format!("{:016x}", hash64(0, format!("{remote}{local}").as_bytes()));
    // Checked when the configuration was read, with a value of the same form.
    let set_cookie = HeaderValue::try_from(template.set_cookie(&cookie.name, &value)).ok()?;
    Some(GeneratedCookie { value, set_cookie })
}

#[cfg(test)]
pub(super) mod tests;
