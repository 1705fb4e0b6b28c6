//! The DNS proxy (ztunnel's `src/dns`): enrolled pods' DNS queries, captured by the eBPF
//! programs (UDP and TCP to port 53, to the agent's `127.0.0.1:15053` inside the pod), are
//! answered here for the mesh's hostnames and forwarded to the upstream resolver otherwise.
//!
//! Answered (authoritatively, TTL 30 s, as ztunnel): A and AAAA queries for the hostname of a
//! service with VIPs, a Kubernetes Service (`name.namespace.svc.<domain>`) or a ServiceEntry
//! host (its declared or allocated addresses; a wildcard host answers the names under it).
//! Names are tried as ztunnel tries them: as asked; expanded to a Kubernetes name from the
//! client's namespace (`name`, `name.namespace`, `name.namespace.svc`); and, for a name the
//! client's resolver completed with one of the pod's search domains (`<ns>.svc.<domain>`,
//! `svc.<domain>`, `<domain>`, Kubernetes' defaults, which ztunnel assumes as well), the name
//! without it, answered with a CNAME to that name. A service of the client's own namespace
//! wins over the same hostname elsewhere. A found name without addresses of the family asked
//! is answered with no record (NOERROR, not NXDOMAIN). Everything else (other types, unknown
//! names, anything not a plain query) goes upstream unchanged ([`server`]).
//!
//! [`reply`] is a pure function of the store and the query; [`server`] does the I/O.

pub mod metrics;
pub mod server;

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME},
    },
};

use crate::state::{Service, WorkloadStore};

/// The TTL of the answers for mesh names (ztunnel's `DEFAULT_TTL_SECONDS`).
pub const TTL_SECONDS: u32 = 30;
/// Kubernetes' default cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send this response to the client.
    Answer(Vec<u8>),
    /// Not a mesh name: ask the upstream resolver.
    Forward,
}

/// The reply to `packet`, a query from a pod of `namespace`, for a cluster of `domain`.
pub fn reply(store: &WorkloadStore, namespace: &str, domain: &str, packet: &[u8]) -> Reply {
    let Ok(query) = Message::from_vec(packet) else {
        return Reply::Forward;
    };
    let header = &query.metadata;
    if header.message_type != MessageType::Query
        || header.op_code != OpCode::Query
        || query.queries.len() != 1
    {
        return Reply::Forward;
    }
    let question = &query.queries[0];
    let record_type = question.query_type();
    if !matches!(record_type, RecordType::A | RecordType::AAAA)
        || question.query_class() != DNSClass::IN
    {
        return Reply::Forward;
    }
    let requested = normalized(question.name());
    let Some(found) = find(store, namespace, domain, &requested) else {
        return Reply::Forward;
    };
    let mut response = Message::response(header.id, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = header.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    if query.edns.is_some() {
        response.set_edns(Edns::new());
    }
    let mut owner = question.name().clone();
    if let Some(stripped) = &found.stripped
        && let Ok(target) = Name::from_ascii(format!("{stripped}."))
    {
        response.add_answer(Record::from_rdata(
            owner.clone(),
            TTL_SECONDS,
            RData::CNAME(CNAME(target.clone())),
        ));
        owner = target;
    }
    for vip in found.service.vips.iter().copied() {
        let rdata = match (vip, record_type) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
            _ => continue,
        };
        response.add_answer(Record::from_rdata(owner.clone(), TTL_SECONDS, rdata));
    }
    match response.to_vec() {
        Ok(bytes) => Reply::Answer(bytes),
        Err(_) => Reply::Forward,
    }
}

/// A SERVFAIL for `packet` (when the query cannot be served at all), if it has a header.
pub fn server_failure(packet: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    Message::error_msg(id, OpCode::Query, ResponseCode::ServFail)
        .to_vec()
        .ok()
}

/// The service a name resolves to, and the name without the search domain when that is how
/// it was found.
#[derive(Debug)]
struct Found {
    service: Arc<Service>,
    stripped: Option<String>,
}

fn normalized(name: &Name) -> String {
    let text = name.to_ascii().to_ascii_lowercase();
    match text.strip_suffix('.') {
        Some(relative) => relative.to_owned(),
        None => text,
    }
}

fn find(store: &WorkloadStore, namespace: &str, domain: &str, requested: &str) -> Option<Found> {
    for (alias, stripped) in aliases(requested, namespace, domain) {
        for (candidate, wildcard) in with_wildcards(&alias) {
            let mut services = store.services_by_hostname(&candidate);
            services.sort_by(|a, b| {
                (a.namespace != namespace, &a.namespace)
                    .cmp(&(b.namespace != namespace, &b.namespace))
            });
            if let Some(service) = services.into_iter().next() {
                return Some(Found {
                    service,
                    // A wildcard answers the name as asked.
                    stripped: stripped.filter(|_| !wildcard),
                });
            }
        }
    }
    None
}

/// The names `requested` may mean for a client of `namespace`, most literal first, each with
/// the name stripped of a search domain when it came from one (ztunnel's `get_aliases`).
fn aliases(requested: &str, namespace: &str, domain: &str) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    let mut add = |name: String, stripped: Option<String>| {
        if !out.iter().any(|(n, _)| *n == name) {
            out.push((name, stripped));
        }
    };
    add(requested.to_owned(), None);
    for fqdn in kubernetes_names(requested, namespace, domain) {
        add(fqdn, None);
    }
    let search = [
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_owned(),
    ];
    for suffix in search {
        let Some(stripped) = requested.strip_suffix(&format!(".{suffix}")) else {
            continue;
        };
        add(stripped.to_owned(), Some(stripped.to_owned()));
        for fqdn in kubernetes_names(stripped, namespace, domain) {
            add(fqdn, Some(stripped.to_owned()));
        }
    }
    out
}

/// A short Kubernetes Service name made whole: `name` (the client's namespace),
/// `name.namespace`, `name.namespace.svc`.
fn kubernetes_names(name: &str, namespace: &str, domain: &str) -> Vec<String> {
    match name.split('.').count() {
        1 => vec![format!("{name}.{namespace}.svc.{domain}")],
        2 => vec![format!("{name}.svc.{domain}")],
        3 if name.ends_with(".svc") => vec![format!("{name}.{domain}")],
        _ => Vec::new(),
    }
}

/// `name`, then the wildcards that cover it, most specific first (`a.b.c`, `*.b.c`, `*.c`),
/// each marked whether it is a wildcard.
fn with_wildcards(name: &str) -> Vec<(String, bool)> {
    let mut out = vec![(name.to_owned(), false)];
    let mut rest = name;
    while let Some((_, parent)) = rest.split_once('.') {
        out.push((format!("*.{parent}"), true));
        rest = parent;
    }
    out
}

#[cfg(test)]
mod tests;
