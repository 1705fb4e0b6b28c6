//! The smoke program: proves the embedded object loads and a cgroup program runs for a pod.
use std::{os::fd::AsFd, path::Path};

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{CgroupAttachMode, CgroupSockAddr},
};
use weft_ebpf_common::{maps, programs, smoke};

use super::{EbpfError, OBJECT};

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
