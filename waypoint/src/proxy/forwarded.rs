//! The client's address at the edge, as Envoy finds it for Istio's gateways
//! (`use_remote_address: true`, `xff_num_trusted_hops` = `numTrustedProxies`): with no trusted
//! proxy in front, the connection's peer, whatever `x-forwarded-for` claims; with `n`, the
//! `n`-th entry of the `x-forwarded-for` received, counted from the right (the address the
//! first trusted proxy saw), or the peer when there are fewer entries or that one is not an
//! address. The gateway then appends the peer to `x-forwarded-for` and sets
//! `x-envoy-external-address` to the trusted client address.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// The trusted client address of a request from `peer` behind `trusted_proxies` proxies.
pub(super) fn trusted_client(headers: &HeaderMap, peer: IpAddr, trusted_proxies: u32) -> IpAddr {
    if trusted_proxies == 0 {
        return peer;
    }
    let skip = (trusted_proxies - 1) as usize;
    // Several header lines are one list, in order.
    let mut entries = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|line| line.as_bytes().rsplit(|b| *b == b','));
    entries
        .nth(skip)
        .and_then(|entry| std::str::from_utf8(entry).ok())
        .and_then(|entry| entry.trim().parse().ok())
        .unwrap_or(peer)
}

/// `x-envoy-external-address` set to the trusted client address, whatever the client sent.
pub(super) fn set_external_address(headers: &mut HeaderMap, client: IpAddr) {
    if let Some(value) = address_value(client) {
        headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), value);
    }
}

/// An address as a header value, written without a string in between.
pub(super) fn address_value(address: IpAddr) -> Option<HeaderValue> {
    use std::io::Write as _;
    // The longest address text (IPv6 with an IPv4 tail) is 45 bytes.
    let mut text = AddressText {
        bytes: [0; 48],
        length: 0,
    };
    let mut cursor = std::io::Cursor::new(&mut text.bytes[..]);
    write!(cursor, "{address}").ok()?;
    text.length = usize::try_from(cursor.position()).ok()?;
    shared_value(text)
}

struct AddressText {
    bytes: [u8; 48],
    length: usize,
}

impl AsRef<[u8]> for AddressText {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.length]
    }
}

/// A header value over bytes of its own that copies of the request's headers (one for each
/// attempt a retry may follow) share: a value made from a `Vec` would allocate again on its
/// first clone.
pub(super) fn shared_value<T: AsRef<[u8]> + Send + 'static>(bytes: T) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from_owner(bytes)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(&X_FORWARDED_FOR, line.parse().unwrap());
        }
        headers
    }

    /// Envoy's `x-forwarded-for` examples (edge proxy, `use_remote_address: true`).
    #[test]
    fn the_trusted_client_is_counted_from_the_right() {
        let peer: IpAddr = "192.0.2.5".parse().unwrap();
        let xff = ["203.0.113.128, 203.0.113.10, 192.0.2.1"];
        let cases: [(&[&str], u32, &str); 9] = [
            // No trusted proxy: what the client claims is not believed.
            (&xff, 0, "192.0.2.5"),
            (&[], 0, "192.0.2.5"),
            (&xff, 1, "192.0.2.1"),
            (&xff, 2, "203.0.113.10"),
            (&xff, 3, "203.0.113.128"),
            // Fewer entries than trusted proxies: the peer.
            (&xff, 4, "192.0.2.5"),
            (&[], 1, "192.0.2.5"),
            // Several lines are one list; an entry that is no address falls back to the peer.
            (
                &["203.0.113.128", "198.51.100.7 , 192.0.2.1"],
                2,
                "198.51.100.7",
            ),
            (&["203.0.113.128, unknown"], 1, "192.0.2.5"),
        ];
        for (lines, trusted, expected) in cases {
            assert_eq!(
                trusted_client(&headers(lines), peer, trusted).to_string(),
                expected,
                "{lines:?} with {trusted} trusted"
            );
        }
    }

    #[test]
    fn the_external_address_replaces_the_clients() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_ENVOY_EXTERNAL_ADDRESS, "10.0.0.1".parse().unwrap());
        set_external_address(&mut headers, "2001:db8::1".parse().unwrap());
        assert_eq!(headers[&X_ENVOY_EXTERNAL_ADDRESS], "2001:db8::1");
        assert_eq!(headers.get_all(&X_ENVOY_EXTERNAL_ADDRESS).iter().count(), 1);
    }
}
