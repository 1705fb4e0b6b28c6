//! Graceful shutdown, as ztunnel drains on SIGTERM and Envoy drains for Istio's
//! `terminationDrainDuration`: one [`DrainTrigger`], and a [`DrainWatch`] held by everything
//! that must finish before the process may exit (listeners, connections, tunnels).
//!
//! Starting the drain tells every watch at once; connections finish what is in flight (an
//! HTTP/1.1 response carries `Connection: close`, HTTP/2 gets a GOAWAY) and drop their watch
//! when done. Two ways to end it:
//!
//! - [`DrainTrigger::drain`] (the node agent, as ztunnel): listeners hold a watch and stop
//!   accepting at once; the drain is complete when the last watch is dropped, or when the
//!   deadline passes, whichever comes first.
//! - [`DrainTrigger::drain_for`] (the waypoint and the gateways, as Envoy under pilot-agent):
//!   listeners hold a [`DrainSource`], not a watch, and keep accepting for the whole period,
//!   each new connection told to go away as it comes (Envoy's `drain_listeners?graceful` with
//!   `--drain-strategy immediate`); the period always runs out, as pilot-agent waits its
//!   `terminationDrainDuration`.
//! - [`DrainTrigger::drain_until_idle`] (the same, under Istio's
//!   `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`): the drain runs a minimum period, then ends as soon as
//!   no connection is left, or at the deadline.
//!
//! The process then exits and whatever is still open is closed with it. Readiness reads a
//! [`DrainStatus`], which holds no watch, so that it can answer "draining" for as long as the
//! process lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// A new drain: the trigger, and the first watch to clone for each participant.
pub fn channel() -> (DrainTrigger, DrainWatch) {
    let (sender, receiver) = watch::channel(false);
    let status = DrainStatus::default();
    (
        DrainTrigger {
            sender,
            status: status.clone(),
        },
        DrainWatch(receiver),
    )
}

/// Starts the drain and waits for it.
#[derive(Debug)]
pub struct DrainTrigger {
    sender: watch::Sender<bool>,
    status: DrainStatus,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every participant finished within the deadline.
    Complete,
    /// The deadline passed with `remaining` participants still holding a watch.
    DeadlinePassed { remaining: usize },
}

impl DrainTrigger {
    /// Whether the drain started, for readiness.
    pub fn status(&self) -> DrainStatus {
        self.status.clone()
    }

    /// Hands out watches for participants started later.
    pub fn source(&self) -> DrainSource {
        DrainSource(self.sender.clone())
    }

    /// Tells every watch to drain (readiness first).
    pub fn start(&self) {
        self.status.0.store(true, Ordering::Release);
        self.sender.send_replace(true);
    }

    /// Starts the drain, then waits until no watch is left or `deadline` passed.
    pub async fn drain(self, deadline: Duration) -> Drained {
        self.start();
        match tokio::time::timeout(deadline, self.sender.closed()).await {
            Ok(()) => Drained::Complete,
            Err(_) => Drained::DeadlinePassed {
                remaining: self.sender.receiver_count(),
            },
        }
    }

    /// Starts the drain and lets it run for the whole `period`, however early the last watch
    /// is dropped: a listener that keeps accepting during the drain (holding a
    /// [`DrainSource`]) may hand out a new watch at any moment until then. How it ended: the
    /// watches still held when the period ran out.
    pub async fn drain_for(self, period: Duration) -> Drained {
        self.start();
        tokio::time::sleep(period).await;
        match self.sender.receiver_count() {
            0 => Drained::Complete,
            remaining => Drained::DeadlinePassed { remaining },
        }
    }

    /// Starts the drain, lets it run for `minimum` (listeners keep accepting, as in
    /// [`drain_for`](Self::drain_for)), then ends it as soon as no watch is held, or at
    /// `deadline` (from the start) with the watches still held: pilot-agent's
    /// `EXIT_ON_ZERO_ACTIVE_CONNECTIONS` after its `MINIMUM_DRAIN_DURATION`.
    pub async fn drain_until_idle(self, minimum: Duration, deadline: Duration) -> Drained {
        self.start();
        let started = tokio::time::Instant::now();
        tokio::time::sleep(minimum.min(deadline)).await;
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, self.sender.closed()).await {
            Ok(()) => Drained::Complete,
            Err(_) => Drained::DeadlinePassed {
                remaining: self.sender.receiver_count(),
            },
        }
    }
}

/// Held by whatever must finish before the process exits; cloned for each connection.
#[derive(Debug, Clone)]
pub struct DrainWatch(watch::Receiver<bool>);

impl DrainWatch {
    /// A watch whose drain never starts (tests, servers that run until dropped).
    pub fn never() -> Self {
        // Its trigger is gone at once, and a dropped trigger is not a drain.
        let (_, receiver) = watch::channel(false);
        DrainWatch(receiver)
    }

    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the drain started. A watch whose trigger was dropped without a drain
    /// never completes: dropping the trigger is not a request to drain.
    pub async fn signaled(&self) {
        let mut receiver = self.0.clone();
        let started = receiver.wait_for(|draining| *draining).await.is_ok();
        if !started {
            std::future::pending::<()>().await;
        }
    }
}

/// Makes watches without being one: what a long-lived owner (the agent's pod manager) keeps to
/// give each listener it starts a watch of its own. A watch made once the drain started is
/// draining already.
#[derive(Debug, Clone)]
pub struct DrainSource(watch::Sender<bool>);

impl DrainSource {
    /// A source whose drain never starts.
    pub fn never() -> Self {
        DrainSource(watch::channel(false).0)
    }

    pub fn watch(&self) -> DrainWatch {
        DrainWatch(self.0.subscribe())
    }

    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }
}

/// Whether the drain started; holds no watch, so it never delays the drain's end.
#[derive(Debug, Clone, Default)]
pub struct DrainStatus(Arc<AtomicBool>);

impl DrainStatus {
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_drain_ends_when_the_last_watch_is_dropped() {
        let (trigger, watch) = channel();
        let status = trigger.status();
        assert!(!status.is_draining());
        let connection = watch.clone();
        drop(watch);
        let task = tokio::spawn(async move {
            connection.signaled().await;
            // Finishing in-flight work takes a while, well inside the deadline.
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(connection);
        });
        let started = tokio::time::Instant::now();
        assert_eq!(
            trigger.drain(Duration::from_secs(30)).await,
            Drained::Complete
        );
        let took = started.elapsed();
        assert!(
            (Duration::from_millis(200)..Duration::from_secs(30)).contains(&took),
            "{took:?}"
        );
        assert!(status.is_draining());
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_deadline_ends_a_drain_that_does_not_finish() {
        let (trigger, watch) = channel();
        let held = watch.clone();
        drop(watch);
        let started = tokio::time::Instant::now();
        assert_eq!(
            trigger.drain(Duration::from_millis(200)).await,
            Drained::DeadlinePassed { remaining: 1 }
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(held.is_draining());
    }

    #[tokio::test]
    async fn a_source_is_not_waited_for_and_its_watches_are() {
        let (trigger, watch) = channel();
        drop(watch);
        let source = trigger.source();
        let listener = source.watch();
        let task = tokio::spawn(async move {
            listener.signaled().await;
            drop(listener);
        });
        assert_eq!(
            trigger.drain(Duration::from_secs(30)).await,
            Drained::Complete
        );
        task.await.unwrap();
        // Started after the drain: draining from the start.
        assert!(source.watch().is_draining());
        assert!(!DrainSource::never().watch().is_draining());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_for_a_period_runs_it_out_while_watches_come_and_go() {
        let (trigger, watch) = channel();
        drop(watch);
        let source = trigger.source();
        let started = tokio::time::Instant::now();
        let drained = tokio::spawn(trigger.drain_for(Duration::from_secs(5)));
        tokio::task::yield_now().await;
        // No watch is held, and the period goes on: a connection may still come.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!drained.is_finished());
        let late = source.watch();
        assert!(
            late.is_draining(),
            "a connection accepted now is told to go away"
        );
        drop(late);
        let held = source.watch();
        assert_eq!(
            drained.await.unwrap(),
            Drained::DeadlinePassed { remaining: 1 }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop(held);

        let (trigger, watch) = channel();
        drop(watch);
        assert_eq!(
            trigger.drain_for(Duration::from_secs(5)).await,
            Drained::Complete
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_until_idle_runs_its_minimum_then_ends_with_the_last_connection() {
        // No connection: it ends when the minimum has run out, not at the deadline.
        let (trigger, watch) = channel();
        drop(watch);
        let source = trigger.source();
        let started = tokio::time::Instant::now();
        let drained =
            tokio::spawn(trigger.drain_until_idle(Duration::from_secs(5), Duration::from_secs(25)));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!drained.is_finished(), "ended before its minimum");
        // A connection accepted during the minimum is waited for after it.
        let held = source.watch();
        assert!(held.is_draining());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!drained.is_finished(), "ended with a connection open");
        drop(held);
        assert_eq!(drained.await.unwrap(), Drained::Complete);
        assert_eq!(started.elapsed(), Duration::from_secs(7));

        // A connection that stays: the deadline ends it.
        let (trigger, watch) = channel();
        let started = tokio::time::Instant::now();
        assert_eq!(
            trigger
                .drain_until_idle(Duration::from_secs(5), Duration::from_secs(25))
                .await,
            Drained::DeadlinePassed { remaining: 1 }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(25));
        drop(watch);

        // A minimum longer than the deadline: the deadline.
        let (trigger, watch) = channel();
        drop(watch);
        let started = tokio::time::Instant::now();
        assert_eq!(
            trigger
                .drain_until_idle(Duration::from_secs(30), Duration::from_secs(25))
                .await,
            Drained::Complete
        );
        assert_eq!(started.elapsed(), Duration::from_secs(25));
    }

    #[tokio::test]
    async fn a_dropped_trigger_is_not_a_drain() {
        let (trigger, watch) = channel();
        drop(trigger);
        let signaled = tokio::time::timeout(Duration::from_millis(100), watch.signaled()).await;
        assert!(signaled.is_err());
        assert!(!watch.is_draining());
        assert!(!DrainWatch::never().is_draining());
    }
}
