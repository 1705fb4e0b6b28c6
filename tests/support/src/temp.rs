//! Temporary directories named per process and per call (tests of one binary run side by side,
//! and several test binaries at once), removed when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh, empty directory under the system temp dir, removed with what it holds on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `<temp>/weft-<label>-<pid>-<n>`, created empty (a leftover of an earlier process with
    /// the same id is removed first).
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "weft-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `path` joined to this directory.
    pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        self.0.join(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_distinct_empty_and_removed_on_drop() {
        let a = TempDir::new("support");
        let b = TempDir::new("support");
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("file"), "x").unwrap();
        let path = a.path().to_owned();
        assert!(path.join("file").exists());
        drop(a);
        assert!(!path.exists());
        assert!(b.path().is_dir());
    }
}
