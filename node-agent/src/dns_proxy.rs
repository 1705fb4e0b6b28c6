//! The DNS proxy (ztunnel's `src/dns`): enrolled pods' DNS queries, captured by the eBPF
//! programs (UDP and TCP to port 53, to the agent's `127.0.0.1:15053` inside the pod), are
//! answered here for the mesh's hostnames and forwarded to the upstream resolver otherwise.
//!
//! Answered (authoritatively, TTL 30 s, as ztunnel): A and AAAA queries for the hostname of a
//! service with VIPs, a Kubernetes Service (`name.namespace.svc.<domain>`) or a ServiceEntry
//! host (its declared or allocated addresses; a wildcard host answers the names under it); a
//! Kubernetes headless service's name (its pods' addresses, one per pod of the family asked);
//! and a pod of a headless service by its hostname (`<pod-hostname>.<service>.<ns>.svc.<domain>`
//! and its short forms, the pod's `spec.hostname` carried as the workload's hostname).
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

use crate::state::{Service, Workload, WorkloadStore};

/// The TTL of the answers for mesh names (ztunnel's `DEFAULT_TTL_SECONDS`).
pub const TTL_SECONDS: u32 = 30;
/// Kubernetes' default cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send this response to the client.
    Answer(Vec<u8>),
    /// This response, found by a wildcard host covering the name asked (not by the name
    /// itself): an on-demand agent holds only what it fetched, so the controller may hold a
    /// more specific wildcard host for the name, which Istio answers with
    /// ([`server`] asks it once per name before answering).
    Wildcard(Vec<u8>),
    /// Not a mesh name: ask the upstream resolver.
    Forward,
}

/// The reply to `packet`, a query from a pod of `namespace`, for a cluster of `domain`.
pub fn reply(store: &WorkloadStore, namespace: &str, domain: &str, packet: &[u8]) -> Reply {
    let Some(query) = address_query(packet) else {
        return Reply::Forward;
    };
    let header = &query.metadata;
    let question = &query.queries[0];
    let record_type = question.query_type();
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
    for address in found.addresses(store, record_type) {
        let rdata = match address {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        response.add_answer(Record::from_rdata(owner.clone(), TTL_SECONDS, rdata));
    }
    match response.to_vec() {
        Ok(bytes) if found.wildcard => Reply::Wildcard(bytes),
        Ok(bytes) => Reply::Answer(bytes),
        Err(_) => Reply::Forward,
    }
}

/// The query in `packet` if it is what the proxy answers: one plain A or AAAA question of
/// class IN (anything else goes upstream unchanged).
fn address_query(packet: &[u8]) -> Option<Message> {
    let query = Message::from_vec(packet).ok()?;
    let header = &query.metadata;
    if header.message_type != MessageType::Query
        || header.op_code != OpCode::Query
        || query.queries.len() != 1
    {
        return None;
    }
    let question = &query.queries[0];
    (matches!(question.query_type(), RecordType::A | RecordType::AAAA)
        && question.query_class() == DNSClass::IN)
        .then_some(query)
}

/// Names asked for on demand per query, at most.
const MAX_DEMAND_NAMES: usize = 4;

/// What an on-demand agent asks the controller for to answer `packet` from a pod of
/// `namespace` when the store holds none of the names it may mean: the name as asked and,
/// for a partial Kubernetes name, its completions to a service from the client's namespace
/// (as [`reply`] tries them; the forms a resolver made with the wrong search domain, and
/// partial names of headless pods, are not asked for: the resolver asks the full name
/// next). Each goes by `host:<hostname>` ([`demand_name`]): a Kubernetes name
/// (`name.ns.svc.<domain>`; a headless service's pod `pod.name.ns.svc.<domain>`, by its
/// service), and another name with a dot (a ServiceEntry host, whose namespace the query
/// does not tell); names under the cluster domain in no Kubernetes form, and single labels,
/// are not asked for. At most [`MAX_DEMAND_NAMES`]; none for a query [`reply`] forwards
/// unread. The wildcard hosts that may cover a name are not asked for one by one: the
/// controller answers a `host:` name nothing goes by with the most specific wildcard
/// ServiceEntry host covering it (as Istio's DNS proxy looks up `*.<parent>` for each parent
/// of a name it does not hold, `pkg/dns/client/dns.go` `lookupHost`), so one name costs one
/// request whatever its depth.
pub fn demand_names(packet: &[u8], namespace: &str, domain: &str) -> Vec<String> {
    let Some(query) = address_query(packet) else {
        return Vec::new();
    };
    let requested = normalized(query.queries[0].name());
    let candidates = std::iter::once(requested.clone()).chain(
        kubernetes_names(&requested, namespace, domain)
            .into_iter()
            .filter(|(_, pod)| !pod)
            .map(|(name, _)| name),
    );
    let mut names: Vec<String> = Vec::new();
    for name in candidates.filter_map(|name| demand_name(&name, domain)) {
        if !names.contains(&name) && names.len() < MAX_DEMAND_NAMES {
            names.push(name);
        }
    }
    names
}

/// The name the controller knows what `name` means by, if it may mean a service: its
/// hostname (`host:`), which covers the Kubernetes Service of that name and any
/// ServiceEntry declaring it as a host, whatever the ServiceEntry's namespace (a host
/// `foo.b.svc.<domain>` may be declared in namespace `a`, which istiod's
/// `namespace/hostname` key would miss).
fn demand_name(name: &str, domain: &str) -> Option<String> {
    let kubernetes = format!(".svc.{domain}");
    if let Some(rest) = name.strip_suffix(&kubernetes) {
        return match rest.split('.').collect::<Vec<_>>().as_slice() {
            [_, _] => Some(weft_proto::hostname_subscription(name)),
            [_, service, service_namespace] => Some(weft_proto::hostname_subscription(&format!(
                "{service}.{service_namespace}{kubernetes}"
            ))),
            _ => None,
        };
    }
    (name.contains('.') && !under_domain(name, domain))
        .then(|| weft_proto::hostname_subscription(name))
}

fn under_domain(name: &str, domain: &str) -> bool {
    name == domain || name.ends_with(&format!(".{domain}"))
}

/// A SERVFAIL for `packet` (when the query cannot be served at all), if it has a header.
pub fn server_failure(packet: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    Message::error_msg(id, OpCode::Query, ResponseCode::ServFail)
        .to_vec()
        .ok()
}

/// What a name resolves to, and the name without the search domain when that is how it was
/// found.
#[derive(Debug)]
struct Found {
    target: Target,
    stripped: Option<String>,
    /// Found by a wildcard host covering the name.
    wildcard: bool,
}

/// A service (its VIPs; a headless one, its endpoints' addresses) or one pod of a headless
/// service (its own addresses), as ztunnel's `Address::Service` and `Address::Workload`.
#[derive(Debug)]
enum Target {
    Service(Arc<Service>),
    Pod(Arc<Workload>),
}

impl Found {
    /// The addresses answering a query of `record_type` (A or AAAA).
    fn addresses(&self, store: &WorkloadStore, record_type: RecordType) -> Vec<IpAddr> {
        let of_type = |ip: &IpAddr| match ip {
            IpAddr::V4(_) => record_type == RecordType::A,
            IpAddr::V6(_) => record_type == RecordType::AAAA,
        };
        match &self.target {
            Target::Service(service) if service.vips.is_empty() => store
                .endpoints(&service.key())
                .iter()
                .filter_map(|w| w.addresses.iter().copied().find(of_type))
                .collect(),
            Target::Service(service) => service.vips.iter().copied().filter(of_type).collect(),
            Target::Pod(workload) => workload.addresses.iter().copied().filter(of_type).collect(),
        }
    }
}

fn normalized(name: &Name) -> String {
    let text = name.to_ascii().to_ascii_lowercase();
    match text.strip_suffix('.') {
        Some(relative) => relative.to_owned(),
        None => text,
    }
}

fn find(store: &WorkloadStore, namespace: &str, domain: &str, requested: &str) -> Option<Found> {
    let headless_suffix = format!(".svc.{domain}");
    // Services with VIPs, and Kubernetes headless services (ztunnel's filter): another
    // service without addresses is left to the upstream resolver.
    let answerable = |service: &Arc<Service>| {
        !service.vips.is_empty() || service.hostname.ends_with(&headless_suffix)
    };
    for alias in aliases(requested, namespace, domain) {
        for (candidate, wildcard) in with_wildcards(&alias.name) {
            let mut services = store.services_by_hostname(&candidate);
            services.retain(answerable);
            if let Some(service) = own_namespace_first(services, namespace, |s| &s.namespace) {
                return Some(Found {
                    target: Target::Service(service),
                    // A wildcard answers the name as asked.
                    stripped: alias.stripped.filter(|_| !wildcard),
                    wildcard,
                });
            }
        }
        if alias.pod_host
            && let Some(pod) = headless_pod(store, &alias.name, &headless_suffix, namespace)
        {
            return Some(Found {
                target: Target::Pod(pod),
                stripped: alias.stripped,
                wildcard: false,
            });
        }
    }
    None
}

/// The pod `<pod-hostname>.<service hostname>` names: a workload backing a Kubernetes
/// headless service of that hostname whose own hostname (the pod's `spec.hostname`) is the
/// first label, preferring the client's namespace (ztunnel's headless pod match).
fn headless_pod(
    store: &WorkloadStore,
    name: &str,
    headless_suffix: &str,
    namespace: &str,
) -> Option<Arc<Workload>> {
    let (pod_hostname, service_hostname) = name.split_once('.')?;
    let pods = store
        .services_by_hostname(service_hostname)
        .into_iter()
        .filter(|s| s.vips.is_empty() && s.hostname.ends_with(headless_suffix))
        .flat_map(|s| store.endpoints(&s.key()))
        .filter(|w| w.hostname.eq_ignore_ascii_case(pod_hostname))
        .collect();
    own_namespace_first(pods, namespace, |w| &w.namespace)
}

/// The first of `items` in `namespace`, else the first of the namespace that sorts first.
fn own_namespace_first<T>(
    mut items: Vec<Arc<T>>,
    namespace: &str,
    namespace_of: impl Fn(&T) -> &String,
) -> Option<Arc<T>> {
    items.sort_by(|a, b| {
        let (a, b) = (namespace_of(a), namespace_of(b));
        (a != namespace, a).cmp(&(b != namespace, b))
    });
    items.into_iter().next()
}

/// One name a requested name may mean (ztunnel's `Alias`).
#[derive(Debug)]
struct Alias {
    name: String,
    /// The requested name without the search domain it was completed with, if it was.
    stripped: Option<String>,
    /// Whether it may name a pod of a headless service (`<pod>.<service>.<ns>.svc.<domain>`).
    pod_host: bool,
}

/// The names `requested` may mean for a client of `namespace`, most literal first, each with
/// the name stripped of a search domain when it came from one (ztunnel's `get_aliases`).
fn aliases(requested: &str, namespace: &str, domain: &str) -> Vec<Alias> {
    let mut out: Vec<Alias> = Vec::new();
    let mut add = |name: String, stripped: Option<String>, pod_host: bool| {
        if !out.iter().any(|alias| alias.name == name) {
            out.push(Alias {
                name,
                stripped,
                pod_host,
            });
        }
    };
    // A fully qualified pod name has six labels (`pod.service.ns.svc.cluster.local`).
    let pod_host = requested.split('.').count() == 6;
    add(requested.to_owned(), None, pod_host);
    for (fqdn, pod) in kubernetes_names(requested, namespace, domain) {
        add(fqdn, None, pod);
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
        add(stripped.to_owned(), Some(stripped.to_owned()), pod_host);
        for (fqdn, pod) in kubernetes_names(stripped, namespace, domain) {
            add(fqdn, Some(stripped.to_owned()), pod);
        }
    }
    out
}

/// A partial Kubernetes name made whole, each marked whether it names a headless service's
/// pod: `name` (a service of the client's namespace); `name.namespace` (a service) or
/// `pod.service` (a pod of the client's namespace); `name.namespace.svc` (a service) or
/// `pod.service.namespace` (a pod); `pod.service.namespace.svc` (a pod).
fn kubernetes_names(name: &str, namespace: &str, domain: &str) -> Vec<(String, bool)> {
    let svc = name.ends_with(".svc");
    match name.split('.').count() {
        1 => vec![(format!("{name}.{namespace}.svc.{domain}"), false)],
        2 => vec![
            (format!("{name}.svc.{domain}"), false),
            (format!("{name}.{namespace}.svc.{domain}"), true),
        ],
        3 if svc => vec![
            (format!("{name}.{domain}"), false),
            (format!("{name}.svc.{domain}"), true),
        ],
        3 => vec![(format!("{name}.svc.{domain}"), true)],
        4 if svc => vec![(format!("{name}.{domain}"), true)],
        _ => Vec::new(),
    }
}

/// `name`, then the wildcards that cover it, most specific first (`a.b.c`, `*.b.c`, `*.c`),
/// each marked whether it is a wildcard.
pub(crate) fn with_wildcards(name: &str) -> Vec<(String, bool)> {
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
