//! On-demand addresses (ztunnel's `XDS_ON_DEMAND`): an agent that subscribes only to its own
//! node's workloads asks the controller for a destination it does not know at the first
//! connection to it, or for a mesh hostname at a pod's DNS query, and waits (bounded) for the
//! answer. What it fetched stays subscribed while connections or DNS answers use it, and is
//! unsubscribed once idle for a configured period.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use weft_proto::{ADDRESS_TYPE_URL, address_subscription, hostname_subscription};
use weft_xds::{Demand, DemandError, MAX_DEMANDED_NAMES};

use super::{GatewayAddress, GatewayDestination, NamespacedHostname, WorkloadStore};

/// How long a connection to an address the agent does not know (or a DNS query for a name it
/// does not know) waits for the controller's answer; then it is served with what the agent
/// knows (as for an address or a name outside the mesh).
pub const ON_DEMAND_WAIT: Duration = Duration::from_secs(5);

/// How long a name fetched on demand stays subscribed with no connection open to what it
/// covers and no DNS answer for it. Half an hour: traffic that recurs every few minutes (a
/// poller, a health check, a cron job, a client re-resolving every 30 s TTL) never fetches
/// again, while an agent's set of names follows a changing working set within the hour; a
/// name evicted too early costs one round trip to the controller on its next use.
pub const DEFAULT_ON_DEMAND_IDLE: Duration = Duration::from_secs(30 * 60);

/// Names unsubscribed per sweep, at most: one request to the controller, bounded in size.
const MAX_RELEASED_PER_SWEEP: usize = 256;

/// How long a name the controller found nothing for (a DNS name, a destination address) is
/// not asked for again: the TTL of the mesh's answers, so a pod resolving external names or
/// connecting to an address outside the mesh does not make the agent ask the controller at
/// every query or connection (in vain: the upstream resolver answers those, and such a
/// connection is passthrough or refused). The name stays subscribed meanwhile, so what the
/// controller later holds under it (a new Service or ServiceEntry) is pushed at once and
/// served from the store, not after this period.
const MISS_MEMORY: Duration = Duration::from_secs(crate::dns_proxy::TTL_SECONDS as u64);

/// Names remembered as misses, at most (each one subscribed at the controller meanwhile).
const MAX_MISSES: usize = 4_096;

/// The network of every address the controller serves (a single network).
const NETWORK: &str = "";

/// A connection refused because too many others already wait for the same name
/// ([`weft_xds::MAX_WAITERS_PER_NAME`]): the excess fails closed rather than grow the list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many connections wait for {0} to be fetched on demand")]
pub struct Crowded(pub String);

/// Counts of the on-demand mode.
#[derive(Debug, Default)]
pub struct OnDemandMetrics {
    /// Connections refused because too many waited for one name.
    refused_connections: Counter,
    /// Names unsubscribed after their idle period.
    released_names: Counter,
    /// Connections to an address remembered as a miss, not asked for again.
    address_miss_hits: Counter,
    /// DNS demand names remembered as misses, not asked for again.
    hostname_miss_hits: Counter,
    /// DNS demand names asked of the controller.
    asked_hostnames: Counter,
}

impl OnDemandMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_on_demand_refused_connections",
            "Connections refused because too many waited for one address fetched on demand",
            self.refused_connections.clone(),
        );
        registry.register(
            "weft_on_demand_released_names",
            "Names fetched on demand and unsubscribed after their idle period",
            self.released_names.clone(),
        );
        registry.register(
            "weft_on_demand_address_miss_hits",
            "Connections to an address the controller recently answered it does not hold, not asked for again",
            self.address_miss_hits.clone(),
        );
        registry.register(
            "weft_on_demand_hostname_miss_hits",
            "DNS names the controller recently answered it does not hold, not asked for again",
            self.hostname_miss_hits.clone(),
        );
        registry.register(
            "weft_on_demand_asked_hostnames",
            "DNS names asked of the controller on demand (each once while it stays subscribed)",
            self.asked_hostnames.clone(),
        );
    }
}

/// How one fetched name is used.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// Connections open that use it.
    open: usize,
    last_used: Instant,
}

/// The on-demand side of the store: the client's inbox, what it fetched, what it asked for
/// in vain.
#[derive(Debug)]
pub(super) struct OnDemand {
    demand: Demand,
    used: Mutex<HashMap<String, Usage>>,
    misses: Mutex<HashMap<String, Instant>>,
}

/// The fetched names an open connection uses: none is evicted while it lives, and all count
/// as used when it ends. Empty outside on-demand mode.
#[derive(Debug, Default)]
#[must_use = "the names stay held only while the lease lives"]
pub struct DemandLease {
    names: Vec<String>,
    store: Option<WorkloadStore>,
}

impl Drop for DemandLease {
    fn drop(&mut self) {
        let Some(on_demand) = self.store.as_ref().and_then(|s| s.demand.get()) else {
            return;
        };
        let now = Instant::now();
        let mut used = on_demand.used.lock().unwrap_or_else(|p| p.into_inner());
        for name in &self.names {
            if let Some(usage) = used.get_mut(name) {
                usage.open = usage.open.saturating_sub(1);
                usage.last_used = now;
            }
        }
    }
}

impl WorkloadStore {
    /// Asks the controller through `demand` for addresses the store does not hold (on-demand
    /// mode). Set once, before connections are served.
    pub fn set_demand(&self, demand: Demand) {
        let _ = self.demand.set(OnDemand {
            demand,
            used: Mutex::default(),
            misses: Mutex::default(),
        });
    }

    /// Whether the store asks for what it does not hold.
    pub fn on_demand(&self) -> bool {
        self.demand.get().is_some()
    }

    /// Registers the on-demand counters (`weft_on_demand_*`).
    pub fn register_on_demand_metrics(&self, registry: &mut Registry) {
        self.on_demand_metrics.register(registry);
    }

    /// Makes sure the store holds what a connection to `ip` needs, in on-demand mode: the
    /// workload or service at `ip` (with the service's endpoints) and its waypoint, each
    /// asked for if missing and waited for up to [`ON_DEMAND_WAIT`]; the names it goes by
    /// are held for as long as the returned lease lives. Without on-demand, or when
    /// everything is known, returns at once. Fails only when too many connections already
    /// wait for the same name (counted; the connection is to be refused).
    pub async fn fetch_destination(&self, ip: IpAddr) -> Result<DemandLease, Crowded> {
        let Some(on_demand) = self.demand.get() else {
            return Ok(DemandLease::default());
        };
        self.ask_for_address(on_demand, ip).await?;
        let waypoint = self
            .service_by_vip(ip)
            .and_then(|s| s.waypoint.clone())
            .or_else(|| self.workload_by_ip(ip).and_then(|w| w.waypoint.clone()));
        match waypoint {
            Some(GatewayAddress {
                destination: GatewayDestination::Address(waypoint),
                ..
            }) => self.ask_for_address(on_demand, waypoint).await?,
            Some(GatewayAddress {
                destination: GatewayDestination::Service(key),
                ..
            }) if self.service(&key).is_none() => {
                let hits = &self.on_demand_metrics.address_miss_hits;
                self.ask_unless_missed(on_demand, &key.to_string(), hits)
                    .await?;
            }
            _ => {}
        }
        Ok(self.hold(on_demand, self.names_covering(ip)))
    }

    /// The workload or service at `ip`, asked for first if the store lacks it in on-demand
    /// mode (an inbound connection's source, as ztunnel fetches it for its metrics), held as
    /// [`Self::fetch_destination`] holds it.
    pub async fn fetch_address(&self, ip: IpAddr) -> Result<DemandLease, Crowded> {
        let Some(on_demand) = self.demand.get() else {
            return Ok(DemandLease::default());
        };
        self.ask_for_address(on_demand, ip).await?;
        Ok(self.hold(on_demand, self.names_covering(ip)))
    }

    /// Asks for the services a DNS query may name, by the names the controller knows them
    /// by (`namespace/hostname`, `host:<hostname>`, see `dns_proxy::demand_names`), all at
    /// once and waited for up to [`ON_DEMAND_WAIT`] together. Names the store holds by
    /// themselves, names already answered (kept subscribed: a wildcard host standing in for
    /// one is followed by the controller), and names asked for in vain within the last TTL
    /// are not asked again (the latter counted). A name the store holds only by a wildcard
    /// host covering it, never asked, is asked: the controller answers with the most specific
    /// wildcard host covering it, which may not be the one held.
    pub async fn fetch_hostnames(&self, names: &[String]) {
        let Some(on_demand) = self.demand.get() else {
            return;
        };
        let unheld = names
            .iter()
            .filter(|name| !self.answered_name(on_demand, name));
        let wanted: Vec<&String> = unheld
            .filter(|name| {
                let missed = on_demand.remembers_miss(name);
                if missed {
                    self.on_demand_metrics.hostname_miss_hits.inc();
                }
                !missed
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        // Each bounded by ON_DEMAND_WAIT, all at once.
        let mut asks = tokio::task::JoinSet::new();
        self.on_demand_metrics
            .asked_hostnames
            .inc_by(wanted.len() as u64);
        for name in wanted {
            let (demand, name) = (on_demand.demand.clone(), name.clone());
            asks.spawn(async move {
                let answered = matches!(ask(&demand, &name).await, Answer::Answered);
                (name, answered)
            });
        }
        while let Some(answer) = asks.join_next().await {
            if let Ok((name, true)) = answer {
                self.settle(on_demand, &name);
            }
        }
    }

    /// Whether a DNS query's demand names include one [`Self::fetch_hostnames`] would ask
    /// for (none outside on-demand mode): the DNS proxy asks before answering from a
    /// wildcard host covering the name.
    pub fn unasked_hostnames(&self, names: &[String]) -> bool {
        let Some(on_demand) = self.demand.get() else {
            return false;
        };
        names
            .iter()
            .any(|name| !self.answered_name(on_demand, name) && !on_demand.remembers_miss(name))
    }

    /// Marks `names` used now (a DNS answer from what they fetched).
    pub fn touch_demanded(&self, names: &[String]) {
        let Some(on_demand) = self.demand.get() else {
            return;
        };
        let now = Instant::now();
        let mut used = on_demand.used.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            if let Some(usage) = used.get_mut(name) {
                usage.last_used = now;
            }
        }
    }

    /// Unsubscribes names fetched on demand that no open connection uses and nothing used
    /// for `idle`, at most [`MAX_RELEASED_PER_SWEEP`] of them (the rest at the next sweep);
    /// settles misses ([`Self::sweep_misses`]). How many idle names it released.
    pub fn release_idle(&self, idle: Duration) -> usize {
        let Some(on_demand) = self.demand.get() else {
            return 0;
        };
        self.sweep_misses(on_demand);
        let now = Instant::now();
        let mut used = on_demand.used.lock().unwrap_or_else(|p| p.into_inner());
        let idle_names: Vec<String> = used
            .iter()
            .filter(|(_, usage)| usage.open == 0 && now.duration_since(usage.last_used) >= idle)
            .map(|(name, _)| name.clone())
            .take(MAX_RELEASED_PER_SWEEP)
            .collect();
        if idle_names.is_empty() {
            return 0;
        }
        // Queued behind demands; a full queue leaves them for the next sweep.
        if let Err(error) = on_demand
            .demand
            .release(ADDRESS_TYPE_URL, idle_names.clone())
        {
            tracing::debug!(%error, "idle names left for the next sweep");
            return 0;
        }
        for name in &idle_names {
            used.remove(name);
        }
        drop(used);
        let released = idle_names.len();
        self.on_demand_metrics
            .released_names
            .inc_by(released as u64);
        tracing::debug!(released, "unsubscribed names idle for their period");
        released
    }

    /// Sweeps for idle names ([`Self::release_idle`]) until the task is dropped, four times
    /// per `idle` period (between every 100 ms and every minute).
    pub async fn release_idle_forever(self, idle: Duration) {
        let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut sweeps = tokio::time::interval(every);
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            sweeps.tick().await;
            self.release_idle(idle);
        }
    }

    /// Misses the controller has since pushed something for are recorded as fetched (to
    /// idle out like any); misses whose memory ran out are unsubscribed (up to
    /// [`MAX_RELEASED_PER_SWEEP`], the rest at the next sweep).
    fn sweep_misses(&self, on_demand: &OnDemand) {
        let now = Instant::now();
        let mut misses = on_demand.misses.lock().unwrap_or_else(|p| p.into_inner());
        let found: Vec<String> = misses
            .keys()
            .filter(|name| self.holds_name(name))
            .cloned()
            .collect();
        for name in &found {
            misses.remove(name);
        }
        let expired: Vec<String> = misses
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(name, _)| name.clone())
            .take(MAX_RELEASED_PER_SWEEP)
            .collect();
        // Queued behind demands; a full queue leaves them for the next sweep.
        if !expired.is_empty()
            && on_demand
                .demand
                .release(ADDRESS_TYPE_URL, expired.clone())
                .is_ok()
        {
            for name in &expired {
                misses.remove(name);
            }
        }
        drop(misses);
        for name in &found {
            on_demand.record(name);
        }
    }

    /// Makes sure the store holds what is at `ip`: asked for unless held or remembered as a
    /// miss (counted).
    async fn ask_for_address(&self, on_demand: &OnDemand, ip: IpAddr) -> Result<(), Crowded> {
        if self.knows_address(ip) {
            return Ok(());
        }
        let name = address_subscription(NETWORK, ip);
        let hits = &self.on_demand_metrics.address_miss_hits;
        self.ask_unless_missed(on_demand, &name, hits).await
    }

    /// Asks for `name` unless it is remembered as a miss (counted in `hits`), and settles
    /// the answer.
    async fn ask_unless_missed(
        &self,
        on_demand: &OnDemand,
        name: &str,
        hits: &Counter,
    ) -> Result<(), Crowded> {
        if on_demand.remembers_miss(name) {
            hits.inc();
            return Ok(());
        }
        if self.ask(on_demand, name).await? {
            self.settle(on_demand, name);
        }
        Ok(())
    }

    /// After the controller answered `name`: recorded as fetched if the store now holds
    /// what it names, else remembered as a miss (kept subscribed), or unsubscribed at once
    /// when no more misses fit.
    fn settle(&self, on_demand: &OnDemand, name: &str) {
        if self.holds_name(name) {
            on_demand.record(name);
        } else if !on_demand.missed(name, Instant::now() + MISS_MEMORY)
            && let Err(error) = on_demand
                .demand
                .release(ADDRESS_TYPE_URL, vec![name.to_owned()])
        {
            tracing::debug!(%name, %error, "a miss left subscribed");
        }
    }

    /// Asks for `name` with the bounded wait: whether the controller answered; only a
    /// crowded name fails (counted).
    async fn ask(&self, on_demand: &OnDemand, name: &str) -> Result<bool, Crowded> {
        match ask(&on_demand.demand, name).await {
            Answer::Crowded(name) => {
                self.on_demand_metrics.refused_connections.inc();
                Err(Crowded(name))
            }
            Answer::Answered => Ok(true),
            Answer::Unanswered => Ok(false),
        }
    }

    /// Every name that may have fetched what a connection to `ip` uses: the address, the
    /// service at it (by `namespace/hostname` and by hostname), the services of the
    /// workload at it, and the waypoint of either.
    fn names_covering(&self, ip: IpAddr) -> Vec<String> {
        let mut names = vec![address_subscription(NETWORK, ip)];
        let service_names = |key: &NamespacedHostname, names: &mut Vec<String>| {
            names.push(key.to_string());
            names.push(hostname_subscription(&key.hostname));
        };
        let mut waypoint = None;
        if let Some(service) = self.service_by_vip(ip) {
            service_names(&service.key(), &mut names);
            waypoint = service.waypoint.clone();
        }
        if let Some(workload) = self.workload_by_ip(ip) {
            for key in workload.services.keys() {
                service_names(key, &mut names);
            }
            waypoint = waypoint.or_else(|| workload.waypoint.clone());
        }
        match waypoint.map(|w| w.destination) {
            Some(GatewayDestination::Address(address)) => {
                names.push(address_subscription(NETWORK, address));
            }
            Some(GatewayDestination::Service(key)) => service_names(&key, &mut names),
            None => {}
        }
        names
    }

    fn hold(&self, on_demand: &OnDemand, names: Vec<String>) -> DemandLease {
        let now = Instant::now();
        let mut used = on_demand.used.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = Vec::new();
        for name in names {
            if held.contains(&name) {
                continue;
            }
            if let Some(usage) = used.get_mut(&name) {
                usage.open += 1;
                usage.last_used = now;
                held.push(name);
            }
        }
        DemandLease {
            names: held,
            store: Some(self.clone()),
        }
    }

    /// Whether the store holds what a demand name names: an address (`<network>/<ip>`), a
    /// service (`namespace/hostname`) or a hostname (`host:<hostname>`, or a wildcard host
    /// covering it).
    fn holds_name(&self, name: &str) -> bool {
        if let Some(ip) = name
            .strip_prefix(NETWORK)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        {
            return self.knows_address(ip);
        }
        // The controller answers a hostname nothing goes by with the wildcard host covering
        // it: that host holds the name.
        if let Some(hostname) = name.strip_prefix("host:") {
            return crate::dns_proxy::with_wildcards(hostname)
                .iter()
                .any(|(candidate, _)| !self.services_by_hostname(candidate).is_empty());
        }
        name.split_once('/').is_some_and(|(namespace, hostname)| {
            self.service(&NamespacedHostname {
                namespace: namespace.to_owned(),
                hostname: hostname.to_owned(),
            })
            .is_some()
        })
    }

    /// Whether the controller's answer for a demand name is in: the store holds what it
    /// names by itself (a hostname, not a wildcard covering it), or it was asked and
    /// answered and is kept subscribed (recorded as fetched), whatever stands in for it.
    fn answered_name(&self, on_demand: &OnDemand, name: &str) -> bool {
        if let Some(hostname) = name.strip_prefix("host:") {
            return !self.services_by_hostname(hostname).is_empty()
                || on_demand
                    .used
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(name);
        }
        self.holds_name(name)
    }

    fn knows_address(&self, ip: IpAddr) -> bool {
        let indexes = self.read();
        indexes.workloads_by_ip.contains_key(&ip) || indexes.services_by_vip.contains_key(&ip)
    }
}

impl OnDemand {
    /// Records `name` as fetched and used now.
    fn record(&self, name: &str) {
        let now = Instant::now();
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(usage) = used.get_mut(name) {
            usage.last_used = now;
        } else if used.len() < MAX_DEMANDED_NAMES {
            used.insert(
                name.to_owned(),
                Usage {
                    open: 0,
                    last_used: now,
                },
            );
        }
    }

    /// Remembers `name` as asked in vain until `until`; whether it fit (an expired miss
    /// holds its place until a sweep unsubscribes it).
    fn missed(&self, name: &str, until: Instant) -> bool {
        let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        if misses.len() >= MAX_MISSES && !misses.contains_key(name) {
            return false;
        }
        misses.insert(name.to_owned(), until);
        true
    }

    /// Whether `name` was asked in vain within its memory.
    fn remembers_miss(&self, name: &str) -> bool {
        let misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        misses
            .get(name)
            .is_some_and(|until| *until > Instant::now())
    }
}

/// How the controller answered one name.
#[derive(Debug)]
enum Answer {
    /// With what it covers, or with the name as removed (nothing there).
    Answered,
    /// Not within [`ON_DEMAND_WAIT`], or the demand was not taken (logged).
    Unanswered,
    /// Too many demands already wait for this name.
    Crowded(String),
}

async fn ask(demand: &Demand, name: &str) -> Answer {
    let answer = demand.request_watching_absent(ADDRESS_TYPE_URL, name);
    match tokio::time::timeout(ON_DEMAND_WAIT, answer).await {
        Ok(Ok(())) => {
            tracing::debug!(%name, "fetched on demand");
            Answer::Answered
        }
        Ok(Err(DemandError::Crowded { name })) => Answer::Crowded(name),
        Ok(Err(error)) => {
            tracing::warn!(%name, %error, "not fetched on demand");
            Answer::Unanswered
        }
        Err(_) => {
            tracing::warn!(
                %name,
                wait_ms = ON_DEMAND_WAIT.as_millis() as u64,
                "no answer for a name fetched on demand"
            );
            Answer::Unanswered
        }
    }
}

#[cfg(test)]
mod tests;
