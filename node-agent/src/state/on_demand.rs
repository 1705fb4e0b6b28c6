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

/// How long a DNS name the controller found nothing for is not asked for again: the TTL of
/// the mesh's answers, so a pod resolving external names does not make the agent ask the
/// controller at every query (in vain, the upstream resolver answers those).
const MISS_MEMORY: Duration = Duration::from_secs(crate::dns_proxy::TTL_SECONDS as u64);

/// DNS names remembered as misses, at most.
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
        if !self.knows_address(ip) {
            self.ask_for_address(on_demand, ip).await?;
        }
        let waypoint = self
            .service_by_vip(ip)
            .and_then(|s| s.waypoint.clone())
            .or_else(|| self.workload_by_ip(ip).and_then(|w| w.waypoint.clone()));
        match waypoint {
            Some(GatewayAddress {
                destination: GatewayDestination::Address(waypoint),
                ..
            }) if !self.knows_address(waypoint) => {
                self.ask_for_address(on_demand, waypoint).await?;
            }
            Some(GatewayAddress {
                destination: GatewayDestination::Service(key),
                ..
            }) if self.service(&key).is_none() => {
                let name = key.to_string();
                self.ask(on_demand, &name).await?;
                if self.service(&key).is_some() {
                    on_demand.record(&name);
                }
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
        if !self.knows_address(ip) {
            self.ask_for_address(on_demand, ip).await?;
        }
        Ok(self.hold(on_demand, self.names_covering(ip)))
    }

    /// Asks for the services a DNS query may name, by the names the controller knows them
    /// by (`namespace/hostname`, `host:<hostname>`, see `dns_proxy::demand_names`), all at
    /// once and waited for up to [`ON_DEMAND_WAIT`] together. Names the store already
    /// answers, or asked for in vain within the last TTL, are not asked again.
    pub async fn fetch_hostnames(&self, names: &[String]) {
        let Some(on_demand) = self.demand.get() else {
            return;
        };
        let now = Instant::now();
        let unheld = names.iter().filter(|name| !self.holds_hostname_name(name));
        let wanted: Vec<&String> = {
            let misses = on_demand.misses.lock().unwrap_or_else(|p| p.into_inner());
            unheld
                .filter(|name| misses.get(*name).is_none_or(|until| *until <= now))
                .collect()
        };
        if wanted.is_empty() {
            return;
        }
        // Each bounded by ON_DEMAND_WAIT, all at once.
        let mut asks = tokio::task::JoinSet::new();
        for name in wanted {
            let (demand, name) = (on_demand.demand.clone(), name.clone());
            asks.spawn(async move {
                let answered = matches!(ask(&demand, &name).await, Answer::Answered);
                (name, answered)
            });
        }
        let mut answers = Vec::new();
        while let Some(answer) = asks.join_next().await {
            answers.extend(answer.ok());
        }
        let now = Instant::now();
        for (name, answered) in answers {
            if self.holds_hostname_name(&name) {
                on_demand.record(&name);
            } else if answered {
                on_demand.missed(&name, now + MISS_MEMORY);
            }
        }
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
    /// forgets DNS misses whose memory ran out. How many names it released.
    pub fn release_idle(&self, idle: Duration) -> usize {
        let Some(on_demand) = self.demand.get() else {
            return 0;
        };
        let now = Instant::now();
        on_demand
            .misses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
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

    async fn ask_for_address(&self, on_demand: &OnDemand, ip: IpAddr) -> Result<(), Crowded> {
        let name = address_subscription(NETWORK, ip);
        self.ask(on_demand, &name).await?;
        if self.knows_address(ip) {
            on_demand.record(&name);
        }
        Ok(())
    }

    /// Asks for `name` with the bounded wait; only a crowded name fails (counted).
    async fn ask(&self, on_demand: &OnDemand, name: &str) -> Result<(), Crowded> {
        match ask(&on_demand.demand, name).await {
            Answer::Crowded(name) => {
                self.on_demand_metrics.refused_connections.inc();
                Err(Crowded(name))
            }
            Answer::Answered | Answer::Unanswered => Ok(()),
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

    /// Whether the store answers a hostname demand (`namespace/hostname` or
    /// `host:<hostname>`).
    fn holds_hostname_name(&self, name: &str) -> bool {
        if let Some(hostname) = name.strip_prefix("host:") {
            return !self.services_by_hostname(hostname).is_empty();
        }
        name.split_once('/').is_some_and(|(namespace, hostname)| {
            self.service(&NamespacedHostname {
                namespace: namespace.to_owned(),
                hostname: hostname.to_owned(),
            })
            .is_some()
        })
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

    /// Remembers `name` as asked in vain until `until`.
    fn missed(&self, name: &str, until: Instant) {
        let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        if misses.len() >= MAX_MISSES {
            misses.retain(|_, remembered| *remembered > Instant::now());
        }
        if misses.len() < MAX_MISSES {
            misses.insert(name.to_owned(), until);
        }
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
    match tokio::time::timeout(ON_DEMAND_WAIT, demand.request(ADDRESS_TYPE_URL, name)).await {
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
