//! `weftctl analyze`: the controller's validation and its cross-resource checks over files or
//! directories, as `istioctl analyze` reports them: a level, an IST code where Istio has one, the
//! resource and where it was read. Exits 79 (istioctl's code for "issues found") when any
//! finding is an error, so CI can gate on it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use controller::loader::{self, LoadError};
use controller::validation::{self, Code, FieldWarning};
use serde::Serialize;

use crate::output::{self, Format, Table};

/// istioctl's `SchemaValidationError`: a document Istio's schema or validation refuses.
pub const SCHEMA_VALIDATION_ERROR: Code = Code {
    code: "IST0106",
    name: "SchemaValidationError",
};

/// istioctl analyze's exit code when it found issues at or above the failure threshold.
pub const ISSUES_FOUND_EXIT_CODE: u8 = 79;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Level {
    Error,
    Warning,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    /// `IST0101`, ... (none where Istio has no message type for it).
    pub code: Option<&'static str>,
    /// `ReferencedResourceNotFound`, ...
    pub message_type: Option<&'static str>,
    /// `VirtualService bookinfo/reviews` (empty for a file that could not be read).
    pub resource: String,
    pub namespace: String,
    /// The file and document where it was read.
    pub origin: String,
    pub message: String,
}

impl Finding {
    fn new(
        level: Level,
        code: Option<Code>,
        resource: String,
        namespace: &str,
        origin: String,
        message: String,
    ) -> Self {
        Self {
            level,
            code: code.map(|c| c.code),
            message_type: code.map(|c| c.name),
            resource,
            namespace: namespace.to_owned(),
            origin,
            message,
        }
    }

    fn warning(warning: &FieldWarning, resource: String, namespace: &str, origin: String) -> Self {
        Self::new(
            Level::Warning,
            warning.code,
            resource,
            namespace,
            origin,
            format!("{}: {}", warning.path, warning.reason),
        )
    }
}

/// Everything found in `paths`, errors first.
pub fn analyze(paths: &[PathBuf]) -> Vec<Finding> {
    let report = loader::load_paths(paths);
    let mut findings = Vec::new();
    for error in &report.errors {
        let finding = match error {
            LoadError::Read { path, source } => Finding::new(
                Level::Error,
                None,
                String::new(),
                "",
                path.display().to_string(),
                format!("cannot read: {source}"),
            ),
            LoadError::Document {
                location,
                identity,
                path,
                problem,
            } => Finding::new(
                Level::Error,
                Some(SCHEMA_VALIDATION_ERROR),
                identity.to_string(),
                "",
                location.to_string(),
                format!("{path}: {problem}"),
            ),
        };
        findings.push(finding);
    }
    for skipped in &report.skipped {
        findings.push(Finding::new(
            Level::Warning,
            None,
            skipped.identity.to_string(),
            "",
            skipped.location.to_string(),
            skipped.reason.clone(),
        ));
    }
    let mut origins = BTreeMap::new();
    for loaded in &report.resources {
        let resource = &loaded.resource;
        let key = controller::index::key(resource);
        let name = format!("{} {key}", resource.kind());
        let namespace = resource.namespace();
        let origin = loaded.location.to_string();
        let result = validation::validate(resource);
        for error in &result.errors {
            findings.push(Finding::new(
                Level::Error,
                Some(SCHEMA_VALIDATION_ERROR),
                name.clone(),
                namespace,
                origin.clone(),
                error.to_string(),
            ));
        }
        for warning in loaded.warnings.iter().chain(&result.warnings) {
            findings.push(Finding::warning(
                warning,
                name.clone(),
                namespace,
                origin.clone(),
            ));
        }
        if let Some(earlier) = origins.insert((resource.kind(), key.clone()), origin.clone()) {
            findings.push(Finding::new(
                Level::Warning,
                None,
                name.clone(),
                namespace,
                earlier,
                format!("defined again at {origin}; that later definition is the one used"),
            ));
        }
    }
    let (index, _) = controller::index::ConfigIndex::from_report(report, None);
    let settings = controller::translate::MeshSettings::default();
    for message in controller::analysis::analyze(&index, &settings) {
        let key = controller::index::key_of(message.kind, &message.namespace, &message.name);
        let origin = origins
            .get(&(message.kind, key.clone()))
            .cloned()
            .unwrap_or_default();
        findings.push(Finding::warning(
            &message.warning,
            format!("{} {key}", message.kind),
            &message.namespace,
            origin,
        ));
    }
    findings.sort_by(|a, b| (a.level, &a.origin).cmp(&(b.level, &b.origin)));
    findings
}

/// Runs `weftctl analyze` and returns its exit code.
pub fn run(paths: &[PathBuf], namespace: Option<&str>, format: Format) -> anyhow::Result<u8> {
    if paths.is_empty() {
        anyhow::bail!(
            "nothing to analyze: give files or directories (the demo's live configuration is in the \
             directory `cargo xtask demo` prints), e.g. `weftctl analyze deploy/examples`"
        );
    }
    let findings: Vec<Finding> = analyze(paths)
        .into_iter()
        .filter(|f| namespace.is_none_or(|ns| f.namespace == ns || f.namespace.is_empty()))
        .collect();
    let errors = findings.iter().filter(|f| f.level == Level::Error).count();
    output::emit(format, &findings, || table(&findings))?;
    if format == Format::Table {
        if findings.is_empty() {
            println!(
                "No validation issues found when analyzing {}.",
                describe(paths)
            );
        } else {
            println!("{errors} error(s), {} warning(s)", findings.len() - errors);
        }
    }
    Ok(if errors > 0 {
        ISSUES_FOUND_EXIT_CODE
    } else {
        0
    })
}

fn describe(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One finding a line: level, code, resource, origin, message.
pub fn table(findings: &[Finding]) -> Table {
    let mut table = Table::new(&["LEVEL", "CODE", "RESOURCE", "ORIGIN", "MESSAGE"]);
    for finding in findings {
        let code = match (finding.code, finding.message_type) {
            (Some(code), Some(name)) => format!("{code} {name}"),
            _ => String::new(),
        };
        table.row(vec![
            format!("{:?}", finding.level),
            output::or_dash(&code),
            output::or_dash(&finding.resource),
            output::or_dash(&finding.origin),
            finding.message.clone(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyze_text(text: &str) -> Vec<Finding> {
        let dir = std::env::temp_dir().join(format!(
            "weftctl-analyze-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.yaml"), text).unwrap();
        let findings = analyze(std::slice::from_ref(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
        findings
    }

    #[test]
    fn a_refused_document_is_a_schema_validation_error() {
        let findings = analyze_text(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad, namespace: shop}\n\
             spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n      weight: -5\n",
        );
        let error = findings
            .iter()
            .find(|f| f.level == Level::Error)
            .expect("an error");
        assert_eq!(error.code, Some("IST0106"));
        assert_eq!(error.resource, "VirtualService shop/bad");
        assert_eq!(error.namespace, "shop");
        assert!(error.origin.contains("config.yaml"), "{error:?}");
    }

    #[test]
    fn a_missing_reference_is_ist0101() {
        let findings = analyze_text(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: shop}\n\
             spec:\n  hosts: [reviews]\n  gateways: [nowhere]\n  http:\n  - route:\n    - destination: {host: reviews}\n",
        );
        assert!(
            findings
                .iter()
                .any(|f| f.code == Some("IST0101") && f.level == Level::Warning),
            "{findings:#?}"
        );
        assert!(
            findings.iter().all(|f| f.level != Level::Error),
            "{findings:#?}"
        );
    }

    #[test]
    fn table_shows_code_and_name() {
        let finding = Finding::new(
            Level::Error,
            Some(SCHEMA_VALIDATION_ERROR),
            "VirtualService a.b".into(),
            "b",
            "f.yaml:1".into(),
            "spec: bad".into(),
        );
        let text = table(&[finding]).render();
        assert!(
            text.contains(
                "Error   IST0106 SchemaValidationError   VirtualService a.b   f.yaml:1   spec: bad"
            ),
            "{text}"
        );
    }
}
