//! What each fuzz target does with one input, for every parser that takes input from outside a
//! process: the waypoint's HTTP/1 framing guard and request conformance, the HBONE server's
//! reading of a CONNECT and its admission, the xDS pushes to the agent and the waypoint, YAML
//! through the controller's validation and translation, the agent's enrollment socket, and the
//! CNI plugin's input.
//!
//! cargo-fuzz (`fuzz/`, `cargo xtask fuzz`) calls these with generated inputs; the tests replay
//! every seed (`fuzz/seeds/<target>`) and every input that once failed
//! (`fuzz/regressions/<target>`) through them in the ordinary test build. Each calls the public
//! entry points the binaries call and decides nothing itself; a panic is a finding.

mod cni;
mod controller;
mod enrollment;
mod hbone;
mod http1;
mod xds;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// A fuzz target: one input in, a panic when something is wrong.
pub type Target = fn(&[u8]);

/// Every target by the name of its cargo-fuzz binary (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: &[(&str, Target)] = &[
    ("http1_framing", http1::framing),
    ("http1_conformance", http1::conformance),
    ("hbone_connect", hbone::connect),
    ("agent_xds", xds::agent),
    ("waypoint_xds", xds::waypoint),
    ("controller_yaml", controller::yaml),
    ("enrollment", enrollment::socket),
    ("cni_plugin", cni::plugin),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Splits `data` at the first `separator`: (before, after); all of it and nothing without one.
fn split_once<'a>(data: &'a [u8], separator: &[u8]) -> (&'a [u8], &'a [u8]) {
    match data.windows(separator.len()).position(|w| w == separator) {
        Some(at) => (&data[..at], &data[at + separator.len()..]),
        None => (data, &[]),
    }
}

/// Runs a future that completes without outside I/O (in-memory readers, fakes): polled with a
/// no-op waker until ready. Panics if it stops making progress, as that would be a hang.
fn complete<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
    panic!("an in-memory future made no progress");
}
