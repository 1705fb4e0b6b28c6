//! On-demand names for the delta ADS client: the [`Demand`] handle that asks a running
//! [`DeltaClient`] for resources by name, and the client's bookkeeping of the demands it sent
//! and the answers that settle them.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use weft_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, Resource};

use super::{DeltaClient, MAX_DEMANDED_NAMES, MAX_WAITERS_PER_NAME, Update};

/// Why a demand was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DemandError {
    /// Too many demands are already waiting for the client.
    #[error("too many demands waiting")]
    Busy,
    /// The type was not subscribed by name, or holds [`MAX_DEMANDED_NAMES`] names already.
    #[error("{type_url} takes no more names on demand")]
    Refused {
        /// The type asked for.
        type_url: String,
    },
    /// [`MAX_WAITERS_PER_NAME`] demands already wait for the answer for this name.
    #[error("too many demands waiting for {name}")]
    Crowded {
        /// The name asked for.
        name: String,
    },
    /// The client is gone.
    #[error("discovery client stopped")]
    Stopped,
}

/// What a [`Demand`] hands the client's task.
pub(super) enum DemandMessage {
    /// Subscribe to a name and answer once the server has.
    Subscribe {
        type_url: String,
        name: String,
        answered: oneshot::Sender<Result<(), DemandError>>,
        /// Whether the name stays subscribed when the server finds nothing for it.
        watch_absent: bool,
    },
    /// Unsubscribe names asked for earlier.
    Release {
        type_url: String,
        names: Vec<String>,
    },
}

/// Asks a running [`DeltaClient`] for resources by name (Envoy's on-demand delta xDS, as
/// ztunnel's `XDS_ON_DEMAND`): the name is added to the type's subscription (and stays, so a
/// reconnect asks again) and [`Demand::request`] returns once the server has answered it,
/// with the resources it covers or with the name as removed (nothing there). Concurrent
/// demands for one name share one request. Cheap to clone; usable from any runtime.
#[derive(Debug, Clone)]
pub struct Demand {
    pub(super) requests: mpsc::Sender<DemandMessage>,
}

impl Demand {
    /// Subscribes to `name` of `type_url` and waits for the server's answer (callers bound
    /// the wait).
    pub async fn request(&self, type_url: &str, name: &str) -> Result<(), DemandError> {
        self.subscribe(type_url, name, false).await
    }

    /// As [`Demand::request`], but a name the server found nothing for stays subscribed, so
    /// what later appears under it is pushed at once; the caller [`Demand::release`]s it
    /// when it no longer cares (a cache of misses that expire). A demand given up before
    /// the answer (its future dropped) does not keep the name.
    pub async fn request_watching_absent(
        &self,
        type_url: &str,
        name: &str,
    ) -> Result<(), DemandError> {
        self.subscribe(type_url, name, true).await
    }

    async fn subscribe(
        &self,
        type_url: &str,
        name: &str,
        watch_absent: bool,
    ) -> Result<(), DemandError> {
        let (answered, answer) = oneshot::channel();
        self.send(DemandMessage::Subscribe {
            type_url: type_url.to_string(),
            name: name.to_string(),
            answered,
            watch_absent,
        })?;
        answer.await.unwrap_or(Err(DemandError::Stopped))
    }

    /// Unsubscribes `names` of `type_url` asked for earlier (the delta protocol's
    /// `resource_names_unsubscribe`): the server then removes what no other name of the
    /// subscription covers. Names the subscription was built with, and names still waiting
    /// for an answer, stay. Queued like a demand; fails when the queue is full (try again
    /// later).
    pub fn release(&self, type_url: &str, names: Vec<String>) -> Result<(), DemandError> {
        self.send(DemandMessage::Release {
            type_url: type_url.to_string(),
            names,
        })
    }

    fn send(&self, message: DemandMessage) -> Result<(), DemandError> {
        self.requests
            .try_send(message)
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => DemandError::Busy,
                mpsc::error::TrySendError::Closed(_) => DemandError::Stopped,
            })
    }
}

/// The names a response answers: those it carries (as names or aliases), those it removes.
pub(super) struct Answers {
    found: Vec<String>,
    removed: Vec<String>,
}

impl Answers {
    pub(super) fn of(resources: &[Resource], removed: &[String]) -> Self {
        Self {
            found: resources
                .iter()
                .flat_map(|r| std::iter::once(&r.name).chain(&r.aliases))
                .cloned()
                .collect(),
            removed: removed.to_vec(),
        }
    }
}

/// Demands sent and not yet answered, by type and name: their waiters.
pub(super) type PendingDemands =
    HashMap<(String, String), Vec<oneshot::Sender<Result<(), DemandError>>>>;

impl DeltaClient {
    /// Records a demand; the subscription request to send, unless the name is already asked
    /// for on this connection (its waiter then shares that request's answer).
    pub(super) fn take_demand(&mut self, demand: DemandMessage) -> Option<DeltaDiscoveryRequest> {
        let (type_url, name, answered, watch_absent) = match demand {
            DemandMessage::Subscribe {
                type_url,
                name,
                answered,
                watch_absent,
            } => (type_url, name, answered, watch_absent),
            DemandMessage::Release { type_url, names } => return self.release(type_url, names),
        };
        let key = (type_url, name);
        if let Some(waiters) = self.pending.get_mut(&key) {
            // Waiters that gave up (their connection waited out its bound) hold no place.
            waiters.retain(|waiter| !waiter.is_closed());
            if waiters.len() >= MAX_WAITERS_PER_NAME {
                let _ = answered.send(Err(DemandError::Crowded { name: key.1 }));
                return None;
            }
            waiters.push(answered);
            if watch_absent {
                self.watching_absent.insert(key);
            }
            return None;
        }
        let (type_url, name) = key;
        let Some(subscription) = self
            .subscriptions
            .iter_mut()
            .find(|s| s.type_url == type_url && !s.names.is_empty())
        else {
            let _ = answered.send(Err(DemandError::Refused { type_url }));
            return None;
        };
        if !subscription.names.contains(&name) {
            if subscription.names.len() >= MAX_DEMANDED_NAMES {
                warn!(type_url = %type_url, %name, "too many names subscribed on demand");
                let _ = answered.send(Err(DemandError::Refused { type_url }));
                return None;
            }
            subscription.names.push(name.clone());
        }
        debug!(type_url = %type_url, %name, "subscribing on demand");
        let request = DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            resource_names_subscribe: vec![name.clone()],
            ..DeltaDiscoveryRequest::default()
        };
        if watch_absent {
            self.watching_absent
                .insert((type_url.clone(), name.clone()));
        }
        self.pending.insert((type_url, name), vec![answered]);
        Some(request)
    }

    /// Drops `names` from the type's subscription, except those it was built with and those
    /// still waiting for an answer, and the resources named by them; the unsubscribe request
    /// to send, if any name goes.
    fn release(&mut self, type_url: String, names: Vec<String>) -> Option<DeltaDiscoveryRequest> {
        let subscription = self
            .subscriptions
            .iter_mut()
            .find(|s| s.type_url == type_url && !s.names.is_empty())?;
        let pending = &self.pending;
        let mut asked: std::collections::HashSet<String> = names
            .into_iter()
            .filter(|name| {
                !subscription.initial.contains(name)
                    && !pending.contains_key(&(type_url.clone(), name.clone()))
            })
            .collect();
        let mut released = Vec::new();
        subscription.names.retain(|name| {
            let goes = asked.remove(name);
            if goes {
                released.push(name.clone());
            }
            !goes
        });
        if released.is_empty() {
            return None;
        }
        // A resource unsubscribed by its own name is the client's to drop (the server forgets
        // having sent it, and sends it again if another name still covers it); what the
        // released names covered as aliases, the server removes.
        let dropped: Vec<String> = released
            .iter()
            .filter(|name| subscription.accepted.contains(*name))
            .cloned()
            .collect();
        if !dropped.is_empty() {
            let update = Update {
                added: Vec::new(),
                removed: dropped.clone(),
                full_state: false,
            };
            match subscription.handler.apply(update) {
                Ok(()) => {
                    for name in &dropped {
                        subscription.accepted.remove(name);
                    }
                }
                Err(error) => warn!(type_url = %type_url, %error, "dropping released resources"),
            }
        }
        debug!(type_url = %type_url, names = released.len(), "unsubscribing on demand");
        Some(DeltaDiscoveryRequest {
            type_url,
            resource_names_unsubscribe: released,
            ..DeltaDiscoveryRequest::default()
        })
    }

    /// Answers the demands a response settles (a name it carries, as a resource or an alias,
    /// or lists as removed); names that covered nothing are unsubscribed (the request doing
    /// so is returned), so a name asked for in vain holds no place.
    pub(super) fn settle_demands(
        &mut self,
        type_url: &str,
        answers: Answers,
    ) -> Option<DeltaDiscoveryRequest> {
        let mut unresolved = Vec::new();
        let mut settle = |name: &str, found: bool| {
            let key = (type_url.to_string(), name.to_string());
            if let Some(waiters) = self.pending.remove(&key) {
                // Kept only while someone waits for the answer: a watcher that gave up
                // would never release it.
                let waited = waiters.iter().any(|waiter| !waiter.is_closed());
                for waiter in waiters {
                    let _ = waiter.send(Ok(()));
                }
                let watched = self.watching_absent.remove(&key) && waited;
                if !found && !watched {
                    unresolved.push(name.to_string());
                }
            }
        };
        for name in &answers.found {
            settle(name, true);
        }
        for name in &answers.removed {
            settle(name, false);
        }
        if unresolved.is_empty() {
            return None;
        }
        if let Some(subscription) = self
            .subscriptions
            .iter_mut()
            .find(|s| s.type_url == type_url)
        {
            subscription.names.retain(|name| !unresolved.contains(name));
        }
        Some(DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            resource_names_unsubscribe: unresolved,
            ..DeltaDiscoveryRequest::default()
        })
    }
}

#[cfg(test)]
mod tests;
