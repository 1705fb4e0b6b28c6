//! Helpers shared by the crate's unit tests.

use std::sync::Arc;

use crate::{ResourceStore, StoredResource};

/// A small deterministic generator (xorshift): the same sequence on every run from `seed`;
/// each call gives a number below its bound.
pub(crate) fn sequence(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    }
}

/// Every resource of `type_url` the store holds, as owned values to edit and write back.
pub(crate) fn stored(store: &ResourceStore, type_url: &str) -> Vec<StoredResource> {
    store
        .snapshot()
        .resources(type_url)
        .into_iter()
        .flat_map(|r| r.values().map(|r| Arc::unwrap_or_clone(r.clone())))
        .collect()
}
