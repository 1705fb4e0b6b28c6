//! What a cluster's endpoint choice needs that depends only on its configuration, worked out
//! once per applied configuration rather than on every request: the healthy endpoints and
//! whether their weights are equal, the running total of their weights (weighted round robin),
//! and the consistent-hash tables (Envoy's ring hash or Maglev), one per locality priority as
//! Envoy builds them, weighted as Envoy weights them. While outlier detection ejects endpoints,
//! the tables over the others, rebuilt once each time the ejected set changes
//! ([`BalancingPlan::hashed_available`]), with the pools a narrowed choice draws from
//! ([`super::pools`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::pools::{self, Pools};
use super::{HashInput, worker};
use crate::model::{Cluster, Endpoint, HashKey, HashTable, LoadBalancer, MAXIMUM_RING_SIZE};

/// A cluster's balancing plan (see the module comment), built from its endpoints by
/// [`BalancingPlan::new`].
#[derive(Default)]
pub struct BalancingPlan {
    /// Indices (into the cluster's endpoints) of the healthy ones, in the cluster's order.
    healthy: Vec<usize>,
    /// Whether the healthy endpoints have the same weight (0 counts as 1, as the model reads
    /// it).
    equal_weights: bool,
    /// The running sum of the healthy endpoints' weights, in `healthy`'s order.
    cumulative_weights: Vec<u64>,
    /// The consistent-hash table of each locality priority, over its ready endpoints (ejected
    /// or not: the table Envoy builds in panic, see [`table_hosts`]), by priority (Envoy's
    /// `ThreadAwareLoadBalancerBase` builds one per priority): `None` for a priority without a
    /// healthy endpoint; empty without a consistent hash.
    tables: Vec<Option<Arc<Table>>>,
    /// What [`Self::tables`] needs to be rebuilt: the table kind and the locality weights.
    hash_table: Option<HashTable>,
    locality_weights: Vec<u32>,
    /// The tables over the endpoints not ejected, for the ejected set last seen; `None` until
    /// an ejection is first seen. Workers take them from here when theirs are out of date
    /// ([`worker::with_available`]); a choice reads its worker's.
    available: Mutex<Option<Arc<AvailableTables>>>,
    /// How many priority tables have been built over the endpoints not ejected.
    available_builds: AtomicUsize,
    /// The pools with no endpoint ejected, made on the first choice that needs them (one the
    /// plan alone does not answer: locality priorities, weighed localities, a retry).
    pools: OnceLock<Pools>,
    /// Distinct in the process: the workers' copies of [`Self::available`] and their EDF
    /// schedules of the healthy endpoints (weighted least request) are kept under it.
    id: u64,
    /// Lives as long as the plan, so that workers drop what they keep of a plan gone.
    alive: Arc<()>,
    /// The index of each endpoint address (the first, should two endpoints share one), so that
    /// a session's endpoint is found without walking the endpoints ([`Self::endpoint_at`]).
    by_address: HashMap<SocketAddr, usize>,
}

/// The ejections a choice sees: which endpoints are ejected now, and a stamp that changes
/// with every ejection ([`next_ejection_stamp`]), so that the tables over the others are
/// looked up without looking at each endpoint.
pub struct Ejections<'a> {
    pub stamp: u64,
    pub now: Instant,
    /// When the ejection of the endpoint at this index ends, if it is ejected at `now`.
    pub ejected_until: &'a dyn Fn(usize) -> Option<Instant>,
}

/// A stamp for an ejection, distinct from every other in the process: the tables over the
/// endpoints not ejected ([`BalancingPlan::hashed_available`]) are out of date once the stamp
/// of a cluster's last ejection differs from theirs, whichever runtime state it came from.
pub fn next_ejection_stamp() -> u64 {
    static STAMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    STAMPS.fetch_add(1, Ordering::Relaxed)
}

/// The consistent-hash tables of a plan over the endpoints not ejected, for one ejected set:
/// the tables Envoy builds out of panic over each priority's healthy hosts
/// (`healthyHostsPerLocality()`), where outlier detection has marked the ejected ones
/// unhealthy; and the pools of that set ([`Pools`]). Immutable once built: the plan and each
/// worker hold it until the ejected set changes.
pub(super) struct AvailableTables {
    /// The stamp of the last ejection when the set was read.
    stamp: u64,
    /// When the first of `ejected` returns: from then on the set is out of date.
    until: Option<Instant>,
    /// Indices of the ejected healthy endpoints, in the cluster's order.
    ejected: Vec<usize>,
    /// By priority, as [`BalancingPlan::tables`]; a priority none of whose endpoints is
    /// ejected shares the plan's table.
    tables: Vec<Option<Arc<Table>>>,
    /// The pools of this ejected set, made on the first choice that needs them; shared with
    /// the next tables while the ejected set is the same.
    pools: Arc<OnceLock<Pools>>,
}

impl AvailableTables {
    /// Whether these are the tables for `ejections`: no ejection since they were built, and
    /// no return.
    pub(super) fn serves(&self, ejections: &Ejections<'_>) -> bool {
        self.stamp == ejections.stamp && self.until.is_none_or(|until| until > ejections.now)
    }

    /// The pools of `cluster` (this plan's) for this ejected set.
    pub(super) fn pools(&self, cluster: &Cluster) -> &Pools {
        self.pools
            .get_or_init(|| Pools::new(cluster, &self.ejected))
    }

    /// [`BalancingPlan::hashed`] in the table of locality priority `level` over its endpoints
    /// not ejected.
    pub(super) fn hashed(
        &self,
        hash: u64,
        level: u32,
        accept: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let table = self.tables.get(usize::try_from(level).ok()?)?;
        table.as_deref()?.lookup(hash, accept)
    }
}

/// A consistent-hash table a plan built, for the admin page: its kind and its size as built
/// (a ring's points, which Envoy's scaling may put above the minimum; a Maglev table's
/// entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltTable {
    Ring { points: usize },
    Maglev { entries: usize },
}

/// A built consistent-hash table, holding endpoint indices.
enum Table {
    /// `(hash, endpoint)` points sorted by hash: a key goes to the first point at or after its
    /// hash, wrapping round.
    Ring(Vec<(u64, usize)>),
    /// Maglev's lookup table: a key goes to the entry at its hash modulo the table's size.
    Maglev(Vec<usize>),
}

impl BalancingPlan {
    /// The plan of a cluster with these `endpoints` balanced by `balancer`, in localities
    /// weighed by `locality_weights` (by the endpoints' `locality`; empty: not weighed).
    pub fn new(endpoints: &[Endpoint], balancer: &LoadBalancer, locality_weights: &[u32]) -> Self {
        let weight = |e: &Endpoint| u64::from(e.weight.max(1));
        let healthy: Vec<usize> = (0..endpoints.len())
            .filter(|i| endpoints[*i].healthy)
            .collect();
        let equal_weights = healthy.first().is_none_or(|first| {
            healthy
                .iter()
                .all(|i| weight(&endpoints[*i]) == weight(&endpoints[*first]))
        });
        let cumulative_weights = healthy
            .iter()
            .scan(0u64, |sum, i| {
                *sum += weight(&endpoints[*i]);
                Some(*sum)
            })
            .collect();
        let hash_table = match balancer {
            LoadBalancer::ConsistentHash(_, table) => Some(*table),
            _ => None,
        };
        let mut plan = BalancingPlan {
            healthy,
            equal_weights,
            cumulative_weights,
            tables: Vec::new(),
            hash_table,
            locality_weights: locality_weights.to_vec(),
            available: Mutex::new(None),
            available_builds: AtomicUsize::new(0),
            pools: OnceLock::new(),
            id: pools::next_id(),
            alive: Arc::new(()),
            by_address: HashMap::with_capacity(endpoints.len()),
        };
        for (i, endpoint) in endpoints.iter().enumerate() {
            plan.by_address.entry(endpoint.address).or_insert(i);
        }
        if hash_table.is_some() {
            let levels = plan
                .healthy
                .iter()
                .map(|i| endpoints[*i].priority + 1)
                .max();
            plan.tables = (0..levels.unwrap_or(0))
                .map(|level| plan.build_table(endpoints, level, &[]).map(Arc::new))
                .collect();
        }
        plan
    }

    /// The table of locality priority `level` over its healthy endpoints but the `ejected`
    /// ones; `None` when no host is left (or without a consistent hash).
    fn build_table(&self, endpoints: &[Endpoint], level: u32, ejected: &[usize]) -> Option<Table> {
        let kind = self.hash_table?;
        let in_level = |i: &usize| endpoints[*i].priority == level;
        let ready: Vec<usize> = self.healthy.iter().copied().filter(in_level).collect();
        let members: Vec<usize> = ready
            .iter()
            .copied()
            .filter(|i| !ejected.contains(i))
            .collect();
        let hosts = table_hosts(endpoints, &ready, &members, &self.locality_weights);
        (!hosts.is_empty()).then(|| match kind {
            HashTable::Ring { minimum_size } => Table::Ring(ring(&hosts, minimum_size)),
            HashTable::Maglev { table_size } => Table::Maglev(maglev(hosts, table_size)),
        })
    }

    /// The hash table built for each locality priority, by priority (`None`: no healthy
    /// endpoint there); empty without a consistent hash.
    pub fn built_tables(&self) -> impl Iterator<Item = Option<BuiltTable>> + '_ {
        self.tables.iter().map(|table| match table.as_deref()? {
            Table::Ring(points) => Some(BuiltTable::Ring {
                points: points.len(),
            }),
            Table::Maglev(entries) => Some(BuiltTable::Maglev {
                entries: entries.len(),
            }),
        })
    }

    /// Indices of the healthy endpoints, in the cluster's order.
    pub fn healthy(&self) -> &[usize] {
        &self.healthy
    }

    /// Whether the healthy endpoints have the same weight: then every pool drawn from them has
    /// too, and round robin and least request keep their plain algorithms.
    pub fn equal_weights(&self) -> bool {
        self.equal_weights
    }

    /// The healthy endpoint `roll` (0 to 1) draws in proportion to the weights, by binary
    /// search of the running sum: the same choice as walking the weights in order.
    pub fn weighted(&self, roll: f64) -> Option<usize> {
        let total = *self.cumulative_weights.last()?;
        let point = (roll.clamp(0.0, 1.0) * total as f64) as u64;
        let at = self.cumulative_weights.partition_point(|sum| *sum <= point);
        self.healthy.get(at.min(self.healthy.len() - 1)).copied()
    }

    /// The healthy endpoint Envoy's weighted least request picks next: the one due first on an
    /// EDF schedule of the endpoints' `weight`s (`LeastRequestLoadBalancer::hostWeight`, the
    /// endpoint's weight over its requests in flight plus one), put back with its weight now;
    /// O(log n) in the endpoints. The others keep the weight they went in with until their
    /// turn, as under Envoy. The schedule is this worker thread's own ([`worker::scheduled`]),
    /// read without a lock.
    pub fn scheduled(&self, weight: impl Fn(usize) -> f64) -> Option<usize> {
        worker::scheduled(self.id, &self.alive, &self.healthy, weight)
    }

    /// The index of the endpoint at `address`, if the cluster has one there: O(1).
    pub fn endpoint_at(&self, address: SocketAddr) -> Option<usize> {
        self.by_address.get(&address).copied()
    }

    /// The plan's id ([`Self::id`]).
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// The token that lives as long as the plan.
    pub(super) fn alive(&self) -> &Arc<()> {
        &self.alive
    }

    /// The pools of `cluster` (this plan's) with no endpoint ejected.
    pub(super) fn pools(&self, cluster: &Cluster) -> &Pools {
        self.pools.get_or_init(|| Pools::new(cluster, &[]))
    }

    /// The endpoint the consistent-hash table of locality priority `level` gives a key of
    /// hash `hash` ([`key_hash`]), the first `accept`s (endpoints outside the request's pool,
    /// tried before, are passed over as Envoy passes over a host its retry predicate
    /// rejects): the table Envoy builds in panic, over healthy endpoints ejected or not.
    /// `None`: no table there, or no entry accepted.
    pub fn hashed(&self, hash: u64, level: u32, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let table = self.tables.get(usize::try_from(level).ok()?)?;
        table.as_deref()?.lookup(hash, accept)
    }

    /// [`Self::hashed`] in the table of locality priority `level` over its endpoints not
    /// ejected, as Envoy's `ThreadAwareLoadBalancerBase::refresh` rebuilds its tables over the
    /// healthy hosts whenever their health changes (outlier detection marks an ejected host
    /// unhealthy): a key whose endpoint is ejected goes where that table puts it, and with
    /// Maglev (whose table is filled anew) or a ring (whose scale follows the lightest host)
    /// some keys of other endpoints move too; they come back when the endpoint returns. The
    /// tables are built once per change of the ejected set of `endpoints` (the cluster's, this
    /// plan's), each in time proportional to its size, and shared until the next ejection or
    /// return; a choice reads its worker's copy ([`worker::with_available`]) at the cost of a
    /// comparison, without a lock. `None`: no host left there, or none accepted.
    pub fn hashed_available(
        &self,
        endpoints: &[Endpoint],
        ejections: &Ejections<'_>,
        hash: u64,
        level: u32,
        accept: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        // No endpoint of the cluster was ever ejected: the plan's tables are those over the
        // available endpoints, read without the lock the cache of rebuilt tables takes.
        if ejections.stamp == 0 {
            return self.hashed(hash, level, accept);
        }
        worker::with_available(self, endpoints, ejections, |tables| {
            tables.hashed(hash, level, accept)
        })
    }

    /// The tables over the endpoints not ejected (see [`Self::hashed_available`]), built when
    /// the ejected set has changed since they last were.
    pub(super) fn available_tables(
        &self,
        endpoints: &[Endpoint],
        ejections: &Ejections<'_>,
    ) -> Arc<AvailableTables> {
        let mut cached = self
            .available
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tables) = cached.as_ref()
            && tables.serves(ejections)
        {
            return Arc::clone(tables);
        }
        let mut ejected = Vec::new();
        let mut until: Option<Instant> = None;
        for i in &self.healthy {
            if let Some(end) = (ejections.ejected_until)(*i) {
                ejected.push(*i);
                until = Some(until.map_or(end, |u| u.min(end)));
            }
        }
        let (tables, pools) = match cached.as_ref() {
            Some(previous) if previous.ejected == ejected => {
                (previous.tables.clone(), Arc::clone(&previous.pools))
            }
            _ => {
                let tables = (0..self.tables.len())
                    .map(|level| {
                        let affected = ejected
                            .iter()
                            .any(|i| endpoints[*i].priority as usize == level);
                        if !affected {
                            return self.tables[level].clone();
                        }
                        self.available_builds.fetch_add(1, Ordering::Relaxed);
                        self.build_table(endpoints, level as u32, &ejected)
                            .map(Arc::new)
                    })
                    .collect();
                (tables, Arc::default())
            }
        };
        let fresh = Arc::new(AvailableTables {
            stamp: ejections.stamp,
            until,
            ejected,
            tables,
            pools,
        });
        *cached = Some(Arc::clone(&fresh));
        fresh
    }

    /// How many priority tables have been built over the endpoints not ejected since the
    /// plan was: one per affected priority for each change of the ejected set.
    pub fn available_builds(&self) -> usize {
        self.available_builds.load(Ordering::Relaxed)
    }
}

impl Table {
    /// The first endpoint `accept`ed, looking from the entry of a key of hash `hash`.
    fn lookup(&self, hash: u64, accept: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            // Envoy's `RingHashLoadBalancer::Ring::chooseHost`: the first point whose hash is
            // at least the key's, wrapping to the first; a retry moves along the ring.
            Table::Ring(points) => {
                let start = points.partition_point(|(h, _)| *h < hash) % points.len();
                (0..points.len())
                    .map(|step| points[(start + step) % points.len()].1)
                    .find(|i| accept(*i))
            }
            // Envoy's `MaglevTable::chooseHost`: the entry at the hash; a retry flips the hash
            // with `~0 - attempt + 1` to reach another. Past a few flips, the table is walked
            // from the key's entry, so that any accepted endpoint in it is found.
            Table::Maglev(entries) => {
                let size = entries.len() as u64;
                let flipped = (1..=8u64).map(|attempt| hash ^ (!0u64 - attempt + 1));
                std::iter::once(hash)
                    .chain(flipped)
                    .map(|h| entries[(h % size) as usize])
                    .find(|i| accept(*i))
                    .or_else(|| {
                        let start = (hash % size) as usize;
                        (0..entries.len())
                            .map(|step| entries[(start + step) % entries.len()])
                            .find(|i| accept(*i))
                    })
            }
        }
    }
}

/// One endpoint as a hash table holds it: the address text it is hashed by (Envoy hashes a
/// host's `address()->asString()`, `ip:port` with IPv6 in brackets, as `SocketAddr` writes
/// it; Istio never sets `use_hostname_for_hashing`), and its normalised weight.
struct Host {
    index: usize,
    key: String,
    /// Envoy's normalised host weight (`normalizeWeights`, thread_aware_lb_impl.cc).
    weight: f64,
}

/// The hosts of one locality priority's table, `members` (indices into `endpoints`), with
/// Envoy's normalised weights (`ThreadAwareLoadBalancerBase::refresh`, `normalizeWeights`,
/// source/extensions/load_balancing_policies/common/thread_aware_lb_impl.cc): each endpoint's
/// weight over the sum of them all; with locality weights (Istio's `distribute`, for which it
/// sets `locality_weighted_lb_config`), each locality's weight over the sum of the localities'
/// weights, shared among its endpoints by their weights, and the endpoints of a locality of
/// weight 0 left out. Envoy weighs the localities inside the table (as configured: not the
/// effective weights the other balancers draw by), so a key keeps its endpoint; no locality
/// is drawn first. `ready` are the priority's ready endpoints, whose localities are those of
/// Envoy's host set (their weights make the sum whatever hosts are left); `members`, the hosts
/// of the table: all of `ready` for the table Envoy builds in panic (`hostsPerLocality()`),
/// those not ejected for the one it builds otherwise (`healthyHostsPerLocality()`, where a
/// locality with every endpoint ejected keeps its weight in the sum and has no host, so the
/// weights sum to less than 1). istiod sends Envoy no unready endpoint, so those are never
/// hosts at all.
fn table_hosts(
    endpoints: &[Endpoint],
    ready: &[usize],
    members: &[usize],
    locality_weights: &[u32],
) -> Vec<Host> {
    let weight = |i: usize| f64::from(endpoints[i].weight.max(1));
    let host = |i: usize, weight: f64| Host {
        index: i,
        key: endpoints[i].address.to_string(),
        weight,
    };
    if locality_weights.is_empty() {
        let sum: f64 = members.iter().map(|i| weight(*i)).sum();
        return members.iter().map(|i| host(*i, weight(*i) / sum)).collect();
    }
    let locality_weight = |i: usize| {
        usize::try_from(endpoints[i].locality)
            .ok()
            .and_then(|l| locality_weights.get(l))
            .copied()
            .unwrap_or(0)
    };
    // Envoy's host set lists the priority's localities, each once, with its weight.
    let mut localities: Vec<u32> = ready.iter().map(|i| endpoints[*i].locality).collect();
    localities.sort_unstable();
    localities.dedup();
    let locality_sum: u64 = localities
        .iter()
        .filter_map(|l| locality_weights.get(usize::try_from(*l).ok()?))
        .map(|w| u64::from(*w))
        .sum();
    if locality_sum == 0 {
        return Vec::new();
    }
    let mut hosts = Vec::with_capacity(members.len());
    for locality in localities {
        let in_locality = || {
            members
                .iter()
                .copied()
                .filter(move |i| endpoints[*i].locality == locality)
        };
        let Some(first) = in_locality().next() else {
            continue;
        };
        if locality_weight(first) == 0 {
            continue;
        }
        let share = f64::from(locality_weight(first)) / locality_sum as f64;
        let sum: f64 = in_locality().map(weight).sum();
        hosts.extend(in_locality().map(|i| host(i, weight(i) * share / sum)));
    }
    hosts
}

/// Envoy's consistent-hash function (`HashUtil::xxHash64`, source/common/common/hash.h):
/// xxHash64 of `bytes` under `seed` (0 but for a Maglev skip). Both the request's key and the
/// endpoints' table entries are hashed with it, so a key goes to the endpoint Envoy's table of
/// the same endpoints gives it, in every process and build.
pub(super) fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, seed)
}

/// A request's key under `key`, Envoy's hash policy: a header's or cookie's value (or the
/// cookie generated for the request), the source IP's text, a query parameter's value; `None` when the request has none (the choice is then
/// random, as Envoy's hashing balancers choose without a hash).
pub(super) fn hash_key(key: &HashKey, input: &HashInput<'_>) -> Option<String> {
    match key {
        HashKey::Header(name) => input
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        // An empty value is no key (Envoy's `CookieHashMethod`); a request without the cookie
        // is hashed on the one generated for it, if any.
        HashKey::Cookie(cookie) => super::cookie::request_cookie(input.headers, &cookie.name)
            .filter(|v| !v.is_empty())
            .or(input.generated_cookie)
            .map(str::to_owned),
        HashKey::SourceIp => Some(input.source_ip.to_string()),
        HashKey::QueryParameter(name) => input
            .query
            .and_then(|q| weft_policy::route::first_query_value(q, name))
            .map(|v| v.into_owned()),
    }
}

/// The hash of a request's key, as Envoy's hash policy gives it to the load balancer: it
/// draws the locality priority (Envoy's `choosePriority(hash)`) and finds the endpoint in
/// that priority's table ([`BalancingPlan::hashed`]).
pub fn key_hash(key: &str) -> u64 {
    hash64(0, key.as_bytes())
}

impl std::fmt::Debug for BalancingPlan {
    /// A summary: a table has up to millions of entries.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table: Vec<String> = self
            .built_tables()
            .map(|table| match table {
                None => "none".to_owned(),
                Some(BuiltTable::Ring { points }) => format!("ring of {points}"),
                Some(BuiltTable::Maglev { entries }) => format!("maglev of {entries}"),
            })
            .collect();
        f.debug_struct("BalancingPlan")
            .field("healthy", &self.healthy.len())
            .field("equal_weights", &self.equal_weights)
            .field("tables", &table)
            .finish()
    }
}

/// Envoy's ring (`RingHashLoadBalancer::Ring::Ring`, ring_hash_lb.cc), over the normalised
/// weights of [`table_hosts`] (which sum to 1, or less where a weighed locality has no
/// endpoint in the table); the scale is set so that the lightest host gets a whole number of
/// points, at least `minimum_size` in all (`ceil(min_weight * min_ring_size) / min_weight`, at
/// most the maximum ring size); each host then gets `scale * weight` points, kept as running
/// sums so that fractional shares add up, each point the hash of `"<address>_<n>"`.
fn ring(hosts: &[Host], minimum_size: u64) -> Vec<(u64, usize)> {
    let lightest = hosts.iter().map(|h| h.weight).fold(1.0, f64::min);
    let scale = ((lightest * minimum_size as f64).ceil() / lightest).min(MAXIMUM_RING_SIZE as f64);
    let mut points = Vec::with_capacity(scale.ceil() as usize);
    let (mut current, mut target) = (0.0f64, 0.0f64);
    for host in hosts {
        target += scale * host.weight;
        let mut n = 0u64;
        while current < target {
            points.push((
                hash64(0, format!("{}_{n}", host.key).as_bytes()),
                host.index,
            ));
            n += 1;
            current += 1.0;
        }
    }
    points.sort_unstable();
    points
}

/// Envoy's weighted Maglev table (`OriginalMaglevTable::constructImplementationInternals`,
/// maglev_lb.cc, after the Maglev paper's listing 1): hosts in the order of their address
/// text, each with an offset and a skip hashed from it; in each round every host whose weight
/// has earned an entry (a host of the greatest weight on every round, one of a third of it on
/// every third) takes the next free slot of its permutation, until the table is full.
fn maglev(mut hosts: Vec<Host>, table_size: u64) -> Vec<usize> {
    hosts.sort_by(|a, b| a.key.cmp(&b.key));
    let size = table_size.max(2);
    let heaviest = hosts.iter().map(|h| h.weight).fold(0.0, f64::max);
    struct Entry {
        index: usize,
        offset: u64,
        skip: u64,
        weight: f64,
        target: f64,
        next: u64,
    }
    // Envoy's normalised weights and its floating-point test, so that a host is picked on the
    // rounds Envoy picks it even where the ratios are not whole.
    let mut entries: Vec<Entry> = hosts
        .iter()
        .map(|h| Entry {
            index: h.index,
            offset: hash64(0, h.key.as_bytes()) % size,
            skip: hash64(1, h.key.as_bytes()) % (size - 1) + 1,
            weight: h.weight,
            target: 0.0,
            next: 0,
        })
        .collect();
    let mut table: Vec<Option<usize>> = vec![None; size as usize];
    let mut filled = 0u64;
    let mut round = 1u64;
    while filled < size {
        for entry in entries.iter_mut() {
            if filled == size {
                break;
            }
            if round as f64 * entry.weight < entry.target {
                continue;
            }
            entry.target += heaviest;
            let mut slot = (entry.offset + entry.skip * entry.next) % size;
            let mut probes = 0u64;
            while table[slot as usize].is_some() {
                entry.next += 1;
                probes += 1;
                // A prime size makes each permutation visit every slot; past `size` probes
                // (a size that is not prime), the next free slot is taken.
                slot = if probes < size {
                    (entry.offset + entry.skip * entry.next) % size
                } else {
                    (slot + 1) % size
                };
            }
            table[slot as usize] = Some(entry.index);
            entry.next += 1;
            filled += 1;
        }
        round += 1;
    }
    table.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests;
