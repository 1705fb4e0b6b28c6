//! The Secrets Gateways name, kept in the index as credentials (Kubernetes mode).
//!
//! One watch of every Secret (less Helm releases and service-account tokens, by field selector,
//! as istiod's credentials controller filters them), but only the Secrets Gateways name
//! ([`referenced_secrets`]) are kept, and of them only the credential keys
//! ([`CredentialSecret`]); every other Secret is dropped as soon as it is decoded. When a
//! Gateway starts naming a Secret the watch has already passed, that Secret is read once
//! (a GET); later changes arrive by the watch. Events are handled on one task in order, so a
//! change seen during that read is applied after it: the last state applied is the newest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use crate::index::{Key, LiveIndex};
use crate::model::credential::CredentialSecret;
use crate::translate::credentials::referenced_secrets;

/// Secrets never holding credentials, left out of the watch (as istiod leaves them out).
pub const FIELD_SELECTOR: &str =
    "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token";

fn key_of(secret: &Secret) -> Key {
    format!(
        "{}/{}",
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default()
    )
}

/// What the watch of Secrets does to the index: keeps the wanted ones, drops the rest.
#[derive(Debug, Default)]
pub struct SecretKeeper {
    wanted: BTreeSet<Key>,
    /// A (re)list in progress: the wanted Secrets seen so far.
    listing: Option<BTreeMap<Key, CredentialSecret>>,
    /// Whether a first list has reached the index.
    listed: bool,
}

impl SecretKeeper {
    /// Whether a first list has reached the index.
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// Makes `wanted` the Secrets kept: the ones no longer wanted leave the index. Returns
    /// the newly wanted ones, which the caller reads once (the watch may have passed them).
    pub fn set_wanted(&mut self, wanted: BTreeSet<Key>, index: &LiveIndex) -> Vec<Key> {
        let added: Vec<Key> = wanted.difference(&self.wanted).cloned().collect();
        let dropped = self
            .wanted
            .difference(&wanted)
            .any(|key| index.snapshot().secrets.contains_key(key));
        self.wanted = wanted;
        if dropped {
            let wanted = &self.wanted;
            index.change(|i| i.secrets.retain(|key, _| wanted.contains(key)));
        }
        added
    }

    /// One Secret as read now (`None`: it does not exist). During a (re)list it joins the
    /// listing too, which the list's end would otherwise replace it with.
    pub fn read(&mut self, key: &Key, secret: Option<&Secret>, index: &LiveIndex) {
        if !self.wanted.contains(key) {
            return;
        }
        let credential = secret.map(CredentialSecret::from_secret);
        if let Some(listing) = &mut self.listing {
            match &credential {
                Some(credential) => listing.insert(key.clone(), credential.clone()),
                None => listing.remove(key),
            };
        }
        match credential {
            Some(credential) => put(index, key.clone(), credential),
            None => remove(index, key),
        }
    }

    /// One watch event.
    pub fn handle(&mut self, event: Event<Secret>, index: &LiveIndex) {
        match event {
            Event::Init => self.listing = Some(BTreeMap::new()),
            Event::InitApply(secret) => {
                let key = key_of(&secret);
                if self.wanted.contains(&key) {
                    self.listing
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key, CredentialSecret::from_secret(&secret));
                }
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                self.listed = true;
                if index.snapshot().secrets != listed {
                    index.change(|i| i.secrets = listed);
                }
            }
            Event::Apply(secret) => {
                let key = key_of(&secret);
                if self.wanted.contains(&key) {
                    put(index, key, CredentialSecret::from_secret(&secret));
                }
            }
            Event::Delete(secret) => remove(index, &key_of(&secret)),
        }
    }
}

fn put(index: &LiveIndex, key: Key, credential: CredentialSecret) {
    if index.snapshot().secrets.get(&key) != Some(&credential) {
        tracing::info!(secret = %key, keys = ?credential, "gateway credential Secret changed");
        index.change(|i| {
            i.secrets.insert(key, credential);
        });
    }
}

fn remove(index: &LiveIndex, key: &Key) {
    if index.snapshot().secrets.contains_key(key) {
        tracing::info!(secret = %key, "gateway credential Secret removed");
        index.change(|i| {
            i.secrets.remove(key);
        });
    }
}

/// Keeps the index's Secrets until `shutdown`; `listed` turns true once the first list of
/// Secrets has reached the index (the first push then carries the gateways' credentials).
pub async fn keep_secrets(
    client: Client,
    index: Arc<LiveIndex>,
    listed: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Secret> = Api::all(client.clone());
    let config = watcher::Config::default().fields(FIELD_SELECTOR);
    let events = watcher::watcher(api, config).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut keeper = SecretKeeper::default();
    index.change(|i| i.secrets_watched = true);
    let mut changes = index.subscribe();
    keeper.set_wanted(referenced_secrets(&index.snapshot()), &index);
    // An index change is looked at after a quiet moment; every future here is cancel-safe, so
    // a Secret event arriving meanwhile loses no change.
    let mut recompute: Option<tokio::time::Instant> = None;
    loop {
        let due = async {
            match recompute {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => {
                    keeper.handle(event, &index);
                    if keeper.listed() {
                        listed.send_if_modified(|l| !std::mem::replace(l, true));
                    }
                }
                Some(Err(error)) => tracing::warn!(%error, "watch of Secrets failed; retrying"),
                None => return,
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                recompute.get_or_insert_with(|| tokio::time::Instant::now() + crate::index::DEBOUNCE);
            },
            () = due => {
                recompute = None;
                let added = keeper.set_wanted(referenced_secrets(&index.snapshot()), &index);
                for key in added {
                    let (namespace, name) = key.split_once('/').unwrap_or_default();
                    let namespaced: Api<Secret> = Api::namespaced(client.clone(), namespace);
                    match namespaced.get_opt(name).await {
                        Ok(secret) => keeper.read(&key, secret.as_ref(), &index),
                        Err(error) => {
                            tracing::warn!(secret = %key, %error, "cannot read a Secret a Gateway names; the watch brings its next change");
                        }
                    }
                }
            },
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
    }
}

#[cfg(test)]
mod tests;
