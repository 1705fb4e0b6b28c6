//! Which resources of one type go by each alias, kept by the store's writer as the type's
//! resources change, so a subscription by name finds what it covers by a lookup instead of a
//! pass over the type.
//!
//! Snapshots share the index as they share the resource maps: it is split into shards behind
//! `Arc`s, and a write copies only the shards it touches (a change of one resource copies one
//! shard per alias added or removed, a fraction of the index; a rewrite of everything copies
//! each shard once).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use super::StoredResource;

/// Shards of the index: a write touching one alias copies 1/SHARDS of the index.
const SHARDS: usize = 64;

/// Alias to the names of the resources going by it (sorted, without repeats).
type Shard = HashMap<String, Vec<String>>;

/// The alias index of one type. Cheap to clone: shards are shared until written.
#[derive(Debug, Clone)]
pub struct AliasIndex {
    shards: Vec<Arc<Shard>>,
}

impl Default for AliasIndex {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
        }
    }
}

impl AliasIndex {
    /// The index of `resources`, built from scratch.
    #[cfg(test)]
    pub(crate) fn of<'a>(resources: impl IntoIterator<Item = &'a StoredResource>) -> Self {
        let mut index = Self::default();
        for resource in resources {
            index.replace(None, Some(resource));
        }
        index
    }

    /// Names of the resources going by `alias`, sorted.
    pub fn named_by(&self, alias: &str) -> &[String] {
        self.shards[shard_of(alias)]
            .get(alias)
            .map_or(&[], Vec::as_slice)
    }

    /// Records that `before` (the resource as it was, if it existed) is now `after` (if it
    /// still exists): one entry per alias that came or went, nothing for the ones kept.
    pub(crate) fn replace(
        &mut self,
        before: Option<&StoredResource>,
        after: Option<&StoredResource>,
    ) {
        let none: &[String] = &[];
        let old = before.map_or(none, |r| r.aliases.as_slice());
        let new = after.map_or(none, |r| r.aliases.as_slice());
        if let Some(resource) = before {
            for alias in old.iter().filter(|a| !sorted_contains(new, a)) {
                self.remove(alias, &resource.name);
            }
        }
        if let Some(resource) = after {
            for alias in new.iter().filter(|a| !sorted_contains(old, a)) {
                self.insert(alias, &resource.name);
            }
        }
    }

    /// Every entry, for comparing two indexes.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> std::collections::BTreeMap<&str, &[String]> {
        self.shards
            .iter()
            .flat_map(|shard| shard.iter())
            .map(|(alias, names)| (alias.as_str(), names.as_slice()))
            .collect()
    }

    fn insert(&mut self, alias: &str, name: &str) {
        let shard = Arc::make_mut(&mut self.shards[shard_of(alias)]);
        let names = shard.entry(alias.to_string()).or_default();
        if let Err(at) = names.binary_search_by(|n| n.as_str().cmp(name)) {
            names.insert(at, name.to_string());
        }
    }

    fn remove(&mut self, alias: &str, name: &str) {
        let shard = Arc::make_mut(&mut self.shards[shard_of(alias)]);
        if let Some(names) = shard.get_mut(alias) {
            if let Ok(at) = names.binary_search_by(|n| n.as_str().cmp(name)) {
                names.remove(at);
            }
            if names.is_empty() {
                shard.remove(alias);
            }
        }
    }
}

/// Aliases are kept sorted ([`StoredResource::with_aliases`]); a resource built by hand may
/// not be, so an unsorted list is searched in full.
fn sorted_contains(aliases: &[String], alias: &str) -> bool {
    if aliases.is_sorted() {
        aliases.binary_search_by(|a| a.as_str().cmp(alias)).is_ok()
    } else {
        aliases.iter().any(|a| a == alias)
    }
}

fn shard_of(alias: &str) -> usize {
    // `DefaultHasher::new` has fixed keys: the same shard on every run.
    let mut hasher = DefaultHasher::new();
    alias.hash(&mut hasher);
    (hasher.finish() % SHARDS as u64) as usize
}
