//! The mesh's kernel programs. Each program lives in its own module as a thin wrapper around a
//! `try_*` function; shared types and names come from `weft-ebpf-common`, the maps the
//! redirection programs share live in `state`.
#![no_std]
#![no_main]

mod dns;
mod inbound;
mod outbound;
mod smoke;
mod sockets;
mod splice;
mod state;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
