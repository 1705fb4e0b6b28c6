//! Everything logged through `tracing` in a test binary, kept in memory so that tests can assert
//! that a refusal was explained (the programs' aya-log records arrive here too, through the
//! loader's bridge).

use std::sync::Mutex;
use std::time::{Duration, Instant};

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (once per test binary; later calls do nothing).
pub fn capture() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogSink)
        .with_ansi(false)
        .try_init();
}

/// The captured text so far.
pub fn text() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// Whether a line holding every one of `needles` was logged within `wait`.
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
