//! A steady request loop in a pod, bounded in count and time, whose every outcome is kept: the
//! load that rolling updates, faults and restarts run under.

use std::{
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use crate::Mesh;

/// At most this many requests in one steady load, and at most this long.
const MAX_REQUESTS: u32 = 3000;
const MAX_SECONDS: u32 = 180;

/// One request's outcome: the status (0 for a failed connection) and how long it took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub status: u16,
    pub seconds: f64,
}

/// A request loop running in a pod; stopped (and reaped) when dropped.
pub struct Load {
    child: Option<Child>,
    outcomes: PathBuf,
    stop: PathBuf,
}

impl Mesh {
    /// Requests from `client` to `url`, each on a new connection (one `curl` each, at most
    /// `max_time` seconds), one after the other in the background until [`Load::finish`] (at
    /// most 3,000, at most 3 minutes). `name` tells the files of two loads apart.
    pub fn steady_load(
        &self,
        client: &str,
        url: &str,
        max_time: u32,
        name: &str,
    ) -> anyhow::Result<Load> {
        self.repeat_in_pod(
            client,
            name,
            &format!(
                "curl -s -o /dev/null --max-time {max_time} \
                 -w '%{{http_code}} %{{time_total}}\\n' {url}"
            ),
            MAX_REQUESTS,
            MAX_SECONDS,
        )
    }

    /// Runs the shell command `round` in `client` again and again in the background until
    /// [`Load::finish`] (at most `rounds` times, at most `seconds`): each line it prints is
    /// one request's outcome, `<status> <seconds>` (what it writes to stderr goes to the
    /// mesh's directory, `<name>-errors`).
    pub fn repeat_in_pod(
        &self,
        client: &str,
        name: &str,
        round: &str,
        rounds: u32,
        seconds: u32,
    ) -> anyhow::Result<Load> {
        let outcomes = self.dir().join(format!("{name}-outcomes"));
        let stop = self.dir().join(format!("{name}-stop"));
        let errors = self.dir().join(format!("{name}-errors"));
        let script = format!(
            "for i in $(seq 1 {rounds}); do [ -e {stop} ] && break; \
             {{ {round}; }} >> {outcomes} 2>> {errors}; done",
            stop = stop.display(),
            outcomes = outcomes.display(),
            errors = errors.display(),
        );
        let child = self.spawn_in_pod(
            client,
            "timeout",
            &[&seconds.to_string(), "bash", "-c", &script],
        )?;
        Ok(Load {
            child: Some(child),
            outcomes,
            stop,
        })
    }
}

impl Load {
    /// Every outcome so far, in order.
    pub fn outcomes(&self) -> Vec<Outcome> {
        std::fs::read_to_string(&self.outcomes)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (status, seconds) = line.split_once(' ')?;
                Some(Outcome {
                    status: status.parse().ok()?,
                    seconds: seconds.parse().ok()?,
                })
            })
            .collect()
    }

    /// How many requests finished so far.
    pub fn count(&self) -> usize {
        self.outcomes().len()
    }

    /// Waits until `more` requests past the first `past` finished (within 30 s): whether they
    /// did.
    pub fn progressed(&self, past: usize, more: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.count() >= past + more {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Waits until `more` requests past the first `past` finished and all of them answered
    /// `status` (within 30 s): whether they did.
    pub fn answered(&self, past: usize, more: usize, status: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let outcomes = self.outcomes();
            // The newest `more` after the first `past`, all answered.
            if outcomes.len() >= past + more
                && outcomes[outcomes.len() - more..]
                    .iter()
                    .all(|o| o.status == status)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Stops the loop after its current request and returns every outcome.
    pub fn finish(mut self) -> anyhow::Result<Vec<Outcome>> {
        std::fs::write(&self.stop, "")?;
        let status = self.child.take().expect("the load runs").wait()?;
        anyhow::ensure!(status.success(), "the load did not end in time: {status}");
        Ok(self.outcomes())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
