//! The eBPF object embedded in the agent, and loading it into the kernel.
use std::{os::fd::AsFd, path::Path};

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{CgroupAttachMode, CgroupSockAddr},
};
use weft_ebpf_common::{maps, programs, smoke};

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

/// The smoke program attached to one cgroup: counts that cgroup's `connect()` calls.
/// Detached when dropped.
pub struct SmokeProbe {
    ebpf: Ebpf,
}

/// What the smoke program counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmokeCounts {
    pub connects: u64,
    pub tcp_connects: u64,
}

impl SmokeProbe {
    /// Loads the embedded object and attaches its smoke `connect4` program to `cgroup`.
    pub fn attach(cgroup: &Path) -> Result<Self, EbpfError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(EbpfError::Load)?;
        let name = programs::SMOKE_CONNECT4;
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram(name))?
            .try_into()
            .map_err(|e| EbpfError::Program(name, e))?;
        program.load().map_err(|e| EbpfError::Program(name, e))?;
        let cgroup_dir = std::fs::File::open(cgroup)
            .map_err(|e| EbpfError::Cgroup(cgroup.display().to_string(), e))?;
        program
            .attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
            .map_err(|e| EbpfError::Program(name, e))?;
        Ok(Self { ebpf })
    }

    /// Reads the counters.
    pub fn counts(&self) -> Result<SmokeCounts, EbpfError> {
        let name = maps::SMOKE_COUNTER;
        let map = self.ebpf.map(name).ok_or(EbpfError::MissingMap(name))?;
        let counter: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|e| EbpfError::Map(name, e))?;
        let get = |slot| {
            counter
                .get(&slot, 0)
                .map(|per_cpu| per_cpu.iter().sum::<u64>())
                .map_err(|e| EbpfError::Map(name, e))
        };
        Ok(SmokeCounts {
            connects: get(smoke::CONNECTS)?,
            tcp_connects: get(smoke::TCP_CONNECTS)?,
        })
    }
}
