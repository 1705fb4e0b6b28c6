//! Reads multi-document YAML into [`Resource`] values. Every document stands alone: a document
//! that does not parse, names an unknown Istio kind or breaks the schema (including a field
//! Istio's API does not have, as `istioctl validate` refuses it) is reported with its file,
//! index, identity (when readable), field path and reason, and the others still load. Documents
//! of kinds the mesh does not read (a Deployment, an Istio Sidecar) are skipped and reported.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::model::decode::{self, ROOT_PATH, UnknownFields};
use crate::model::{ISTIO_GROUP_SUFFIX, Resource, ResourceKind, UNREAD_ISTIO_KINDS};
use crate::validation::FieldWarning;

/// Where a document sits: its file and its index among the file's non-empty documents (from 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentLocation {
    pub file: PathBuf,
    pub index: usize,
}

impl fmt::Display for DocumentLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[doc {}]", self.file.display(), self.index)
    }
}

/// What is known of a document's identity, as far as it could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentIdentity {
    /// `kind`, or `kind.group` where ambiguous; `None` when the document has no readable kind.
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for DocumentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.as_deref().unwrap_or("<unknown kind>");
        let name = self.name.as_deref().unwrap_or("<unnamed>");
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => write!(f, "{kind} {ns}/{name}"),
            _ => write!(f, "{kind} {name}"),
        }
    }
}

/// A resource read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedResource {
    pub location: DocumentLocation,
    pub resource: Resource,
    /// What reading it found that does not refuse it (a Gateway API field the model does not
    /// know).
    pub warnings: Vec<FieldWarning>,
}

/// A document of a kind the mesh does not read: accepted, neither validated nor applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedDocument {
    pub location: DocumentLocation,
    pub identity: DocumentIdentity,
    pub reason: String,
}

impl fmt::Display for SkippedDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.location, self.identity, self.reason)
    }
}

/// Why a document (or a file) could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{location} {identity}: {path}: {problem}")]
    Document {
        location: DocumentLocation,
        identity: DocumentIdentity,
        path: String,
        problem: DocumentProblem,
    },
}

/// The reason a single document was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentProblem {
    #[error("invalid YAML: {0}")]
    Syntax(String),
    #[error("document is not a mapping")]
    NotAMapping,
    #[error("required field is missing")]
    MissingField,
    #[error("must be a string")]
    NotAString,
    #[error("unknown kind {kind:?} in apiVersion {api_version:?}")]
    UnknownKind { api_version: String, kind: String },
    #[error("unknown field {0:?}")]
    UnknownField(String),
    #[error("Required value")]
    RequiredValue,
    #[error("{0}")]
    Schema(String),
}

/// The outcome of loading many files: what loaded, what was skipped and what did not load.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub resources: Vec<LoadedResource>,
    pub skipped: Vec<SkippedDocument>,
    pub errors: Vec<LoadError>,
    pub files: usize,
    pub documents: usize,
}

impl LoadReport {
    fn extend(&mut self, other: LoadReport) {
        self.resources.extend(other.resources);
        self.skipped.extend(other.skipped);
        self.errors.extend(other.errors);
        self.files += other.files;
        self.documents += other.documents;
    }
}

/// Splits YAML text on `---` lines, dropping documents that hold only blanks and comments.
fn split_documents(text: &str) -> Vec<String> {
    let mut documents = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let is_separator = line == "---"
            || line.starts_with("--- ")
            || line.starts_with("---\t")
            || line.starts_with("--- #");
        if is_separator {
            documents.push(std::mem::take(&mut current));
            // `--- key: value` starts a document on the separator line itself.
            if let Some(rest) = line.strip_prefix("---") {
                current.push_str(rest.trim_start());
                current.push('\n');
            }
        } else if line == "..." {
            documents.push(std::mem::take(&mut current));
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    documents.push(current);
    documents.retain(|doc| {
        doc.lines().any(|line| {
            let trimmed = line.trim();
            !trimmed.is_empty() && !trimmed.starts_with('#')
        })
    });
    documents
}

fn string_at<'a>(map: &'a Mapping, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// Parses all documents of one file's text. Errors carry `file` as given.
pub fn load_str(file: &Path, text: &str) -> LoadReport {
    let mut report = LoadReport {
        files: 1,
        ..LoadReport::default()
    };
    for (index, document) in split_documents(text).iter().enumerate() {
        let location = DocumentLocation {
            file: file.to_path_buf(),
            index,
        };
        report.documents += 1;
        match load_document(document) {
            Ok(Loaded::Resource(resource, warnings)) => report.resources.push(LoadedResource {
                location,
                resource,
                warnings,
            }),
            Ok(Loaded::Skipped(identity, reason)) => report.skipped.push(SkippedDocument {
                location,
                identity,
                reason,
            }),
            Ok(Loaded::Empty) => report.documents -= 1,
            Err(failures) => {
                for (identity, path, problem) in failures {
                    report.errors.push(LoadError::Document {
                        location: location.clone(),
                        identity,
                        path,
                        problem,
                    });
                }
            }
        }
    }
    report
}

type DocumentFailure = (DocumentIdentity, String, DocumentProblem);

/// What one document turned into.
// Resources are few and short-lived; boxing the common case buys nothing.
#[allow(clippy::large_enum_variant)]
enum Loaded {
    Resource(Resource, Vec<FieldWarning>),
    Skipped(DocumentIdentity, String),
    Empty,
}

/// Whether a kind the model has no type for is refused or skipped: Istio refuses types of its
/// groups it does not know, and the mesh skips what it does not read.
fn unread_kind(group: &str, kind: &str) -> Result<String, ()> {
    if UNREAD_ISTIO_KINDS.contains(&(group, kind)) {
        return Ok(format!(
            "{NOT_READ}: Weft does not read {kind} (not validated, not applied)"
        ));
    }
    let known_elsewhere = ResourceKind::ALL
        .iter()
        .any(|k| k.group() == group && k.kind() == kind);
    if group.ends_with(ISTIO_GROUP_SUFFIX) || known_elsewhere {
        return Err(());
    }
    Ok(format!("{NOT_READ}: not read by the mesh"))
}

/// How every skipped document's reason starts.
pub const NOT_READ: &str = "skipped";

fn load_document(text: &str) -> Result<Loaded, Vec<DocumentFailure>> {
    let fail = |identity: &DocumentIdentity, path: &str, problem| {
        Err(vec![(identity.clone(), path.to_owned(), problem)])
    };
    let mut identity = DocumentIdentity::default();
    let value: Value = match serde_yaml::from_str(text) {
        Ok(value) => value,
        Err(e) => return fail(&identity, ROOT_PATH, DocumentProblem::Syntax(e.to_string())),
    };
    let mut map = match value {
        Value::Null => return Ok(Loaded::Empty),
        Value::Mapping(map) => map,
        _ => return fail(&identity, ROOT_PATH, DocumentProblem::NotAMapping),
    };

    let metadata = map.get("metadata").and_then(Value::as_mapping);
    identity.name = metadata
        .and_then(|m| string_at(m, "name"))
        .map(str::to_owned);
    identity.namespace = metadata
        .and_then(|m| string_at(m, "namespace"))
        .map(str::to_owned);
    identity.kind = string_at(&map, "kind").map(str::to_owned);

    let api_version = match map.get("apiVersion") {
        None => return fail(&identity, "apiVersion", DocumentProblem::MissingField),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return fail(&identity, "apiVersion", DocumentProblem::NotAString),
    };
    let kind_name = match map.get("kind") {
        None => return fail(&identity, "kind", DocumentProblem::MissingField),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return fail(&identity, "kind", DocumentProblem::NotAString),
    };
    let Some(kind) = ResourceKind::from_type_meta(&api_version, &kind_name) else {
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        return match unread_kind(group, &kind_name) {
            Ok(reason) => Ok(Loaded::Skipped(identity, reason)),
            Err(()) => fail(
                &identity,
                "kind",
                DocumentProblem::UnknownKind {
                    api_version,
                    kind: kind_name,
                },
            ),
        };
    };
    identity.kind = Some(kind.display_name().to_owned());

    if kind.is_istio() {
        // Istio refuses these (`checkFields`), and the API server prunes them.
        for key in map.keys() {
            let known = matches!(
                key.as_str(),
                Some("apiVersion" | "kind" | "metadata" | "spec" | "status")
            );
            if !known {
                let name = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_owned);
                return fail(
                    &identity,
                    &name,
                    DocumentProblem::UnknownField(name.clone()),
                );
            }
        }
        if map.get("spec").is_none_or(Value::is_null) {
            // Istio's CRDs require `spec` of these two; the others may leave it out (an
            // AuthorizationPolicy without spec denies all).
            if matches!(
                kind,
                ResourceKind::ServiceEntry | ResourceKind::WorkloadEntry
            ) {
                return fail(&identity, "spec", DocumentProblem::RequiredValue);
            }
            map.insert(Value::from("spec"), Value::Mapping(Mapping::new()));
        }
    }

    let metadata = match map.get_mut("metadata") {
        Some(Value::Mapping(m)) => m,
        Some(_) => return fail(&identity, "metadata", DocumentProblem::NotAMapping),
        None => return fail(&identity, "metadata", DocumentProblem::MissingField),
    };
    if string_at(metadata, "name").is_none_or(str::is_empty) {
        return fail(&identity, "metadata.name", DocumentProblem::MissingField);
    }
    if kind.namespaced() && metadata.get("namespace").is_none_or(Value::is_null) {
        metadata.insert(Value::from("namespace"), Value::from("default"));
        identity.namespace = Some("default".to_owned());
    }

    let decoded = decode::decode(kind, Value::Mapping(map))
        .map_err(|e| vec![(identity.clone(), e.path, DocumentProblem::Schema(e.reason))])?;
    let mut warnings = Vec::new();
    match decode::unknown_field_policy(kind, UnknownFields::Refuse) {
        Some(UnknownFields::Refuse) if !decoded.unknown_fields.is_empty() => {
            return Err(decoded
                .unknown_fields
                .into_iter()
                .map(|path| {
                    let name = path.rsplit('.').next().unwrap_or(&path).to_owned();
                    (identity.clone(), path, DocumentProblem::UnknownField(name))
                })
                .collect());
        }
        Some(UnknownFields::Warn) => {
            for path in decoded.unknown_fields {
                warnings.push(unknown_field_warning(path));
            }
        }
        _ => {}
    }
    Ok(Loaded::Resource(decoded.resource, warnings))
}

/// The warning for a field the model does not know, where it is tolerated.
pub fn unknown_field_warning(path: String) -> FieldWarning {
    FieldWarning {
        path,
        reason: "unknown field, ignored (not in Weft's model of this API)".to_owned(),
        code: None,
    }
}

fn is_yaml_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

// Read errors are rare and end the walk; keeping `LoadError` unboxed keeps it easy to match on.
#[allow(clippy::result_large_err)]
/// Lists the YAML files under `path`: the file itself when it is one (whatever its extension),
/// or every `.yaml`/`.yml` file below a directory, in sorted order.
pub fn collect_yaml_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| LoadError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| LoadError::Read {
                path: dir.clone(),
                source,
            })?;
            let entry_path = entry.path();
            let file_type = entry.file_type().map_err(|source| LoadError::Read {
                path: entry_path.clone(),
                source,
            })?;
            if file_type.is_dir() {
                pending.push(entry_path);
            } else if is_yaml_file(&entry_path) {
                files.push(entry_path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Loads every YAML file named by `paths` (directories are walked recursively).
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> LoadReport {
    let mut report = LoadReport::default();
    for path in paths {
        let files = match collect_yaml_files(path.as_ref()) {
            Ok(files) => files,
            Err(e) => {
                report.errors.push(e);
                continue;
            }
        };
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(source) => {
                    report.files += 1;
                    report.errors.push(LoadError::Read { path: file, source });
                    continue;
                }
            };
            report.extend(load_str(&file, &text));
        }
    }
    tracing::debug!(
        files = report.files,
        documents = report.documents,
        errors = report.errors.len(),
        "configuration loaded"
    );
    report
}

#[cfg(test)]
mod tests;
