//! Request bodies sent upstream, streamed as Envoy's router streams them: the downstream body
//! goes upstream as it arrives, and a copy of what has passed is kept, up to a limit, so that a
//! retry or a mirror can send it again. A body that outgrows the limit keeps streaming; the copy
//! is dropped and with it the retries and mirrors of that request (Envoy's "retry or shadow
//! abandoned", `retry_or_shadow_abandoned` in its stats), never the request itself.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tokio::sync::watch;

use crate::proxy::BoxError;

/// The body of a request sent upstream.
pub enum RequestBody {
    /// Held whole: an empty body, a mirror's copy, a probe's.
    Full(Full<Bytes>),
    /// One attempt at sending a downstream body.
    Attempt(Attempt),
}

impl RequestBody {
    pub fn empty() -> Self {
        RequestBody::Full(Full::new(Bytes::new()))
    }
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> Self {
        RequestBody::Full(Full::new(bytes))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Full(full) => Pin::new(full).poll_frame(cx).map_err(|e| match e {}),
            RequestBody::Attempt(attempt) => Pin::new(attempt).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full(full) => full.is_end_stream(),
            RequestBody::Attempt(attempt) => attempt.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(full) => full.size_hint(),
            RequestBody::Attempt(attempt) => attempt.size_hint,
        }
    }
}

/// A piece of the body kept for the next attempt.
#[derive(Clone)]
enum Piece {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Piece {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Piece::Data(data) => Frame::data(data.clone()),
            Piece::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }
}

/// How the downstream body ended, for those who wait for its end ([`Replayable::finished`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    Running,
    /// Read to its end; its bytes if they were kept whole and asked for.
    Complete(Option<Bytes>),
    /// The downstream failed or went away in the middle.
    Failed,
}

struct State {
    /// The downstream body, until it ends.
    source: Option<UnsyncBoxBody<Bytes, BoxError>>,
    /// What has passed, while it fits in `limit`; `None` once it has not.
    kept: Option<Vec<Piece>>,
    kept_bytes: usize,
    limit: usize,
    /// Bytes read from downstream.
    received: u64,
    failed: bool,
    /// The attempt allowed to read on: an earlier one still polled by its connection fails.
    current: u64,
    ending: watch::Sender<Ending>,
    /// Whether the body's end carries its bytes (a mirror waits for them).
    wants_copy: bool,
}

/// A downstream request body that attempts can send, each from its beginning while what has
/// passed is kept.
#[derive(Clone)]
pub struct Replayable {
    state: Arc<Mutex<State>>,
    size_hint: SizeHint,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replayable {
    /// `body`, of which up to `limit` bytes are kept for a retry or a mirror.
    pub fn new<B>(body: B, limit: usize) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let size_hint = body.size_hint();
        let body = body.map_err(Into::into).boxed_unsync();
        let (ending, _) = watch::channel(Ending::Running);
        Replayable {
            state: Arc::new(Mutex::new(State {
                source: Some(body),
                kept: Some(Vec::new()),
                kept_bytes: 0,
                limit,
                received: 0,
                failed: false,
                current: 0,
                ending,
                wants_copy: false,
            })),
            size_hint,
        }
    }

    /// The body for the next attempt, from the beginning; `None` when it can no longer be sent
    /// whole (it outgrew the limit, or the downstream failed).
    pub fn attempt(&self) -> Option<RequestBody> {
        let mut state = lock(&self.state);
        if state.kept.is_none() || state.failed {
            return None;
        }
        state.current += 1;
        Some(RequestBody::Attempt(Attempt {
            state: self.state.clone(),
            number: state.current,
            next: 0,
            size_hint: self.size_hint,
        }))
    }

    /// Whether another attempt could send the body whole.
    pub fn replayable(&self) -> bool {
        let state = lock(&self.state);
        state.kept.is_some() && !state.failed
    }

    /// Bytes read from downstream so far.
    pub fn received(&self) -> u64 {
        lock(&self.state).received
    }

    /// Follows how the body ends, with its bytes if `with_copy` and they were kept whole. If
    /// the request is dropped before its body ended, the end is [`Ending::Failed`].
    pub fn finished(&self, with_copy: bool) -> watch::Receiver<Ending> {
        let mut state = lock(&self.state);
        state.wants_copy |= with_copy;
        state.ending.subscribe()
    }
}

/// One attempt's view of a [`Replayable`]: the kept pieces, then the downstream body.
pub struct Attempt {
    state: Arc<Mutex<State>>,
    number: u64,
    /// The next kept piece to send.
    next: usize,
    size_hint: SizeHint,
}

impl Attempt {
    /// Whether this attempt has sent everything: the downstream body ended and every kept piece
    /// went out.
    fn is_end_stream(&self) -> bool {
        let state = lock(&self.state);
        state.current == self.number
            && state.source.is_none()
            && !state.failed
            && state
                .kept
                .as_ref()
                .is_none_or(|kept| self.next >= kept.len())
    }

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut guard = lock(&this.state);
        let state = &mut *guard;
        if state.current != this.number {
            return Poll::Ready(Some(Err("the request went to another attempt".into())));
        }
        if let Some(piece) = state.kept.as_ref().and_then(|kept| kept.get(this.next)) {
            this.next += 1;
            return Poll::Ready(Some(Ok(piece.frame())));
        }
        let Some(source) = state.source.as_mut() else {
            return Poll::Ready(if state.failed {
                Some(Err("the downstream request failed".into()))
            } else {
                None
            });
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                state.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                state.source = None;
                state.failed = true;
                state.ending.send_replace(Ending::Failed);
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, Bytes::len);
                state.received += size as u64;
                let piece = match frame.data_ref() {
                    Some(data) => Some(Piece::Data(data.clone())),
                    None => frame.trailers_ref().cloned().map(Piece::Trailers),
                };
                if state.kept_bytes + size > state.limit {
                    state.kept = None;
                } else if let (Some(kept), Some(piece)) = (state.kept.as_mut(), piece) {
                    state.kept_bytes += size;
                    kept.push(piece);
                    this.next += 1;
                }
                // A body of known length ends with its last byte: its sender may never ask for
                // the end.
                if state.source.as_ref().is_some_and(Body::is_end_stream) {
                    state.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }
}

impl State {
    /// The downstream body has ended: those who wait learn it, with its bytes if asked.
    fn end(&mut self) {
        self.source = None;
        let whole = self.kept.as_ref().filter(|_| self.wants_copy).map(|kept| {
            let mut bytes = Vec::with_capacity(self.kept_bytes);
            for piece in kept {
                if let Piece::Data(data) = piece {
                    bytes.extend_from_slice(data);
                }
            }
            Bytes::from(bytes)
        });
        self.ending.send_replace(Ending::Complete(whole));
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if *self.ending.borrow() == Ending::Running {
            self.ending.send_replace(Ending::Failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;

    type Feed = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

    /// A downstream body fed piece by piece, kept up to `limit`.
    fn downstream(limit: usize) -> (Feed, Replayable) {
        let (feed, frames) = mpsc::unbounded_channel();
        let body = StreamBody::new(UnboundedReceiverStream::new(frames));
        (feed, Replayable::new(body, limit))
    }

    fn data(text: &'static str) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(text.as_bytes())))
    }

    async fn next(body: &mut RequestBody) -> Option<Result<Bytes, String>> {
        let frame = body.frame().await?;
        Some(
            frame
                .map(|f| f.into_data().unwrap_or_default())
                .map_err(|e| e.to_string()),
        )
    }

    fn ending(body: &Replayable) -> Ending {
        body.finished(false).borrow().clone()
    }

    #[tokio::test]
    async fn a_retry_sends_the_body_again_from_its_beginning_and_a_mirror_gets_it_whole() {
        let (feed, body) = downstream(1024);
        let mirror = body.finished(true);
        let mut first = body.attempt().unwrap();
        feed.send(data("hello ")).unwrap();
        assert_eq!(next(&mut first).await, Some(Ok(Bytes::from("hello "))));
        assert_eq!(ending(&body), Ending::Running);

        // The retry takes the body over: the first try's connection reads no more of it.
        let mut second = body.attempt().unwrap();
        feed.send(data("world")).unwrap();
        drop(feed);
        assert!(matches!(next(&mut first).await, Some(Err(_))));
        assert_eq!(next(&mut second).await, Some(Ok(Bytes::from("hello "))));
        assert_eq!(next(&mut second).await, Some(Ok(Bytes::from("world"))));
        assert_eq!(next(&mut second).await, None);
        assert_eq!(body.received(), 11);
        assert_eq!(
            *mirror.borrow(),
            Ending::Complete(Some(Bytes::from("hello world")))
        );

        // After the end, another try replays it all and ends.
        let mut third = body.attempt().unwrap();
        assert_eq!(next(&mut third).await, Some(Ok(Bytes::from("hello "))));
        assert_eq!(next(&mut third).await, Some(Ok(Bytes::from("world"))));
        assert_eq!(next(&mut third).await, None);
    }

    #[tokio::test]
    async fn a_body_past_the_limit_streams_on_without_retries_or_mirrors() {
        let (feed, body) = downstream(8);
        let mirror = body.finished(true);
        let mut only = body.attempt().unwrap();
        for piece in ["12345", "67890", "abc"] {
            feed.send(data(piece)).unwrap();
        }
        drop(feed);
        let mut sent = Vec::new();
        while let Some(piece) = next(&mut only).await {
            sent.extend_from_slice(&piece.unwrap());
        }
        assert_eq!(sent, b"1234567890abc", "the body streams whole");
        assert!(!body.replayable());
        assert!(body.attempt().is_none(), "no retry of a body not kept");
        assert_eq!(*mirror.borrow(), Ending::Complete(None), "no mirror either");
    }

    #[tokio::test]
    async fn a_body_of_known_length_ends_with_its_last_byte() {
        let body = Replayable::new(Full::new(Bytes::from_static(b"abc")), 1024);
        let mut only = body.attempt().unwrap();
        assert!(!only.is_end_stream());
        assert_eq!(next(&mut only).await, Some(Ok(Bytes::from("abc"))));
        // Without being asked for the end: a sender that stops at the length never asks.
        assert!(only.is_end_stream());
        assert_eq!(ending(&body), Ending::Complete(None));
    }

    #[tokio::test]
    async fn a_broken_downstream_body_is_never_sent_again_as_if_whole() {
        let (feed, body) = downstream(1024);
        let mut first = body.attempt().unwrap();
        feed.send(data("part")).unwrap();
        feed.send(Err("reset by the client".into())).unwrap();
        assert_eq!(next(&mut first).await, Some(Ok(Bytes::from("part"))));
        assert!(matches!(next(&mut first).await, Some(Err(_))));
        assert_eq!(ending(&body), Ending::Failed);
        assert!(body.attempt().is_none());
    }

    #[tokio::test]
    async fn a_request_dropped_before_its_body_ended_ends_the_waits() {
        let (_feed, body) = downstream(1024);
        let mut waiting = body.finished(true);
        drop(body);
        let ended = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            waiting.wait_for(|e| *e != Ending::Running),
        )
        .await
        .expect("the wait ends");
        assert_eq!(*ended.unwrap(), Ending::Failed);
    }
}
