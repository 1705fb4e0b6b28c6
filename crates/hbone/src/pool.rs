//! A pool of HBONE client connections, keyed by a caller-chosen key, each multiplexing many
//! tunnels.
//!
//! The pool never creates sockets or TLS configurations: a [`Connector`] does, so that the
//! caller can create sockets inside a pod's network namespace and present that pod's identity.
//! The map lock is a plain mutex held only for lookups and inserts, never across an await;
//! connection establishment per key is serialized by an async lock so that a burst of requests
//! for a new key opens one connection, not one each.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::future::Future;
use std::hash::Hash;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{Instrument, debug, debug_span};

use crate::client::{ClientError, handshake, open_tunnel};
use crate::config::H2Config;
use crate::request::ConnectRequest;
use crate::slot::{StreamCount, StreamSlot};
use crate::stream::HboneStream;

/// Idle connections (no tunnel, no checkout) are closed after this long (up to twice it).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for connector plus HTTP/2 handshake; requests for the same key wait behind a
/// connection being established, so a silent peer must not hold them forever.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Produces a new connection (TCP + TLS with ALPN `h2`, already handshaken) for a pool key.
///
/// Implemented for closures `Fn(&K) -> impl Future<Output = io::Result<Io>>`.
pub trait Connector<K>: Send + Sync + 'static {
    /// The established connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Opens a connection for `key`.
    fn connect(&self, key: &K) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl<K, F, Fut, Io> Connector<K> for F
where
    F: Fn(&K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<Io>> + Send,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = Io;

    fn connect(&self, key: &K) -> impl Future<Output = io::Result<Io>> + Send {
        self(key)
    }
}

/// Pool tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// HTTP/2 settings of every pooled connection; `max_concurrent_streams` is also the number
    /// of tunnels the pool puts on one connection before opening another.
    pub h2: H2Config,
    /// How long a connection may stay without tunnels before it is closed.
    pub idle_timeout: Duration,
    /// Limit for opening one connection (connector and HTTP/2 handshake together).
    pub connect_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            h2: H2Config::default(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// A pool of HBONE connections. Cheap to clone; clones share the connections.
pub struct Pool<K, C> {
    inner: Arc<PoolInner<K, C>>,
}

impl<K, C> Clone for Pool<K, C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, C> std::fmt::Debug for Pool<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct PoolInner<K, C> {
    connector: C,
    config: PoolConfig,
    entries: Mutex<HashMap<K, KeyEntry, RandomState>>,
}

struct KeyEntry {
    connections: Vec<Arc<PooledConnection>>,
    /// Held while a new connection for this key is being established.
    establishing: Arc<tokio::sync::Mutex<()>>,
}

/// A checked-out stream: the connection's sender, the stream's place, the connection.
type Checkout = (SendRequest<Bytes>, StreamSlot, Arc<PooledConnection>);

struct PooledConnection {
    sender: SendRequest<Bytes>,
    max_streams: usize,
    active_streams: StreamCount,
    /// Bumped on every checkout; the idle check compares it between two ticks.
    checkouts: AtomicU64,
    closed: AtomicBool,
}

impl PooledConnection {
    fn try_reserve(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let reserved = self
            .active_streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| {
                (active < self.max_streams).then_some(active + 1)
            })
            .is_ok();
        if reserved {
            self.checkouts.fetch_add(1, Ordering::Relaxed);
        }
        reserved
    }
}

impl<K, C> Pool<K, C>
where
    K: Eq + Hash + Clone + Send + Sync + std::fmt::Debug + 'static,
    C: Connector<K>,
{
    /// A pool that opens connections through `connector`.
    pub fn new(connector: C, config: PoolConfig) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                connector,
                config,
                entries: Mutex::new(HashMap::default()),
            }),
        }
    }

    /// Opens a tunnel on a connection for `key`, reusing one with a free stream when there is
    /// one. A connection found dead while sending is dropped and the request retried once on a
    /// new connection.
    pub async fn connect(
        &self,
        key: &K,
        request: &ConnectRequest,
    ) -> Result<HboneStream, ClientError> {
        let mut retried = false;
        loop {
            let (sender, slot, connection) = self.checkout(key).await?;
            match open_tunnel(sender, request, Some(slot)).await {
                Err(error) if !retried && error.is_connection_failure() => {
                    debug!(?key, %error, "pooled hbone connection failed, retrying on a new one");
                    connection.closed.store(true, Ordering::Release);
                    self.inner.remove(key, &connection);
                    retried = true;
                }
                result => return result,
            }
        }
    }

    /// Number of live connections held for `key`.
    pub fn connection_count(&self, key: &K) -> usize {
        self.inner.lock().get(key).map_or(0, |entry| {
            entry
                .connections
                .iter()
                .filter(|c| !c.closed.load(Ordering::Acquire))
                .count()
        })
    }

    async fn checkout(&self, key: &K) -> Result<Checkout, ClientError> {
        if let Some(found) = self.inner.try_checkout(key) {
            return Ok(found);
        }
        let establishing = {
            let mut entries = self.inner.lock();
            let entry = entries.entry(key.clone()).or_insert_with(|| KeyEntry {
                connections: Vec::new(),
                establishing: Arc::new(tokio::sync::Mutex::new(())),
            });
            Arc::clone(&entry.establishing)
        };
        let _establishing = establishing.lock().await;
        // Whoever held the lock before may have just opened a connection with room for us.
        if let Some(found) = self.inner.try_checkout(key) {
            return Ok(found);
        }
        let config = &self.inner.config;
        let establish = async {
            let io = self
                .inner
                .connector
                .connect(key)
                .await
                .map_err(ClientError::Connect)?;
            handshake(io, &config.h2).await
        };
        let (sender, connection) = tokio::time::timeout(config.connect_timeout, establish)
            .await
            .map_err(|_| ClientError::ConnectTimeout(config.connect_timeout))??;
        let max_streams = connection
            .max_concurrent_send_streams()
            .min(self.inner.config.h2.max_concurrent_streams as usize)
            .max(1);
        let pooled = Arc::new(PooledConnection {
            sender: sender.clone(),
            max_streams,
            active_streams: Arc::new(AtomicUsize::new(1)),
            checkouts: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        });
        debug!(?key, max_streams, "opened pooled hbone connection");
        tokio::spawn(
            drive_connection(
                connection,
                Arc::clone(&pooled),
                Arc::downgrade(&self.inner),
                key.clone(),
                self.inner.config.idle_timeout,
            )
            .instrument(debug_span!("hbone_pool_connection", ?key)),
        );
        self.inner
            .lock()
            .entry(key.clone())
            .or_insert_with(|| KeyEntry {
                connections: Vec::new(),
                establishing: Arc::clone(&establishing),
            })
            .connections
            .push(Arc::clone(&pooled));
        let slot = StreamSlot::taken(&pooled.active_streams);
        Ok((sender, slot, pooled))
    }
}

impl<K: Eq + Hash, C> PoolInner<K, C> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, KeyEntry, RandomState>> {
        // A panic while holding the lock cannot leave the map inconsistent (every update is a
        // single push or retain), so a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn try_checkout(&self, key: &K) -> Option<Checkout> {
        let mut entries = self.lock();
        let entry = entries.get_mut(key)?;
        entry
            .connections
            .retain(|connection| !connection.closed.load(Ordering::Acquire));
        let connection = entry.connections.iter().find(|c| c.try_reserve())?;
        Some((
            connection.sender.clone(),
            StreamSlot::taken(&connection.active_streams),
            Arc::clone(connection),
        ))
    }

    fn remove(&self, key: &K, connection: &Arc<PooledConnection>) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key) {
            entry.connections.retain(|c| !Arc::ptr_eq(c, connection));
            if entry.connections.is_empty() && Arc::strong_count(&entry.establishing) == 1 {
                entries.remove(key);
            }
        }
    }

    /// Closes `connection` if it has no tunnel; checked under the map lock so that no checkout
    /// can reserve it concurrently.
    fn close_if_idle(&self, key: &K, connection: &Arc<PooledConnection>) -> bool {
        {
            let _entries = self.lock();
            if connection.active_streams.load(Ordering::Acquire) != 0 {
                return false;
            }
            connection.closed.store(true, Ordering::Release);
        }
        self.remove(key, connection);
        true
    }
}

/// Drives one pooled connection until the peer closes it, it fails, or it sits idle; then takes
/// it out of the pool.
async fn drive_connection<IO, K, C>(
    mut connection: Connection<IO, Bytes>,
    pooled: Arc<PooledConnection>,
    pool: Weak<PoolInner<K, C>>,
    key: K,
    idle_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
    K: Eq + Hash,
{
    // Our reference keeps a `SendRequest` alive; once it is gone (idle close) the connection
    // finishes its remaining streams and shuts down by itself.
    let mut pooled = Some(pooled);
    let mut checkouts_at_last_tick = u64::MAX;
    let mut idle_tick = tokio::time::interval(idle_timeout);
    idle_tick.tick().await;
    loop {
        tokio::select! {
            result = &mut connection => {
                match result {
                    Ok(()) => debug!("pooled hbone connection closed"),
                    Err(error) => debug!(%error, "pooled hbone connection failed"),
                }
                break;
            }
            _ = idle_tick.tick(), if pooled.is_some() => {
                let Some(current) = pooled.as_ref() else { continue };
                let checkouts = current.checkouts.load(Ordering::Relaxed);
                let idle = checkouts == checkouts_at_last_tick
                    && current.active_streams.load(Ordering::Acquire) == 0;
                checkouts_at_last_tick = checkouts;
                if !idle {
                    continue;
                }
                let closed = match pool.upgrade() {
                    Some(pool) => pool.close_if_idle(&key, current),
                    None => true,
                };
                if closed {
                    debug!("closing idle pooled hbone connection");
                    pooled = None;
                }
            }
        }
    }
    if let Some(pooled) = pooled {
        pooled.closed.store(true, Ordering::Release);
        if let Some(pool) = pool.upgrade() {
            pool.remove(&key, &pooled);
        }
    }
}
