//! What a peer can hold on an accepting side before it has proved anything, bounded: the
//! connections each source address may have open at once and those of the whole process, the
//! time a TLS handshake may take, the process's descriptor limit raised to what it may be, and
//! accept loops that back off while descriptors are exhausted instead of spinning on the
//! listener (whose pending connection keeps it readable).
//!
//! Shared by the agent (every pod's HBONE, plaintext and outbound listeners) and the waypoint
//! (its HBONE listener). A connection refused by a limit is accepted and closed at once, which
//! frees its descriptor; leaving it in the backlog would let it wait there instead.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldhash::fast::RandomState;
use tokio::net::{TcpListener, TcpStream};

/// Time a peer has, from the accept, to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one source address may have open at once on a listener group, by default. Mesh
/// peers multiplex tunnels over a few connections (one per worker, and one more per 100
/// concurrent tunnels), so only an attacker needs more.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 256;
/// Descriptors kept out of the connection budget: listeners (three per pod and worker), the
/// eBPF maps and programs, the control plane's own sockets and files.
pub const RESERVED_DESCRIPTORS: u64 = 1024;
/// The smallest connection budget, whatever the descriptor limit.
const MIN_CONNECTIONS: usize = 64;
/// First and longest wait after a failed accept.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Raises the soft limit on open descriptors to the hard limit (as ztunnel does at start) and
/// returns the limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}

/// The connections a process with `descriptors` open files may proxy: each takes two (the
/// accepted socket and its upstream), after the reserve.
pub fn connection_budget_for(descriptors: u64) -> usize {
    let usable = descriptors.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(usable)
        .unwrap_or(usize::MAX)
        .max(MIN_CONNECTIONS)
}

/// What a process's accepting sides admit: its connections together, and those of one source
/// address on one listener group.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub budget: Arc<ConnectionBudget>,
    pub per_source: usize,
}

impl ConnectionLimits {
    /// The process's limits, at start: the descriptor limit raised to the hard limit (a soft
    /// limit of 1024 would be a few hundred connections), the budget it allows unless
    /// `max_connections` says otherwise, and `per_source`.
    pub fn for_process(max_connections: Option<usize>, per_source: usize) -> io::Result<Self> {
        let descriptors = raise_open_files_limit()?;
        let total = max_connections.unwrap_or_else(|| connection_budget_for(descriptors));
        tracing::info!(
            open_files = descriptors,
            max_connections = total,
            max_connections_per_source = per_source,
            "connection limits"
        );
        Ok(Self {
            budget: ConnectionBudget::new(total),
            per_source,
        })
    }

    /// What the process's current descriptor limit allows, with the default per-source limit.
    pub fn for_open_files_limit() -> Self {
        use nix::sys::resource::{Resource, getrlimit};
        let descriptors = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
        Self {
            budget: ConnectionBudget::new(connection_budget_for(descriptors)),
            per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        }
    }

    /// A per-source limit of `per_source` drawing on the budget, for one listener group.
    pub fn sources(&self) -> Arc<SourceLimit> {
        SourceLimit::new(self.per_source, Arc::clone(&self.budget))
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{peer} already holds {limit} connections (the per-source limit)")]
    Source { peer: IpAddr, limit: usize },
    #[error("{limit} connections are open (the process's limit)")]
    Total { limit: usize },
}

/// The connections of the whole process.
#[derive(Debug)]
pub struct ConnectionBudget {
    limit: usize,
    open: AtomicUsize,
    refused: AtomicU64,
}

impl ConnectionBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused so far, by this budget or a source limit drawing on it.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A place for one more connection, held until the permit is dropped.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Refused> {
        self.take().map(|()| Permit {
            budget: Arc::clone(self),
            source: None,
        })
    }

    fn take(&self) -> Result<(), Refused> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |open| {
                (open < self.limit).then_some(open + 1)
            });
        match taken {
            Ok(_) => Ok(()),
            Err(_) => Err(self.count_refusal(Refused::Total { limit: self.limit })),
        }
    }

    /// Counts a refusal and logs it, at doubling intervals so a flood does not flood the log.
    fn count_refusal(&self, refused: Refused) -> Refused {
        let count = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if count.is_power_of_two() {
            tracing::warn!(%refused, refused_so_far = count, "connection refused");
        } else {
            tracing::debug!(%refused, "connection refused");
        }
        refused
    }
}

/// The connections of each source address on one listener group (a pod's HBONE listeners, a
/// waypoint's), drawing on the process's budget.
#[derive(Debug)]
pub struct SourceLimit {
    limit: usize,
    budget: Arc<ConnectionBudget>,
    by_source: Mutex<HashMap<IpAddr, usize, RandomState>>,
}

impl SourceLimit {
    pub fn new(limit: usize, budget: Arc<ConnectionBudget>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            budget,
            by_source: Mutex::new(HashMap::default()),
        })
    }

    /// A place for one more connection from `source`, held until the permit is dropped.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Permit, Refused> {
        {
            let mut by_source = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
            let held = by_source.entry(source).or_insert(0);
            if *held >= self.limit {
                let refused = Refused::Source {
                    peer: source,
                    limit: self.limit,
                };
                return Err(self.budget.count_refusal(refused));
            }
            *held += 1;
        }
        match self.budget.take() {
            Ok(()) => Ok(Permit {
                budget: Arc::clone(&self.budget),
                source: Some((Arc::clone(self), source)),
            }),
            Err(refused) => {
                self.release(source);
                Err(refused)
            }
        }
    }

    /// Connections `source` holds now.
    pub fn held_by(&self, source: IpAddr) -> usize {
        self.by_source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&source)
            .copied()
            .unwrap_or(0)
    }

    fn release(&self, source: IpAddr) {
        let mut by_source = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = by_source.get_mut(&source) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                by_source.remove(&source);
            }
        }
    }
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<ConnectionBudget>,
    source: Option<(Arc<SourceLimit>, IpAddr)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.open.fetch_sub(1, Ordering::AcqRel);
        if let Some((limit, source)) = &self.source {
            limit.release(*source);
        }
    }
}

/// The wait after each failed accept of a listener: 5 ms, doubling to 1 s, back to nothing on
/// the next success. The first failure of a run is logged, the run's count when it ends.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u64,
    delay: Duration,
}

impl AcceptBackoff {
    /// How long to wait before accepting again after `error`.
    pub fn failed(&mut self, error: &io::Error) -> Duration {
        self.failures += 1;
        self.delay = if self.delay.is_zero() {
            ACCEPT_BACKOFF_FIRST
        } else {
            (self.delay * 2).min(ACCEPT_BACKOFF_MAX)
        };
        if self.failures == 1 {
            tracing::warn!(%error, "accept failed; backing off until it succeeds again");
        }
        self.delay
    }

    /// An accept succeeded.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting again");
            *self = Self::default();
        }
    }
}

/// Accepts connections on `listener` until `shutdown` completes: each is admitted by `admit`
/// (a refused one is closed at once) and handed to `serve` with its permit, which it holds for
/// as long as it serves the connection; after a failed accept the loop backs off
/// ([`AcceptBackoff`]) rather than spinning on a listener whose pending connection keeps it
/// readable.
pub async fn accept_loop(
    listener: &TcpListener,
    admit: impl Fn(SocketAddr) -> Result<Permit, Refused>,
    mut serve: impl FnMut(TcpStream, SocketAddr, Permit),
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                if let Ok(permit) = admit(peer) {
                    serve(stream, peer, permit);
                }
            }
            // Out of descriptors, mostly.
            Err(error) => tokio::time::sleep(backoff.failed(&error)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn each_source_and_the_process_are_bounded() {
        let budget = ConnectionBudget::new(5);
        let sources = SourceLimit::new(3, Arc::clone(&budget));
        let a: Vec<Permit> = (0..3).map(|_| sources.admit(ip(1)).unwrap()).collect();
        assert_eq!(
            sources.admit(ip(1)).unwrap_err(),
            Refused::Source {
                peer: ip(1),
                limit: 3
            }
        );
        let b: Vec<Permit> = (0..2).map(|_| sources.admit(ip(2)).unwrap()).collect();
        assert_eq!(budget.open(), 5);
        // The process is full: another source is refused, and takes no per-source place.
        assert_eq!(
            sources.admit(ip(3)).unwrap_err(),
            Refused::Total { limit: 5 }
        );
        assert_eq!(sources.held_by(ip(3)), 0);
        assert_eq!(budget.admit().unwrap_err(), Refused::Total { limit: 5 });
        assert_eq!(budget.refused(), 3);
        // Closing connections frees their places.
        drop(a);
        assert_eq!((budget.open(), sources.held_by(ip(1))), (2, 0));
        let _c = sources.admit(ip(1)).unwrap();
        let _d = budget.admit().unwrap();
        drop(b);
        assert_eq!(budget.open(), 2);
    }

    #[test]
    fn the_budget_follows_the_descriptor_limit() {
        assert_eq!(connection_budget_for(1_048_576), (1_048_576 - 1024) / 2);
        assert_eq!(connection_budget_for(20_000), 9_488);
        assert_eq!(connection_budget_for(1024), MIN_CONNECTIONS);
    }

    #[test]
    fn failed_accepts_back_off_and_success_resets() {
        let error = io::Error::from_raw_os_error(24); // EMFILE
        let mut backoff = AcceptBackoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.failed(&error)).collect();
        assert_eq!(delays[0], Duration::from_millis(5));
        assert_eq!(delays[1], Duration::from_millis(10));
        assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
        assert_eq!(delays[9], Duration::from_secs(1));
        // Ten failures in a row wait more than a second in all: no spinning on the listener.
        assert!(delays.iter().sum::<Duration>() > Duration::from_secs(1));
        backoff.succeeded();
        assert_eq!(backoff.failed(&error), Duration::from_millis(5));
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let limit = raise_open_files_limit().unwrap();
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((soft, limit), (hard, hard));
    }
}
