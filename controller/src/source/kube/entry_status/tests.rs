//! The ServiceEntry address writer against the fake API server: allocated addresses appear in
//! `status.addresses`, and an address already there is the one kept.

use super::*;
use crate::source::kube::test_support::{Started, eventually};

const ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: https, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: migrated, namespace: shop}
spec:
  hosts: [old.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: https, protocol: TLS}]
status:
  addresses:
  - {host: old.example.com, value: 240.240.9.9}
  - {host: old.example.com, value: "2001:2::909"}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: declared, namespace: shop}
spec:
  hosts: [declared.example.com]
  addresses: [10.9.9.9]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: https, protocol: TLS}]
"#;

fn status_addresses(started: &Started, name: &str) -> Value {
    started
        .fake
        .get("networking.istio.io/v1", "ServiceEntry", "shop", name)
        .map(|e| e["status"]["addresses"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn allocated_addresses_are_written_to_status_and_kept() {
    let mut started = Started::with(ENTRIES).await;
    started.run(|client, index, shutdown| {
        keep_entry_addresses(client, index, auto_allocate::Ranges::default(), shutdown)
    });
    eventually("the allocated addresses in api's status", || {
        status_addresses(&started, "api")
            .as_array()
            .is_some_and(|a| a.len() == 2)
    })
    .await;
    let written = status_addresses(&started, "api");
    assert_eq!(written[0]["host"], "api.example.com");
    assert!(
        written[0]["value"]
            .as_str()
            .is_some_and(|v| v.starts_with("240.240.")),
        "{written}"
    );
    assert!(
        written[1]["value"]
            .as_str()
            .is_some_and(|v| v.starts_with("2001:2::")),
        "{written}"
    );
    // What a status already names stays: the migrated entry is not rewritten.
    assert_eq!(
        status_addresses(&started, "migrated"),
        json!([
            {"host": "old.example.com", "value": "240.240.9.9"},
            {"host": "old.example.com", "value": "2001:2::909"},
        ])
    );
    // Declared addresses: no status of ours.
    assert_eq!(status_addresses(&started, "declared"), Value::Null);
    // Once written and read back, nothing is left to write.
    eventually("the index to hold the written status", || {
        pending(&started.index.snapshot(), &auto_allocate::Ranges::default()).is_empty()
    })
    .await;
    started.stop().await;
}

#[test]
fn addresses_of_an_entry_no_longer_allocated_are_cleared_from_its_status() {
    // Istio's `clearStaleAddresses`: an entry that now declares addresses (or opted out, or
    // resolves NONE) has the allocated ones in its status replaced by none.
    let stale = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: now-declared, namespace: shop}
spec:
  hosts: [api.example.com]
  addresses: [10.9.9.9]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: https, protocol: TLS}]
status:
  addresses:
  - {host: api.example.com, value: 240.240.9.9}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: never-allocated, namespace: shop}
spec:
  hosts: [other.example.com]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 443, name: https, protocol: TLS}]
status:
  addresses: []
"#;
    let index = crate::translate::waypoint::tests::validated(stale);
    let pending = pending(&index, &auto_allocate::Ranges::default());
    assert_eq!(
        pending.get(&("shop".to_owned(), "now-declared".to_owned())),
        Some(&json!([]))
    );
    // Nothing to clear: left alone.
    assert_eq!(pending.len(), 1, "{pending:?}");
}

#[tokio::test]
async fn addresses_are_written_from_the_configured_ranges() {
    // istiod's PILOT_IP_AUTOALLOCATE_IPV4_PREFIX and PILOT_IP_AUTOALLOCATE_IPV6_PREFIX: the
    // allocation moves to those ranges, an address of the defaults in a status included.
    let ranges = auto_allocate::Ranges::parse("10.250.0.0/16", "fd00:250::/64").unwrap();
    let mut started = Started::with(ENTRIES).await;
    started
        .run(move |client, index, shutdown| keep_entry_addresses(client, index, ranges, shutdown));
    for name in ["api", "migrated"] {
        eventually("addresses of the configured ranges in the status", || {
            let written = status_addresses(&started, name);
            written[0]["value"]
                .as_str()
                .is_some_and(|v| v.starts_with("10.250."))
                && written[1]["value"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("fd00:250::"))
        })
        .await;
    }
    eventually("the index to hold the written status", || {
        pending(&started.index.snapshot(), &ranges).is_empty()
    })
    .await;
    started.stop().await;
}
