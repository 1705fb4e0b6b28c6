//! The mesh's fixed ports. The kernel programs treat them specially too, and they cannot depend
//! on a `std` crate, so the numbers are declared once, in `weft-ebpf-common`, and named here for
//! everything above the kernel.

/// The port waypoints and node agents accept HBONE (mTLS HTTP/2 CONNECT) on.
pub const HBONE_PORT: u16 = weft_ebpf_common::ports::HBONE;
