//! Where access-log lines go: standard output, one `write` per line, with no lock shared by
//! the workers for the common line.
//!
//! The log subscriber formats each event in a buffer of its own and writes it with one
//! `write_all`. Through `std::io::Stdout` that write holds the process's stdout lock for the
//! whole system call: at the gateway, with a line per request from each worker, the workers
//! queued on that lock (futex waits and wake-ups, a third of a request's context switches).
//! A line here is written to a duplicate of the stdout descriptor directly. The kernel keeps
//! a write of up to `PIPE_BUF` bytes whole on a pipe (a container's log) and serialises
//! writes on one open file, so lines from two workers never mix. A longer line (a long path)
//! may be written in pieces on a pipe: it takes the lock exclusively, the short lines share it,
//! so no line lands inside another.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, RwLock};

use tracing_subscriber::fmt::MakeWriter;

/// The longest write a pipe keeps whole (POSIX `PIPE_BUF` on Linux).
const ATOMIC_WRITE: usize = 4096;

/// A [`MakeWriter`] for access-log lines on standard output. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessWriter {
    /// `None` when the descriptor could not be duplicated (no descriptor left at start-up):
    /// the lines go through `std::io::Stdout` as every other event does.
    out: Option<Arc<RwLock<File>>>,
}

impl AccessWriter {
    /// Writes to a duplicate of the process's standard output.
    pub fn stdout() -> Self {
        match io::stdout().as_fd().try_clone_to_owned() {
            Ok(fd) => Self::to(File::from(fd)),
            Err(_) => AccessWriter { out: None },
        }
    }

    /// Writes to `file` (a configured access-log file; tests: a pipe or a file they read
    /// back).
    pub fn to(file: File) -> Self {
        AccessWriter {
            out: Some(Arc::new(RwLock::new(file))),
        }
    }

    /// Writes one whole line, outside the log subscriber.
    pub fn write_line(&self, line: &[u8]) -> io::Result<()> {
        self.make_writer().write_all(line)
    }
}

/// One event's writer: the subscriber hands it the whole formatted line.
pub struct AccessLine<'a> {
    out: Option<&'a RwLock<File>>,
}

impl Write for AccessLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let Some(out) = self.out else {
            return io::stdout().write_all(buf);
        };
        // A poisoned lock only means a writer panicked between writes: the file is usable.
        if buf.len() <= ATOMIC_WRITE {
            let file = out.read().unwrap_or_else(|p| p.into_inner());
            (&*file).write_all(buf)
        } else {
            let file = out.write().unwrap_or_else(|p| p.into_inner());
            (&*file).write_all(buf)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for AccessWriter {
    type Writer = AccessLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        AccessLine {
            out: self.out.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Lines written at once by several threads, short and longer than a pipe keeps whole, come
    /// out whole through a pipe, each exactly once.
    #[test]
    fn concurrent_lines_are_never_mixed() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let access = AccessWriter::to(File::from(std::os::fd::OwnedFd::from(writer)));
        let reading = std::thread::spawn(move || {
            let mut text = String::new();
            reader.read_to_string(&mut text).unwrap();
            text
        });
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let access = access.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let len = if i % 10 == 0 { 3 * ATOMIC_WRITE } else { 200 };
                        let fill = char::from(b'a' + t).to_string().repeat(len);
                        let line = format!("{t} {i} {fill}\n");
                        access.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(access);
        let text = reading.join().unwrap();
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            let mut fields = line.split(' ');
            let (t, i, fill) = (fields.next(), fields.next(), fields.next().unwrap_or(""));
            let t: u8 = t.unwrap().parse().unwrap();
            let own = char::from(b'a' + t);
            assert!(
                fill.chars().all(|c| c == own),
                "a line mixed with another: {line:.80}"
            );
            assert!(
                seen.insert((t, i.unwrap().to_owned())),
                "a line twice: {line:.80}"
            );
        }
        assert_eq!(seen.len(), 800);
    }
}
