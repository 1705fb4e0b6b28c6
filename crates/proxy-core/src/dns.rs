//! Resolving endpoint names (a ServiceEntry's `resolution: DNS`) with the system's resolver,
//! off every connection's path, under the bounds both proxies keep: one lookup at a time, each
//! within [`LOOKUP_TIMEOUT`], at most [`MAX_HOSTNAMES`] names, each again every [`REFRESH`]
//! (`getaddrinfo` reports no TTL).

use std::net::IpAddr;
use std::time::Duration;

/// How often each name is resolved again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many names are resolved at most; the others are reported and left unresolved.
pub const MAX_HOSTNAMES: usize = 1024;

/// The name's addresses, IPv4 first, without duplicates; an error for no answer.
pub async fn lookup(name: &str) -> Result<Vec<IpAddr>, String> {
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
    #[tokio::test]
    async fn names_resolve_through_the_system_resolver_from_the_hosts_file() {
        let addresses = super::lookup("localhost")
            .await
            .expect("localhost resolves");
        assert!(addresses.iter().any(IpAddr::is_loopback), "{addresses:?}");
    }

    use std::net::IpAddr;
}
