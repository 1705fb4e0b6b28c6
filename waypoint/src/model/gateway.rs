//! The gateway role's configuration: the ports a gateway proxy listens on at the edge, their
//! servers (chosen by SNI for TLS, the first otherwise) and, per server, the route tables
//! requests and connections are given: per Host for HTTP, per SNI for PASSTHROUGH, one for TCP.
//! Each route table is a [`Service`] without addresses, so that the waypoint's pipeline (routes,
//! retries, timeouts, faults, CORS, authorization, metrics) serves it unchanged.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use weft_proto::waypoint as proto;

use super::from_proto::{
    edge_limits, gateway_table, local_rate_limit, nonzero_port, source_workload_info,
};
use super::{ConfigError, Protocol, Service, ServicePort, ServiceTarget, Target, WorkloadInfo};
use crate::rate_limit::LocalRateLimit;

/// What a gateway proxy serves at the edge.
#[derive(Debug, Default)]
pub struct Gateway {
    pub listeners: Vec<EdgeListener>,
    /// The gateway proxy itself: the source of what it sends into the mesh.
    pub workload: Option<Arc<WorkloadInfo>>,
    /// Proxies in front of the gateway whose `x-forwarded-for` entries are trusted (Istio's
    /// `gatewayTopology.numTrustedProxies`).
    pub num_trusted_proxies: u32,
    /// The gateway proxy's namespace, as the records of its requests name their source's.
    pub namespace: Arc<str>,
}

/// One port and its servers.
#[derive(Debug)]
pub struct EdgeListener {
    pub port: u16,
    pub servers: Vec<Arc<EdgeServer>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeProtocol {
    Http,
    Https,
    Tls,
    Tcp,
}

/// `ServerTLSSettings.TLSmode`, as far as gateway proxies serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerTlsMode {
    Passthrough,
    Simple,
    Mutual,
    /// MUTUAL's CA verifies a client certificate when one is presented; none is required.
    OptionalMutual,
    /// The gateway's own mesh certificate; the client's must chain to the mesh's root.
    IstioMutual,
}

impl ServerTlsMode {
    /// Whether a CA from the server's credential verifies client certificates.
    pub fn verifies_with_credential_ca(self) -> bool {
        matches!(self, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
    }
}

/// TLS protocol versions (rustls speaks 1.2 and 1.3 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    Auto,
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    pub https_redirect: bool,
    pub credential_name: String,
    /// The SDS resource the controller serves the credential as (Kubernetes mode); empty
    /// when it serves none (local mode: the credentials directory).
    pub credential_resource: String,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    pub cipher_suites: Vec<String>,
    /// MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL: a client certificate must carry one of these SANs
    /// (exact, as Istio's `subjectAltNames` become Envoy's SAN matchers); empty: any the CA
    /// signed.
    pub subject_alt_names: Vec<String>,
    /// MUTUAL, OPTIONAL_MUTUAL: a client certificate must match one of these pins, from either
    /// list (Envoy's `verify_certificate_spki` and `verify_certificate_hash`); both empty: no
    /// pinning.
    pub verify_certificate_spki: Vec<String>,
    pub verify_certificate_hash: Vec<String>,
    /// `credentialNames` after the first (`credential_name`): further certificates, one of
    /// which is presented by the client's signature schemes.
    pub additional_credentials: Vec<NamedCredential>,
    /// Istio's file-mounted gateway: certificate files of the pod, when no credential is
    /// named.
    pub files: Option<TlsFiles>,
}

impl ServerTls {
    /// Whether the server's certificate comes from files of the pod rather than a credential.
    pub fn from_files(&self) -> bool {
        self.credential_name.is_empty() && self.files.is_some()
    }
}

/// A credential by name, as the Gateway names it, and the SDS resource it is served as
/// (empty in local mode).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedCredential {
    pub name: String,
    pub resource: String,
}

/// Certificate files mounted in the gateway's pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    /// One or two: a chain (leaf first) and its key.
    pub certificates: Vec<CertificateFiles>,
    /// The CA that verifies clients (MUTUAL, OPTIONAL_MUTUAL).
    pub ca_certificates: Option<String>,
    pub ca_crl: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificateFiles {
    pub certificate_chain: String,
    pub private_key: String,
}

/// A route table at the edge: routes as a service's, at the listener's port.
#[derive(Debug)]
pub struct EdgeTable {
    pub service: Service,
    pub port: ServicePort,
}

impl EdgeTable {
    fn target(&self) -> Target<'_> {
        Target::Service(ServiceTarget {
            service: &self.service,
            port: &self.port,
        })
    }
}

/// The routes of one VirtualService for some Host names.
#[derive(Debug)]
pub struct VirtualHost {
    /// Exact, `*.suffix` or `*`.
    pub domains: Vec<String>,
    pub table: EdgeTable,
}

/// A PASSTHROUGH route: SNI names, and where the connection goes.
#[derive(Debug)]
pub struct SniRoute {
    pub sni_hosts: Vec<String>,
    pub table: EdgeTable,
}

/// Envoy's largest `max_request_headers_kb`.
pub const MAX_REQUEST_HEADERS_KB: u32 = 8192;

/// A server's limits, from its Gateway's `weft.dev/edge-limits`: `None` keeps the proxy's
/// default (`crate::HttpLimits`, the retry buffer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Request head or header list, in bytes (Envoy's `max_request_headers_kb`).
    pub max_request_header_bytes: Option<usize>,
    pub request_headers_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub http2_max_concurrent_streams: Option<u32>,
    /// Request body kept for retries and mirrors.
    pub per_connection_buffer_limit_bytes: Option<usize>,
    /// Time for the whole request, head and body (Envoy's `request_timeout`).
    pub request_timeout: Option<Duration>,
    /// Largest request body (Envoy's buffer filter `max_request_bytes`).
    pub max_request_bytes: Option<u64>,
    /// Connections the server's port holds open at once (Envoy's `connection_limit` filter).
    pub max_connections: Option<u32>,
}

/// One server of an Istio Gateway.
#[derive(Debug)]
pub struct EdgeServer {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    pub name: String,
    pub protocol: EdgeProtocol,
    /// SNI names it answers (`*` any).
    pub hosts: Vec<String>,
    pub tls: Option<ServerTls>,
    pub virtual_hosts: Vec<VirtualHost>,
    /// `virtual_hosts` indexed for the request's Host ([`DomainIndex`]).
    pub domains: DomainIndex,
    pub sni_routes: Vec<SniRoute>,
    pub tcp: Option<EdgeTable>,
    pub limits: EdgeLimits,
    /// The token bucket(s) each new connection draws one token from; `None`: the gateway's
    /// default, per client address (`crate::gateway::DEFAULT_CONNECTION_RATE_LIMIT`).
    pub connection_rate_limit: Option<LocalRateLimit>,
}

/// The virtual hosts of a server by domain, as Envoy finds a virtual host: an exact domain in a
/// hash map (lowercase), then only the wildcard domains, best match first, so that the cost of
/// choosing one does not grow with the hosts a gateway serves by name.
#[derive(Debug, Default)]
pub struct DomainIndex {
    /// Exact domain (lowercase) -> the first virtual host naming it.
    exact: std::collections::HashMap<String, usize>,
    /// Every wildcard domain (`*.suffix`, `*`) and its virtual host, in their order.
    wildcards: Vec<(String, usize)>,
}

impl DomainIndex {
    pub fn new(virtual_hosts: &[VirtualHost]) -> Self {
        let mut index = Self::default();
        for (i, v) in virtual_hosts.iter().enumerate() {
            for domain in &v.domains {
                if domain.starts_with('*') {
                    index.wildcards.push((domain.clone(), i));
                } else {
                    index.exact.entry(domain.to_ascii_lowercase()).or_insert(i);
                }
            }
        }
        index
    }

    /// The index of the virtual host for `host` (without its port): the exact domain, else the
    /// longest wildcard suffix, else `*`; the first among equals, as [`best`] chooses.
    pub fn find(&self, host: &str) -> Option<usize> {
        let lowercase = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(host.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(host)
        };
        if let Some(&i) = self.exact.get(lowercase.as_ref()) {
            return Some(i);
        }
        best(
            self.wildcards
                .iter()
                .map(|(domain, i)| (std::slice::from_ref(domain), *i)),
            host,
        )
    }
}

impl EdgeServer {
    /// Whether connections are TLS the gateway terminates.
    pub fn terminates_tls(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.mode != ServerTlsMode::Passthrough)
            && matches!(self.protocol, EdgeProtocol::Https | EdgeProtocol::Tls)
    }

    /// Whether connections are TLS at all (terminated or passed through).
    pub fn is_tls(&self) -> bool {
        matches!(self.protocol, EdgeProtocol::Https | EdgeProtocol::Tls)
    }

    /// Whether what the connection carries (after TLS, if terminated) is HTTP.
    pub fn carries_http(&self) -> bool {
        matches!(self.protocol, EdgeProtocol::Http | EdgeProtocol::Https)
    }
}

/// How good a match a host pattern is for `host`: exact beats any wildcard, a longer suffix
/// beats a shorter one, as Envoy picks virtual hosts and server names.
pub fn host_match_rank(pattern: &str, host: &str) -> Option<usize> {
    if pattern == "*" {
        return Some(0);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return (host.len() > suffix.len()
            && host
                .get(host.len() - suffix.len()..)
                .is_some_and(|end| end.eq_ignore_ascii_case(suffix)))
        .then_some(suffix.len());
    }
    pattern.eq_ignore_ascii_case(host).then_some(usize::MAX)
}

/// The best-ranked of `items` for `host`, the first among equals.
fn best<'a, T>(items: impl Iterator<Item = (&'a [String], T)>, host: &str) -> Option<T> {
    let mut chosen: Option<(usize, T)> = None;
    for (patterns, item) in items {
        let Some(rank) = patterns
            .iter()
            .filter_map(|p| host_match_rank(p, host))
            .max()
        else {
            continue;
        };
        if chosen.as_ref().is_none_or(|(r, _)| rank > *r) {
            chosen = Some((rank, item));
        }
    }
    chosen.map(|(_, item)| item)
}

/// Where a connection accepted at the edge is bound, fixed while it is open: its listener's
/// port, the server chosen when it was accepted, and the SNI it asked for. The server itself is
/// configuration, found by name in the configuration each request reads; where it is, is
/// remembered with the gateway it was found in, so that the requests of a connection find it
/// without a search until a configuration brings another gateway.
#[derive(Debug)]
pub struct EdgeBinding {
    pub port: u16,
    pub server: String,
    pub sni: Option<String>,
    found: Mutex<Option<FoundServer>>,
}

/// Where a binding's server is in one gateway.
#[derive(Debug, Clone)]
struct FoundServer {
    /// Compared by address: the `Weak` keeps the allocation, so no later gateway can have
    /// this address while it is held.
    gateway: Weak<Gateway>,
    /// The listener's and the server's index; `None`: that gateway does not serve it.
    at: Option<(usize, usize)>,
}

impl Clone for EdgeBinding {
    fn clone(&self) -> Self {
        EdgeBinding {
            port: self.port,
            server: self.server.clone(),
            sni: self.sni.clone(),
            found: Mutex::new(lock(&self.found).clone()),
        }
    }
}

impl EdgeBinding {
    /// A connection at `port` bound to the server named `server`, found in `gateway` now.
    pub fn new(port: u16, server: &str, sni: Option<String>, gateway: &Arc<Gateway>) -> Self {
        let binding = EdgeBinding {
            port,
            server: server.to_owned(),
            sni,
            found: Mutex::new(None),
        };
        binding.server_in(gateway);
        binding
    }

    /// The connection's server in `gateway` (the configuration a request reads): found by
    /// name when `gateway` is not the one it was last found in, else where it was.
    pub fn server_in<'g>(&self, gateway: &'g Arc<Gateway>) -> Option<&'g EdgeServer> {
        let mut found = lock(&self.found);
        let at = match &*found {
            Some(f) if std::ptr::eq(f.gateway.as_ptr(), Arc::as_ptr(gateway)) => f.at,
            _ => {
                let at = gateway.position(self.port, &self.server);
                *found = Some(FoundServer {
                    gateway: Arc::downgrade(gateway),
                    at,
                });
                at
            }
        };
        drop(found);
        let (listener, server) = at?;
        gateway
            .listeners
            .get(listener)?
            .servers
            .get(server)
            .map(Arc::as_ref)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Gateway {
    pub fn listener(&self, port: u16) -> Option<&EdgeListener> {
        self.listeners.iter().find(|l| l.port == port)
    }

    /// Where the server named `name` of the listener at `port` is: the listener's index and
    /// the server's.
    fn position(&self, port: u16, name: &str) -> Option<(usize, usize)> {
        let listener = self.listeners.iter().position(|l| l.port == port)?;
        let server = self.listeners[listener]
            .servers
            .iter()
            .position(|s| s.name == name)?;
        Some((listener, server))
    }
}

impl EdgeServer {
    /// The route table for what a connection to this server carries: the virtual host for
    /// `host` (a request), else the SNI route for `sni` (PASSTHROUGH) or the TCP routes (a
    /// connection).
    pub fn target(&self, sni: Option<&str>, host: Option<&str>) -> Option<Target<'_>> {
        if let Some(host) = host {
            let host = strip_port(host);
            return self
                .domains
                .find(host)
                .and_then(|i| self.virtual_hosts.get(i))
                .map(|v| v.table.target());
        }
        if self
            .tls
            .as_ref()
            .is_some_and(|t| t.mode == ServerTlsMode::Passthrough)
        {
            return best(
                self.sni_routes.iter().map(|r| (r.sni_hosts.as_slice(), r)),
                sni?,
            )
            .map(|r| r.table.target());
        }
        self.tcp.as_ref().map(EdgeTable::target)
    }
}

impl EdgeListener {
    /// The server a TLS connection asking for `sni` is given: the best match of its hosts; a
    /// connection without SNI only by a server for `*`.
    pub fn server_for_sni(&self, sni: Option<&str>) -> Option<&Arc<EdgeServer>> {
        match sni {
            Some(sni) => best(self.servers.iter().map(|s| (s.hosts.as_slice(), s)), sni),
            None => self
                .servers
                .iter()
                .find(|s| s.hosts.iter().any(|h| h == "*")),
        }
    }
}

/// `host:port` without the port (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|_| host.find(']')) {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn version(value: i32, context: &str) -> Result<TlsVersion, ConfigError> {
    use proto::TlsProtocolVersion as V;
    Ok(
        match V::try_from(value).map_err(|_| super::invalid(context, "unknown TLS version"))? {
            V::TlsAuto => TlsVersion::Auto,
            V::Tlsv10 => TlsVersion::V1_0,
            V::Tlsv11 => TlsVersion::V1_1,
            V::Tlsv12 => TlsVersion::V1_2,
            V::Tlsv13 => TlsVersion::V1_3,
        },
    )
}

fn server_tls(tls: &proto::ServerTls, context: &str) -> Result<ServerTls, ConfigError> {
    use proto::ServerTlsMode as M;
    let mode = match M::try_from(tls.mode) {
        Ok(M::Passthrough) => ServerTlsMode::Passthrough,
        Ok(M::Simple) => ServerTlsMode::Simple,
        Ok(M::Mutual) => ServerTlsMode::Mutual,
        Ok(M::OptionalMutual) => ServerTlsMode::OptionalMutual,
        Ok(M::IstioMutual) => ServerTlsMode::IstioMutual,
        // An HTTP server's settings (httpsRedirect) have no mode.
        Ok(M::Unspecified) => ServerTlsMode::Simple,
        Err(_) => return Err(super::invalid(context, "unknown TLS mode")),
    };
    Ok(ServerTls {
        mode,
        https_redirect: tls.https_redirect,
        credential_name: tls.credential_name.clone(),
        credential_resource: tls.credential_resource.clone(),
        min_version: version(tls.min_protocol_version, context)?,
        max_version: version(tls.max_protocol_version, context)?,
        cipher_suites: tls.cipher_suites.clone(),
        subject_alt_names: tls.subject_alt_names.clone(),
        verify_certificate_spki: tls.verify_certificate_spki.clone(),
        verify_certificate_hash: tls.verify_certificate_hash.clone(),
        additional_credentials: tls
            .additional_credentials
            .iter()
            .map(|c| {
                if c.name.is_empty() {
                    return Err(super::invalid(
                        context,
                        "an additional credential has no name",
                    ));
                }
                Ok(NamedCredential {
                    name: c.name.clone(),
                    resource: c.resource.clone(),
                })
            })
            .collect::<Result<_, _>>()?,
        files: tls
            .files
            .as_ref()
            .map(|f| tls_files(f, context))
            .transpose()?,
    })
}

/// Istio's file-mounted certificates: one or two chains with their keys, each named by both.
fn tls_files(files: &proto::GatewayTlsFiles, context: &str) -> Result<TlsFiles, ConfigError> {
    if files.certificates.is_empty() || files.certificates.len() > 2 {
        return Err(super::invalid(
            context,
            "certificate files: one or two certificates",
        ));
    }
    let certificates = files
        .certificates
        .iter()
        .map(|c| {
            if c.certificate_chain.is_empty() || c.private_key.is_empty() {
                return Err(super::invalid(
                    context,
                    "certificate files: a certificate needs its chain and its key",
                ));
            }
            Ok(CertificateFiles {
                certificate_chain: c.certificate_chain.clone(),
                private_key: c.private_key.clone(),
            })
        })
        .collect::<Result<_, _>>()?;
    let path = |p: &str| (!p.is_empty()).then(|| p.to_owned());
    Ok(TlsFiles {
        certificates,
        ca_certificates: path(&files.ca_certificates),
        ca_crl: path(&files.ca_crl),
    })
}

fn server(s: &proto::GatewayServer, port: u16, namespace: &str) -> Result<EdgeServer, ConfigError> {
    use proto::GatewayProtocol as P;
    let context = format!("gateway {} server {}", s.gateway, s.name);
    let context = context.as_str();
    let protocol = match P::try_from(s.protocol) {
        Ok(P::Http) => EdgeProtocol::Http,
        Ok(P::Https) => EdgeProtocol::Https,
        Ok(P::Tls) => EdgeProtocol::Tls,
        Ok(P::Tcp) => EdgeProtocol::Tcp,
        _ => return Err(super::invalid(context, "unknown protocol")),
    };
    let tls = s.tls.as_ref().map(|t| server_tls(t, context)).transpose()?;
    if matches!(protocol, EdgeProtocol::Https | EdgeProtocol::Tls)
        && tls.as_ref().is_none_or(|t| {
            !matches!(
                t.mode,
                ServerTlsMode::Passthrough | ServerTlsMode::IstioMutual
            ) && t.credential_name.is_empty()
                && t.files.is_none()
        })
    {
        return Err(super::invalid(
            context,
            "a TLS server needs a credentialName or certificate files",
        ));
    }
    let table = |name: &str, http: &[proto::HttpRoute], tcp: &[proto::TcpRoute]| {
        gateway_table(name, namespace, port, http, tcp, context)
            .map(|(service, port)| EdgeTable { service, port })
    };
    let virtual_hosts = s
        .virtual_hosts
        .iter()
        .map(|v| {
            Ok(VirtualHost {
                domains: v.domains.clone(),
                table: table(
                    v.domains.first().map_or("*", String::as_str),
                    &v.http_routes,
                    &[],
                )?,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let sni_routes = s
        .tls_routes
        .iter()
        .map(|r| {
            let tcp = [proto::TcpRoute {
                r#match: Vec::new(),
                route: r.route.clone(),
                virtual_service: r.virtual_service.clone(),
            }];
            Ok(SniRoute {
                sni_hosts: r.sni_hosts.clone(),
                table: table(r.sni_hosts.first().map_or("*", String::as_str), &[], &tcp)?,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let tcp = (!s.tcp_routes.is_empty())
        .then(|| table(&s.name, &[], &s.tcp_routes))
        .transpose()?;
    Ok(EdgeServer {
        gateway: s.gateway.clone(),
        name: s.name.clone(),
        protocol,
        hosts: s.hosts.clone(),
        tls,
        domains: DomainIndex::new(&virtual_hosts),
        virtual_hosts,
        sni_routes,
        tcp,
        limits: s
            .limits
            .as_ref()
            .map(|l| edge_limits(l, context))
            .transpose()?
            .unwrap_or_default(),
        connection_rate_limit: s
            .connection_rate_limit
            .as_ref()
            .map(|l| local_rate_limit(l, context))
            .transpose()?,
    })
}

/// Converts the gateway section; `namespace` is the gateway proxy's.
pub(crate) fn gateway(g: &proto::GatewayConfig, namespace: &str) -> Result<Gateway, ConfigError> {
    let listeners = g
        .listeners
        .iter()
        .map(|l| {
            let context = format!("gateway listener {}", l.port);
            let port = nonzero_port(l.port, &context)?
                .ok_or_else(|| super::invalid(&context, "port 0"))?;
            let servers = l
                .servers
                .iter()
                .map(|s| server(s, port, namespace).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(EdgeListener { port, servers })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let workload = g
        .workload
        .as_ref()
        .map(|w| source_workload_info(w, "gateway workload"))
        .transpose()?;
    Ok(Gateway {
        listeners,
        workload,
        num_trusted_proxies: g.num_trusted_proxies,
        namespace: Arc::from(namespace),
    })
}

/// The protocol route tables at the edge are served as.
pub(super) fn table_protocol(http: bool) -> Protocol {
    if http { Protocol::Http } else { Protocol::Tcp }
}

#[cfg(test)]
mod tests;
