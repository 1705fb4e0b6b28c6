//! Thread-per-core proxying: a fixed set of worker threads, each running its own single-threaded
//! runtime, and which one the caller is on.
//!
//! A connection stays on the worker it was given for its whole life, together with everything it
//! causes: its HTTP/2 connection task, the tunnels and requests it carries, and the upstream
//! connections they go out on (each worker has its own pools, indexed by [`current_index`]). A
//! request therefore wakes tasks on one thread only: no work stealing, no cross-thread wakeups,
//! no lock two workers contend for on the data path. On a work-stealing runtime the h2
//! connection task and the tasks using its streams ran on different threads and met on h2's
//! stream lock: in the agent about twice the latency and a third more CPU per request; in the
//! waypoint 7-30% more CPU per request at 64 connections.
//!
//! The node agent gives each worker its own listeners (`SO_REUSEPORT` spreads new connections);
//! the waypoint, which has few downstream connections each multiplexing many tunnels, deals them
//! round robin with [`Workers::next`].

use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use tokio::runtime::Handle;

thread_local! {
    /// The index of the worker this thread runs, if it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker the calling thread runs (0 when it is not a worker thread: tests and
/// embedders that run everything on one runtime of their own).
pub fn current_index() -> usize {
    WORKER.with(Cell::get).unwrap_or(0)
}

/// Handles on the worker runtimes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Workers {
    handles: Arc<[Handle]>,
    next: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts `count` (at least one) worker threads named `<name>-<index>`, each running a
    /// current-thread runtime until the process exits.
    pub fn start(count: usize, name: &str) -> io::Result<Self> {
        let mut handles = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let (sender, receiver) = mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    WORKER.with(|worker| worker.set(Some(index)));
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            let _ = sender.send(Err(error));
                            return;
                        }
                    };
                    let _ = sender.send(Ok(runtime.handle().clone()));
                    runtime.block_on(std::future::pending::<()>());
                })?;
            let handle = receiver
                .recv()
                .map_err(|_| io::Error::other(format!("{name} worker {index} did not start")))??;
            handles.push(handle);
        }
        Ok(Self {
            handles: handles.into(),
            next: Arc::default(),
        })
    }

    /// The runtime this is called from as the only worker: for tests and embedders that run
    /// everything on a runtime of their own. Panics outside a runtime.
    pub fn current_runtime() -> Self {
        Self {
            handles: vec![Handle::current()].into(),
            next: Arc::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Every worker, in index order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// The worker the next connection goes to (round robin).
    pub fn next(&self) -> &Handle {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a task spawned on `handle` runs: its worker index and thread name.
    fn run_on(handle: &Handle) -> (usize, String) {
        let (sender, receiver) = mpsc::sync_channel(1);
        handle.spawn(async move {
            let name = std::thread::current().name().unwrap_or_default().to_owned();
            let _ = sender.send((current_index(), name));
        });
        receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the worker runs the task")
    }

    #[test]
    fn each_worker_is_its_own_thread_and_knows_its_index() {
        let workers = Workers::start(3, "test").unwrap();
        assert_eq!(workers.len(), 3);
        for (index, handle) in workers.handles().iter().enumerate() {
            assert_eq!(run_on(handle), (index, format!("test-{index}")));
        }
        // Not a worker thread.
        assert_eq!(WORKER.with(Cell::get), None);
        assert_eq!(current_index(), 0);
    }

    #[test]
    fn next_deals_round_robin() {
        let workers = Workers::start(2, "rr").unwrap();
        let dealt: Vec<usize> = (0..5).map(|_| run_on(workers.next()).0).collect();
        assert_eq!(dealt, [0, 1, 0, 1, 0]);
    }

    #[test]
    fn zero_workers_means_one() {
        assert_eq!(Workers::start(0, "one").unwrap().len(), 1);
    }
}
