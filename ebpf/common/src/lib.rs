//! Types shared by the kernel programs (`ebpf/programs`) and the node agent's loader: map names,
//! `#[repr(C)]` keys and values with explicit padding, no `bool`. Builds `no_std` for the kernel
//! side; the `user` feature adds `aya::Pod` for user space. Holds no logic.
#![no_std]

/// Map names, as they appear in the object file and under bpffs once pinned.
pub mod maps {
    /// Smoke-test counter: how many `connect()` calls the smoke program saw, by slot.
    pub const SMOKE_COUNTER: &str = "SMOKE_COUNTER";
}

/// Program names, as the loader looks them up in the object file.
pub mod programs {
    /// A `cgroup/connect4` program that only counts calls and lets every connect through.
    pub const SMOKE_CONNECT4: &str = "smoke_connect4";
}

/// Slots of [`maps::SMOKE_COUNTER`].
pub mod smoke {
    /// Every IPv4 `connect()` seen.
    pub const CONNECTS: u32 = 0;
    /// Every IPv4 TCP `connect()` seen.
    pub const TCP_CONNECTS: u32 = 1;
    /// Number of slots.
    pub const SLOTS: u32 = 2;
}
