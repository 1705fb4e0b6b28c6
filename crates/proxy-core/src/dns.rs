//! Resolving endpoint names (a ServiceEntry's `resolution: DNS`) for both proxies: the node
//! agent resolves the names of workloads that have no address, the waypoint those of its
//! clusters' endpoints. Each keeps the answers in its store ([`NameTable`]), where a
//! connection or request reads them; nothing is resolved on a connection's path.
//!
//! Resolution follows the system's configuration (`/etc/resolv.conf` and the hosts file, read
//! at start) through a stub resolver that reports the records' TTL, as ztunnel resolves. Each
//! name is resolved again when its answer expires, as Istio's Envoy does for DNS clusters
//! (`respect_dns_ttl`), within [`MIN_REFRESH`] and [`MAX_REFRESH`]: a zero TTL cannot make a
//! proxy query without pause, and a day-long one (or a hosts-file entry, which has none) still
//! sees a change within Istio's default `dnsRefreshRate`. A new name is resolved at once.
//!
//! Bounded: at most [`MAX_HOSTNAMES`] names, one lookup at a time, each within
//! [`LOOKUP_TIMEOUT`]. A failed or empty answer keeps the last good addresses, and is tried
//! again after [`MAX_REFRESH`].

use std::{collections::HashMap, net::IpAddr, sync::OnceLock, time::Duration};

use hickory_resolver::{TokioResolver, config::LookupIpStrategy};
use tokio::time::Instant;

use tokio::sync::watch;

/// The shortest wait before a name is resolved again, whatever its TTL.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The longest wait before a name is resolved again (Istio's default `dnsRefreshRate`), and
/// the wait after a failed lookup.
pub const MAX_REFRESH: Duration = Duration::from_secs(60);
/// How long one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many names are resolved at most; the others are reported and left unresolved.
pub const MAX_HOSTNAMES: usize = 1024;

/// A name's addresses and how long they stay valid (the smallest TTL of the records; the
/// hosts file's answers never expire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addresses: Vec<IpAddr>,
    pub ttl: Duration,
}

/// When a name is resolved again after an answer valid for `ttl`.
pub fn refresh_after(ttl: Duration) -> Duration {
    ttl.clamp(MIN_REFRESH, MAX_REFRESH)
}

/// Where a proxy keeps the names it resolves and their answers.
pub trait NameTable {
    /// The names to resolve now, without duplicates.
    fn names(&self) -> Vec<String>;
    /// Forgets the answers for names not in `names`.
    fn retain(&self, names: &[String]);
    /// Records a name's new addresses.
    fn set(&self, name: &str, addresses: Vec<IpAddr>);
    /// This round's lookups are done: a table that applies its answers in one step (the
    /// waypoint converts its configuration again) does it here.
    fn round_done(&self) {}
}

/// Resolves `table`'s names with the system's resolver configuration until the task is
/// dropped; `changes` wakes it when the names may have changed (a new configuration).
///
/// The resolver is built when the first name needs resolving, not before: most proxies never
/// resolve a name, and an unused resolver would cost every one of them its memory (its caches,
/// the pages of its code).
pub async fn run<T: NameTable>(table: T, changes: watch::Receiver<u64>) {
    run_configured(table, changes, None).await;
}

/// [`run`] with the resolver configuration at `resolv_conf` (`None`: the system's).
pub async fn run_configured<T: NameTable>(
    table: T,
    changes: watch::Receiver<u64>,
    resolv_conf: Option<std::path::PathBuf>,
) {
    let resolver = LazyResolver::new(resolv_conf);
    resolve_with(table, changes, |name| {
        let resolver = &resolver;
        async move { resolver.lookup(&name).await }
    })
    .await;
}

/// A stub resolver built at its first lookup from `resolv_conf` (`None`: the system's), so
/// that a proxy that never resolves a name pays nothing for it.
#[derive(Debug, Default)]
pub struct LazyResolver {
    resolv_conf: Option<std::path::PathBuf>,
    built: OnceLock<Result<TokioResolver, String>>,
}

impl LazyResolver {
    pub fn new(resolv_conf: Option<std::path::PathBuf>) -> Self {
        LazyResolver {
            resolv_conf,
            built: OnceLock::new(),
        }
    }

    /// The addresses of `name`, asked as given (a final dot skips the search domains).
    pub async fn lookup(&self, name: &str) -> Result<Answer, String> {
        let built = self.built.get_or_init(|| {
            resolver_from(self.resolv_conf.as_deref())
                .inspect_err(|error| tracing::error!(%error, "no DNS resolver"))
        });
        match built {
            Ok(resolver) => lookup(resolver, name).await,
            Err(error) => Err(format!("no DNS resolver: {error}")),
        }
    }
}

/// The stub resolver of `/etc/resolv.conf` and the hosts file, asking for both families.
pub fn system_resolver() -> Result<TokioResolver, String> {
    resolver_from(None)
}

/// The stub resolver of `resolv_conf` (`None`: `/etc/resolv.conf`) and the hosts file, asking
/// for both families; the file is read once, here.
pub fn resolver_from(resolv_conf: Option<&std::path::Path>) -> Result<TokioResolver, String> {
    let mut builder = match resolv_conf {
        None => TokioResolver::builder_tokio().map_err(|e| e.to_string())?,
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let (config, options) = hickory_resolver::system_conf::parse_resolv_conf(text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let mut builder = TokioResolver::builder_with_config(
                config,
                hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
            );
            *builder.options_mut() = options;
            builder
        }
    };
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = LOOKUP_TIMEOUT;
    builder.build().map_err(|e| e.to_string())
}

/// [`run`] with another resolver (tests).
pub async fn resolve_with<T, F, R>(table: T, mut changes: watch::Receiver<u64>, resolve: F)
where
    T: NameTable,
    F: Fn(String) -> R,
    R: std::future::Future<Output = Result<Answer, String>>,
{
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        let mut names = table.names();
        if names.len() > MAX_HOSTNAMES {
            tracing::warn!(
                names = names.len(),
                limit = MAX_HOSTNAMES,
                "too many hostnames to resolve; the rest stay unresolved"
            );
            names.truncate(MAX_HOSTNAMES);
        }
        due.retain(|name, _| names.contains(name));
        table.retain(&names);
        for name in &names {
            if due.get(name).is_some_and(|at| *at > Instant::now()) {
                continue;
            }
            let wait = match resolve(name.clone()).await {
                Ok(answer) => {
                    table.set(name, answer.addresses);
                    refresh_after(answer.ttl)
                }
                Err(error) => {
                    tracing::warn!(hostname = %name, %error, "hostname not resolved; keeping the last addresses");
                    MAX_REFRESH
                }
            };
            due.insert(name.clone(), Instant::now() + wait);
        }
        table.round_done();
        let next = due.values().min().copied();
        // Our own answers may wake the watch too: mark it seen so that only others' changes
        // (a new configuration) cut the wait short.
        changes.borrow_and_update();
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = sleep_until(next) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The name's addresses, IPv4 first, without duplicates, and how long they are valid.
pub async fn lookup(resolver: &TokioResolver, name: &str) -> Result<Answer, String> {
    let answer = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(name))
        .await
        .map_err(|_| format!("no answer within {LOOKUP_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let mut addresses: Vec<IpAddr> = Vec::new();
    for address in answer.iter() {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    addresses.sort_by_key(|a| a.is_ipv6());
    if addresses.is_empty() {
        return Err("no address".into());
    }
    let ttl = answer
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    Ok(Answer { addresses, ttl })
}
