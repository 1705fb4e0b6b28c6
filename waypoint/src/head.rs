//! The time an HTTP/1.1 client has to send a request head (`HttpLimits::header_read_timeout`),
//! kept with one timer per connection instead of one per request.
//!
//! hyper's own header read timeout arms a timer each time it starts waiting for a request head
//! and drops it when the head has been read: on a kept-alive connection a timer registered in
//! the runtime's wheel and removed again per request, and, whenever it is the runtime's
//! earliest timer (a worker serving one busy connection), a wake of the runtime's driver, an
//! `eventfd` write and often one more `epoll_wait`, per request. Here hyper still says when it
//! starts and stops waiting for a head, through its timer hook: [`HeadTimer`]'s sleeps only
//! record the deadline they were given (hyper's, unchanged: from when it starts waiting, the
//! wait between two requests of a kept-alive connection included) and never end by themselves.
//! [`HeadAlarm`], polled by the connection's own loop after the connection, tells when the head
//! awaited is late, with one timer that is only moved later: when it fires before the awaited
//! head's deadline (that head came, and a later one is awaited now) it is set to that later
//! deadline, and a later deadline than the runtime's next one wakes nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The request head hyper waits for, if it waits for one.
#[derive(Debug, Default)]
struct Awaited {
    /// Numbers hyper's sleeps: one dropped after its successor was made clears nothing.
    next: u64,
    /// The awaited head's sleep and its deadline.
    head: Option<(u64, Instant)>,
}

/// What a connection's [`HeadTimer`] and [`HeadAlarm`] share.
#[derive(Debug, Clone, Default)]
pub struct HeadClock(Arc<Mutex<Awaited>>);

impl HeadClock {
    fn lock(&self) -> MutexGuard<'_, Awaited> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The timer to give hyper's HTTP/1.1 server for this connection.
    pub fn timer(&self) -> HeadTimer {
        HeadTimer(self.clone())
    }

    /// The alarm the connection's loop polls.
    pub fn alarm(&self) -> HeadAlarm {
        HeadAlarm {
            clock: Some(self.clone()),
            timer: None,
        }
    }

    /// The deadline of the head awaited now, if one is.
    fn deadline(&self) -> Option<Instant> {
        self.lock().head.map(|(_, deadline)| deadline)
    }
}

/// hyper's timer for one connection: see the module documentation. The HTTP/1.1 server uses
/// its timer for the header read timeout only.
#[derive(Debug)]
pub struct HeadTimer(HeadClock);

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let mut awaited = self.0.lock();
        let id = awaited.next;
        awaited.next += 1;
        awaited.head = Some((id, Instant::from_std(deadline)));
        Box::pin(HeadWait {
            clock: self.0.clone(),
            id,
        })
    }

    /// The runtime's clock (paused in tests as the runtime's).
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

/// hyper's sleep for one request head. It never ends by itself: the connection's
/// [`HeadAlarm`], polled by the same task right after the connection, ends the connection when
/// the head is late. Dropped when hyper has read the head (or the connection ends).
struct HeadWait {
    clock: HeadClock,
    id: u64,
}

impl Future for HeadWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl hyper::rt::Sleep for HeadWait {}

impl Drop for HeadWait {
    fn drop(&mut self) {
        let mut awaited = self.clock.lock();
        if awaited.head.is_some_and(|(id, _)| id == self.id) {
            awaited.head = None;
        }
    }
}

/// Tells when the request head a connection awaits is late.
#[derive(Debug)]
pub struct HeadAlarm {
    /// `None`: the connection has no head timeout (HTTP/2).
    clock: Option<HeadClock>,
    /// The one timer, and where it is set (made at the first head awaited).
    timer: Option<(Pin<Box<Sleep>>, Instant)>,
}

impl HeadAlarm {
    /// An alarm that never rings.
    pub fn none() -> Self {
        HeadAlarm {
            clock: None,
            timer: None,
        }
    }

    /// Ready when the head awaited now has passed its deadline. To be polled after the
    /// connection in each pass of its loop, so that a head the connection has just started
    /// to await is seen in the same pass.
    pub fn poll_late(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(clock) = &self.clock else {
            return Poll::Pending;
        };
        // No head awaited: a timer still set may fire and wake the task, for nothing.
        let Some(deadline) = clock.deadline() else {
            return Poll::Pending;
        };
        let (timer, at) = self
            .timer
            .get_or_insert_with(|| (Box::pin(tokio::time::sleep_until(deadline)), deadline));
        if deadline < *at {
            // An earlier deadline than the timer's (a shorter limit): the only move earlier.
            timer.as_mut().reset(deadline);
            *at = deadline;
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer's time has come: the head awaited is late if its deadline is not later.
            if deadline <= *at {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
            *at = deadline;
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::rt::Timer as _;

    use super::*;

    fn late(alarm: &mut HeadAlarm) -> bool {
        let waker = std::task::Waker::noop();
        alarm.poll_late(&mut Context::from_waker(waker)).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_awaited_past_its_deadline_is_late_and_one_read_in_time_is_not() {
        let clock = HeadClock::default();
        let timer = clock.timer();
        let mut alarm = clock.alarm();
        let limit = Duration::from_secs(30);
        assert!(!late(&mut alarm), "nothing awaited");

        // Heads read in time, one after the other, for longer than the limit in all.
        for _ in 0..5 {
            let wait = timer.sleep(limit);
            assert!(!late(&mut alarm));
            tokio::time::advance(Duration::from_secs(20)).await;
            assert!(!late(&mut alarm));
            drop(wait);
            assert!(!late(&mut alarm), "the head was read");
        }
        // Nothing awaited (a request being served) for longer than the limit.
        tokio::time::advance(Duration::from_secs(90)).await;
        assert!(
            !late(&mut alarm),
            "nothing awaited while a request is served"
        );

        let _wait = timer.sleep(limit);
        assert!(!late(&mut alarm));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!late(&mut alarm));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(late(&mut alarm), "30 s awaiting the head");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_dropped_after_its_successor_was_made_clears_nothing() {
        let clock = HeadClock::default();
        let timer = clock.timer();
        let mut alarm = clock.alarm();
        let first = timer.sleep(Duration::from_secs(10));
        let _second = timer.sleep(Duration::from_secs(20));
        drop(first);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(late(&mut alarm));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_clock_nothing_is_late() {
        let mut alarm = HeadAlarm::none();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!late(&mut alarm));
    }
}
