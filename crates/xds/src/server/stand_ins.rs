//! Hostname names a stream subscribed that nothing goes by, and the wildcard alias standing
//! in for each (`Snapshot::stand_in`): found when the name is asked, and again at a push that
//! may have moved them.

use std::collections::BTreeSet;
use std::ops::Bound;

use super::stream::TypeSubscription;
use crate::store::{HOSTNAME_PREFIX, Snapshot, StoredResource, TypeResources};

/// The hostname names of `subscription` whose stand-in the `changed` resources may have
/// moved: every one when one of them went (before or after the change) by a wildcard hostname
/// alias; else those it went by itself (a name newly covered by a resource of its own, or no
/// longer). A push of other resources costs no lookups for the subscription's hostnames, and
/// one of a subscribed host's endpoints costs the lookups of that name.
pub(super) fn moved_hostnames(
    subscription: &TypeSubscription,
    previous: &TypeResources,
    current: &TypeResources,
    changed: &[&String],
) -> Vec<String> {
    if subscription.wildcard {
        return Vec::new();
    }
    let wildcard_prefix = format!("{HOSTNAME_PREFIX}*.");
    let mut named = BTreeSet::new();
    let aliases = changed
        .iter()
        .flat_map(|name| [previous.get(*name), current.get(*name)])
        .flatten()
        .flat_map(|resource| &resource.aliases)
        .filter(|alias| alias.starts_with(HOSTNAME_PREFIX));
    for alias in aliases {
        if alias.starts_with(&wildcard_prefix) {
            return subscription
                .names
                .range::<str, _>((Bound::Included(HOSTNAME_PREFIX), Bound::Unbounded))
                .take_while(|name| name.starts_with(HOSTNAME_PREFIX))
                .cloned()
                .collect();
        }
        if subscription.names.contains(alias) {
            named.insert(alias.clone());
        }
    }
    named.into_iter().collect()
}

/// Finds again the alias standing in for each of `hostnames` (a store change may have brought
/// the name itself, a more specific wildcard host, or taken the one standing in away): the
/// names of the resources covered by a stand-in that came or went, whose answer may have
/// changed although they did not. The work is one index lookup per label of each name,
/// whatever the type's size.
pub(super) fn refresh_stand_ins(
    subscription: &mut TypeSubscription,
    hostnames: Vec<String>,
    snapshot: &Snapshot,
    type_url: &str,
    visible: impl Fn(&StoredResource) -> bool,
) -> BTreeSet<String> {
    let mut moved = BTreeSet::new();
    for name in hostnames {
        let stand_in = snapshot.stand_in(type_url, &name, &visible);
        let before = subscription.stand_ins.get(&name).cloned();
        if before == stand_in {
            continue;
        }
        subscription.set_stand_in(&name, stand_in.clone());
        for alias in before.iter().chain(stand_in.as_ref()) {
            let covered = snapshot.covering(type_url, alias);
            moved.extend(covered.iter().map(|r| r.name.to_string()));
        }
    }
    moved
}
