//! cgroup v2 directories: creating them, placing processes, and killing and removing a subtree.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{Result, TestbedError};

/// How long teardown waits for killed processes to leave a cgroup.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A cgroup v2 directory. Cloning copies the handle, not the cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub(crate) fn create(path: PathBuf) -> Result<Self> {
        std::fs::create_dir(&path).map_err(|source| TestbedError::Cgroup {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path })
    }

    /// A handle to an existing cgroup directory.
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// Creates a child cgroup.
    pub fn child(&self, name: &str) -> Result<Self> {
        Self::create(self.path.join(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id (its directory's inode), as `bpf_get_current_cgroup_id` reports it.
    pub fn id(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path)
            .map(|m| m.ino())
            .map_err(|source| self.error(source))
    }

    /// Process ids directly in this cgroup.
    pub fn procs(&self) -> Result<Vec<u32>> {
        let text = std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map_err(|source| self.error(source))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Moves process `pid` into this cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .map_err(|source| self.error(source))
    }

    /// Kills every process in this cgroup and below, and waits until they are gone.
    pub fn kill_all(&self) -> Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        std::fs::write(self.path.join("cgroup.kill"), "1").map_err(|source| self.error(source))?;
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let populated = std::fs::read_to_string(self.path.join("cgroup.events"))
                .map_err(|source| self.error(source))?
                .lines()
                .any(|l| l == "populated 1");
            if !populated {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "processes still present after cgroup.kill",
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes this cgroup and every cgroup below it (they must hold no process).
    pub fn remove_tree(&self) -> Result<()> {
        remove_tree(&self.path).map_err(|source| self.error(source))
    }

    fn error(&self, source: std::io::Error) -> TestbedError {
        TestbedError::Cgroup {
            path: self.path.clone(),
            source,
        }
    }
}

fn remove_tree(path: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    // cgroupfs directories are removed with rmdir even though they list control files.
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
