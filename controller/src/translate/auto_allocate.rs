//! Addresses for ServiceEntry hosts that declare none, as Istio's IP auto-allocation
//! controller gives them (`pilot/pkg/controllers/ipallocate`, on by default since 1.25): one
//! IPv4 address of `240.240.0.0/16` (class E, never routed) and one IPv6 address of
//! `2001:2::/48` (RFC 5180's benchmarking range) per host, or of the ranges istiod's
//! `PILOT_IP_AUTOALLOCATE_IPV4_PREFIX` and `PILOT_IP_AUTOALLOCATE_IPV6_PREFIX` set ([`Ranges`]),
//! which the agents answer DNS queries with and carry like any VIP. Eligible, as Istio's `ShouldV2AutoAllocateIP`: no
//! `spec.addresses`, `resolution` other than `NONE`, no
//! `networking.istio.io/enable-autoallocate-ip: "false"` label, and a host without a
//! wildcard unless the entry's `resolution` is `DYNAMIC_DNS` (Istio's `keepHost`: then the
//! wildcard's address answers every name under it, and the waypoint resolves the real one).
//!
//! Istio allocates the next free address and keeps it in the entry's `status.addresses`. Here
//! an allocation is a pure function of the configuration, so that every controller, and the
//! same controller after a restart, computes the same addresses without any state: each host
//! starts at a slot chosen by a hash of `namespace/name/host` and takes the first free one
//! from there; entries are placed oldest first (creation time, then namespace, name and host
//! order), so a new entry never moves an older one. Addresses an entry already carries in
//! `status.addresses` (Istio's, or written back by a controller in Kubernetes mode) are kept
//! first when they are in range and free, so an address once given stays while its entry
//! lives, whatever else changes, but for an address some entry declares in `spec.addresses`:
//! as Istio's allocator resolves that conflict, the declared address wins and the host gets
//! another.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::resolve::{labels, name_of, namespace_of};
use crate::{
    index::ConfigIndex,
    model::networking::{ServiceEntry, ServiceEntryResolution},
};

/// Istio's label to opt an entry out (`label.NetworkingEnableAutoallocateIp`).
pub const ENABLE_LABEL: &str = "networking.istio.io/enable-autoallocate-ip";
/// istiod's switch for allocation, and its default (`pilot/pkg/features/pilot.go`: on).
pub const ENABLE_ENV: &str = "PILOT_ENABLE_IP_AUTOALLOCATE";
/// istiod's variable setting the IPv4 range, and its default (`pilot/pkg/features`).
pub const IPV4_PREFIX_ENV: &str = "PILOT_IP_AUTOALLOCATE_IPV4_PREFIX";
pub const DEFAULT_IPV4_PREFIX: &str = "240.240.0.0/16";
/// istiod's variable setting the IPv6 range, and its default.
pub const IPV6_PREFIX_ENV: &str = "PILOT_IP_AUTOALLOCATE_IPV6_PREFIX";
pub const DEFAULT_IPV6_PREFIX: &str = "2001:2::/48";

/// A prefix that cannot be a range to allocate from, named by its variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: {reason}")]
pub struct RangeError {
    pub variable: &'static str,
    pub value: String,
    pub reason: String,
}

/// The ranges addresses are allocated from: one IPv4 and one IPv6 prefix (istiod's
/// `PILOT_IP_AUTOALLOCATE_IPV4_PREFIX` and `PILOT_IP_AUTOALLOCATE_IPV6_PREFIX`). A host's two
/// addresses are the same slot (offset) in each; the slots are those both prefixes hold, but
/// their first and last addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    v4: (Ipv4Addr, u8),
    v6: (Ipv6Addr, u8),
}

impl Default for Ranges {
    /// Istio's: `240.240.0.0/16` and `2001:2::/48`.
    fn default() -> Self {
        Self {
            v4: (Ipv4Addr::new(240, 240, 0, 0), 16),
            v6: (Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 48),
        }
    }
}

impl Ranges {
    /// The ranges of the two variables' values, checked as istiod's bootstrap checks them
    /// (`netip.ParsePrefix`), and further: each of its own family, and wide enough to hold an
    /// address that is neither its first nor its last.
    pub fn parse(v4: &str, v6: &str) -> Result<Self, RangeError> {
        let (v4_address, v4_length) = prefix(IPV4_PREFIX_ENV, v4, 32)?;
        let (v6_address, v6_length) = prefix(IPV6_PREFIX_ENV, v6, 128)?;
        let (IpAddr::V4(v4_address), IpAddr::V6(v6_address)) = (v4_address, v6_address) else {
            let (variable, value, family) = if v4_address.is_ipv4() {
                (IPV6_PREFIX_ENV, v6, "an IPv6")
            } else {
                (IPV4_PREFIX_ENV, v4, "an IPv4")
            };
            return Err(RangeError {
                variable,
                value: value.to_owned(),
                reason: format!("not {family} prefix"),
            });
        };
        let mask4 = u32::MAX.checked_shl(32 - u32::from(v4_length)).unwrap_or(0);
        let mask6 = u128::MAX
            .checked_shl(128 - u32::from(v6_length))
            .unwrap_or(0);
        Ok(Self {
            v4: (Ipv4Addr::from(u32::from(v4_address) & mask4), v4_length),
            v6: (Ipv6Addr::from(u128::from(v6_address) & mask6), v6_length),
        })
    }

    /// How many slots both ranges hold (numbered from 1).
    fn slots(&self) -> u32 {
        let usable = |host_bits: u32| {
            1u128
                .checked_shl(host_bits)
                .map_or(u128::MAX, |size| size - 2)
        };
        let slots = usable(32 - u32::from(self.v4.1)).min(usable(128 - u32::from(self.v6.1)));
        u32::try_from(slots).unwrap_or(u32::MAX - 1)
    }

    /// The IPv4 and IPv6 addresses of a slot.
    fn addresses(&self, slot: u32) -> [IpAddr; 2] {
        [
            IpAddr::V4(Ipv4Addr::from(u32::from(self.v4.0) + slot)),
            IpAddr::V6(Ipv6Addr::from(u128::from(self.v6.0) + u128::from(slot))),
        ]
    }

    /// The slot of an address of either range, if it is one.
    fn slot_of(&self, address: IpAddr) -> Option<u32> {
        let offset = match address {
            IpAddr::V4(v4) => u128::from(u32::from(v4).checked_sub(u32::from(self.v4.0))?),
            IpAddr::V6(v6) => u128::from(v6).checked_sub(u128::from(self.v6.0))?,
        };
        u32::try_from(offset)
            .ok()
            .filter(|slot| (1..=self.slots()).contains(slot))
    }
}

/// `address/length` of one family (`bits` long), with room for one slot.
fn prefix(variable: &'static str, value: &str, bits: u8) -> Result<(IpAddr, u8), RangeError> {
    let error = |reason: String| RangeError {
        variable,
        value: value.to_owned(),
        reason,
    };
    let family = if bits == 32 { "an IPv4" } else { "an IPv6" };
    let (address, length) = value
        .split_once('/')
        .ok_or_else(|| error(format!("not {family} prefix (address/length)")))?;
    let address: IpAddr = address
        .parse()
        .map_err(|_| error(format!("{address:?} is not an IP address")))?;
    if address.is_ipv4() != (bits == 32) {
        return Err(error(format!("not {family} prefix")));
    }
    let length: u8 = length
        .parse()
        .ok()
        .filter(|l| *l <= bits)
        .ok_or_else(|| error(format!("the length {length:?} is not 0 to {bits}")))?;
    if length > bits - 2 {
        return Err(error(format!(
            "a /{length} leaves no address to allocate (at most /{})",
            bits - 2
        )));
    }
    Ok((address, length))
}

/// The addresses allocated to each eligible host, by (namespace, name, host).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Allocation(BTreeMap<(String, String, String), [IpAddr; 2]>);

impl Allocation {
    /// The addresses of `host` of `entry` (IPv4 first), empty when it has none allocated.
    pub fn of(&self, entry: &ServiceEntry, host: &str) -> &[IpAddr] {
        let key = (
            namespace_of(&entry.metadata).to_owned(),
            name_of(&entry.metadata).to_owned(),
            host.to_owned(),
        );
        self.0.get(&key).map_or(&[], |a| a.as_slice())
    }

    /// Every allocation, for `status.addresses`: (namespace, name) -> [(host, address)].
    pub fn by_entry(&self) -> BTreeMap<(String, String), Vec<(String, IpAddr)>> {
        let mut out: BTreeMap<(String, String), Vec<(String, IpAddr)>> = BTreeMap::new();
        for ((namespace, name, host), addresses) in &self.0 {
            let hosts = out.entry((namespace.clone(), name.clone())).or_default();
            hosts.extend(addresses.iter().map(|a| (host.clone(), *a)));
        }
        out
    }
}

/// The VIPs of `host` of `entry`: its `spec.addresses` (a CIDR contributes its address, as
/// istiod's `toNetworkAddressFromCidr` does), else the addresses allocated to it.
pub fn entry_vips(entry: &ServiceEntry, host: &str, allocation: &Allocation) -> Vec<IpAddr> {
    if !entry.spec.addresses.is_empty() {
        return entry
            .spec
            .addresses
            .iter()
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect();
    }
    allocation.of(entry, host).to_vec()
}

/// Whether `entry` gets addresses allocated (Istio's `ShouldV2AutoAllocateIP`).
pub fn eligible(entry: &ServiceEntry) -> bool {
    let opted_out = labels(&entry.metadata)
        .get(ENABLE_LABEL)
        .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    entry.spec.addresses.is_empty()
        && entry
            .spec
            .resolution
            .unwrap_or(ServiceEntryResolution::None)
            != ServiceEntryResolution::None
        && !opted_out
}

/// Whether `host` of an eligible entry gets addresses (Istio's `keepHost`): a wildcard only
/// under `resolution: DYNAMIC_DNS`, whose one address stands for every name under it (the
/// agents' DNS proxy answers those names with it, and the waypoint resolves the real name).
fn keeps_host(entry: &ServiceEntry, host: &str) -> bool {
    !host.contains('*') || entry.spec.resolution == Some(ServiceEntryResolution::DynamicDns)
}

/// [`allocate`] from `ranges` when allocation is on; with it off (istiod's
/// `PILOT_ENABLE_IP_AUTOALLOCATE=false`), nothing, not even the addresses an entry already
/// carries in `status.addresses`, as Istio's `shouldV2AutoAllocateIPFromPieces` then neither
/// assigns nor uses them.
pub fn allocate_if_enabled(index: &ConfigIndex, ranges: Option<&Ranges>) -> Allocation {
    ranges.map_or_else(Allocation::default, |ranges| allocate(index, ranges))
}

/// Allocates addresses from `ranges` to every eligible host of the index's ServiceEntries.
pub fn allocate(index: &ConfigIndex, ranges: &Ranges) -> Allocation {
    struct Host<'a> {
        created: Option<&'a Time>,
        key: (String, String, String),
        position: usize,
        kept: Option<u32>,
    }
    let mut hosts: Vec<Host> = Vec::new();
    for entry in index.service_entries.values().filter(|e| eligible(e)) {
        let status = status_addresses(entry);
        for (position, host) in entry.spec.hosts.iter().enumerate() {
            if !keeps_host(entry, host) {
                continue;
            }
            let kept = status
                .iter()
                .find(|(h, _)| h == host)
                .and_then(|(_, ip)| ranges.slot_of(*ip));
            hosts.push(Host {
                created: entry.metadata.creation_timestamp.as_ref(),
                key: (
                    namespace_of(&entry.metadata).to_owned(),
                    name_of(&entry.metadata).to_owned(),
                    host.clone(),
                ),
                position,
                kept,
            });
        }
    }
    // Oldest first; entries without a creation time (files) after those with one.
    hosts.sort_by(|a, b| {
        (
            a.created.is_none(),
            a.created,
            &a.key.0,
            &a.key.1,
            a.position,
        )
            .cmp(&(
                b.created.is_none(),
                b.created,
                &b.key.0,
                &b.key.1,
                b.position,
            ))
    });
    // Addresses declared in any entry's `spec.addresses` inside the ranges are never
    // allocated, and an allocated one they equal is given up for another (Istio's allocator
    // reassigns every auto-allocated address a declared one conflicts with).
    let mut used: HashSet<u32> = index
        .service_entries
        .values()
        .flat_map(|e| &e.spec.addresses)
        .filter_map(|a| ranges.slot_of(a.split('/').next()?.parse().ok()?))
        .collect();
    let slots_in = ranges.slots();
    let mut slots: Vec<Option<u32>> = hosts
        .iter()
        .map(|h| h.kept.filter(|slot| used.insert(*slot)))
        .collect();
    for (host, slot) in hosts.iter().zip(slots.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        let start = fnv1a(&format!("{}/{}/{}", host.key.0, host.key.1, host.key.2)) % slots_in;
        *slot = (0..slots_in)
            .map(|step| (start + step) % slots_in + 1)
            .find(|candidate| used.insert(*candidate));
        if slot.is_none() {
            tracing::warn!(
                namespace = %host.key.0,
                name = %host.key.1,
                host = %host.key.2,
                "no address left to allocate to the ServiceEntry host"
            );
        }
    }
    Allocation(
        hosts
            .into_iter()
            .zip(slots)
            .filter_map(|(host, slot)| Some((host.key, ranges.addresses(slot?))))
            .collect(),
    )
}

/// `status.addresses` as Istio writes it: `[{host, value}]`.
fn status_addresses(entry: &ServiceEntry) -> Vec<(String, IpAddr)> {
    let Some(status) = &entry.status else {
        return Vec::new();
    };
    status.0["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a["host"].as_str()?.to_owned(),
                a["value"].as_str()?.parse().ok()?,
            ))
        })
        .collect()
}

/// FNV-1a, 64 bits: a hash that never changes between builds or platforms (the standard
/// library's may), folded to 32 bits.
fn fnv1a(text: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash ^ (hash >> 32)) as u32
}

#[cfg(test)]
mod tests;
