//! Auto-allocated ServiceEntry addresses: who gets them (Istio's rules), that they stay put
//! (restarts, unrelated edits, addresses in `status`), and that no two hosts share one.

use std::net::IpAddr;

use super::*;
use crate::translate::waypoint::tests::validated;

/// An entry in `shop` with `hosts`, without addresses unless `extra` adds them.
fn entry(name: &str, hosts: &[&str], extra: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  hosts: [{}]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n{extra}",
        hosts.join(", ")
    )
}

fn allocated(text: &str) -> (ConfigIndex, Allocation) {
    let index = validated(text);
    let allocation = allocate(&index, &Ranges::default());
    (index, allocation)
}

fn addresses_of(
    index: &ConfigIndex,
    allocation: &Allocation,
    name: &str,
    host: &str,
) -> Vec<IpAddr> {
    let entry = index
        .service_entries
        .values()
        .find(|e| e.metadata.name.as_deref() == Some(name))
        .expect("the entry");
    entry_vips(entry, host, allocation)
}

#[test]
fn a_host_without_addresses_gets_one_of_each_family_in_istios_ranges() {
    let (index, allocation) = allocated(&entry("api", &["api.example.com"], ""));
    let vips = addresses_of(&index, &allocation, "api", "api.example.com");
    assert_eq!(vips.len(), 2, "{vips:?}");
    let IpAddr::V4(v4) = vips[0] else {
        panic!("IPv4 first: {vips:?}")
    };
    assert_eq!(v4.octets()[..2], [240, 240], "{v4}");
    let IpAddr::V6(v6) = vips[1] else {
        panic!("then IPv6: {vips:?}")
    };
    assert_eq!(v6.segments()[..3], [0x2001, 2, 0], "{v6}");
    // The two addresses are one slot: the same low bits.
    assert_eq!(u32::from(v4) & 0xffff, u32::from(v6.segments()[7]));
}

#[test]
fn declared_addresses_win_and_istios_exclusions_get_none() {
    let text = [
        entry(
            "declared",
            &["declared.example.com"],
            "  addresses: [10.9.8.7]\n",
        ),
        entry("none", &["none.example.com"], "").replace("resolution: DNS", "resolution: NONE"),
        entry("opted-out", &["out.example.com"], "").replace(
            "namespace: shop}",
            "namespace: shop, labels: {networking.istio.io/enable-autoallocate-ip: \"False\"}}",
        ),
        entry(
            "wild",
            &["\"*.wild.example.com\"", "tame.example.com"],
            "  endpoints: [{address: 10.1.1.1}]\n",
        )
        .replace("resolution: DNS", "resolution: STATIC"),
    ]
    .concat();
    let (index, allocation) = allocated(&text);
    assert_eq!(
        addresses_of(&index, &allocation, "declared", "declared.example.com"),
        vec!["10.9.8.7".parse::<IpAddr>().unwrap()]
    );
    assert!(addresses_of(&index, &allocation, "none", "none.example.com").is_empty());
    assert!(addresses_of(&index, &allocation, "opted-out", "out.example.com").is_empty());
    assert!(addresses_of(&index, &allocation, "wild", "*.wild.example.com").is_empty());
    assert_eq!(
        addresses_of(&index, &allocation, "wild", "tame.example.com").len(),
        2
    );
    assert_eq!(allocation.0.len(), 1, "{allocation:?}");
}

#[test]
fn addresses_are_stable_across_restarts_and_unrelated_edits() {
    let first = entry("api", &["api.example.com", "www.example.com"], "");
    let (index, before) = allocated(&first);
    // A restart computes the same from the same configuration.
    assert_eq!(allocate(&validated(&first), &Ranges::default()), before);
    // Others come and go, and the entry gets another port: its hosts keep their addresses.
    let others: String = (0..50)
        .map(|i| entry(&format!("other-{i}"), &[&format!("h{i}.example.net")], ""))
        .collect();
    let edited = first.replace(
        "ports: [",
        "ports: [{number: 8080, name: http-alt, protocol: HTTP}, ",
    );
    let (index_after, after) = allocated(&format!("{others}{edited}"));
    for host in ["api.example.com", "www.example.com"] {
        assert_eq!(
            addresses_of(&index, &before, "api", host),
            addresses_of(&index_after, &after, "api", host),
            "{host}"
        );
    }
}

#[test]
fn hosts_never_share_an_address_and_the_older_entry_keeps_a_contested_slot() {
    // Enough hosts that hashing alone collides (birthday bound on 65,534 slots).
    let many: String = (0..800)
        .map(|i| entry(&format!("e{i}"), &[&format!("host-{i}.example.org")], ""))
        .collect();
    let (_, allocation) = allocated(&many);
    let mut seen = std::collections::HashSet::new();
    for addresses in allocation.0.values() {
        for address in addresses {
            assert!(seen.insert(*address), "{address} allocated twice");
        }
    }
    assert_eq!(seen.len(), 1600);

    // Two entries claiming one address in their status (a copy, a restore from backup): the
    // one created first keeps it, whatever the names' order; the other gets a new one.
    let claiming = |name: &str, created: &str| {
        entry(name, &["same.example.com"], "").replace(
            "namespace: shop}",
            &format!("namespace: shop, creationTimestamp: \"{created}\"}}"),
        ) + "status: {addresses: [{host: same.example.com, value: 240.240.7.7}]}\n"
    };
    let (index, both) = allocated(&format!(
        "{}{}",
        claiming("zz-old", "2024-01-01T00:00:00Z"),
        claiming("aa-new", "2025-01-01T00:00:00Z")
    ));
    let old = addresses_of(&index, &both, "zz-old", "same.example.com");
    assert_eq!(old[0], "240.240.7.7".parse::<IpAddr>().unwrap());
    let new = addresses_of(&index, &both, "aa-new", "same.example.com");
    assert_eq!(new.len(), 2);
    assert_ne!(new[0], old[0]);
}

#[test]
fn an_address_in_status_is_kept() {
    let text = entry("api", &["api.example.com"], "")
        + "status: {addresses: [{host: api.example.com, value: 240.240.3.4}, {host: api.example.com, value: \"2001:2::304\"}]}\n";
    let (index, allocation) = allocated(&text);
    assert_eq!(
        addresses_of(&index, &allocation, "api", "api.example.com"),
        vec![
            "240.240.3.4".parse::<IpAddr>().unwrap(),
            "2001:2::304".parse().unwrap()
        ]
    );
    // Outside the range, it is not ours to keep: a fresh one is allocated.
    let foreign = text
        .replace("240.240.3.4", "10.0.0.1")
        .replace("2001:2::304", "2001:db8::1");
    let (index, allocation) = allocated(&foreign);
    let vips = addresses_of(&index, &allocation, "api", "api.example.com");
    assert_ne!(vips[0], "10.0.0.1".parse::<IpAddr>().unwrap());
    assert!(Ranges::default().slot_of(vips[0]).is_some());
}

#[test]
fn a_dynamic_dns_wildcard_gets_addresses_as_istios_keep_host_gives_them() {
    // Istio's `keepHost`: a wildcard is kept (allocated) only under DYNAMIC_DNS, whose one
    // address the agents answer every name under it with.
    let text = [
        entry("dynamic", &["\"*.dynamic.example.com\""], "")
            .replace("resolution: DNS", "resolution: DYNAMIC_DNS"),
        entry(
            "static",
            &["\"*.static.example.com\""],
            "  endpoints: [{address: 10.1.1.1}]\n",
        )
        .replace("resolution: DNS", "resolution: STATIC"),
    ]
    .concat();
    let (index, allocation) = allocated(&text);
    let vips = addresses_of(&index, &allocation, "dynamic", "*.dynamic.example.com");
    assert_eq!(vips.len(), 2, "{allocation:?}");
    assert!(matches!(vips[0], IpAddr::V4(v4) if v4.octets()[..2] == [240, 240]));
    assert!(addresses_of(&index, &allocation, "static", "*.static.example.com").is_empty());
}

#[test]
fn an_address_an_entry_declares_in_the_range_is_never_allocated_and_wins_a_conflict() {
    // As Istio's allocator: a declared address inside the range marks it used, and an
    // auto-allocated address it equals is reassigned (the declared one wins, whichever came
    // first).
    let claimed = entry("claimed", &["claimed.example.com"], "")
        + "status: {addresses: [{host: claimed.example.com, value: 240.240.7.7}, {host: claimed.example.com, value: \"2001:2::707\"}]}\n";
    let declaring = entry(
        "declaring",
        &["declaring.example.com"],
        "  addresses: [240.240.7.7]\n",
    );
    let (index, allocation) = allocated(&format!("{claimed}{declaring}"));
    let claimed_vips = addresses_of(&index, &allocation, "claimed", "claimed.example.com");
    assert_eq!(claimed_vips.len(), 2, "{claimed_vips:?}");
    assert!(
        !claimed_vips.contains(&"240.240.7.7".parse().unwrap()),
        "{claimed_vips:?}"
    );
    assert_eq!(
        addresses_of(&index, &allocation, "declaring", "declaring.example.com"),
        vec!["240.240.7.7".parse::<IpAddr>().unwrap()]
    );
    // Without the declaring entry, the status address is kept.
    let (index, allocation) = allocated(&claimed);
    assert_eq!(
        addresses_of(&index, &allocation, "claimed", "claimed.example.com")[0],
        "240.240.7.7".parse::<IpAddr>().unwrap()
    );
    // Every slot hashing would pick is declared: the allocation steps past all of them.
    let hosts = entry("h", &["h.example.com"], "");
    let (index, first) = allocated(&hosts);
    let IpAddr::V4(v4) = addresses_of(&index, &first, "h", "h.example.com")[0] else {
        panic!("IPv4 first")
    };
    let declared = entry(
        "d",
        &["d.example.com"],
        &format!("  addresses: [{v4}]\n  endpoints: [{{address: 10.0.0.1}}]\n"),
    )
    .replace("resolution: DNS", "resolution: STATIC");
    let (index, second) = allocated(&format!("{hosts}{declared}"));
    assert_ne!(
        addresses_of(&index, &second, "h", "h.example.com")[0],
        IpAddr::V4(v4)
    );
}

#[test]
fn the_ranges_are_istiods_variables_checked_at_startup() {
    // Istio's defaults (`pilot/pkg/features`: PILOT_IP_AUTOALLOCATE_IPV4_PREFIX and
    // PILOT_IP_AUTOALLOCATE_IPV6_PREFIX).
    assert_eq!(
        Ranges::parse(DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX),
        Ok(Ranges::default())
    );
    // A prefix whose address has host bits set stands for its network (`netip.ParsePrefix`
    // accepts it).
    assert_eq!(
        Ranges::parse("10.250.3.7/16", "fd00:250::9/64"),
        Ranges::parse("10.250.0.0/16", "fd00:250::/64")
    );
    // istiod's bootstrap refuses a prefix `netip.ParsePrefix` refuses; here also one of the
    // other family, or one without an address between its first and last.
    let cases = [
        (
            "240.240.0.0",
            DEFAULT_IPV6_PREFIX,
            IPV4_PREFIX_ENV,
            "address/length",
        ),
        (
            "240.240.0/16",
            DEFAULT_IPV6_PREFIX,
            IPV4_PREFIX_ENV,
            "not an IP address",
        ),
        (
            "240.240.0.0/33",
            DEFAULT_IPV6_PREFIX,
            IPV4_PREFIX_ENV,
            "0 to 32",
        ),
        (
            "240.240.0.0/-1",
            DEFAULT_IPV6_PREFIX,
            IPV4_PREFIX_ENV,
            "0 to 32",
        ),
        (
            "2001:2::/48",
            DEFAULT_IPV6_PREFIX,
            IPV4_PREFIX_ENV,
            "not an IPv4 prefix",
        ),
        (
            "240.240.0.0/31",
            DEFAULT_IPV6_PREFIX,
            IPV4_PREFIX_ENV,
            "no address to allocate",
        ),
        (
            DEFAULT_IPV4_PREFIX,
            "240.240.0.0/16",
            IPV6_PREFIX_ENV,
            "not an IPv6 prefix",
        ),
        (
            DEFAULT_IPV4_PREFIX,
            "2001:2::/129",
            IPV6_PREFIX_ENV,
            "0 to 128",
        ),
        (
            DEFAULT_IPV4_PREFIX,
            "2001:2::/127",
            IPV6_PREFIX_ENV,
            "no address to allocate",
        ),
        (DEFAULT_IPV4_PREFIX, "", IPV6_PREFIX_ENV, "address/length"),
    ];
    for (v4, v6, variable, reason) in cases {
        let error = Ranges::parse(v4, v6).unwrap_err();
        let message = error.to_string();
        assert_eq!(error.variable, variable, "{message}");
        assert!(
            message.starts_with(&format!("{variable}=")) && message.contains(reason),
            "{v4} {v6}: {message}"
        );
    }
}

#[test]
fn addresses_come_from_the_configured_ranges() {
    // A /24 and a /64: 254 slots, the smaller range's, each host one address of each.
    let ranges = Ranges::parse("10.250.7.0/24", "fd00:250::/64").unwrap();
    let hosts: Vec<String> = (0..40).map(|i| format!("h{i}.example.com")).collect();
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let index = validated(&entry("many", &names, ""));
    let allocation = allocate(&index, &ranges);
    let mut seen = std::collections::HashSet::new();
    for host in &hosts {
        let vips = addresses_of(&index, &allocation, "many", host);
        let [IpAddr::V4(v4), IpAddr::V6(v6)] = vips[..] else {
            panic!("{host}: {vips:?}")
        };
        assert_eq!(v4.octets()[..3], [10, 250, 7], "{v4}");
        assert!((1..=254).contains(&v4.octets()[3]), "{v4}");
        assert_eq!(v6.segments()[..4], [0xfd00, 0x250, 0, 0], "{v6}");
        assert_eq!(
            u128::from(v6) & 0xffff_ffff_ffff_ffff,
            u128::from(v4.octets()[3])
        );
        assert!(seen.insert(v4), "{v4} given twice");
    }
    // An address in `status` from another range (istiod's defaults, before the change) is not
    // kept: the host gets one of the configured ranges.
    let moved = entry("moved", &["moved.example.com"], "")
        + "status:\n  addresses:\n  - {host: moved.example.com, value: 240.240.9.9}\n";
    let index = validated(&moved);
    let vips = addresses_of(
        &index,
        &allocate(&index, &ranges),
        "moved",
        "moved.example.com",
    );
    let IpAddr::V4(v4) = vips[0] else {
        panic!("{vips:?}")
    };
    assert_eq!(v4.octets()[..3], [10, 250, 7], "{vips:?}");
    // And kept under the defaults.
    let vips = addresses_of(
        &index,
        &allocate(&index, &Ranges::default()),
        "moved",
        "moved.example.com",
    );
    assert_eq!(vips[0], "240.240.9.9".parse::<IpAddr>().unwrap());
}
