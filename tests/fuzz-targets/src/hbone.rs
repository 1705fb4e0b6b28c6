//! The HBONE server's reading of a CONNECT request, which the node agent's inbound side and the
//! waypoint take from peers before any policy, and the per-source admission they apply.

use std::net::{IpAddr, Ipv4Addr};

use weft_hbone::admission::{ConnectionBudget, Permit, SourceLimit};
use weft_hbone::parse_connect_request;

/// Input: `METHOD\nAUTHORITY\nname: value\n...`, then optionally `\0` and admission steps (one
/// byte each: the low bit opens or closes, the rest picks one of eight sources).
pub fn connect(input: &[u8]) {
    let (request, steps) = crate::split_once(input, b"\0");
    read_request(request);
    admission(steps);
}

fn read_request(request: &[u8]) {
    let mut lines = request.split(|b| *b == b'\n');
    let method = lines.next().unwrap_or_default();
    let authority = lines.next().unwrap_or_default();
    let uri = http::Uri::from_maybe_shared(bytes::Bytes::copy_from_slice(authority));
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri.unwrap_or_default());
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        builder = builder.header(&line[..colon], line[colon + 1..].trim_ascii());
    }
    // What the HTTP/2 codec refuses never reaches the server.
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let method = parts.method.clone();
    match parse_connect_request(parts) {
        Ok(connect) => {
            assert_eq!(method, http::Method::CONNECT);
            assert_ne!(connect.authority.port(), 0);
            assert!(!connect.authority.ip().is_unspecified());
        }
        Err(malformed) => assert!(malformed.status().is_client_error()),
    }
}

fn admission(steps: &[u8]) {
    const PER_SOURCE: usize = 3;
    const TOTAL: usize = 10;
    let budget = ConnectionBudget::new(TOTAL);
    let limit = SourceLimit::new(PER_SOURCE, budget.clone());
    let source = |step: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, (step >> 1) % 8));
    let mut held: Vec<(IpAddr, Permit)> = Vec::new();
    for step in steps {
        if step & 1 == 0 {
            if let Ok(permit) = limit.admit(source(*step)) {
                held.push((source(*step), permit));
            }
        } else if let Some(at) = held.iter().position(|(ip, _)| *ip == source(*step)) {
            held.swap_remove(at);
        }
        assert_eq!(budget.open(), held.len());
        assert!(budget.open() <= TOTAL);
        for ip in (0..8).map(|n| IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))) {
            let count = held.iter().filter(|(h, _)| *h == ip).count();
            assert!(count <= PER_SOURCE);
            assert_eq!(limit.held_by(ip), count, "{ip}");
        }
    }
    held.clear();
    assert_eq!(budget.open(), 0, "a permit leaked");
}
