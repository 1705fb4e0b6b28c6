//! The whole request's limits at the edge, from its gateway server's `weft.dev/edge-limits`:
//! Envoy's HTTP connection manager `request_timeout` (the head and the body must have arrived
//! within it) and its buffer filter's `max_request_bytes` (the body's size). The body streams
//! upstream as it arrives, so both are watched where it passes ([`GuardedBody`]): a body that
//! grows past the cap is cut before the byte that crosses it, and one still arriving at the
//! deadline is cut there, so that the upstream never receives more than the cap nor a request
//! completed late. What the client then gets depends on whether the response has begun: before,
//! the forward is abandoned for a local reply (`408`, `413`); after, the response body fails with
//! the breach ([`ResponseGuard`]) and the server resets the stream, as Envoy's `sendLocalReply`
//! does once response headers went out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::{BoxError, ProxyBody};

/// Which limit a request broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Breach {
    /// Its body had not ended at the deadline.
    Timeout,
    /// Its body grew past the cap.
    TooLarge,
}

impl Breach {
    /// Envoy's `response_code_details` for it.
    pub(crate) fn details(self) -> &'static str {
        match self {
            Breach::Timeout => "request_overall_timeout",
            Breach::TooLarge => "request_payload_too_large",
        }
    }
}

/// The error a guarded body fails with, request side and response side alike.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.details())]
pub(crate) struct BreachError(pub Breach);

const RUNNING: u8 = 0;
/// The body ended, or failed on the client's side: nothing more to watch.
const OVER: u8 = 1;
const TIMED_OUT: u8 = 2;
const TOO_LARGE: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Running,
    Over,
    Breached(Breach),
}

/// What the request body and its watchers share: the state, which leaves `Running` once, and
/// the task waiting for a breach (the forward, then the response body).
#[derive(Debug, Default)]
struct Shared {
    state: AtomicU8,
    waiting: AtomicWaker,
}

impl Shared {
    fn state(&self) -> BodyState {
        match self.state.load(Ordering::Acquire) {
            RUNNING => BodyState::Running,
            TIMED_OUT => BodyState::Breached(Breach::Timeout),
            TOO_LARGE => BodyState::Breached(Breach::TooLarge),
            _ => BodyState::Over,
        }
    }

    /// Leaves `Running` for `to`, unless it already left; the state in force after.
    fn settle(&self, to: BodyState) -> BodyState {
        let value = match to {
            BodyState::Running => return self.state(),
            BodyState::Over => OVER,
            BodyState::Breached(Breach::Timeout) => TIMED_OUT,
            BodyState::Breached(Breach::TooLarge) => TOO_LARGE,
        };
        if self
            .state
            .compare_exchange(RUNNING, value, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waiting.wake();
        }
        self.state()
    }
}

/// The limits of one request: its deadline and its body's cap.
#[derive(Debug, Clone)]
pub(crate) struct RequestLimits {
    deadline: Option<Instant>,
    max_bytes: Option<u64>,
    shared: Arc<Shared>,
}

impl RequestLimits {
    /// `None` when there is nothing to enforce.
    pub(crate) fn new(deadline: Option<Instant>, max_bytes: Option<u64>) -> Option<Self> {
        (deadline.is_some() || max_bytes.is_some()).then(|| RequestLimits {
            deadline,
            max_bytes,
            shared: Arc::default(),
        })
    }

    /// The request body under these limits.
    pub(crate) fn guard<B>(&self, body: B) -> GuardedBody<B> {
        GuardedBody {
            inner: body,
            received: 0,
            max_bytes: self.max_bytes,
            deadline: self.deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Whether the body is still arriving within its limits.
    pub(crate) fn running(&self) -> bool {
        self.shared.state() == BodyState::Running
    }

    /// Waits for a breach; `None` once the body is over within its limits.
    pub(crate) fn watch(&self) -> BreachWatch {
        BreachWatch {
            deadline: self.deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Resolves with the breach, if there is one; never when the body ends within its limits.
    pub(crate) async fn breach(&self) -> Breach {
        let mut watch = self.watch();
        match std::future::poll_fn(|cx| watch.poll_breach(cx)).await {
            Some(breach) => breach,
            None => std::future::pending().await,
        }
    }
}

/// One waiter for a breach (one at a time: the forward, then the response body).
#[derive(Debug)]
pub(crate) struct BreachWatch {
    deadline: Option<Pin<Box<Sleep>>>,
    shared: Arc<Shared>,
}

impl BreachWatch {
    /// `Ready(Some)` on a breach (a deadline passed with the body still arriving is one);
    /// `Ready(None)` once the body is over within its limits.
    pub(crate) fn poll_breach(&mut self, cx: &mut Context<'_>) -> Poll<Option<Breach>> {
        self.shared.waiting.register(cx.waker());
        match self.shared.state() {
            BodyState::Over => return Poll::Ready(None),
            BodyState::Breached(breach) => return Poll::Ready(Some(breach)),
            BodyState::Running => {}
        }
        if !deadline_passed(&mut self.deadline, cx) {
            return Poll::Pending;
        }
        match self.shared.settle(BodyState::Breached(Breach::Timeout)) {
            BodyState::Breached(breach) => Poll::Ready(Some(breach)),
            BodyState::Over | BodyState::Running => Poll::Ready(None),
        }
    }
}

/// Whether `deadline` has passed (registering for its wakeup while it has not).
fn deadline_passed(deadline: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> bool {
    deadline
        .as_mut()
        .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
}

/// A request body that fails, without passing the offending bytes on, once it breaks its
/// limits.
#[derive(Debug)]
pub(crate) struct GuardedBody<B> {
    inner: B,
    received: u64,
    max_bytes: Option<u64>,
    deadline: Option<Pin<Box<Sleep>>>,
    shared: Arc<Shared>,
}

fn breached(breach: Breach) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Ready(Some(Err(Box::new(BreachError(breach)))))
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let BodyState::Breached(breach) = this.shared.state() {
            return breached(breach);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.max_bytes.is_some_and(|max| this.received > max)
                        && let BodyState::Breached(breach) =
                            this.shared.settle(BodyState::Breached(Breach::TooLarge))
                    {
                        return breached(breach);
                    }
                }
                if this.inner.is_end_stream() {
                    this.shared.settle(BodyState::Over);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.shared.settle(BodyState::Over);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                // The client broke its request: the forward fails on its own.
                this.shared.settle(BodyState::Over);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Pending if deadline_passed(&mut this.deadline, cx) => {
                match this.shared.settle(BodyState::Breached(Breach::Timeout)) {
                    BodyState::Breached(breach) => breached(breach),
                    BodyState::Over | BodyState::Running => Poll::Pending,
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        !matches!(self.shared.state(), BodyState::Breached(_)) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that fails with the request's breach, if one happens while it streams.
pub(crate) struct ResponseGuard {
    inner: ProxyBody,
    /// `None` once the request is over within its limits.
    watch: Option<BreachWatch>,
}

impl ResponseGuard {
    pub(crate) fn new(inner: ProxyBody, limits: &RequestLimits) -> Self {
        ResponseGuard {
            inner,
            watch: Some(limits.watch()),
        }
    }
}

impl Body for ResponseGuard {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(watch) = &mut self.watch {
            match watch.poll_breach(cx) {
                Poll::Ready(Some(breach)) => return breached(breach),
                Poll::Ready(None) => self.watch = None,
                Poll::Pending => {}
            }
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
