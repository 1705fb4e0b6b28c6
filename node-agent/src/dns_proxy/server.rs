//! The DNS proxy's sockets, one set per served pod, inside the pod's namespace: UDP and TCP on
//! `127.0.0.1:15053` and `[::1]:15053`, where the capture sends the pod's port-53 traffic. Queries for mesh
//! names are answered at once ([`super::reply`]); the others are forwarded, unchanged, to the
//! upstream resolver (the `nameserver`s of the agent's resolver configuration, as ztunnel's
//! forwarder takes its own `/etc/resolv.conf`) from the pod's namespace with the agent's mark,
//! so the upstream sees the pod's address as before and the capture lets it pass; the
//! upstream's answer is relayed byte for byte.
//!
//! A pod holds nothing beyond these bounds: [`QUERIES_PER_SECOND`] (excess queries are
//! dropped, as a lossy network would), [`MAX_MESSAGE`] bytes per query (longer ones are
//! dropped, a TCP connection sending one is closed), [`MAX_FORWARDS`] forwards in flight (a
//! query beyond gets SERVFAIL), each within [`FORWARD_TIMEOUT`] per nameserver, and
//! [`MAX_TCP_CONNECTIONS`] TCP connections, each closed after [`TCP_IDLE`] without a query.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinHandle,
    time::{Instant, timeout},
};
use tracing::Instrument;
use weft_ebpf_common::{AGENT_SOCKET_MARK, ports::DNS};
use weft_hbone::SocketFactory;

use super::{
    Reply, demand_names,
    metrics::{DnsLabels, Protocol},
    reply, server_failure,
};
use crate::{metrics::Metrics, netns::PodNetns, proxy::ServedPod, state::WorkloadStore};

/// Queries a pod may send per second (and in one burst).
pub const QUERIES_PER_SECOND: u32 = 2048;
/// The largest query served: EDNS' recommended UDP size (a query, one question and an OPT
/// record, is far smaller), so each pod's receive buffer stays small.
pub const MAX_MESSAGE: usize = 1232;
/// The largest answer relayed from upstream over UDP (EDNS' usual upper size).
const MAX_UPSTREAM_DATAGRAM: usize = 4096;
/// The largest answer relayed from upstream over TCP.
const MAX_UPSTREAM_MESSAGE: usize = 65535;
/// Forwards in flight per pod.
pub const MAX_FORWARDS: usize = 64;
/// How long one nameserver has to answer a forwarded query.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// TCP connections per pod.
pub const MAX_TCP_CONNECTIONS: usize = 16;
/// How long a TCP connection may stay without a complete query (ztunnel's TCP request timeout).
pub const TCP_IDLE: Duration = Duration::from_secs(5);
/// Nameservers tried at most, as glibc's `MAXNS`.
const MAX_NAMESERVERS: usize = 3;

/// What every pod's DNS proxy shares: the store, the cluster domain, and where to forward.
#[derive(Debug)]
pub struct DnsSettings {
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// The resolver configuration whose `nameserver`s receive forwarded queries.
    pub resolv_conf: PathBuf,
    /// Read on the first forward (most agents answer from the store alone for a long time).
    upstreams: OnceLock<Vec<SocketAddr>>,
}

impl DnsSettings {
    pub fn new(cluster_domain: String, resolv_conf: PathBuf) -> Self {
        Self {
            cluster_domain,
            resolv_conf,
            upstreams: OnceLock::new(),
        }
    }

    fn upstreams(&self) -> &[SocketAddr] {
        self.upstreams.get_or_init(|| {
            let text = std::fs::read_to_string(&self.resolv_conf).unwrap_or_else(|error| {
                tracing::warn!(path = %self.resolv_conf.display(), %error, "no upstream resolver: queries for names outside the mesh fail");
                String::new()
            });
            nameservers(&text)
        })
    }
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self::new(
            super::DEFAULT_CLUSTER_DOMAIN.to_owned(),
            "/etc/resolv.conf".into(),
        )
    }
}

/// The `nameserver` addresses of a resolv.conf, on port 53, at most three.
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let address = words.next()?;
            // A link-local IPv6 address may carry its interface (`fe80::1%eth0`): not kept.
            Some(SocketAddr::new(address.parse().ok()?, 53))
        })
        .take(MAX_NAMESERVERS)
        .collect()
}

/// One pod's DNS proxy: stops when dropped.
pub struct PodDns {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for PodDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What a pod's serving tasks share.
struct PodContext {
    store: WorkloadStore,
    settings: Arc<DnsSettings>,
    metrics: Arc<Metrics>,
    uid: String,
    /// Where forwarded queries leave from.
    netns: PodNetns,
    forwards: Arc<Semaphore>,
    limiter: std::sync::Mutex<RateLimiter>,
}

impl PodContext {
    /// The pod's namespace, if the store knows the pod yet.
    fn namespace(&self) -> Option<String> {
        Some(self.store.workload_by_uid(&self.uid)?.namespace.clone())
    }

    /// Counts `query` as received over `protocol`; its labels, for the forward's counts.
    fn count(&self, query: &[u8], protocol: Protocol) -> DnsLabels {
        let source = self.store.workload_by_uid(&self.uid);
        let labels = DnsLabels::of(query, protocol, source.as_deref());
        self.metrics.dns().request(&labels);
        labels
    }

    fn admit(&self) -> bool {
        self.limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(Instant::now())
    }

    /// The local reply to `packet`, `None` to forward it (or, in on-demand mode, to ask the
    /// controller first: [`Self::reply_on_demand`]).
    fn local_reply(&self, packet: &[u8]) -> Option<Vec<u8>> {
        self.stored_reply(packet, true)
    }

    /// The reply to `packet` from the store. With `ask_first`, in on-demand mode, an answer
    /// found only by a wildcard host covering the name is held back (`None`) while a name
    /// of the query was never asked of the controller: the controller may hold a more
    /// specific wildcard host for it (Istio answers with the most specific), and answers
    /// each name once (kept subscribed, the answer then stands for every later query).
    fn stored_reply(&self, packet: &[u8], ask_first: bool) -> Option<Vec<u8>> {
        // A pod the store does not know yet has no namespace to search: SERVFAIL, as ztunnel
        // answers an unknown source.
        let Some(namespace) = self.namespace() else {
            return server_failure(packet);
        };
        let domain = &self.settings.cluster_domain;
        let (answer, wildcard) = match reply(&self.store, &namespace, domain, packet) {
            Reply::Answer(answer) => (answer, false),
            Reply::Wildcard(answer) => (answer, true),
            Reply::Forward => return None,
        };
        // An answer from names fetched on demand keeps them subscribed.
        if self.store.on_demand() {
            let names = demand_names(packet, &namespace, domain);
            if wildcard && ask_first && self.store.unasked_hostnames(&names) {
                return None;
            }
            self.store.touch_demanded(&names);
        }
        Some(answer)
    }

    /// In on-demand mode, the reply to `packet` (which the store alone could not answer)
    /// once the services it may name were asked for, waiting up to `ON_DEMAND_WAIT`; `None`
    /// to forward it, as any name outside the mesh.
    async fn reply_on_demand(&self, packet: &[u8]) -> Option<Vec<u8>> {
        if !self.store.on_demand() {
            return None;
        }
        let namespace = self.namespace()?;
        let names = demand_names(packet, &namespace, &self.settings.cluster_domain);
        if names.is_empty() {
            return None;
        }
        self.store.fetch_hostnames(&names).await;
        self.stored_reply(packet, false)
    }
}

/// Starts the pod's DNS proxy on `worker`: UDP and TCP on `127.0.0.1:15053` in its namespace,
/// and on `[::1]:15053` where the namespace has IPv6 loopback (where the capture sends queries
/// to IPv6 nameservers; a pod without IPv6 has none to send), each in a `SO_REUSEPORT` group,
/// so that the next agent can listen beside this one.
pub fn start(
    store: WorkloadStore,
    settings: Arc<DnsSettings>,
    metrics: Arc<Metrics>,
    pod: &ServedPod,
    worker: &tokio::runtime::Handle,
) -> io::Result<PodDns> {
    let mut addresses = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, DNS))];
    let ipv6 = SocketAddr::from((Ipv6Addr::LOCALHOST, DNS));
    if pod.netns.run(|| has_loopback(ipv6))? {
        addresses.push(ipv6);
    }
    start_on(
        store,
        settings,
        metrics,
        pod.uid.clone(),
        pod.netns.clone(),
        &addresses,
        worker,
    )
}

/// Whether the current namespace has `address`'s loopback (IPv6 may be disabled in a pod).
fn has_loopback(address: SocketAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(address.ip(), 0)).is_ok()
}

/// [`start`] at other addresses (tests).
pub(crate) fn start_on(
    store: WorkloadStore,
    settings: Arc<DnsSettings>,
    metrics: Arc<Metrics>,
    uid: String,
    netns: PodNetns,
    addresses: &[SocketAddr],
    worker: &tokio::runtime::Handle,
) -> io::Result<PodDns> {
    let span = tracing::info_span!("dns", pod = %uid);
    let mut sockets = Vec::with_capacity(addresses.len());
    for address in addresses {
        let udp = netns.run(|| udp_socket(*address))??;
        let tcp = netns.listen(*address, true)?;
        sockets.push((udp, tcp));
    }
    let context = Arc::new(PodContext {
        store,
        settings,
        metrics,
        uid,
        netns,
        forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
        limiter: std::sync::Mutex::new(RateLimiter::new(QUERIES_PER_SECOND, Instant::now())),
    });
    let _entered = worker.enter();
    let mut tasks = Vec::with_capacity(2 * sockets.len());
    for (udp, tcp) in sockets {
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        let tcp = TcpListener::from_std(tcp)?;
        tasks.push(worker.spawn(serve_udp(context.clone(), udp).instrument(span.clone())));
        tasks.push(worker.spawn(serve_tcp(context.clone(), tcp).instrument(span.clone())));
    }
    Ok(PodDns { tasks })
}

fn udp_socket(address: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::DGRAM,
        None,
    )?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

async fn serve_udp(context: Arc<PodContext>, socket: Arc<UdpSocket>) {
    // One byte more than a query may have: a datagram that fills it was longer.
    let mut buffer = vec![0u8; MAX_MESSAGE + 1];
    loop {
        let (length, client) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                tracing::debug!(%error, "dns: receiving");
                continue;
            }
        };
        if length > MAX_MESSAGE || !context.admit() {
            continue;
        }
        let packet = &buffer[..length];
        let labels = context.count(packet, Protocol::Udp);
        if let Some(answer) = context.local_reply(packet) {
            let _ = socket.send_to(&answer, client).await;
            continue;
        }
        let Ok(permit) = context.forwards.clone().try_acquire_owned() else {
            if let Some(failure) = server_failure(packet) {
                let _ = socket.send_to(&failure, client).await;
            }
            continue;
        };
        let (context, socket, query) = (context.clone(), socket.clone(), packet.to_vec());
        tokio::spawn(
            async move {
                if let Some(answer) = context.reply_on_demand(&query).await {
                    let _ = socket.send_to(&answer, client).await;
                    return;
                }
                let started = Instant::now();
                let answer = forward_udp(&context, &query).await;
                let metrics = context.metrics.dns();
                metrics.forwarded(&labels, started.elapsed(), answer.is_some());
                let answer = answer.or_else(|| server_failure(&query));
                if let Some(answer) = answer {
                    let _ = socket.send_to(&answer, client).await;
                }
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

/// The upstream's answer to `query` over UDP, trying each nameserver in turn.
async fn forward_udp(context: &PodContext, query: &[u8]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for upstream in context.settings.upstreams() {
        let attempt = async {
            let socket = upstream_udp(&context.netns, *upstream).ok()?;
            socket.send(query).await.ok()?;
            let mut buffer = vec![0u8; MAX_UPSTREAM_DATAGRAM];
            loop {
                let length = socket.recv(&mut buffer).await.ok()?;
                // Another id is a stray datagram: not the answer.
                if buffer.get(..2) == Some(id) {
                    buffer.truncate(length);
                    return Some(buffer);
                }
            }
        };
        match timeout(FORWARD_TIMEOUT, attempt).await {
            Ok(Some(answer)) => return Some(answer),
            _ => tracing::debug!(%upstream, "dns: no answer from the upstream resolver"),
        }
    }
    None
}

/// A UDP socket of the pod connected to `upstream`, marked as the agent's so that the capture
/// leaves it alone.
fn upstream_udp(netns: &PodNetns, upstream: SocketAddr) -> io::Result<UdpSocket> {
    let socket = netns.run(|| {
        let local: SocketAddr = if upstream.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(local),
            socket2::Type::DGRAM,
            None,
        )?;
        socket.set_mark(AGENT_SOCKET_MARK)?;
        socket.set_nonblocking(true)?;
        socket.bind(&local.into())?;
        socket.connect(&upstream.into())?;
        io::Result::Ok(std::net::UdpSocket::from(socket))
    })??;
    UdpSocket::from_std(socket)
}

async fn serve_tcp(context: Arc<PodContext>, listener: TcpListener) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Beyond the bound the connection is closed at once.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let context = context.clone();
        tokio::spawn(
            async move {
                serve_tcp_connection(&context, stream).await;
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

/// Queries on one TCP connection, each a length-prefixed message, answered in order.
async fn serve_tcp_connection(context: &PodContext, mut stream: TcpStream) {
    loop {
        let Some(query) = timeout(TCP_IDLE, read_message(&mut stream, MAX_MESSAGE))
            .await
            .ok()
            .flatten()
        else {
            return;
        };
        if !context.admit() {
            continue;
        }
        let labels = context.count(&query, Protocol::Tcp);
        let answer = match context.local_reply(&query) {
            Some(answer) => Some(answer),
            None => match context.forwards.try_acquire() {
                Ok(_permit) => match context.reply_on_demand(&query).await {
                    Some(answer) => Some(answer),
                    None => {
                        let started = Instant::now();
                        let answer = forward_tcp(context, &query).await;
                        let metrics = context.metrics.dns();
                        metrics.forwarded(&labels, started.elapsed(), answer.is_some());
                        answer
                    }
                },
                Err(_) => None,
            },
        };
        let Some(answer) = answer.or_else(|| server_failure(&query)) else {
            return;
        };
        if write_message(&mut stream, &answer).await.is_err() {
            return;
        }
    }
}

/// The upstream's answer to `query` over TCP, trying each nameserver in turn.
async fn forward_tcp(context: &PodContext, query: &[u8]) -> Option<Vec<u8>> {
    for upstream in context.settings.upstreams() {
        let attempt = async {
            let socket = context.netns.new_tcp(*upstream).ok()?;
            let mut stream = socket.connect(*upstream).await.ok()?;
            write_message(&mut stream, query).await.ok()?;
            read_message(&mut stream, MAX_UPSTREAM_MESSAGE).await
        };
        match timeout(FORWARD_TIMEOUT, attempt).await {
            Ok(Some(answer)) => return Some(answer),
            _ => tracing::debug!(%upstream, "dns: no answer from the upstream resolver over TCP"),
        }
    }
    None
}

/// A DNS message over TCP (RFC 1035 4.2.2: a two-byte length first), if it is at most `limit`.
async fn read_message(stream: &mut TcpStream, limit: usize) -> Option<Vec<u8>> {
    let length = usize::from(stream.read_u16().await.ok()?);
    if length > limit || length == 0 {
        return None;
    }
    let mut message = vec![0u8; length];
    stream.read_exact(&mut message).await.ok()?;
    Some(message)
}

async fn write_message(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let length = u16::try_from(message.len()).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// A token bucket: `rate` tokens a second, at most `rate` held.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u32,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate),
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.rate)).min(f64::from(self.rate));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
