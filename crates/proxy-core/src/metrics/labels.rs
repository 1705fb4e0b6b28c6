//! Istio's standard metric labels, once for both proxies: the peers (strings, `unknown` when not
//! known) and, as types, what takes a fixed set of values: who reports, the response flags, the
//! connection's security policy and the protocol.

use std::borrow::Cow;
use std::fmt;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

/// The value of a label nothing is known about.
pub const UNKNOWN: &str = "unknown";

/// Which proxy reports a metric (Istio's `reporter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client's node agent.
    Source,
    /// The server's node agent.
    Destination,
    /// A waypoint.
    Waypoint,
}

impl Reporter {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
            Self::Waypoint => "waypoint",
        }
    }

    /// The direction an access-log line names: `outbound` for the source's report, `inbound`
    /// for the destination's.
    pub const fn direction(self) -> &'static str {
        match self {
            Self::Source => "outbound",
            Self::Destination => "inbound",
            Self::Waypoint => "waypoint",
        }
    }
}

/// Why a connection or request did not end well (Envoy's response flags, and ztunnel's two of
/// its own); [`ResponseFlag::None`] (`-`) when it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ResponseFlag {
    #[default]
    None,
    /// Refused by an authorization policy (ztunnel's `DENY`).
    Denied,
    /// The destination could not be reached (ztunnel's `CONNECT`).
    ConnectFailure,
    /// No route matched (`NR`).
    NoRoute,
    /// The route names a cluster that does not exist (`NC`).
    NoCluster,
    /// A fault injection delayed the request (`DI`).
    DelayInjected,
    /// A fault injection aborted the request (`FI`).
    FaultInjected,
    /// The client went away before the response (`DC`).
    DownstreamTerminated,
    /// The upstream did not answer in time (`UT`).
    UpstreamTimeout,
    /// No healthy endpoint (`UH`).
    NoHealthyUpstream,
    /// Over the cluster's connection pool limits (`UO`).
    UpstreamOverflow,
    /// Connecting to the endpoint failed (`UF`).
    UpstreamConnectFailure,
    /// The endpoint reset the request (`UR`).
    UpstreamReset,
    /// The upstream connection ended under the request (`UC`).
    UpstreamConnectionTermination,
    /// The upstream broke its protocol, a response body cut short included (`UPE`).
    UpstreamProtocolError,
    /// Refused by a local rate limit (`RL`).
    RateLimited,
    /// The destination's name could not be resolved (`DF`, Envoy's dynamic forward proxy).
    DnsResolutionFailed,
    /// The retries ran out on a failure they would have retried (`URX`).
    UpstreamRetryLimitExceeded,
}

impl ResponseFlag {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Denied => "DENY",
            Self::ConnectFailure => "CONNECT",
            Self::NoRoute => "NR",
            Self::NoCluster => "NC",
            Self::DelayInjected => "DI",
            Self::FaultInjected => "FI",
            Self::DownstreamTerminated => "DC",
            Self::UpstreamTimeout => "UT",
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamOverflow => "UO",
            Self::UpstreamConnectFailure => "UF",
            Self::UpstreamReset => "UR",
            Self::UpstreamConnectionTermination => "UC",
            Self::UpstreamProtocolError => "UPE",
            Self::RateLimited => "RL",
            Self::DnsResolutionFailed => "DF",
            Self::UpstreamRetryLimitExceeded => "URX",
        }
    }
}

/// The flags in the order Envoy prints them: its flag table (`ALL_RESPONSE_STRINGS_FLAGS` in
/// `source/common/stream_info/utility.h`, which `ResponseFlagUtils::toShortString` walks), after
/// ztunnel's two of its own (never set beside another). A flag's bit is its place here.
const PRINT_ORDER: [ResponseFlag; 18] = [
    ResponseFlag::Denied,
    ResponseFlag::ConnectFailure,
    ResponseFlag::NoHealthyUpstream,
    ResponseFlag::UpstreamTimeout,
    ResponseFlag::UpstreamReset,
    ResponseFlag::UpstreamConnectFailure,
    ResponseFlag::UpstreamConnectionTermination,
    ResponseFlag::UpstreamOverflow,
    ResponseFlag::NoRoute,
    ResponseFlag::DelayInjected,
    ResponseFlag::FaultInjected,
    ResponseFlag::RateLimited,
    ResponseFlag::DownstreamTerminated,
    ResponseFlag::UpstreamRetryLimitExceeded,
    ResponseFlag::UpstreamProtocolError,
    ResponseFlag::NoCluster,
    ResponseFlag::DnsResolutionFailed,
    // Not a flag: `-`, the absence of any. Last, so that every flag's place is its bit.
    ResponseFlag::None,
];

impl ResponseFlag {
    /// The flag's bit in [`ResponseFlags`]; none for [`ResponseFlag::None`].
    const fn bit(self) -> u32 {
        let mut place = 0;
        while place < PRINT_ORDER.len() - 1 {
            if PRINT_ORDER[place] as u8 == self as u8 {
                return 1 << place;
            }
            place += 1;
        }
        0
    }
}

/// A request's `response_flags`, every flag set while it was handled, as Envoy keeps them (a
/// set: `setResponseFlag` adds one) and prints them (`%RESPONSE_FLAGS%`, Istio's
/// `response_flags` label): comma separated in the order of its flag table, `-` when none, so
/// `UF,URX`, `UT,DI`, `DI,FI`, `URX,UPE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    /// No flag (`-`).
    pub const NONE: ResponseFlags = ResponseFlags(0);

    /// Adds `flag` (nothing for [`ResponseFlag::None`]).
    pub fn insert(&mut self, flag: ResponseFlag) {
        self.0 |= flag.bit();
    }

    /// Adds `flag` when `on`.
    pub fn set(&mut self, flag: ResponseFlag, on: bool) {
        if on {
            self.insert(flag);
        }
    }

    pub const fn contains(self, flag: ResponseFlag) -> bool {
        let bit = flag.bit();
        bit != 0 && self.0 & bit == bit
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags set, in the order they are printed.
    pub fn iter(self) -> impl Iterator<Item = ResponseFlag> {
        PRINT_ORDER
            .into_iter()
            .filter(move |flag| self.contains(*flag))
    }

    /// The printed form. One flag or none is its static name; a combination is joined once and
    /// kept for the life of the process (at most one string per combination the code sets,
    /// a handful in practice, and bounded by the 2^17 combinations in any case), so that the
    /// metrics' label sets stay free of per-request allocation.
    pub fn as_str(self) -> &'static str {
        let mut flags = self.iter();
        match (flags.next(), flags.next()) {
            (None, _) => ResponseFlag::None.as_str(),
            (Some(flag), None) => flag.as_str(),
            _ => joined(self),
        }
    }
}

/// The names of the combinations of flags printed so far.
fn joined(flags: ResponseFlags) -> &'static str {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};
    static JOINED: OnceLock<RwLock<HashMap<u32, &'static str>>> = OnceLock::new();
    let table = JOINED.get_or_init(Default::default);
    if let Some(name) = table
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&flags.0)
    {
        return name;
    }
    let mut table = table.write().unwrap_or_else(|e| e.into_inner());
    table.entry(flags.0).or_insert_with(|| {
        let names: Vec<&str> = flags.iter().map(ResponseFlag::as_str).collect();
        Box::leak(names.join(",").into_boxed_str())
    })
}

impl From<ResponseFlag> for ResponseFlags {
    fn from(flag: ResponseFlag) -> Self {
        ResponseFlags(flag.bit())
    }
}

/// Whether the connection was mutual TLS (Istio's `connection_security_policy`). The node
/// agents report plaintext as `unknown`, as ztunnel does; the waypoint as `none`, as Envoy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    MutualTls,
    None,
    Unknown,
}

impl SecurityPolicy {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MutualTls => "mutual_tls",
            Self::None => "none",
            Self::Unknown => UNKNOWN,
        }
    }
}

/// What a connection or request carried (Istio's `request_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    Tcp,
    Http,
    Grpc,
}

impl RequestProtocol {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
                fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )*};
}

label_value!(
    Reporter,
    ResponseFlag,
    ResponseFlags,
    SecurityPolicy,
    RequestProtocol
);

/// One side of a connection or request, as each proxy knows it; an empty value is `unknown`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer<'a> {
    pub workload: &'a str,
    pub namespace: &'a str,
    /// `spiffe://...`
    pub principal: &'a str,
    pub app: &'a str,
    pub version: &'a str,
    pub canonical_service: &'a str,
    pub canonical_revision: &'a str,
    pub cluster: &'a str,
}

/// The service a connection or request was addressed to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Service<'a> {
    pub hostname: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
}

/// The labels naming the reporter and both peers, in ztunnel's order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PeerLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
}

/// How many values [`PeerLabels`] holds.
pub const PEER_LABEL_VALUES: usize = 19;

impl PeerLabels {
    /// `reporter`'s labels for what went from `source` to `destination`, addressed to
    /// `service`.
    pub fn new(
        reporter: Reporter,
        source: &Peer<'_>,
        destination: &Peer<'_>,
        service: &Service<'_>,
    ) -> Self {
        Self::from_values(reporter, Self::values_of(source, destination, service))
    }

    /// The values [`Self::new`] gives, borrowed, in field order (`unknown` for what is not
    /// known): what a cache of label sets hashes and compares before it builds (allocates)
    /// one.
    pub fn values_of<'a>(
        source: &Peer<'a>,
        destination: &Peer<'a>,
        service: &Service<'a>,
    ) -> [&'a str; PEER_LABEL_VALUES] {
        [
            source.workload,
            source.canonical_service,
            source.canonical_revision,
            source.namespace,
            source.principal,
            source.app,
            source.version,
            source.cluster,
            service.hostname,
            service.namespace,
            service.name,
            destination.workload,
            destination.canonical_service,
            destination.canonical_revision,
            destination.namespace,
            destination.principal,
            destination.app,
            destination.version,
            destination.cluster,
        ]
        .map(|value| if value.is_empty() { UNKNOWN } else { value })
    }

    /// The label set of `values` in [`Self::values_of`]'s order.
    pub fn from_values(reporter: Reporter, values: [&str; PEER_LABEL_VALUES]) -> Self {
        let [
            source_workload,
            source_canonical_service,
            source_canonical_revision,
            source_workload_namespace,
            source_principal,
            source_app,
            source_version,
            source_cluster,
            destination_service,
            destination_service_namespace,
            destination_service_name,
            destination_workload,
            destination_canonical_service,
            destination_canonical_revision,
            destination_workload_namespace,
            destination_principal,
            destination_app,
            destination_version,
            destination_cluster,
        ] = values.map(str::to_owned);
        Self {
            reporter,
            source_workload,
            source_canonical_service,
            source_canonical_revision,
            source_workload_namespace,
            source_principal,
            source_app,
            source_version,
            source_cluster,
            destination_service,
            destination_service_namespace,
            destination_service_name,
            destination_workload,
            destination_canonical_service,
            destination_canonical_revision,
            destination_workload_namespace,
            destination_principal,
            destination_app,
            destination_version,
            destination_cluster,
        }
    }

    /// This label set's values, in [`Self::values_of`]'s order.
    pub fn values(&self) -> [&str; PEER_LABEL_VALUES] {
        [
            &self.source_workload,
            &self.source_canonical_service,
            &self.source_canonical_revision,
            &self.source_workload_namespace,
            &self.source_principal,
            &self.source_app,
            &self.source_version,
            &self.source_cluster,
            &self.destination_service,
            &self.destination_service_namespace,
            &self.destination_service_name,
            &self.destination_workload,
            &self.destination_canonical_service,
            &self.destination_canonical_revision,
            &self.destination_workload_namespace,
            &self.destination_principal,
            &self.destination_app,
            &self.destination_version,
            &self.destination_cluster,
        ]
        .map(String::as_str)
    }

    /// Labels of a report that knows nothing but its reporter.
    pub fn unknown(reporter: Reporter) -> Self {
        Self::new(
            reporter,
            &Peer::default(),
            &Peer::default(),
            &Service::default(),
        )
    }
}

/// Istio's labels of TCP metrics (`istio_tcp_*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    pub request_protocol: RequestProtocol,
    pub response_flags: ResponseFlag,
    pub connection_security_policy: SecurityPolicy,
}

impl TcpLabels {
    pub fn new(peers: PeerLabels, security: SecurityPolicy) -> Self {
        Self {
            peers,
            request_protocol: RequestProtocol::Tcp,
            response_flags: ResponseFlag::None,
            connection_security_policy: security,
        }
    }
}

/// Istio's labels of request metrics (`istio_requests_total`, `istio_request_*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    pub request_protocol: RequestProtocol,
    pub response_code: u16,
    /// The gRPC status, empty for other requests.
    pub grpc_response_status: String,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

impl PeerLabels {
    /// The label names of [`Self::values`], in its order.
    pub const NAMES: [&'static str; PEER_LABEL_VALUES] = [
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_service",
        "destination_service_namespace",
        "destination_service_name",
        "destination_workload",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_cluster",
    ];
}

impl RequestLabels {
    /// Each label's name and value, in the order they are exposed: what Telemetry's tag
    /// overrides rewrite.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = self.peers.pairs(6);
        pairs.extend([
            (
                "request_protocol",
                self.request_protocol.as_str().to_owned(),
            ),
            ("response_code", self.response_code.to_string()),
            ("grpc_response_status", self.grpc_response_status.clone()),
            ("response_flags", self.response_flags.as_str().to_owned()),
            (
                "connection_security_policy",
                self.connection_security_policy.as_str().to_owned(),
            ),
        ]);
        pairs
    }
}

impl PeerLabels {
    /// `reporter` and the peers' labels by name, with room for `more`.
    fn pairs(&self, more: usize) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::with_capacity(1 + PEER_LABEL_VALUES + more);
        pairs.push(("reporter", self.reporter.as_str().to_owned()));
        pairs.extend(
            PeerLabels::NAMES
                .into_iter()
                .zip(self.values().map(str::to_owned)),
        );
        pairs
    }
}

/// A label set a Telemetry override can rewrite: its labels by name, in exposition order.
pub trait LabelPairs {
    fn pairs(&self) -> Vec<(&'static str, String)>;
}

impl LabelPairs for TcpLabels {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = self.peers.pairs(4);
        pairs.extend([
            (
                "request_protocol",
                self.request_protocol.as_str().to_owned(),
            ),
            ("response_flags", self.response_flags.as_str().to_owned()),
            (
                "connection_security_policy",
                self.connection_security_policy.as_str().to_owned(),
            ),
        ]);
        pairs
    }
}

impl LabelPairs for RequestLabels {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        RequestLabels::pairs(self)
    }
}

/// A series' labels: Istio's standard set, or the set a Telemetry override made of it (labels
/// removed, values replaced or added).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Series<L> {
    Standard(L),
    Overridden(Vec<(Cow<'static, str>, String)>),
}

impl<L: EncodeLabelSet> EncodeLabelSet for Series<L> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        match self {
            Series::Standard(labels) => labels.encode(encoder),
            Series::Overridden(pairs) => pairs.encode(encoder),
        }
    }
}

/// Whether `name` can name a label of Istio's metrics in Prometheus' text format:
/// `[a-zA-Z_][a-zA-Z0-9_]*`, not reserved (`__` prefix) and not the histograms' `le`.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
        && name != "le"
}
