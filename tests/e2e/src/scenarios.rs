//! The demo's scenarios, in the order they are played. Shared by the demo (`src/bin/demo.rs`)
//! and by `cargo xtask demo`, which includes this file as a module of its own to refuse an
//! unknown `--scenario` before it builds anything: it must stay free of dependencies.

/// Every scenario: name and title.
pub const SCENARIOS: [(&str, &str); 8] = [
    ("mtls", "traffic between the nodes is mutual TLS"),
    ("deny", "authorization policies block calls"),
    (
        "canary",
        "the reviews canary splits 90/10, then moves to 50/50 on open connections",
    ),
    ("header-routing", "the user jason is routed to reviews v3"),
    ("fault", "an injected fault aborts jason's calls to ratings"),
    ("metrics", "Istio's metrics at the waypoint and the agents"),
    (
        "ingress",
        "an outside client reaches bookinfo through the ingress gateway over HTTPS",
    ),
    (
        "egress",
        "a pod reaches an external server through the egress gateway, which originates TLS",
    ),
];

/// `Ok` for a known scenario; else the message listing the known ones.
pub fn check(name: &str) -> Result<(), String> {
    if SCENARIOS.iter().any(|(n, _)| *n == name) {
        return Ok(());
    }
    Err(format!(
        "no scenario {name:?}; the scenarios are: {}",
        SCENARIOS.map(|(n, _)| n).join(", ")
    ))
}
