use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::*;
use crate::index::Snapshot;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "weft-file-source-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn write(&self, name: &str, text: &str) {
        // Write then rename, as editors and config tools do, so no half file is ever read.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.0.join(name)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const WITHIN: Duration = Duration::from_secs(1);

/// Polls until `ready` holds, for at most `WITHIN`; returns how long it took.
async fn within_a_second(what: &str, mut ready: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < WITHIN,
            "{what}: not seen within {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

fn vs(host_subset: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: {host_subset}}}
"#
    )
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

const BAD_REGEX_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {regex: "(unclosed"}
    route:
    - destination: {host: reviews, subset: broken}
"#;

const RULE: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
"#;

fn subset_of(snapshot: &Snapshot) -> Option<String> {
    let vs = snapshot.virtual_services().next()?;
    vs.spec.http[0].route[0]
        .destination
        .as_ref()?
        .subset
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_directory_and_keeps_last_good_version() {
    let dir = TempDir::new();
    dir.write("a.yaml", &format!("{NAMESPACE}---{}", vs("v1")));
    let index = Arc::new(ConfigIndex::new());
    let source = FileSource::new(&dir.0, index.clone());
    let handle = source.clone().start().unwrap();
    assert_eq!(subset_of(&index.snapshot()).as_deref(), Some("v1"));
    assert_eq!(index.snapshot().len(), 2);
    assert!(source.last_errors().is_empty());

    // Change a resource.
    dir.write("a.yaml", &format!("{NAMESPACE}---{}", vs("v2")));
    within_a_second("changed subset", || {
        subset_of(&index.snapshot()).as_deref() == Some("v2")
    })
    .await;

    // Add a resource in a new file.
    dir.write("b.yaml", RULE);
    within_a_second("added rule", || {
        index.snapshot().destination_rules().count() == 1
    })
    .await;

    // An invalid edit is reported with its location and the last good version stays.
    dir.write("a.yaml", &format!("{NAMESPACE}---{BAD_REGEX_VS}"));
    within_a_second("error reported", || !source.last_errors().is_empty()).await;
    let errors = source.last_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = &errors[0];
    assert_eq!(error.file, dir.0.join("a.yaml"));
    assert_eq!(error.document, Some(1));
    assert_eq!(error.kind.as_deref(), Some("VirtualService"));
    assert_eq!(error.namespace.as_deref(), Some("shop"));
    assert_eq!(error.name.as_deref(), Some("reviews"));
    assert_eq!(error.path, "spec.http[0].match[0].uri.regex");
    assert!(error.reason.contains("regex"), "{error}");
    assert_eq!(subset_of(&index.snapshot()).as_deref(), Some("v2"));
    assert_eq!(index.snapshot().len(), 3);

    // A YAML syntax error in the whole file keeps every resource of the file.
    dir.write("a.yaml", "apiVersion: v1\nkind: [unclosed\n");
    within_a_second("syntax error reported", || {
        source
            .last_errors()
            .iter()
            .any(|e| e.reason.contains("YAML"))
    })
    .await;
    assert_eq!(index.snapshot().len(), 3);

    // A later fix is picked up and clears the errors.
    dir.write("a.yaml", &format!("{NAMESPACE}---{}", vs("v3")));
    within_a_second("fixed", || {
        subset_of(&index.snapshot()).as_deref() == Some("v3")
    })
    .await;
    within_a_second("errors cleared", || source.last_errors().is_empty()).await;

    // Deleting a file removes its resources.
    std::fs::remove_file(dir.0.join("b.yaml")).unwrap();
    within_a_second("deleted rule", || {
        index.snapshot().destination_rules().count() == 0
    })
    .await;
    assert_eq!(index.snapshot().len(), 2);
    handle.stop();
}

#[test]
fn reload_reports_every_invalid_document_and_keeps_valid_ones() {
    let dir = TempDir::new();
    dir.write(
        "mixed.yaml",
        &format!(
            "{NAMESPACE}---\napiVersion: v1\nkind: Nonsense\nmetadata: {{name: x}}\n---{BAD_REGEX_VS}---{RULE}"
        ),
    );
    let index = Arc::new(ConfigIndex::new());
    let source = FileSource::new(&dir.0, index.clone());
    let problems = source.reload();
    let documents: Vec<_> = problems.iter().map(|p| p.document).collect();
    assert_eq!(documents, vec![Some(1), Some(2)], "{problems:?}");
    assert_eq!(problems[0].path, "kind");
    let snapshot = index.snapshot();
    assert_eq!(
        snapshot.len(),
        2,
        "namespace and rule stay: {:?}",
        snapshot.keys()
    );
    assert!(snapshot.virtual_services().next().is_none());
    assert_eq!(source.last_errors(), problems);
}

#[test]
fn duplicate_resources_across_files_are_reported() {
    let dir = TempDir::new();
    dir.write("a.yaml", RULE);
    dir.write("b.yaml", RULE);
    let index = Arc::new(ConfigIndex::new());
    let problems = FileSource::new(&dir.0, index.clone()).reload();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].file, dir.0.join("b.yaml"));
    assert!(problems[0].reason.contains("a.yaml"));
    assert_eq!(index.snapshot().len(), 1);
}
