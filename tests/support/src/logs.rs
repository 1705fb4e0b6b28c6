//! What `tracing` logs, kept in memory as plain text lines, for tests that assert an event was
//! logged (an access log record, a refusal explained, a problem reported once).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Collects what a fmt subscriber writes; clones share one buffer.
#[derive(Debug, Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn new() -> Self {
        Self::default()
    }

    /// A subscriber writing plain (uncoloured) fmt lines here, for
    /// `tracing::subscriber::with_default`.
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish()
    }

    /// The captured text so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The capture behind [`capture`]: one per test binary.
static PROCESS: OnceLock<LogCapture> = OnceLock::new();

/// Installs a capture as the global subscriber of this test binary (once; later calls do
/// nothing), for tests whose events come from threads and tasks they do not own (the node
/// agent's, the eBPF programs' aya-log records through the loader's bridge).
pub fn capture() {
    let writer = PROCESS.get_or_init(LogCapture::new).clone();
    // `try_init` also forwards the `log` crate's records (aya-log's) into tracing.
    let _ = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init();
}

/// What the global capture holds so far (empty before [`capture`]).
pub fn text() -> String {
    PROCESS.get().map(LogCapture::text).unwrap_or_default()
}

/// Whether a line holding every one of `needles` was logged to the global capture within `wait`.
pub fn line_within(wait: Duration, needles: &[&str]) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if text()
            .lines()
            .any(|line| needles.iter().all(|needle| line.contains(needle)))
        {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_holds_what_its_subscriber_logged() {
        let capture = LogCapture::new();
        tracing::subscriber::with_default(capture.subscriber(), || {
            tracing::info!(peer = "a", "connection complete");
        });
        let text = capture.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("peer=\"a\""), "{text}");
        assert!(text.contains("connection complete"), "{text}");
        assert!(!text.contains('\u{1b}'), "coloured: {text}");
    }
}
