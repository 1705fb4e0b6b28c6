//! One stream to a gRPC access-log service, as Envoy's gRPC access logger keeps one per
//! service and log name (envoy `access_loggers/common/grpc_access_logger.h`
//! `GrpcAccessLogger`): entries are buffered until their approximate size reaches
//! [`BUFFER_SIZE_BYTES`] (Envoy's default `buffer_size_bytes`) or [`BUFFER_FLUSH_INTERVAL`]
//! passes (Envoy's default `buffer_flush_interval`), then sent as one
//! `StreamAccessLogsMessage`; the first message of each stream carries the identifier (the
//! waypoint's node and the log name).
//!
//! A request never waits for it: a flushed message goes onto the stream's queue of at most
//! [`MAX_QUEUED_MESSAGES`] with `try_send`, and a message that finds the queue full, or no
//! stream open, is dropped and its entries counted (`weft_access_log_grpc_entries_dropped`, as
//! Envoy's `logs_dropped`), so a slow or dead service costs at most the buffer and the queue.
//! A stream that fails or ends is opened again after a backoff that doubles up to
//! [`MAX_BACKOFF`] (Envoy retries the stream likewise).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument, debug, info_span};
use weft_proto::envoy::config::core::v3::Node;
use weft_proto::envoy::data::accesslog::v3 as data;
use weft_proto::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use weft_proto::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use weft_proto::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries, TcpAccessLogEntries,
};

use super::Kind;

/// Envoy's default `buffer_size_bytes`: a message is sent once its entries reach this size.
pub const BUFFER_SIZE_BYTES: usize = 16_384;
/// Envoy's default `buffer_flush_interval`.
pub const BUFFER_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Messages waiting on the stream, at most: beyond, a message is dropped.
pub const MAX_QUEUED_MESSAGES: usize = 4;
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait before opening a failed stream again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One entry, of the kind its provider sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Http(Box<data::HttpAccessLogEntry>),
    Tcp(Box<data::TcpAccessLogEntry>),
}

impl Entry {
    /// The entry's encoded size: what counts toward the buffer's.
    pub fn encoded_len(&self) -> usize {
        match self {
            Entry::Http(entry) => entry.encoded_len(),
            Entry::Tcp(entry) => entry.encoded_len(),
        }
    }
}

/// Who the waypoint says it is on every stream (the identifier's node id).
static NODE_ID: OnceLock<String> = OnceLock::new();

/// Sets the node id the identifier carries (once; the waypoint's `node_id`).
pub fn set_node_id(id: String) {
    let _ = NODE_ID.set(id);
}

/// The node id the identifier carries.
pub fn node_id() -> String {
    NODE_ID.get().cloned().unwrap_or_default()
}

/// The counters of every stream, registered with the waypoint's metrics.
#[derive(Clone, Default)]
struct GlobalCounters {
    sent: Counter,
    dropped: Counter,
}

fn global() -> &'static GlobalCounters {
    static COUNTERS: OnceLock<GlobalCounters> = OnceLock::new();
    COUNTERS.get_or_init(GlobalCounters::default)
}

/// Registers the counters of the gRPC access-log streams in `registry`.
pub fn register(registry: &mut Registry) {
    let counters = global();
    registry.register(
        "weft_access_log_grpc_entries_sent",
        "Access-log entries handed to a gRPC access-log service stream",
        counters.sent.clone(),
    );
    registry.register(
        "weft_access_log_grpc_entries_dropped",
        "Access-log entries dropped because their gRPC access-log service stream was down or full",
        counters.dropped.clone(),
    );
}

/// What identifies a stream: configurations naming the same service and log name share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StreamKey {
    kind: Kind,
    endpoints: Vec<String>,
    log_name: String,
}

/// The entries waiting for the next message.
#[derive(Default)]
struct Buffer {
    entries: Vec<Entry>,
    bytes: usize,
}

/// The open stream's queue.
struct Open {
    queue: mpsc::Sender<StreamAccessLogsMessage>,
    /// The identifier went with a message on this stream.
    identified: bool,
}

/// One gRPC access-log service stream and its buffer.
pub struct AlsStream {
    key: StreamKey,
    buffer: Mutex<Buffer>,
    open: Mutex<Option<Open>>,
    started: AtomicBool,
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl AlsStream {
    /// The stream for `kind` entries to `endpoints` under `log_name`: the one a configuration
    /// in force already uses, else a new one. It lives as long as a configuration names it.
    pub fn shared(kind: Kind, endpoints: Vec<String>, log_name: String) -> Arc<AlsStream> {
        static STREAMS: OnceLock<Mutex<HashMap<StreamKey, Weak<AlsStream>>>> = OnceLock::new();
        let key = StreamKey {
            kind,
            endpoints,
            log_name,
        };
        let mut streams = STREAMS.get_or_init(Default::default).lock().unwrap();
        if let Some(stream) = streams.get(&key).and_then(Weak::upgrade) {
            return stream;
        }
        streams.retain(|_, stream| stream.strong_count() > 0);
        let stream = Arc::new(AlsStream::new(key.clone()));
        streams.insert(key, Arc::downgrade(&stream));
        stream
    }

    fn new(key: StreamKey) -> AlsStream {
        AlsStream {
            key,
            buffer: Mutex::default(),
            open: Mutex::default(),
            started: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Buffers `entry`; sends the buffer once it reaches [`BUFFER_SIZE_BYTES`]. Never waits.
    /// The stream's task starts with the first entry, on the current runtime.
    pub fn submit(self: &Arc<Self>, entry: Entry) {
        self.start();
        let full = {
            let mut buffer = self.buffer.lock().unwrap();
            buffer.bytes += entry.encoded_len();
            buffer.entries.push(entry);
            if buffer.bytes >= BUFFER_SIZE_BYTES {
                Some(std::mem::take(&mut *buffer))
            } else {
                None
            }
        };
        if let Some(buffer) = full {
            self.send(buffer.entries);
        }
    }

    /// Sends what the buffer holds.
    pub fn flush(&self) {
        let buffer = std::mem::take(&mut *self.buffer.lock().unwrap());
        if !buffer.entries.is_empty() {
            self.send(buffer.entries);
        }
    }

    /// Entries handed to the stream.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Entries dropped: no stream open, or its queue full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The approximate size of the entries waiting for the next message.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.lock().unwrap().bytes
    }

    fn send(&self, entries: Vec<Entry>) {
        let count = entries.len() as u64;
        let mut open = self.open.lock().unwrap();
        let Some(stream) = open.as_mut() else {
            self.count_dropped(count);
            return;
        };
        let identifier = (!stream.identified).then(|| Identifier {
            node: Some(Node {
                id: node_id(),
                ..Default::default()
            }),
            log_name: self.key.log_name.clone(),
        });
        let message = StreamAccessLogsMessage {
            identifier,
            log_entries: Some(log_entries(self.key.kind, entries)),
        };
        match stream.queue.try_send(message) {
            Ok(()) => {
                stream.identified = true;
                self.sent.fetch_add(count, Ordering::Relaxed);
                global().sent.inc_by(count);
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.count_dropped(count),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                *open = None;
                self.count_dropped(count);
            }
        }
    }

    fn count_dropped(&self, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
        global().dropped.inc_by(count);
    }

    fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Relaxed) || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let span = info_span!("access_log_service", log_name = %self.key.log_name);
        tokio::spawn(run(Arc::downgrade(self)).instrument(span));
    }
}

fn log_entries(kind: Kind, entries: Vec<Entry>) -> LogEntries {
    match kind {
        Kind::Http => LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: entries
                .into_iter()
                .filter_map(|e| match e {
                    Entry::Http(entry) => Some(*entry),
                    Entry::Tcp(_) => None,
                })
                .collect(),
        }),
        Kind::Tcp => LogEntries::TcpLogs(TcpAccessLogEntries {
            log_entry: entries
                .into_iter()
                .filter_map(|e| match e {
                    Entry::Tcp(entry) => Some(*entry),
                    Entry::Http(_) => None,
                })
                .collect(),
        }),
    }
}

/// Opens the stream, flushes the buffer every [`BUFFER_FLUSH_INTERVAL`], and opens the
/// stream again after a backoff when it ends; returns once no configuration names it.
async fn run(stream: Weak<AlsStream>) {
    let mut ticker = tokio::time::interval(BUFFER_FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = INITIAL_BACKOFF;
    let mut turn = 0usize;
    loop {
        let call = {
            let Some(strong) = stream.upgrade() else {
                return;
            };
            let endpoints = &strong.key.endpoints;
            let endpoint = endpoints[turn % endpoints.len().max(1)].clone();
            turn = turn.wrapping_add(1);
            let (queue, requests) = mpsc::channel(MAX_QUEUED_MESSAGES);
            *strong.open.lock().unwrap() = Some(Open {
                queue,
                identified: false,
            });
            open_stream(endpoint, requests)
        };
        tokio::pin!(call);
        let opened = tokio::time::Instant::now();
        loop {
            tokio::select! {
                ended = &mut call => {
                    debug!(?ended, "access-log service stream ended");
                    break;
                }
                _ = ticker.tick() => match stream.upgrade() {
                    Some(strong) => strong.flush(),
                    None => return,
                },
            }
        }
        match stream.upgrade() {
            Some(strong) => *strong.open.lock().unwrap() = None,
            None => return,
        }
        // A stream that stayed up a while starts the backoff over.
        if opened.elapsed() > MAX_BACKOFF {
            backoff = INITIAL_BACKOFF;
        }
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        loop {
            tokio::select! {
                () = &mut wait => break,
                _ = ticker.tick() => match stream.upgrade() {
                    // No stream: what the buffer holds is dropped and counted.
                    Some(strong) => strong.flush(),
                    None => return,
                },
            }
        }
    }
}

/// One `StreamAccessLogs` call sending what `requests` yields; ends when the service answers
/// or the call fails.
async fn open_stream(
    endpoint: String,
    requests: mpsc::Receiver<StreamAccessLogsMessage>,
) -> Result<(), String> {
    let channel: Channel = Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| format!("{endpoint}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_lazy();
    AccessLogServiceClient::new(channel)
        .stream_access_logs(ReceiverStream::new(requests))
        .await
        .map(drop)
        .map_err(|status| format!("{endpoint}: {status}"))
}

#[cfg(test)]
pub(crate) fn for_test(kind: Kind, endpoint: String) -> Arc<AlsStream> {
    Arc::new(AlsStream::new(StreamKey {
        kind,
        endpoints: vec![endpoint],
        log_name: "test".to_owned(),
    }))
}
