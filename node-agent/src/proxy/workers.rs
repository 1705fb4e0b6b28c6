//! Thread-per-core proxying: a fixed set of worker threads, each running its own single-threaded
//! runtime, and which one the caller is on.
//!
//! Every served pod gets one set of listeners per worker (`SO_REUSEPORT`, so the kernel spreads
//! new connections over them), and a connection stays on the worker that accepted it for its
//! whole life, together with the HBONE connections it uses (each worker has its own pool) and
//! the tunnels the inbound side runs for it. A request on a tunnel therefore wakes tasks on one
//! thread only: no work stealing, no cross-thread wakeups, no lock that two workers contend for
//! on the data path. On a work-stealing runtime the h2 connection task, the tunnel's copy task
//! and the accepted socket's readiness bounced between threads on every request, which cost
//! about twice the latency and a third more CPU per request.

use std::{cell::Cell, io, sync::mpsc};

use tokio::runtime::Handle;

thread_local! {
    /// The index of the worker this thread runs, if it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker the calling thread runs (0 when it is not a worker thread).
pub(crate) fn current_index() -> usize {
    WORKER.with(Cell::get).unwrap_or(0)
}

/// Handles on the runtimes that serve pods. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Workers {
    handles: Vec<Handle>,
}

impl Workers {
    /// Starts `count` (at least one) worker threads, each running a current-thread runtime until
    /// the process exits.
    pub fn start(count: usize) -> io::Result<Self> {
        let mut handles = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let (sender, receiver) = mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name(format!("proxy-{index}"))
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
                .map_err(|_| io::Error::other(format!("proxy worker {index} did not start")))??;
            handles.push(handle);
        }
        Ok(Self { handles })
    }

    /// The runtime this is called from as the only worker: for tests and embedders that run
    /// the proxy on a runtime of their own. Panics outside a runtime.
    pub fn current_runtime() -> Self {
        Self {
            handles: vec![Handle::current()],
        }
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub(crate) fn handles(&self) -> &[Handle] {
        &self.handles
    }
}
