//! The place one tunnel takes on a pooled connection: the pool counts a connection's streams
//! to fill it up to its peer's limit, and a tunnel gives its place back when it is dropped.
//! Its own module so that the tunnel (`stream`) and the client need nothing of the pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The streams open on one pooled connection.
pub(crate) type StreamCount = Arc<AtomicUsize>;

/// One reserved stream on a pooled connection, released when dropped.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    streams: StreamCount,
}

impl StreamSlot {
    /// A place already counted in `streams`.
    pub(crate) fn taken(streams: &StreamCount) -> Self {
        Self {
            streams: Arc::clone(streams),
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }
}
