use std::time::Duration;

use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::*;

type Feed = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;
type Fed = StreamBody<UnboundedReceiverStream<Result<Frame<Bytes>, BoxError>>>;

/// A request body fed piece by piece.
fn downstream() -> (Feed, Fed) {
    let (feed, frames) = mpsc::unbounded_channel();
    (feed, StreamBody::new(UnboundedReceiverStream::new(frames)))
}

fn data(bytes: &'static [u8]) -> Result<Frame<Bytes>, BoxError> {
    Ok(Frame::data(Bytes::from_static(bytes)))
}

/// The body as the upstream reads it: the bytes it got, and how it ended.
async fn read_all<B>(mut body: B) -> (Vec<u8>, Result<(), Option<Breach>>)
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => got.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Err(error) => {
                let breach = error.downcast_ref::<BreachError>().map(|b| b.0);
                return (got, Err(breach));
            }
        }
    }
    (got, Ok(()))
}

/// Whether a breach is seen within `limit` (of the paused clock).
async fn breach_within(limits: &RequestLimits, limit: Duration) -> Option<Breach> {
    tokio::time::timeout(limit, limits.breach()).await.ok()
}

#[tokio::test(start_paused = true)]
async fn a_body_within_its_limits_passes_whole_and_ends_the_watch() {
    let deadline = Instant::now() + Duration::from_secs(5);
    let limits = RequestLimits::new(Some(deadline), Some(10)).unwrap();
    let (feed, body) = downstream();
    let guarded = limits.guard(body);
    feed.send(data(b"hello")).unwrap();
    feed.send(data(b"world")).unwrap();
    drop(feed);
    assert_eq!(read_all(guarded).await, (b"helloworld".to_vec(), Ok(())));
    assert!(!limits.running());
    // Past the deadline, a request that arrived whole in time is no breach.
    assert_eq!(breach_within(&limits, Duration::from_secs(60)).await, None);
}

#[tokio::test]
async fn a_body_growing_past_the_cap_is_cut_before_the_byte_that_crosses_it() {
    let limits = RequestLimits::new(None, Some(8)).unwrap();
    let (feed, body) = downstream();
    let guarded = limits.guard(body);
    for piece in [&b"12345"[..], b"678", b"9", b"more"] {
        feed.send(data(piece)).unwrap();
    }
    let (got, ended) = read_all(guarded).await;
    assert_eq!(got, b"12345678", "exactly the cap went through");
    assert_eq!(ended, Err(Some(Breach::TooLarge)));
    assert_eq!(
        breach_within(&limits, Duration::from_secs(1)).await,
        Some(Breach::TooLarge)
    );
    // A body exactly at the cap is within it.
    let limits = RequestLimits::new(None, Some(8)).unwrap();
    let (feed, body) = downstream();
    feed.send(data(b"12345678")).unwrap();
    drop(feed);
    assert_eq!(
        read_all(limits.guard(body)).await,
        (b"12345678".to_vec(), Ok(()))
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_still_arriving_at_the_deadline_is_cut_there() {
    let deadline = Instant::now() + Duration::from_secs(2);
    let limits = RequestLimits::new(Some(deadline), None).unwrap();
    let (feed, body) = downstream();
    let mut guarded = limits.guard(body);
    feed.send(data(b"slow")).unwrap();
    let first = guarded.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "slow");
    // Nothing more arrives: the deadline cuts the body, and the watchers learn it.
    let started = Instant::now();
    let (watched, (got, ended)) = tokio::join!(
        breach_within(&limits, Duration::from_secs(60)),
        read_all(&mut guarded)
    );
    assert_eq!(watched, Some(Breach::Timeout));
    assert_eq!((got, ended), (Vec::new(), Err(Some(Breach::Timeout))));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    // What the client sends later never goes through.
    feed.send(data(b"late")).unwrap();
    drop(feed);
    assert_eq!(read_all(guarded).await.1, Err(Some(Breach::Timeout)));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_seen_even_when_nothing_reads_the_body() {
    let deadline = Instant::now() + Duration::from_secs(3);
    let limits = RequestLimits::new(Some(deadline), None).unwrap();
    let (_feed, body) = downstream();
    // An upstream that never reads (flow control): the forward's watch still sees the deadline,
    // and the body fails when it is read at last.
    let guarded = limits.guard(body);
    assert_eq!(
        breach_within(&limits, Duration::from_secs(60)).await,
        Some(Breach::Timeout)
    );
    assert_eq!(
        read_all(guarded).await,
        (Vec::new(), Err(Some(Breach::Timeout)))
    );
}

#[tokio::test(start_paused = true)]
async fn a_breach_after_the_response_began_fails_the_response_body() {
    let deadline = Instant::now() + Duration::from_secs(2);
    let limits = RequestLimits::new(Some(deadline), None).unwrap();
    let (_feed, body) = downstream();
    let _upstream_side = limits.guard(body);
    // The response streams: its first part goes out, then the deadline passes.
    let (response_feed, response) = downstream();
    let mut response = ResponseGuard::new(response.boxed(), &limits);
    response_feed.send(data(b"partial")).unwrap();
    let first = response.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "partial");
    let next = response.frame().await.unwrap();
    let error = next.expect_err("the response fails with the breach");
    assert_eq!(
        error.downcast_ref::<BreachError>().map(|b| b.0),
        Some(Breach::Timeout)
    );
    assert_eq!(error.to_string(), "request_overall_timeout");

    // A request that ended in time leaves its response alone.
    let limits = RequestLimits::new(Some(Instant::now() + Duration::from_secs(2)), None).unwrap();
    let (feed, body) = downstream();
    let guarded = limits.guard(body);
    feed.send(data(b"done")).unwrap();
    drop(feed);
    read_all(guarded).await.1.unwrap();
    let (response_feed, response) = downstream();
    let response = ResponseGuard::new(response.boxed(), &limits);
    tokio::time::sleep(Duration::from_secs(10)).await;
    response_feed.send(data(b"whole")).unwrap();
    drop(response_feed);
    assert_eq!(read_all(response).await, (b"whole".to_vec(), Ok(())));
}

#[test]
fn nothing_to_enforce_is_no_limits() {
    assert!(RequestLimits::new(None, None).is_none());
}
