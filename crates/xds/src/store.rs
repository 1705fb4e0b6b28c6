//! The server's resource store: immutable snapshots published by one writer through a
//! `tokio::sync::watch`, so stream tasks read a consistent state without holding any lock.
//!
//! Resources are opaque: a type URL, a name, a version and the packed message. The version is a
//! stable hash of the packed bytes, so setting an identical resource again changes nothing and
//! wakes nobody.
//!
//! Next to each type's resources the store keeps an [`AliasIndex`] (alias to the resources going
//! by it), updated by the same writes, so a subscription by name is resolved by lookups.

mod alias_index;
mod hostnames;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost_types::Any;
use tokio::sync::watch;
use weft_identity::SpiffeId;

pub use alias_index::AliasIndex;
pub use hostnames::{HOSTNAME_PREFIX, MAX_HOSTNAME_LABELS, MAX_HOSTNAME_LEN, wildcard_aliases};

/// The identities a resource may be sent to, for the server's [`crate::Scope`] to check; the
/// store only keeps it with the resource (and republishes when it changes).
pub type Audience = Arc<BTreeSet<SpiffeId>>;

/// One resource as served on the stream. Held once, by the store: every stream's response
/// refers to it (`Arc<StoredResource>`) instead of copying its packed message, and what a
/// stream records as sent shares its name and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResource {
    /// Name, unique within the resource's type. A new version of a resource keeps the
    /// allocation of the name it replaces, which every stream holds as a key of what it sent.
    pub name: Arc<str>,
    /// Version: a hash of the packed message.
    pub version: Arc<str>,
    /// The packed message.
    pub body: Any,
    /// Who may receive it, when the writer restricts it (gateway credentials); `None`: the
    /// scope decides from the proxy and the name alone. Never sent.
    pub audience: Option<Audience>,
    /// Other names the resource goes by (Envoy's `Resource.aliases`): a subscription by name
    /// covers every resource named or aliased by it (istiod's `Address` answers a subscription
    /// to an IP with the workload or service at it). Sent only to proxies that subscribed by
    /// one of them, and then only those.
    pub aliases: Vec<String>,
}

impl StoredResource {
    /// Builds a resource, deriving its version from the packed bytes.
    pub fn new(name: impl Into<Arc<str>>, body: Any) -> Self {
        Self {
            name: name.into(),
            version: content_version(&body).into(),
            body,
            audience: None,
            aliases: Vec::new(),
        }
    }

    /// The same resource, also going by `aliases` (sorted, without repeats). A change of
    /// aliases alone keeps the version.
    pub fn with_aliases(mut self, mut aliases: Vec<String>) -> Self {
        aliases.sort();
        aliases.dedup();
        self.aliases = aliases;
        self
    }

    /// Whether a subscription to `name` covers this resource.
    pub fn goes_by(&self, name: &str) -> bool {
        &*self.name == name
            || self
                .aliases
                .binary_search_by(|a| a.as_str().cmp(name))
                .is_ok()
    }

    /// The same resource, for `audience` only. A change of audience alone keeps the version:
    /// proxies that keep it are not sent it again; those that lose it are told it is removed.
    pub fn with_audience(mut self, audience: Audience) -> Self {
        self.audience = Some(audience);
        self
    }

    fn same_as(&self, other: &StoredResource) -> bool {
        self.version == other.version
            && self.audience == other.audience
            && self.aliases == other.aliases
    }
}

impl From<(String, Any)> for StoredResource {
    fn from((name, body): (String, Any)) -> Self {
        StoredResource::new(name, body)
    }
}

/// All resources of one type, by name.
pub type TypeResources = BTreeMap<String, Arc<StoredResource>>;

/// An immutable view of every resource. Cheap to clone: each type's map is shared.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    generation: u64,
    types: BTreeMap<String, Arc<TypeResources>>,
    /// Per type, which resources go by each alias: always the index of `types`.
    aliases: BTreeMap<String, AliasIndex>,
    /// Per type this snapshot's write changed, the map it changed and the names it changed.
    changes: BTreeMap<String, Arc<TypeChange>>,
}

/// What one published write changed in one type: the map before it and the names whose entry
/// differs (added, replaced or removed), in name order. Found once by the writer, so that every
/// stream that last evaluated `before` takes the change from here instead of walking the two
/// maps, which costs each stream the type's size at every push.
#[derive(Debug)]
pub struct TypeChange {
    /// The type's resources before the write.
    pub before: Arc<TypeResources>,
    /// The names whose entry the write changed.
    pub names: Vec<String>,
}

impl Snapshot {
    /// Increases by one on every published change; sent as `system_version_info`.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The resources of one type, if any were ever set.
    pub fn resources(&self, type_url: &str) -> Option<&Arc<TypeResources>> {
        self.types.get(type_url)
    }

    /// One resource.
    pub fn get(&self, type_url: &str, name: &str) -> Option<&Arc<StoredResource>> {
        self.types.get(type_url)?.get(name)
    }

    /// The resources of `type_url` a subscription to `name` covers: the one named `name` and
    /// every one going by it as an alias (each once, in name order). A lookup in the type's
    /// index: the cost is that of what it finds, not of the type's size.
    pub fn covering(&self, type_url: &str, name: &str) -> Vec<&Arc<StoredResource>> {
        let Some(resources) = self.types.get(type_url) else {
            return Vec::new();
        };
        let aliased = self
            .aliases
            .get(type_url)
            .map_or(&[][..], |index| index.named_by(name));
        crate::cost::looked_at(aliased.len() + 1);
        let mut covered: Vec<&Arc<StoredResource>> = aliased
            .iter()
            .filter(|aliased| aliased.as_str() != name)
            .filter_map(|aliased| resources.get(aliased))
            .collect();
        if let Some(named) = resources.get(name) {
            let at = covered.partition_point(|r| &*r.name < name);
            covered.insert(at, named);
        }
        covered
    }

    /// What this snapshot's write changed in `type_url`, if it changed it.
    pub fn change(&self, type_url: &str) -> Option<&Arc<TypeChange>> {
        self.changes.get(type_url)
    }

    /// Type URLs that have (or had) resources.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}

/// What a write changed, per resource.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChangeSummary {
    /// Resources that did not exist before.
    pub added: usize,
    /// Resources whose version changed.
    pub updated: usize,
    /// Resources that no longer exist.
    pub removed: usize,
}

impl ChangeSummary {
    /// Whether the write changed anything at all.
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.updated == 0 && self.removed == 0
    }
}

/// The single writer of the resource snapshots. Mutators take `&mut self`, so there is exactly
/// one writer; readers hold [`SnapshotReader`]s. Dropping the store ends every discovery stream
/// served from it (proxies then reconnect elsewhere or later).
#[derive(Debug)]
pub struct ResourceStore {
    current: Snapshot,
    publisher: watch::Sender<Arc<Snapshot>>,
}

impl Default for ResourceStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceStore {
    /// An empty store.
    pub fn new() -> Self {
        let (publisher, _) = watch::channel(Arc::new(Snapshot::default()));
        Self {
            current: Snapshot::default(),
            publisher,
        }
    }

    /// A handle for readers, woken on every published change.
    pub fn reader(&self) -> SnapshotReader {
        SnapshotReader {
            receiver: self.publisher.subscribe(),
        }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.publisher.borrow().clone()
    }

    /// Adds or replaces one resource. Publishes only if its content changed.
    pub fn set(&mut self, type_url: &str, name: impl Into<Arc<str>>, body: Any) -> ChangeSummary {
        let mut resource = StoredResource::new(name, body);
        let mut summary = ChangeSummary::default();
        let existing = self.current.get(type_url, &resource.name);
        match existing {
            Some(existing) if existing.same_as(&resource) => return summary,
            Some(existing) => {
                resource.name = existing.name.clone();
                summary.updated = 1;
            }
            None => summary.added = 1,
        }
        let before = self.type_map(type_url);
        let mut resources = before.as_ref().clone();
        let resource = Arc::new(resource);
        let previous = resources.insert(resource.name.to_string(), resource.clone());
        self.index_mut(type_url)
            .replace(previous.as_deref(), Some(&resource));
        self.current
            .types
            .insert(type_url.to_string(), Arc::new(resources));
        self.current.changes = changed_one(type_url, before, &resource.name);
        self.publish();
        summary
    }

    /// Removes one resource. Publishes only if it existed.
    pub fn remove(&mut self, type_url: &str, name: &str) -> ChangeSummary {
        if self.current.get(type_url, name).is_none() {
            return ChangeSummary::default();
        }
        let before = self.type_map(type_url);
        let mut resources = before.as_ref().clone();
        let previous = resources.remove(name);
        self.index_mut(type_url).replace(previous.as_deref(), None);
        self.current
            .types
            .insert(type_url.to_string(), Arc::new(resources));
        self.current.changes = changed_one(type_url, before, name);
        self.publish();
        ChangeSummary {
            removed: 1,
            ..ChangeSummary::default()
        }
    }

    /// Replaces every resource of one type with `resources`, keeping unchanged ones (same
    /// version) as they were. Publishes once, and only if something changed.
    pub fn replace_type<R: Into<StoredResource>>(
        &mut self,
        type_url: &str,
        resources: impl IntoIterator<Item = R>,
    ) -> ChangeSummary {
        let previous = self
            .current
            .resources(type_url)
            .cloned()
            .unwrap_or_default();
        let mut index = self
            .current
            .aliases
            .get(type_url)
            .cloned()
            .unwrap_or_default();
        let (next, summary, names) = merge_type(&previous, resources, &mut index);
        if summary.is_empty() {
            return summary;
        }
        self.current
            .types
            .insert(type_url.to_string(), Arc::new(next));
        self.current.aliases.insert(type_url.to_string(), index);
        self.current.changes = BTreeMap::from([(
            type_url.to_string(),
            Arc::new(TypeChange {
                before: previous,
                names,
            }),
        )]);
        self.publish();
        summary
    }

    /// Replaces the whole state: every type in `types` as with [`Self::replace_type`], and every
    /// type absent from it emptied. Publishes once, and only if something changed.
    pub fn replace_all<R: Into<StoredResource>>(
        &mut self,
        types: impl IntoIterator<Item = (String, Vec<R>)>,
    ) -> ChangeSummary {
        let mut total = ChangeSummary::default();
        let mut next_types = BTreeMap::new();
        let mut next_aliases = BTreeMap::new();
        let mut changes = BTreeMap::new();
        for (type_url, resources) in types {
            let previous = self
                .current
                .resources(&type_url)
                .cloned()
                .unwrap_or_default();
            let mut index = self
                .current
                .aliases
                .get(&type_url)
                .cloned()
                .unwrap_or_default();
            let (next, summary, names) = merge_type(&previous, resources, &mut index);
            total.added += summary.added;
            total.updated += summary.updated;
            total.removed += summary.removed;
            let next = if summary.is_empty() {
                previous
            } else {
                let before = previous;
                changes.insert(type_url.clone(), Arc::new(TypeChange { before, names }));
                Arc::new(next)
            };
            next_aliases.insert(type_url.clone(), index);
            next_types.insert(type_url, next);
        }
        for (type_url, previous) in &self.current.types {
            if !next_types.contains_key(type_url) {
                total.removed += previous.len();
                if !previous.is_empty() {
                    let names = previous.keys().cloned().collect();
                    let before = previous.clone();
                    changes.insert(type_url.clone(), Arc::new(TypeChange { before, names }));
                }
                next_types.insert(type_url.clone(), Arc::new(TypeResources::new()));
                next_aliases.insert(type_url.clone(), AliasIndex::default());
            }
        }
        if total.is_empty() {
            return total;
        }
        self.current.types = next_types;
        self.current.aliases = next_aliases;
        self.current.changes = changes;
        self.publish();
        total
    }

    fn type_map(&self, type_url: &str) -> Arc<TypeResources> {
        self.current
            .resources(type_url)
            .cloned()
            .unwrap_or_default()
    }

    fn index_mut(&mut self, type_url: &str) -> &mut AliasIndex {
        self.current
            .aliases
            .entry(type_url.to_string())
            .or_default()
    }

    fn publish(&mut self) {
        self.current.generation += 1;
        self.publisher.send_replace(Arc::new(self.current.clone()));
        // A change belongs to the snapshot of its write alone.
        self.current.changes.clear();
    }
}

/// The change of a write of one resource of `type_url`.
fn changed_one(
    type_url: &str,
    before: Arc<TypeResources>,
    name: &str,
) -> BTreeMap<String, Arc<TypeChange>> {
    let names = vec![name.to_string()];
    BTreeMap::from([(type_url.to_string(), Arc::new(TypeChange { before, names }))])
}

/// Builds the next map of one type from the full list of its resources, sharing unchanged
/// entries with `previous`, and brings `index` (that of `previous`) along; the names whose
/// entry changed, in name order.
fn merge_type<R: Into<StoredResource>>(
    previous: &TypeResources,
    resources: impl IntoIterator<Item = R>,
    index: &mut AliasIndex,
) -> (TypeResources, ChangeSummary, Vec<String>) {
    let mut summary = ChangeSummary::default();
    let mut next = TypeResources::new();
    let mut names = Vec::new();
    for resource in resources {
        let mut resource: StoredResource = resource.into();
        let entry = match previous.get(&*resource.name) {
            Some(existing) if existing.same_as(&resource) => existing.clone(),
            Some(existing) => {
                summary.updated += 1;
                resource.name = existing.name.clone();
                Arc::new(resource)
            }
            None => {
                summary.added += 1;
                Arc::new(resource)
            }
        };
        // A duplicate name in the input keeps the last entry, like repeated `set`s would.
        let replaced = next.insert(entry.name.to_string(), entry.clone());
        let before = replaced.as_ref().or_else(|| previous.get(&*entry.name));
        if !before.is_some_and(|before| Arc::ptr_eq(before, &entry)) {
            index.replace(before.map(AsRef::as_ref), Some(&entry));
        }
    }
    for (name, gone) in previous {
        if !next.contains_key(name) {
            summary.removed += 1;
            index.replace(Some(gone), None);
            names.push(name.clone());
        }
    }
    // Replaced and added entries: those not shared with `previous`.
    names.extend(
        next.iter()
            .filter(|(name, entry)| !previous.get(*name).is_some_and(|p| Arc::ptr_eq(p, entry)))
            .map(|(name, _)| name.clone()),
    );
    names.sort();
    (next, summary, names)
}

/// A reader of the store: the latest snapshot, and a wake-up on each change.
#[derive(Debug, Clone)]
pub struct SnapshotReader {
    receiver: watch::Receiver<Arc<Snapshot>>,
}

impl SnapshotReader {
    /// The latest snapshot, marking it seen.
    pub fn latest(&mut self) -> Arc<Snapshot> {
        self.receiver.borrow_and_update().clone()
    }

    /// The latest snapshot, without marking it seen: a pending change still wakes
    /// [`Self::changed`].
    pub fn current(&self) -> Arc<Snapshot> {
        self.receiver.borrow().clone()
    }

    /// Waits for a snapshot newer than the last one seen. Returns `false` once the store is gone.
    pub async fn changed(&mut self) -> bool {
        self.receiver.changed().await.is_ok()
    }
}

/// A stable content hash (64-bit FNV-1a over type URL and bytes), so versions survive restarts
/// of the server and a reconnecting proxy can compare what it has.
fn content_version(body: &Any) -> String {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for byte in body
        .type_url
        .as_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(body.value.iter())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(value: &[u8]) -> Any {
        Any {
            type_url: "type.googleapis.com/test.Thing".into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn versions_are_stable_and_content_derived() {
        let cases = [
            (any(b"a"), any(b"a"), true),
            (any(b"a"), any(b"b"), false),
            (
                any(b"a"),
                Any {
                    type_url: "type.googleapis.com/test.Other".into(),
                    value: b"a".to_vec(),
                },
                false,
            ),
        ];
        for (left, right, same) in cases {
            assert_eq!(
                content_version(&left) == content_version(&right),
                same,
                "{left:?} vs {right:?}"
            );
        }
        // Fixed value: a version must not change between builds or restarts.
        assert_eq!(content_version(&any(b"")).len(), 16);
    }

    type Write = Box<dyn Fn(&mut ResourceStore) -> ChangeSummary>;

    #[test]
    fn set_and_remove_publish_only_real_changes() {
        let mut store = ResourceStore::new();
        let mut reader = store.reader();
        let t = "type.googleapis.com/test.Thing";

        let cases: [(&str, Write, ChangeSummary); 5] = [
            (
                "add",
                Box::new(|s| s.set(t, "x", any(b"1"))),
                ChangeSummary {
                    added: 1,
                    ..Default::default()
                },
            ),
            (
                "same content",
                Box::new(|s| s.set(t, "x", any(b"1"))),
                ChangeSummary::default(),
            ),
            (
                "update",
                Box::new(|s| s.set(t, "x", any(b"2"))),
                ChangeSummary {
                    updated: 1,
                    ..Default::default()
                },
            ),
            (
                "remove",
                Box::new(|s| s.remove(t, "x")),
                ChangeSummary {
                    removed: 1,
                    ..Default::default()
                },
            ),
            (
                "remove missing",
                Box::new(|s| s.remove(t, "x")),
                ChangeSummary::default(),
            ),
        ];
        for (case, write, expected) in cases {
            let before = reader.latest().generation();
            assert_eq!(write(&mut store), expected, "{case}");
            let after = reader.latest().generation();
            assert_eq!(
                after > before,
                !expected.is_empty(),
                "{case}: publish iff changed"
            );
        }
    }

    #[test]
    fn replace_type_computes_per_resource_changes() {
        let mut store = ResourceStore::new();
        let t = "type.googleapis.com/test.Thing";
        store.replace_type(
            t,
            [
                ("keep".to_string(), any(b"k")),
                ("change".to_string(), any(b"1")),
                ("drop".to_string(), any(b"d")),
            ],
        );
        let kept_before = store.snapshot().get(t, "keep").cloned().unwrap();

        let summary = store.replace_type(
            t,
            [
                ("keep".to_string(), any(b"k")),
                ("change".to_string(), any(b"2")),
                ("new".to_string(), any(b"n")),
            ],
        );
        assert_eq!(
            summary,
            ChangeSummary {
                added: 1,
                updated: 1,
                removed: 1
            }
        );
        let snapshot = store.snapshot();
        assert!(snapshot.get(t, "drop").is_none());
        assert!(
            Arc::ptr_eq(&kept_before, snapshot.get(t, "keep").unwrap()),
            "unchanged entries are shared"
        );

        let generation = snapshot.generation();
        let summary = store.replace_type(
            t,
            [
                ("keep".to_string(), any(b"k")),
                ("change".to_string(), any(b"2")),
                ("new".to_string(), any(b"n")),
            ],
        );
        assert!(summary.is_empty());
        assert_eq!(
            store.snapshot().generation(),
            generation,
            "no-op replace does not publish"
        );
    }

    #[test]
    fn a_change_of_audience_alone_publishes_and_keeps_the_version() {
        let mut store = ResourceStore::new();
        let t = "type.googleapis.com/test.Thing";
        let identity = |sa: &str| SpiffeId::new("cluster.local", "shop", sa).unwrap();
        let for_them = |sas: &[&str]| {
            StoredResource::new("x", any(b"1"))
                .with_audience(Arc::new(sas.iter().map(|sa| identity(sa)).collect()))
        };
        store.replace_type(t, [for_them(&["gateway"])]);
        let before = store.snapshot().get(t, "x").cloned().unwrap();
        let summary = store.replace_type(t, [for_them(&["gateway", "other"])]);
        assert_eq!(summary.updated, 1, "a new audience is a change");
        let after = store.snapshot().get(t, "x").cloned().unwrap();
        assert_eq!(after.version, before.version, "the body did not change");
        assert!(
            after
                .audience
                .as_ref()
                .unwrap()
                .contains(&identity("other"))
        );
        assert!(
            store
                .replace_type(t, [for_them(&["gateway", "other"])])
                .is_empty(),
            "the same audience again changes nothing"
        );
    }

    #[test]
    fn replace_all_empties_types_left_out() {
        let mut store = ResourceStore::new();
        store.set("a", "1", any(b"1"));
        store.set("b", "2", any(b"2"));
        let summary = store.replace_all([("a".to_string(), vec![("1".to_string(), any(b"1"))])]);
        assert_eq!(
            summary,
            ChangeSummary {
                removed: 1,
                ..Default::default()
            }
        );
        let snapshot = store.snapshot();
        assert!(snapshot.get("a", "1").is_some());
        assert!(snapshot.resources("b").unwrap().is_empty());
    }

    /// The index a snapshot carries must be that of its resources after every kind of write,
    /// and a write must not change the index of a snapshot already published (shards shared
    /// between the two are copied before they are written).
    #[test]
    fn the_alias_index_follows_every_write_and_published_snapshots_keep_theirs() {
        let mut next = crate::test_support::sequence(0x9e37_79b9_7f4a_7c15);
        let t = "type.googleapis.com/test.Thing";
        let aliases = ["node:a", "node:b", "/10.0.0.1", "/10.0.0.2", "svc", "r3"];
        let mut store = ResourceStore::new();
        type Entries = BTreeMap<String, Vec<String>>;
        let mut published: Vec<(Arc<Snapshot>, Entries)> = Vec::new();
        let owned = |index: &AliasIndex| -> Entries {
            index
                .entries()
                .into_iter()
                .map(|(alias, names)| (alias.to_string(), names.to_vec()))
                .collect()
        };
        for round in 0..300 {
            let random = |next: &mut dyn FnMut(u64) -> u64| {
                let name = format!("r{}", next(12));
                let chosen = (0..next(4))
                    .map(|_| aliases[next(aliases.len() as u64) as usize].to_string())
                    .collect();
                StoredResource::new(name, any(format!("{round}-{}", next(3)).as_bytes()))
                    .with_aliases(chosen)
            };
            match round % 4 {
                0 => {
                    let resource = random(&mut next);
                    let mut all = crate::test_support::stored(&store, t);
                    // Same name, new aliases or body: a write that keeps most entries.
                    all.retain(|r| r.name != resource.name);
                    all.push(resource);
                    store.replace_type(t, all);
                }
                1 => {
                    let count = next(8);
                    let resources: Vec<StoredResource> =
                        (0..count).map(|_| random(&mut next)).collect();
                    store.replace_all([(t.to_string(), resources)]);
                }
                2 => {
                    let name = format!("r{}", next(12));
                    store.remove(t, &name);
                }
                _ => {
                    // `set` takes no aliases: a resource that had some loses them.
                    let name = format!("r{}", next(12));
                    store.set(t, name, any(b"plain"));
                }
            }
            let snapshot = store.snapshot();
            let resources = snapshot.resources(t).cloned().unwrap_or_default();
            let expected = AliasIndex::of(resources.values().map(AsRef::as_ref));
            let index = snapshot.aliases.get(t).cloned().unwrap_or_default();
            assert_eq!(owned(&index), owned(&expected), "round {round}: index");
            for name in aliases.iter().copied().chain(["r1", "r3", "nothing"]) {
                let covered: Vec<&str> = snapshot
                    .covering(t, name)
                    .iter()
                    .map(|r| &*r.name)
                    .collect();
                let brute: Vec<&str> = resources
                    .values()
                    .filter(|r| r.goes_by(name))
                    .map(|r| &*r.name)
                    .collect();
                assert_eq!(covered, brute, "round {round}: covering {name}");
            }
            for (earlier, entries) in &published {
                let index = earlier.aliases.get(t).cloned().unwrap_or_default();
                assert_eq!(
                    &owned(&index),
                    entries,
                    "round {round}: an older snapshot changed"
                );
            }
            published.push((snapshot.clone(), owned(&index)));
            if published.len() > 5 {
                published.remove(0);
            }
        }
    }

    #[tokio::test]
    async fn readers_wake_on_change_and_see_the_end_of_the_store() {
        let mut store = ResourceStore::new();
        let mut reader = store.reader();
        reader.latest();
        store.set("a", "1", any(b"1"));
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), reader.changed()).await;
        assert_eq!(woke.ok(), Some(true));
        assert!(reader.latest().get("a", "1").is_some());
        drop(store);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), reader.changed()).await;
        assert_eq!(ended.ok(), Some(false));
    }
}
