//! One proxy's stream: its subscriptions by type URL and what each was sent, the requests
//! it handles (subscribe, ACK, NACK), the debounced pushes after store changes, and the
//! pure diff between what was sent and what the proxy should now have.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::Streaming;
use tracing::{debug, info, warn};
use weft_proto::envoy::config::core::v3::ControlPlane;
use weft_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::stand_ins::{moved_hostnames, refresh_stand_ins};
use super::wire::{DeltaResponse, SentResource};
use super::{
    Exceeded, MAX_NAMES, MAX_TYPES, ProxyIdentity, ResponseSender, Scope, ServerConfig,
    StreamError, WILDCARD,
};
use crate::metrics::{Rejection, StreamEvent, XdsMetrics};
use crate::store::{Snapshot, SnapshotReader, StoredResource, TypeResources};
/// Keeps the connected-proxies gauge right however the stream task ends.
pub(super) struct ConnectedGuard {
    metrics: Arc<dyn XdsMetrics>,
    proxy: ProxyIdentity,
}

impl ConnectedGuard {
    pub(super) fn new(metrics: Arc<dyn XdsMetrics>, proxy: ProxyIdentity) -> Self {
        metrics.proxy_connected(&proxy.id);
        metrics.stream_event(&proxy, StreamEvent::Opened);
        Self { metrics, proxy }
    }
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.metrics.proxy_disconnected(&self.proxy.id);
        self.metrics.stream_event(&self.proxy, StreamEvent::Closed);
        info!(proxy = %self.proxy.id, "proxy disconnected");
    }
}

/// One type URL's subscription on one stream.
#[derive(Debug, Default)]
pub(super) struct TypeSubscription {
    pub(super) wildcard: bool,
    pub(super) names: BTreeSet<String>,
    /// What the proxy was last sent (or said it had), by name: the version. A NACKed version stays
    /// here, so it is not sent again; only a newer one is. Name and version of a resource sent
    /// are those of the store's resource, shared (every stream holds the same two strings).
    pub(super) sent: HashMap<Arc<str>, Arc<str>>,
    /// The type's resources at the last evaluation; an identical map needs no new diff.
    pub(super) evaluated: Option<Arc<TypeResources>>,
    /// Hostname names that nothing goes by, and the wildcard alias standing in for each
    /// (`Snapshot::stand_in`), as of the last evaluation.
    pub(super) stand_ins: BTreeMap<String, String>,
    /// The same, by wildcard alias: the names each stands in for.
    pub(super) standing_for: BTreeMap<String, BTreeSet<String>>,
}

impl TypeSubscription {
    /// Whether the subscription covers `resource`: a wildcard covers all; a name, the resource
    /// of that name and every resource going by it as an alias.
    fn wants(&self, resource: &StoredResource) -> bool {
        self.wildcard
            || self.names.contains(&*resource.name)
            || resource
                .aliases
                .iter()
                .any(|alias| self.names.contains(alias) || self.standing_for.contains_key(alias))
    }

    /// Records `stand_in` as the alias standing in for `name` (none: no longer any); the
    /// alias it replaces, if it changed.
    pub(super) fn set_stand_in(&mut self, name: &str, stand_in: Option<String>) -> Option<String> {
        let before = match &stand_in {
            Some(alias) => self.stand_ins.insert(name.to_string(), alias.clone()),
            None => self.stand_ins.remove(name),
        };
        if before == stand_in {
            return None;
        }
        if let Some(old) = &before
            && let Some(names) = self.standing_for.get_mut(old)
        {
            names.remove(name);
            if names.is_empty() {
                self.standing_for.remove(old);
            }
        }
        if let Some(alias) = stand_in {
            self.standing_for
                .entry(alias)
                .or_default()
                .insert(name.to_string());
        }
        before
    }

    /// Records what `delta` sends as what the proxy has.
    pub(super) fn record_sent(&mut self, delta: &TypeDelta) {
        for sent in &delta.added {
            let resource = &sent.resource;
            self.sent
                .insert(resource.name.clone(), resource.version.clone());
        }
        for name in &delta.removed {
            self.sent.remove(name.as_str());
        }
    }

    /// `resource` as sent on this subscription: with the aliases it was subscribed by (none on
    /// a wildcard subscription, which asked by no name).
    fn to_send(&self, resource: &Arc<StoredResource>) -> SentResource {
        let aliases = if self.wildcard {
            Vec::new()
        } else {
            // A wildcard alias standing in for names is sent as those names, which the
            // proxy asked for.
            let mut aliases: Vec<String> = resource
                .aliases
                .iter()
                .filter(|alias| self.names.contains(*alias))
                .cloned()
                .collect();
            for alias in &resource.aliases {
                if let Some(names) = self.standing_for.get(alias) {
                    aliases.extend(names.iter().cloned());
                }
            }
            aliases
        };
        SentResource {
            resource: resource.clone(),
            aliases,
        }
    }
}

/// What a proxy says it has (`initial_resource_versions`) as `sent` entries, with the store's
/// strings wherever it holds the resource (and its version), as a push records them.
fn said_to_have(
    initial: HashMap<String, String>,
    stored: Option<&Arc<TypeResources>>,
) -> HashMap<Arc<str>, Arc<str>> {
    let shared = |name: String, version: String| match stored.and_then(|s| s.get(&name)) {
        Some(r) if *r.version == *version => (r.name.clone(), r.version.clone()),
        Some(r) => (r.name.clone(), version.into()),
        None => (name.into(), version.into()),
    };
    initial.into_iter().map(|(n, v)| shared(n, v)).collect()
}

/// A push waiting for the debounce to settle.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingPush {
    pub(super) first_change: Instant,
    pub(super) deadline: Instant,
}

impl PendingPush {
    /// The push after a change seen at `now`: each change restarts the quiet period, but the
    /// first change of the burst never waits longer than `debounce_max`.
    pub(super) fn after_change(pending: Option<Self>, now: Instant, config: &ServerConfig) -> Self {
        let first_change = pending.map_or(now, |push| push.first_change);
        let deadline = (now + config.debounce).min(first_change + config.debounce_max);
        Self {
            first_change,
            deadline,
        }
    }
}

pub(super) struct ProxyStream {
    pub(super) proxy: ProxyIdentity,
    pub(super) reader: SnapshotReader,
    pub(super) scope: Arc<dyn Scope>,
    pub(super) metrics: Arc<dyn XdsMetrics>,
    pub(super) config: ServerConfig,
    pub(super) subscriptions: BTreeMap<String, TypeSubscription>,
    pub(super) next_nonce: u64,
    pub(super) responses: ResponseSender,
}

impl ProxyStream {
    pub(super) async fn run(
        &mut self,
        first: DeltaDiscoveryRequest,
        mut requests: Streaming<DeltaDiscoveryRequest>,
    ) -> Result<(), StreamError> {
        // Everything published so far is covered by the full state sent on subscription.
        self.reader.latest();
        self.handle_request(first).await?;
        let mut pending: Option<PendingPush> = None;
        loop {
            let deadline = pending.map(|push| push.deadline);
            tokio::select! {
                request = requests.next() => match request {
                    Some(Ok(request)) => self.handle_request(request).await?,
                    Some(Err(status)) => {
                        debug!(proxy = %self.proxy.id, %status, "request stream failed");
                        return Ok(());
                    }
                    None => return Ok(()),
                },
                alive = self.reader.changed() => {
                    if !alive {
                        info!(proxy = %self.proxy.id, "resource store closed, ending stream");
                        return Ok(());
                    }
                    pending = Some(PendingPush::after_change(pending, Instant::now(), &self.config));
                },
                () = sleep_until_or_forever(deadline) => {
                    if let Some(push) = pending.take() {
                        let snapshot = self.reader.latest();
                        self.push_changes(&snapshot, push.first_change).await?;
                    }
                },
            }
        }
    }

    pub(super) async fn handle_request(
        &mut self,
        request: DeltaDiscoveryRequest,
    ) -> Result<(), StreamError> {
        let type_url = request.type_url;
        if !request.response_nonce.is_empty() {
            self.metrics.stream_event(
                &self.proxy,
                StreamEvent::Answered {
                    type_url: &type_url,
                    nonce: &request.response_nonce,
                    error: request.error_detail.as_ref().map(|e| e.message.as_str()),
                },
            );
            match &request.error_detail {
                Some(error) => {
                    warn!(
                        proxy = %self.proxy.id,
                        type_url = %type_url,
                        nonce = %request.response_nonce,
                        code = error.code,
                        message = %error.message,
                        "proxy rejected configuration"
                    );
                    self.metrics.rejected(&Rejection {
                        proxy_id: self.proxy.id.clone(),
                        type_url: type_url.clone(),
                        nonce: request.response_nonce.clone(),
                        message: error.message.clone(),
                    });
                }
                None => debug!(
                    proxy = %self.proxy.id,
                    type_url = %type_url,
                    nonce = %request.response_nonce,
                    "proxy acknowledged configuration"
                ),
            }
        }

        let is_new = !self.subscriptions.contains_key(&type_url);
        let changes_subscription = is_new
            || !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty();
        if !changes_subscription {
            return Ok(());
        }
        if let Err(exceeded) = self.check_bounds(
            &type_url,
            is_new,
            &request.resource_names_subscribe,
            &request.resource_names_unsubscribe,
        ) {
            warn!(proxy = %self.proxy.id, %exceeded, "refused a subscription");
            // Best effort: the proxy learns why before the stream closes.
            let _ = self
                .responses
                .send(Err(tonic::Status::resource_exhausted(exceeded.to_string())))
                .await;
            return Err(StreamError::Exceeded {
                proxy_id: self.proxy.id.clone(),
                exceeded,
            });
        }
        let subscription = self.subscriptions.entry(type_url.clone()).or_default();
        let was_wildcard = subscription.wildcard;
        if is_new {
            subscription.wildcard = request.resource_names_subscribe.is_empty();
            let stored = self.reader.current();
            subscription.sent = said_to_have(
                request.initial_resource_versions,
                stored.resources(&type_url),
            );
        }
        let mut asked = Vec::new();
        for name in request.resource_names_subscribe {
            if name == WILDCARD {
                subscription.wildcard = true;
            } else {
                subscription.names.insert(name.clone());
                asked.push(name);
            }
        }
        let mut dropped = Vec::new();
        for name in request.resource_names_unsubscribe {
            if name == WILDCARD {
                subscription.wildcard = false;
            } else {
                subscription.names.remove(&name);
                subscription.sent.remove(name.as_str());
                dropped.push(name);
            }
        }
        debug!(
            proxy = %self.proxy.id,
            type_url = %type_url,
            wildcard = subscription.wildcard,
            names = subscription.names.len(),
            "subscription changed"
        );
        // `current`, not `latest`: a change not yet pushed must still wake the debounce loop.
        let snapshot = self.reader.current();
        let empty = Arc::new(TypeResources::new());
        let current = snapshot.resources(&type_url).unwrap_or(&empty);
        let visible =
            |resource: &StoredResource| self.scope.visible(&self.proxy, &type_url, resource);
        let change = NameChange {
            asked: &asked,
            dropped: &dropped,
            wildcard_changed: subscription.wildcard != was_wildcard,
        };
        let answer =
            diff_subscription_change(subscription, &snapshot, &type_url, current, change, visible);
        let respond_if_empty = is_new || !asked.is_empty();
        self.send_delta(
            &snapshot,
            &type_url,
            answer,
            respond_if_empty,
            Instant::now(),
        )
        .await
        .map(|_| ())
    }

    /// Whether `request` keeps this stream within its bounds: a type subscribed anew fits
    /// under [`MAX_TYPES`], and its names under [`MAX_NAMES`], in the request and in the
    /// subscription it grows.
    fn check_bounds(
        &self,
        type_url: &str,
        is_new: bool,
        subscribe: &[String],
        unsubscribe: &[String],
    ) -> Result<(), Exceeded> {
        if is_new && self.subscriptions.len() >= MAX_TYPES {
            return Err(Exceeded::Types {
                type_url: type_url.to_string(),
                limit: MAX_TYPES,
            });
        }
        let in_request = subscribe.len() + unsubscribe.len();
        if in_request > MAX_NAMES {
            return Err(Exceeded::NamesInRequest {
                type_url: type_url.to_string(),
                names: in_request,
                limit: MAX_NAMES,
            });
        }
        let held = self
            .subscriptions
            .get(type_url)
            .map_or(0, |s| s.names.len());
        if held + subscribe.len() > MAX_NAMES {
            let subscribed = self.subscriptions.get(type_url);
            let new: BTreeSet<&str> = subscribe
                .iter()
                .map(String::as_str)
                .filter(|name| {
                    *name != WILDCARD && !subscribed.is_some_and(|s| s.names.contains(*name))
                })
                .collect();
            let unsubscribed = unsubscribe
                .iter()
                .filter(|name| subscribed.is_some_and(|s| s.names.contains(*name)))
                .filter(|name| !new.contains(name.as_str()))
                .count();
            let names = (held + new.len()).saturating_sub(unsubscribed);
            if names > MAX_NAMES {
                return Err(Exceeded::NamesSubscribed {
                    type_url: type_url.to_string(),
                    names,
                    limit: MAX_NAMES,
                });
            }
        }
        Ok(())
    }

    pub(super) async fn push_changes(
        &mut self,
        snapshot: &Snapshot,
        since: Instant,
    ) -> Result<(), StreamError> {
        let type_urls: Vec<String> = self.subscriptions.keys().cloned().collect();
        let mut sent = false;
        for type_url in type_urls {
            sent |= self.push_type(snapshot, &type_url, since).await?;
        }
        if sent {
            self.metrics.converged(since.elapsed());
        }
        Ok(())
    }

    /// Diffs one type against what the proxy was sent and sends the difference, if any.
    /// Whether a response was sent.
    async fn push_type(
        &mut self,
        snapshot: &Snapshot,
        type_url: &str,
        since: Instant,
    ) -> Result<bool, StreamError> {
        let Some(subscription) = self.subscriptions.get(type_url) else {
            return Ok(false);
        };
        let empty = Arc::new(TypeResources::new());
        let current = snapshot.resources(type_url).unwrap_or(&empty);
        if subscription
            .evaluated
            .as_ref()
            .is_some_and(|evaluated| Arc::ptr_eq(evaluated, current))
        {
            return Ok(false);
        }
        let visible =
            |resource: &StoredResource| self.scope.visible(&self.proxy, type_url, resource);
        let Some(subscription) = self.subscriptions.get_mut(type_url) else {
            return Ok(false);
        };
        let delta = match subscription.evaluated.clone() {
            // What was sent is what `previous` called for: only the entries that differ
            // between the two maps can change it, and those a stand-in moved from or to.
            Some(previous) => {
                let changed = changes_since(snapshot, type_url, &previous, current);
                let mut candidates: BTreeSet<String> =
                    changed.iter().map(|name| (*name).clone()).collect();
                let hostnames = moved_hostnames(subscription, &previous, current, &changed);
                if !hostnames.is_empty() {
                    let moved =
                        refresh_stand_ins(subscription, hostnames, snapshot, type_url, visible);
                    candidates.extend(moved);
                }
                diff_names(subscription, current, &candidates, visible)
            }
            // Never answered yet: no stand-in found either.
            None => diff_type(subscription, current, visible),
        };
        let answer = Answer {
            delta,
            evaluated: current.clone(),
        };
        self.send_delta(snapshot, type_url, answer, false, since)
            .await
    }

    /// Records `answer`'s delta as sent (the subscription now stands evaluated against
    /// `answer.evaluated`) and sends it; with `respond_if_empty`, even when there is nothing to
    /// say (the answer to a subscription). Whether a response was sent.
    async fn send_delta(
        &mut self,
        snapshot: &Snapshot,
        type_url: &str,
        answer: Answer,
        respond_if_empty: bool,
        since: Instant,
    ) -> Result<bool, StreamError> {
        let Some(subscription) = self.subscriptions.get_mut(type_url) else {
            return Ok(false);
        };
        let Answer { delta, evaluated } = answer;
        subscription.evaluated = Some(evaluated);
        if delta.is_empty() && !respond_if_empty {
            return Ok(false);
        }
        subscription.record_sent(&delta);

        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        let (added, removed) = (delta.added.len(), delta.removed.len());
        let response = DeltaResponse {
            system_version_info: snapshot.generation().to_string(),
            resources: delta.added,
            type_url: type_url.to_string(),
            removed_resources: delta.removed,
            nonce: nonce.clone(),
            control_plane: Some(ControlPlane {
                identifier: self.config.control_plane_id.clone(),
            }),
        };
        if self.responses.send(Ok(response)).await.is_err() {
            return Err(StreamError::ResponsesClosed {
                proxy_id: self.proxy.id.clone(),
            });
        }
        self.metrics.pushed(type_url, since.elapsed());
        self.metrics.stream_event(
            &self.proxy,
            StreamEvent::Sent {
                type_url,
                nonce: &nonce,
            },
        );
        debug!(
            proxy = %self.proxy.id,
            type_url = %type_url,
            nonce = %nonce,
            added,
            removed,
            "pushed resources"
        );
        Ok(true)
    }
}

/// How one request changed a subscription: the names it subscribed (`asked`) and
/// unsubscribed (`dropped`), and whether it turned the wildcard on or off.
#[derive(Debug, Clone, Copy)]
pub(super) struct NameChange<'a> {
    pub(super) asked: &'a [String],
    pub(super) dropped: &'a [String],
    pub(super) wildcard_changed: bool,
}

/// The response to a change of a subscription by name, already applied to `subscription`
/// (its names; `sent` less the names dropped), without a pass over the type: only the
/// resources whose answer can differ are looked at, found in the snapshot's alias index.
///
/// Those are the resources the asked and dropped names cover. A resource a name asked covers
/// is sent again even if the proxy had it, and a name covering nothing is listed as removed:
/// istiod answers every name it is asked (`pilot/pkg/xds/delta.go`, `shouldRespondDelta`),
/// and the proxy asks because it does not hold it. What changed in the store since the
/// subscription was last evaluated and the names do not cover (a push still pending) is left
/// to that push, as istiod answers a subscribe with the names subscribed alone: the answer's
/// `evaluated` stays the previous map, so the push diffs from it and finds those changes
/// (what this answer sent at its current version is not sent twice). Finding them here would
/// walk the type. On a subscription never evaluated (the stream's first request of the type),
/// what the proxy said it has (`initial_resource_versions`) and what every name covers are
/// looked at, and the answer stands evaluated against `current`. Turning the wildcard on or
/// off changes what every resource's answer is: that alone takes the full diff.
pub(super) fn diff_subscription_change(
    subscription: &mut TypeSubscription,
    snapshot: &Snapshot,
    type_url: &str,
    current: &Arc<TypeResources>,
    change: NameChange<'_>,
    visible: impl Fn(&StoredResource) -> bool,
) -> Answer {
    let mut candidates: BTreeSet<String> = BTreeSet::new();
    let evaluated = match &subscription.evaluated {
        Some(previous) if !change.wildcard_changed => previous.clone(),
        Some(_) => current.clone(),
        None => {
            if !change.wildcard_changed {
                candidates.extend(subscription.sent.keys().map(|name| name.to_string()));
                for name in &subscription.names {
                    candidates.extend(
                        snapshot
                            .covering(type_url, name)
                            .iter()
                            .map(|r| r.name.to_string()),
                    );
                }
            }
            current.clone()
        }
    };
    let mut unresolved = Vec::new();
    // A wildcard subscription wants everything already: a name changes nothing it is sent.
    if !subscription.wildcard {
        for name in change.asked {
            // A hostname nothing goes by is answered with the wildcard host covering it.
            let stand_in = snapshot.stand_in(type_url, name, &visible);
            if let Some(replaced) = subscription.set_stand_in(name, stand_in.clone()) {
                candidates.extend(
                    snapshot
                        .covering(type_url, &replaced)
                        .iter()
                        .map(|r| r.name.to_string()),
                );
            }
            let mut covered = false;
            for alias in std::iter::once(name).chain(stand_in.as_ref()) {
                for resource in snapshot.covering(type_url, alias) {
                    if visible(resource) {
                        covered = true;
                        subscription.sent.remove(&resource.name);
                        candidates.insert(resource.name.to_string());
                    }
                }
            }
            if !covered {
                unresolved.push(name.clone());
            }
        }
    }
    for name in change.dropped {
        let stand_in = subscription.set_stand_in(name, None);
        for alias in std::iter::once(name).chain(stand_in.as_ref()) {
            candidates.extend(
                snapshot
                    .covering(type_url, alias)
                    .iter()
                    .map(|r| r.name.to_string()),
            );
        }
    }
    let mut delta = if change.wildcard_changed {
        diff_type(subscription, current, visible)
    } else {
        diff_names(subscription, current, &candidates, visible)
    };
    delta.removed.extend(unresolved);
    Answer { delta, evaluated }
}

/// A response to send on one type, and the map of the type the subscription stands evaluated
/// against once it is sent (what a later push diffs from).
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) delta: TypeDelta,
    pub(super) evaluated: Arc<TypeResources>,
}

/// What one type's next response carries.
#[derive(Debug, Default, PartialEq)]
pub(super) struct TypeDelta {
    pub(super) added: Vec<SentResource>,
    pub(super) removed: Vec<String>,
}

impl TypeDelta {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The difference between what a proxy was sent and what it should have now.
pub(super) fn diff_type(
    subscription: &TypeSubscription,
    current: &TypeResources,
    visible: impl Fn(&StoredResource) -> bool,
) -> TypeDelta {
    crate::cost::looked_at(current.len() + subscription.sent.len());
    let mut delta = TypeDelta::default();
    let mut should_have = BTreeSet::new();
    for (name, resource) in current {
        if !subscription.wants(resource) || !visible(resource) {
            continue;
        }
        should_have.insert(name.as_str());
        if subscription.sent.get(name.as_str()) != Some(&resource.version) {
            delta.added.push(subscription.to_send(resource));
        }
    }
    let mut removed: Vec<String> = subscription
        .sent
        .keys()
        .filter(|name| !should_have.contains(&***name))
        .map(|name| name.to_string())
        .collect();
    removed.sort();
    delta.removed = removed;
    delta
}

/// [`diff_type`] for a subscription that was last evaluated against `previous` (and has not
/// changed since), walking the two maps side by side: entries the store kept (the same `Arc`)
/// are skipped without looking at them, so a push to one proxy costs a pointer comparison per
/// resource plus the work of what changed, not a lookup and a version comparison per resource.
/// (The push does the same with the stand-ins' moves added, `ProxyStream::push_type`.)
#[cfg(test)]
pub(super) fn diff_changes(
    subscription: &TypeSubscription,
    previous: &TypeResources,
    current: &TypeResources,
    visible: impl Fn(&StoredResource) -> bool,
) -> TypeDelta {
    let changed = changed_names(previous, current);
    let mut delta = TypeDelta::default();
    for name in changed {
        consider(subscription, &mut delta, name, current.get(name), &visible);
    }
    delta
}

/// [`diff_type`] restricted to the resources named in `candidates`: right when every other
/// resource's answer is what the proxy was sent already.
pub(super) fn diff_names(
    subscription: &TypeSubscription,
    current: &TypeResources,
    candidates: &BTreeSet<String>,
    visible: impl Fn(&StoredResource) -> bool,
) -> TypeDelta {
    let mut delta = TypeDelta::default();
    for name in candidates {
        consider(subscription, &mut delta, name, current.get(name), &visible);
    }
    delta
}

/// Adds to `delta` what the proxy is owed for the resource `name`, now `now`.
fn consider(
    subscription: &TypeSubscription,
    delta: &mut TypeDelta,
    name: &str,
    now: Option<&Arc<StoredResource>>,
    visible: impl Fn(&StoredResource) -> bool,
) {
    crate::cost::looked_at(1);
    match now.filter(|r| subscription.wants(r) && visible(r)) {
        Some(resource) => {
            if subscription.sent.get(name) != Some(&resource.version) {
                delta.added.push(subscription.to_send(resource));
            }
        }
        None => {
            if subscription.sent.contains_key(name) {
                delta.removed.push(name.to_string());
            }
        }
    }
}

/// Names of the entries that differ between the two maps (in name order), walking them side
/// by side: entries the store kept (the same `Arc`) are skipped with a pointer comparison.
/// The names whose entry differs between `previous` (a map of `type_url` a stream last
/// evaluated) and `current` (the type's map in `snapshot`): the write's own list when the
/// stream evaluated the map that write changed (a stream keeping up with the store), the two
/// maps walked side by side otherwise (a stream that skipped a write). The walk costs each
/// stream the type's size at every push, so proxies x resources per write.
pub(super) fn changes_since<'a>(
    snapshot: &'a Snapshot,
    type_url: &str,
    previous: &'a TypeResources,
    current: &'a TypeResources,
) -> Vec<&'a String> {
    if let Some(change) = snapshot.change(type_url)
        && std::ptr::eq(change.before.as_ref(), previous)
        && snapshot
            .resources(type_url)
            .is_some_and(|map| std::ptr::eq(map.as_ref(), current))
    {
        crate::cost::looked_at(change.names.len());
        return change.names.iter().collect();
    }
    changed_names(previous, current)
}

fn changed_names<'a>(previous: &'a TypeResources, current: &'a TypeResources) -> Vec<&'a String> {
    let mut changed = Vec::new();
    let (mut before, mut now) = (previous.iter().peekable(), current.iter().peekable());
    let mut steps = 0;
    loop {
        steps += 1;
        match (before.peek(), now.peek()) {
            (None, None) => break,
            (Some((old_name, _)), Some((new_name, _))) if old_name == new_name => {
                let (name, old) = before.next().expect("peeked");
                let (_, new) = now.next().expect("peeked");
                if !Arc::ptr_eq(old, new) {
                    changed.push(name);
                }
            }
            (Some((old_name, _)), Some((new_name, _))) if old_name < new_name => {
                changed.push(before.next().expect("peeked").0);
            }
            (Some(_), None) => changed.push(before.next().expect("peeked").0),
            (_, Some(_)) => changed.push(now.next().expect("peeked").0),
        }
    }
    crate::cost::looked_at(steps);
    changed
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
