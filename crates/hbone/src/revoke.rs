//! Ending established connections from outside: a proxy registers each connection it carries
//! with what allowed it, wraps the connection's streams in [`Revocable`], and when its
//! configuration changes asks the registry to revoke the connections the new configuration no
//! longer allows. A revoked stream fails its next read or write (pending ones are woken), so
//! whatever copies bytes through it ends and drops the connection.
//!
//! The registry decides nothing itself: the caller's closure does, over each connection's key.
//! Connections are grouped (by pod, say) so that a caller can end a whole group at once.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a connection was ended, carried by the error its streams fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Revoked(pub String);

/// The shared state of one connection: whether it was revoked, why, and who to wake.
#[derive(Debug, Default)]
pub struct Revocation {
    revoked: AtomicBool,
    reason: OnceLock<String>,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Revocation {
    /// Ends the connection: its streams fail from now on. The first reason given is kept.
    pub fn revoke(&self, reason: impl Into<String>) {
        let _ = self.reason.set(reason.into());
        self.revoked.store(true, Ordering::Release);
        self.reader.wake();
        self.writer.wake();
    }

    /// Why the connection was revoked, once it was.
    pub fn reason(&self) -> Option<&str> {
        if self.revoked.load(Ordering::Acquire) {
            self.reason.get().map(String::as_str)
        } else {
            None
        }
    }

    fn error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            Revoked(self.reason().unwrap_or("revoked").to_owned()),
        )
    }

    /// `poll` unless revoked; when it is pending, `waker` learns who to wake on revocation.
    fn guard<T>(
        &self,
        waker: &AtomicWaker,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.reason().is_some() {
            return Poll::Ready(Err(self.error()));
        }
        match poll(cx) {
            Poll::Pending => {
                waker.register(cx.waker());
                // A revocation between the check above and the registration woke nobody.
                if self.reason().is_some() {
                    return Poll::Ready(Err(self.error()));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }
}

/// A stream that fails every read and write once its connection is revoked.
#[derive(Debug)]
pub struct Revocable<S> {
    inner: S,
    revocation: Arc<Revocation>,
}

impl<S> Revocable<S> {
    pub fn new(inner: S, revocation: Arc<Revocation>) -> Self {
        Self { inner, revocation }
    }

    /// Why the connection was revoked, once it was.
    pub fn revoked(&self) -> Option<&str> {
        self.revocation.reason()
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Revocable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let inner = &mut this.inner;
        this.revocation.guard(&this.revocation.reader, cx, |cx| {
            Pin::new(inner).poll_read(cx, buf)
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Revocable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let inner = &mut this.inner;
        this.revocation.guard(&this.revocation.writer, cx, |cx| {
            Pin::new(inner).poll_write(cx, buf)
        })
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct Entry<K> {
    key: K,
    revocation: Arc<Revocation>,
}

/// One group's open connections, by registration id.
type Group<K> = HashMap<u64, Arc<Entry<K>>>;

struct Registry<G, K> {
    groups: Mutex<HashMap<G, Group<K>>>,
    next_id: AtomicU64,
}

/// The open connections of a proxy, each with the key its authorization was decided on, in
/// groups. Cheap to clone.
pub struct ConnectionRegistry<G, K> {
    inner: Arc<Registry<G, K>>,
}

impl<G, K> Clone for ConnectionRegistry<G, K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<G, K> Default for ConnectionRegistry<G, K> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Registry {
                groups: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }
}

impl<G: Eq + Hash + Clone, K> std::fmt::Debug for ConnectionRegistry<G, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRegistry")
            .field("open", &self.len())
            .finish()
    }
}

/// One registered connection; dropping it (when the connection ends) unregisters it.
pub struct Registration<G: Eq + Hash + Clone, K> {
    registry: Arc<Registry<G, K>>,
    group: G,
    id: u64,
    revocation: Arc<Revocation>,
}

impl<G: Eq + Hash + Clone, K> std::fmt::Debug for Registration<G, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .field("revoked", &self.revocation.reason())
            .finish()
    }
}

impl<G: Eq + Hash + Clone, K> Registration<G, K> {
    /// The connection's revocation, to wrap its streams in [`Revocable`] with.
    pub fn revocation(&self) -> Arc<Revocation> {
        Arc::clone(&self.revocation)
    }

    /// `stream`, failing once this connection is revoked.
    pub fn wrap<S>(&self, stream: S) -> Revocable<S> {
        Revocable::new(stream, self.revocation())
    }

    /// Why the connection was revoked, once it was.
    pub fn revoked(&self) -> Option<&str> {
        self.revocation.reason()
    }
}

impl<G: Eq + Hash + Clone, K> Drop for Registration<G, K> {
    fn drop(&mut self) {
        let mut groups = lock(&self.registry.groups);
        if let Some(entries) = groups.get_mut(&self.group) {
            entries.remove(&self.id);
            if entries.is_empty() {
                groups.remove(&self.group);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl<G: Eq + Hash + Clone, K> ConnectionRegistry<G, K> {
    /// Registers a connection of `group` authorized on `key`. Register before the
    /// authorization check, so that a change between the check and the registration is not
    /// missed (a re-evaluation then sees the connection).
    pub fn register(&self, group: G, key: K) -> Registration<G, K> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let revocation = Arc::new(Revocation::default());
        lock(&self.inner.groups)
            .entry(group.clone())
            .or_default()
            .insert(
                id,
                Arc::new(Entry {
                    key,
                    revocation: Arc::clone(&revocation),
                }),
            );
        Registration {
            registry: Arc::clone(&self.inner),
            group,
            id,
            revocation,
        }
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        lock(&self.inner.groups).values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks `decide` about every open connection (the lock is not held meanwhile) and revokes
    /// those it gives a reason for; returns how many it revoked.
    pub fn revoke_where(&self, mut decide: impl FnMut(&G, &K) -> Option<String>) -> usize {
        let open: Vec<(G, Arc<Entry<K>>)> = lock(&self.inner.groups)
            .iter()
            .flat_map(|(group, entries)| {
                entries
                    .values()
                    .map(move |entry| (group.clone(), Arc::clone(entry)))
            })
            .collect();
        let mut revoked = 0;
        for (group, entry) in open {
            if entry.revocation.reason().is_some() {
                continue;
            }
            if let Some(reason) = decide(&group, &entry.key) {
                entry.revocation.revoke(reason);
                revoked += 1;
            }
        }
        revoked
    }

    /// Revokes every open connection of `group`; returns how many.
    pub fn revoke_group(&self, group: &G, reason: &str) -> usize {
        let entries: Vec<Arc<Entry<K>>> = lock(&self.inner.groups)
            .get(group)
            .map(|entries| entries.values().cloned().collect())
            .unwrap_or_default();
        for entry in &entries {
            entry.revocation.revoke(reason);
        }
        entries.len()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_revoked_stream_fails_its_pending_read_and_every_later_call() {
        let registry: ConnectionRegistry<&str, u16> = ConnectionRegistry::default();
        let kept = registry.register("pod-a", 80);
        let ended = registry.register("pod-a", 443);
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = ended.wrap(near);
        far.write_all(b"before").await.unwrap();
        let mut buf = [0u8; 6];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"before");

        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let error = stream.read(&mut buf).await.unwrap_err();
            (error, stream)
        });
        tokio::task::yield_now().await;
        let revoked = registry.revoke_where(|group, port| {
            assert_eq!(*group, "pod-a");
            (*port == 443).then(|| "port 443 is no longer allowed".to_owned())
        });
        assert_eq!(revoked, 1);
        let (error, mut stream) = reader.await.unwrap();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(error.to_string(), "port 443 is no longer allowed");
        assert!(stream.write_all(b"after").await.is_err());
        assert_eq!(stream.revoked(), Some("port 443 is no longer allowed"));
        assert_eq!(kept.revoked(), None);
        // Revoked once: a second pass does not count it again.
        assert_eq!(registry.revoke_where(|_, _| Some("again".to_owned())), 1);
        assert_eq!(ended.revoked(), Some("port 443 is no longer allowed"));
    }

    #[test]
    fn connections_leave_the_registry_when_they_end_and_groups_end_together() {
        let registry: ConnectionRegistry<&str, ()> = ConnectionRegistry::default();
        let a1 = registry.register("a", ());
        let a2 = registry.register("a", ());
        let b = registry.register("b", ());
        assert_eq!(registry.len(), 3);
        drop(a2);
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.revoke_group(&"a", "pod a left the mesh"), 1);
        assert_eq!(a1.revoked(), Some("pod a left the mesh"));
        assert_eq!(b.revoked(), None);
        drop(a1);
        drop(b);
        assert!(registry.is_empty());
        assert!(lock(&registry.inner.groups).is_empty());
    }
}
