//! Local mode: a directory of Kubernetes and Istio YAML, hot reloaded into the index.
//!
//! The directory is watched (`notify`); events are debounced ([`DEBOUNCE`]) and a periodic rescan
//! ([`RESCAN_INTERVAL`]) catches anything the watcher missed (editors that replace files, network
//! filesystems). Each reload reads every `.yaml`/`.yml` file below the directory and replaces
//! what this source owns in the index. Every invalid document is reported (file, document index,
//! kind/namespace/name, field path, reason) through `tracing` and [`FileSource::last_errors`],
//! then skipped; the previous good version of that resource stays. A deleted file removes its
//! resources.
//!
//! Pods in local mode: nothing schedules them, so the YAML carries what the API server would
//! fill in: `spec.nodeName` (the node agent that serves the pod), `status.podIP` (and optionally
//! `status.podIPs`), `metadata.labels` and `spec.serviceAccountName`. A pod without `status.podIP`
//! is indexed but gets no workload address.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::index::{ConfigIndex, IndexError, ResourceKey, SourceId};
use crate::loader::{self, LoadError};
use crate::model::Resource;
use crate::validation;

/// Quiet time after a filesystem event before the directory is re-read.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Interval of the safety-net rescan.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

/// Why the file source could not start.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("{}: cannot watch: {source}", path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
}

/// One problem found while reading the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    /// Index of the document within the file; `None` for whole-file problems.
    pub document: Option<usize>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Field path, e.g. `spec.http[0].route[1].weight`.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(document) = self.document {
            write!(f, "[doc {document}]")?;
        }
        let kind = self.kind.as_deref().unwrap_or("<unknown kind>");
        let name = self.name.as_deref().unwrap_or("<unnamed>");
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => write!(f, " {kind} {ns}/{name}")?,
            _ => write!(f, " {kind} {name}")?,
        }
        write!(f, ": {}: {}", self.path, self.reason)
    }
}

/// What the previous read of a file produced, to keep last good versions across bad edits.
#[derive(Debug, Default, Clone)]
struct FileMemory {
    resources: BTreeMap<ResourceKey, Resource>,
}

#[derive(Debug, Default)]
struct SourceState {
    files: BTreeMap<PathBuf, FileMemory>,
    errors: Vec<ConfigProblem>,
}

/// A directory feeding the index. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct FileSource {
    dir: PathBuf,
    id: SourceId,
    index: Arc<ConfigIndex>,
    state: Arc<Mutex<SourceState>>,
}

/// The running watcher; dropping it (or calling [`FileSourceHandle::stop`]) stops watching.
#[derive(Debug)]
pub struct FileSourceHandle {
    task: JoinHandle<()>,
    _watcher: notify::RecommendedWatcher,
}

impl FileSourceHandle {
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for FileSourceHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileSource {
    pub fn new(dir: impl Into<PathBuf>, index: Arc<ConfigIndex>) -> Self {
        let dir = dir.into();
        let id = SourceId(format!("file:{}", dir.display()));
        Self {
            dir,
            id,
            index,
            state: Arc::default(),
        }
    }

    pub fn id(&self) -> &SourceId {
        &self.id
    }

    /// The problems found by the latest reload, in file and document order.
    pub fn last_errors(&self) -> Vec<ConfigProblem> {
        self.lock().errors.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SourceState> {
        // State is replaced whole at the end of each reload, so a poisoned lock holds whole data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the directory once and updates the index. Blocking (filesystem I/O).
    pub fn reload(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let files = match loader::collect_yaml_files(&self.dir) {
            Ok(files) => files,
            Err(error) => {
                // The directory itself is unreadable: keep everything, report why.
                problems.push(problem_from_load_error(&error));
                return self.finish(problems, None);
            }
        };
        let previous = std::mem::take(&mut self.lock().files);
        let mut memories = BTreeMap::new();
        for file in files {
            let old = previous.get(&file).cloned().unwrap_or_default();
            let memory = match std::fs::read_to_string(&file) {
                Ok(text) => read_file(&file, &text, &old, &mut problems),
                Err(source) => {
                    // A file that vanished between listing and reading is simply gone.
                    if source.kind() == std::io::ErrorKind::NotFound {
                        continue;
                    }
                    problems.push(problem_from_load_error(&LoadError::Read {
                        path: file.clone(),
                        source,
                    }));
                    old
                }
            };
            memories.insert(file, memory);
        }

        let mut merged: BTreeMap<ResourceKey, (PathBuf, Resource)> = BTreeMap::new();
        for (file, memory) in &memories {
            for (key, resource) in &memory.resources {
                if let Some((first, _)) = merged.get(key) {
                    problems.push(ConfigProblem {
                        file: file.clone(),
                        document: None,
                        kind: Some(key.kind.to_string()),
                        namespace: Some(key.namespace.clone()),
                        name: Some(key.name.clone()),
                        path: "metadata.name".to_owned(),
                        reason: format!("duplicate of the resource in {}", first.display()),
                    });
                    continue;
                }
                merged.insert(key.clone(), (file.clone(), resource.clone()));
            }
        }
        let mut origin = BTreeMap::new();
        let resources = merged
            .into_iter()
            .map(|(key, (file, resource))| {
                origin.insert(key, file);
                resource
            })
            .collect();
        let report = self.index.replace_all(&self.id, resources);
        for error in report.invalid {
            problems.push(problem_from_index_error(&error, &origin));
        }
        self.finish(problems, Some(memories))
    }

    fn finish(
        &self,
        mut problems: Vec<ConfigProblem>,
        memories: Option<BTreeMap<PathBuf, FileMemory>>,
    ) -> Vec<ConfigProblem> {
        problems.sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
        let mut state = self.lock();
        if let Some(memories) = memories {
            state.files = memories;
        }
        if state.errors != problems {
            for problem in &problems {
                tracing::warn!(
                    file = %problem.file.display(),
                    document = ?problem.document,
                    kind = problem.kind.as_deref().unwrap_or(""),
                    namespace = problem.namespace.as_deref().unwrap_or(""),
                    name = problem.name.as_deref().unwrap_or(""),
                    path = %problem.path,
                    reason = %problem.reason,
                    "invalid configuration skipped"
                );
            }
            if problems.is_empty() && !state.errors.is_empty() {
                tracing::info!(dir = %self.dir.display(), "configuration errors resolved");
            }
            state.errors = problems.clone();
        }
        problems
    }

    /// Reads the directory, then watches it until the handle is dropped. Must be called inside
    /// a tokio runtime.
    pub fn start(self) -> Result<FileSourceHandle, FileSourceError> {
        if !self.dir.is_dir() {
            return Err(FileSourceError::NotADirectory(self.dir.clone()));
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            // The receiver lives as long as the task; a send error only means shutdown.
            let _ = events_tx.send(event);
        })
        .map_err(|source| FileSourceError::Watch {
            path: self.dir.clone(),
            source,
        })?;
        watcher
            .watch(&self.dir, RecursiveMode::Recursive)
            .map_err(|source| FileSourceError::Watch {
                path: self.dir.clone(),
                source,
            })?;
        self.reload();
        let span = tracing::info_span!("file_source", dir = %self.dir.display());
        let task = tokio::spawn(self.watch_loop(events_rx).instrument(span));
        Ok(FileSourceHandle {
            task,
            _watcher: watcher,
        })
    }

    async fn watch_loop(self, mut events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>) {
        let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rescan.tick().await;
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { return };
                    if let Err(error) = event {
                        tracing::warn!(%error, "watch error; relying on periodic rescan");
                    }
                    // Debounce: wait until no event arrived for DEBOUNCE.
                    loop {
                        match tokio::time::timeout(DEBOUNCE, events.recv()).await {
                            Ok(Some(_)) => continue,
                            Ok(None) => return,
                            Err(_) => break,
                        }
                    }
                    tracing::debug!("change detected");
                }
                _ = rescan.tick() => {}
            }
            let source = self.clone();
            if let Err(error) = tokio::task::spawn_blocking(move || source.reload()).await {
                tracing::error!(%error, "configuration reload failed");
            }
        }
    }
}

/// Parses one file's text. Resources from documents that failed to load keep their previous
/// version from the same file when the document's identity is known; when a document is too
/// broken to tell what it was, every previous resource of the file that is missing from the new
/// read is kept, so a half-saved file never removes configuration.
fn read_file(
    file: &Path,
    text: &str,
    old: &FileMemory,
    problems: &mut Vec<ConfigProblem>,
) -> FileMemory {
    let (loaded, errors) = loader::load_str(file, text);
    let mut memory = FileMemory::default();
    for loaded in loaded {
        let key = ResourceKey::of(&loaded.resource);
        let findings = validation::validate(&loaded.resource);
        if findings.is_empty() {
            memory.resources.insert(key, loaded.resource);
            continue;
        }
        for finding in findings {
            problems.push(ConfigProblem {
                file: file.to_path_buf(),
                document: Some(loaded.location.index),
                kind: Some(key.kind.to_string()),
                namespace: Some(key.namespace.clone()),
                name: Some(key.name.clone()),
                path: finding.path,
                reason: finding.reason,
            });
        }
        if let Some(previous) = old.resources.get(&key) {
            memory.resources.insert(key, previous.clone());
        }
    }
    let mut keep_all_missing = false;
    for error in &errors {
        problems.push(problem_from_load_error(error));
        let LoadError::Document { identity, .. } = error else {
            continue;
        };
        let previous = old.resources.iter().find(|(key, _)| {
            identity.name.as_deref() == Some(key.name.as_str())
                && identity.kind.as_deref() == Some(key.kind.display_name())
                && identity.namespace.as_deref().unwrap_or("default") == key.namespace
        });
        match previous {
            Some((key, resource)) => {
                memory
                    .resources
                    .entry(key.clone())
                    .or_insert_with(|| resource.clone());
            }
            None if identity.name.is_none() || identity.kind.is_none() => keep_all_missing = true,
            None => {}
        }
    }
    if keep_all_missing {
        for (key, resource) in &old.resources {
            memory
                .resources
                .entry(key.clone())
                .or_insert_with(|| resource.clone());
        }
    }
    memory
}

fn problem_from_load_error(error: &LoadError) -> ConfigProblem {
    match error {
        LoadError::Read { path, source } => ConfigProblem {
            file: path.clone(),
            document: None,
            kind: None,
            namespace: None,
            name: None,
            path: "<file>".to_owned(),
            reason: format!("cannot read: {source}"),
        },
        LoadError::Document {
            location,
            identity,
            path,
            problem,
        } => ConfigProblem {
            file: location.file.clone(),
            document: Some(location.index),
            kind: identity.kind.clone(),
            namespace: identity.namespace.clone(),
            name: identity.name.clone(),
            path: path.clone(),
            reason: problem.to_string(),
        },
    }
}

fn problem_from_index_error(
    error: &IndexError,
    origin: &BTreeMap<ResourceKey, PathBuf>,
) -> ConfigProblem {
    let (key, path, reason) = match error {
        IndexError::Invalid { key, errors } => {
            let path = errors
                .iter()
                .map(|e| e.path.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let reason = errors
                .iter()
                .map(|e| e.reason.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            (key, path, reason)
        }
        IndexError::Unnamed { key } => (key, "metadata.name".to_owned(), error.to_string()),
    };
    ConfigProblem {
        file: origin.get(key).cloned().unwrap_or_default(),
        document: None,
        kind: Some(key.kind.to_string()),
        namespace: Some(key.namespace.clone()),
        name: Some(key.name.clone()),
        path,
        reason,
    }
}

#[cfg(test)]
mod tests;
