//! Carries the programs' aya-log records into `tracing`.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::Ebpf;
use aya_log::EbpfLogger;

/// How often the log ring buffer is drained.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// A `log::Log` that re-emits records as `tracing` events with target `weft_ebpf`.
#[derive(Debug, Clone, Copy)]
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        let program = record.target();
        match record.level() {
            log::Level::Error => tracing::error!(target: "weft_ebpf", program, "{message}"),
            log::Level::Warn => tracing::warn!(target: "weft_ebpf", program, "{message}"),
            log::Level::Info => tracing::info!(target: "weft_ebpf", program, "{message}"),
            log::Level::Debug => tracing::debug!(target: "weft_ebpf", program, "{message}"),
            log::Level::Trace => tracing::trace!(target: "weft_ebpf", program, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// A thread draining the programs' log buffer; stops when dropped.
#[derive(Debug)]
pub struct LogDrain {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogDrain {
    /// Starts draining `ebpf`'s log buffer. Call after the programs are loaded (the buffer is
    /// found through them). Logging is best effort: without it the programs work the same.
    pub fn start(ebpf: &mut Ebpf) -> Option<Self> {
        let mut logger = match EbpfLogger::init_with_logger(ebpf, TracingLog) {
            Ok(logger) => logger,
            Err(error) => {
                tracing::warn!(%error, "eBPF program logs unavailable");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ebpf-log".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    logger.flush();
                    std::thread::sleep(DRAIN_INTERVAL);
                }
                logger.flush();
            })
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogDrain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
