//! A `cgroup/connect4` program that counts connects and never changes them: proves that the
//! object loads and that a program attached to a pod's cgroup runs for that pod's sockets.
use aya_ebpf::{
    macros::{cgroup_sock_addr, map},
    maps::PerCpuArray,
    programs::SockAddrContext,
};
use weft_ebpf_common::smoke;

const IPPROTO_TCP: u32 = 6;
/// `1` lets the `connect()` proceed.
const ALLOW: i32 = 1;

#[map(name = "SMOKE_COUNTER")]
static SMOKE_COUNTER: PerCpuArray<u64> = PerCpuArray::with_max_entries(smoke::SLOTS, 0);

#[cgroup_sock_addr(connect4)]
pub fn smoke_connect4(ctx: SockAddrContext) -> i32 {
    try_smoke_connect4(&ctx);
    ALLOW
}

fn try_smoke_connect4(ctx: &SockAddrContext) {
    bump(smoke::CONNECTS);
    // SAFETY: `sock_addr` points at the kernel's `bpf_sock_addr` for the whole program run.
    let protocol = unsafe { (*ctx.sock_addr).protocol };
    if protocol == IPPROTO_TCP {
        bump(smoke::TCP_CONNECTS);
    }
}

fn bump(slot: u32) {
    if let Some(counter) = SMOKE_COUNTER.get_ptr_mut(slot) {
        // SAFETY: the pointer comes from the map and stays valid for this run; the slot is this
        // CPU's own, and a program run is not preempted on its CPU.
        unsafe { *counter += 1 };
    }
}
