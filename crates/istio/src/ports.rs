//! The mesh's fixed ports.

/// The port waypoints and node agents accept HBONE (mTLS HTTP/2 CONNECT) on.
pub const HBONE_PORT: u16 = 15008;
