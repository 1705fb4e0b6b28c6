//! Hostname endpoints (a ServiceEntry's `resolution: DNS`): the agent resolves the names of
//! workloads that have no address with the system's resolver and records the answers in the
//! store, where planning a connection reads them; nothing is resolved on a connection's path.
//!
//! Bounded: at most [`MAX_HOSTNAMES`] names, one lookup at a time, each within
//! [`LOOKUP_TIMEOUT`]. A failed or empty answer keeps the last good addresses. The system
//! resolver (`getaddrinfo`) reports no TTL, so every name is resolved again every
//! [`REFRESH`], and at once when a new name appears.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::state::WorkloadStore;

/// How often each name is resolved again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many names are resolved at most; the others are reported and left unresolved.
pub const MAX_HOSTNAMES: usize = 1024;

/// Resolves the store's hostnames with the system resolver until the task is dropped.
pub async fn run(store: WorkloadStore) {
    resolve_with(store, |name| async move { lookup(&name).await }).await;
}

/// [`run`] with another resolver (tests).
async fn resolve_with<F, R>(store: WorkloadStore, resolve: F)
where
    F: Fn(String) -> R,
    R: std::future::Future<Output = Result<Vec<IpAddr>, String>>,
{
    let mut changes = store.subscribe();
    let mut resolved_at: HashMap<String, Instant> = HashMap::new();
    loop {
        let mut names = store.hostnames_to_resolve();
        if names.len() > MAX_HOSTNAMES {
            tracing::warn!(
                names = names.len(),
                limit = MAX_HOSTNAMES,
                "too many hostnames to resolve; the rest stay unresolved"
            );
            names.truncate(MAX_HOSTNAMES);
        }
        resolved_at.retain(|name, _| names.contains(name));
        store.retain_resolved(&names);
        for name in &names {
            if resolved_at
                .get(name)
                .is_some_and(|at| at.elapsed() < REFRESH)
            {
                continue;
            }
            resolved_at.insert(name.clone(), Instant::now());
            match resolve(name.clone()).await {
                Ok(addresses) => store.set_resolved(name, addresses),
                Err(error) => {
                    tracing::warn!(hostname = %name, %error, "hostname not resolved; keeping the last addresses")
                }
            }
        }
        let next = resolved_at
            .values()
            .map(|at| REFRESH.saturating_sub(at.elapsed()))
            .min()
            .unwrap_or(REFRESH);
        // Our own `set_resolved` wakes the watch too: mark it seen so that only others' changes
        // (a new configuration) cut the wait short.
        changes.borrow_and_update();
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(next) => {}
        }
    }
}

/// The name's addresses, IPv4 first, without duplicates.
async fn lookup(name: &str) -> Result<Vec<IpAddr>, String> {
    let answer = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, 0)))
        .await
        .map_err(|_| format!("no answer within {LOOKUP_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let mut addresses: Vec<IpAddr> = Vec::new();
    for address in answer.map(|a| a.ip()) {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    addresses.sort_by_key(|a| a.is_ipv6());
    if addresses.is_empty() {
        return Err("no address".into());
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TunnelProtocol;

    fn by_name(name: &str, hostname: &str) -> crate::state::Workload {
        let mut workload = crate::testing::workload(
            name,
            "shop",
            "default",
            "",
            "192.0.2.1".parse().unwrap(),
            TunnelProtocol::None,
        );
        workload.addresses.clear();
        workload.hostname = hostname.into();
        workload
    }

    #[tokio::test]
    async fn names_resolve_through_the_system_resolver() {
        // From the hosts file: no query leaves the machine.
        let addresses = lookup("localhost").await.expect("localhost resolves");
        assert!(addresses.iter().all(IpAddr::is_loopback), "{addresses:?}");
        assert!(addresses[0].is_ipv4(), "{addresses:?}");
    }

    #[tokio::test]
    async fn failures_keep_the_last_answer_and_unused_names_are_forgotten() {
        let store = WorkloadStore::new();
        let last_good: IpAddr = "192.0.2.7".parse().unwrap();
        let answer: IpAddr = "192.0.2.8".parse().unwrap();
        // Looked up before `b.example` (names go in order), so failed once `b.example` is known.
        store.insert_workload(by_name("failing", "a.example"));
        store.insert_workload(by_name("answering", "b.example"));
        store.set_resolved("a.example", vec![last_good]);
        store.set_resolved("nobody.example", vec![last_good]);
        let task = tokio::spawn(resolve_with(store.clone(), move |name| async move {
            match name.as_str() {
                "b.example" => Ok(vec![answer]),
                _ => Err("refused".to_string()),
            }
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.resolved_address("b.example").is_none()
            || store.resolved_address("nobody.example").is_some()
        {
            assert!(Instant::now() < deadline, "the names were not resolved");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.resolved_address("b.example"), Some(answer));
        assert_eq!(store.resolved_address("a.example"), Some(last_good));
        task.abort();
    }
}
