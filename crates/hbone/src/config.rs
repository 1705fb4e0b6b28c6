//! HTTP/2 settings shared by the HBONE client and server.

/// Port every HBONE listener uses (Istio's fixed value), declared with the other ports the
/// node agent's eBPF programs treat specially.
pub const HBONE_PORT: u16 = weft_ebpf_common::ports::HBONE;

/// Per-stream receive window: 4 MiB lets one tunnel fill a fast link without waiting for
/// WINDOW_UPDATEs (the HTTP/2 default of 64 KiB caps a tunnel at 64 KiB per round trip).
pub const DEFAULT_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Connection receive window: several streams can be in full flight at once.
pub const DEFAULT_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest DATA frame we accept: fewer frame headers and fewer wakeups on bulk transfers.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Outgoing data h2 buffers per stream; matched to the stream window so that a full window can
/// be queued and flushed in one go.
pub const DEFAULT_MAX_SEND_BUFFER: usize = DEFAULT_STREAM_WINDOW as usize;
/// Concurrent tunnels on one connection, in each direction.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
/// CONNECT requests carry a handful of short headers; anything larger is abuse.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// HTTP/2 tuning for one HBONE connection, used by both the client and the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Config {
    /// Initial receive window of each stream, in bytes.
    pub stream_window: u32,
    /// Receive window of the whole connection, in bytes.
    pub connection_window: u32,
    /// Largest DATA frame payload accepted from the peer, in bytes.
    pub max_frame_size: u32,
    /// Bytes of outgoing data h2 may buffer per stream before applying back-pressure.
    pub max_send_buffer: usize,
    /// Concurrent streams: the server advertises it, the client pool fills a connection up to it
    /// (or to the peer's advertised limit when lower).
    pub max_concurrent_streams: u32,
    /// Largest header block accepted from the peer, in bytes.
    pub max_header_list_size: u32,
}

impl Default for H2Config {
    fn default() -> Self {
        Self {
            stream_window: DEFAULT_STREAM_WINDOW,
            connection_window: DEFAULT_CONNECTION_WINDOW,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_send_buffer: DEFAULT_MAX_SEND_BUFFER,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
        }
    }
}

impl H2Config {
    pub(crate) fn client_builder(&self) -> h2::client::Builder {
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_send_buffer_size(self.max_send_buffer)
            .max_header_list_size(self.max_header_list_size)
            .initial_max_send_streams(self.max_concurrent_streams as usize)
            .enable_push(false);
        builder
    }

    pub(crate) fn server_builder(&self) -> h2::server::Builder {
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_send_buffer_size(self.max_send_buffer)
            .max_header_list_size(self.max_header_list_size)
            .max_concurrent_streams(self.max_concurrent_streams);
        builder
    }
}
