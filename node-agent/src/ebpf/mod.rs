//! The eBPF object embedded in the agent, and loading it into the kernel.
//!
//! [`Redirection`] loads the redirection programs, pins their maps and links under bpffs and
//! enrolls pods (outbound `connect4`/`connect6` + `sockops` once at the cgroup v2 root, acting on
//! enrolled network namespaces only; inbound `sk_lookup` on each pod's netns; `sk_msg` splicing
//! of same-netns pairs). The agent's proxy talks to
//! it through the [`Enroller`] and [`OriginalDst`] traits, so its unit tests need no kernel.
//! This is the only module of the crate allowed `unsafe` (socket options), each use with a
//! `// SAFETY:` line.
#![allow(unsafe_code)]

mod features;
mod interface;
mod log_bridge;
mod redirection;
mod smoke;
mod sockopt;

pub use features::{
    KernelFeatures, MissingFeature, cgroup2_root, check_kernel_features, ensure_bpffs,
};
#[cfg(any(test, feature = "testing"))]
pub use interface::fake;
pub use interface::{
    EnrolledPod, Enroller, NetnsCookie, OriginalDst, PodEnrollment, RedirectionError,
};
pub use redirection::{ConnectionRecords, Redirection, RedirectionConfig, RedirectionStats};
pub use smoke::{SmokeCounts, SmokeProbe};
pub use sockopt::{netns_cookie, netns_cookie_of};

/// The object built by `cargo xtask build-ebpf`, embedded at compile time (see `build.rs`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("WEFT_EBPF_OBJECT_PATH"));

/// Errors of loading and attaching the eBPF programs.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the eBPF object into the kernel: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {0}: {1}")]
    Program(&'static str, #[source] aya::programs::ProgramError),
    #[error("map {0}: {1}")]
    Map(&'static str, #[source] aya::maps::MapError),
    #[error("opening cgroup {0}: {1}")]
    Cgroup(String, #[source] std::io::Error),
}
