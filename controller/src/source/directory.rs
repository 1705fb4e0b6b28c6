//! The directory source (local mode): a directory of Kubernetes and Istio YAML, rescanned every
//! 300 ms. Each change reloads the whole directory into a fresh index, keeping the last good
//! version of every document refused this time, and replaces the live index with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::index::{ConfigIndex, LiveIndex};
use crate::loader;

/// How often the directory is checked for changes.
pub const RESCAN: Duration = Duration::from_millis(300);

/// Files and their modification times and sizes: what a change looks like.
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (SystemTime, u64)> {
    let files = loader::collect_yaml_files(dir).unwrap_or_default();
    files
        .into_iter()
        .filter_map(|file| {
            let meta = std::fs::metadata(&file).ok()?;
            Some((file, (meta.modified().ok()?, meta.len())))
        })
        .collect()
}

/// Feeds the live index from a directory.
pub struct DirectorySource {
    dir: PathBuf,
    index: Arc<LiveIndex>,
    /// The directory as it was just before the last load.
    seen: BTreeMap<PathBuf, (SystemTime, u64)>,
}

impl DirectorySource {
    pub fn new(dir: PathBuf, index: Arc<LiveIndex>) -> Self {
        Self {
            dir,
            index,
            seen: BTreeMap::new(),
        }
    }

    /// Loads the directory now and replaces the index; returns the rejections' messages.
    pub fn load(&mut self) -> Vec<String> {
        // Taken first: an edit made during the load is seen as a change at the next rescan.
        self.seen = fingerprint(&self.dir);
        let report = loader::load_paths(&[&self.dir]);
        let previous = self.index.snapshot();
        let (next, rejections) = ConfigIndex::from_report(report, Some(&previous));
        for rejection in &rejections {
            tracing::warn!(problem = %rejection.message, "configuration rejected");
        }
        tracing::info!(
            dir = %self.dir.display(),
            rejected = rejections.len(),
            "configuration directory loaded"
        );
        self.index.count_rejections(rejections.len());
        self.index.replace(next);
        rejections.into_iter().map(|r| r.message).collect()
    }

    /// Rescans until `shutdown`, reloading on every change.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(RESCAN) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if fingerprint(&self.dir) != self.seen {
                self.load();
            }
        }
    }
}
