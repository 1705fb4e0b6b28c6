//! Reads multi-document YAML into [`Resource`] values. Every document stands alone: a document
//! that does not parse, names an unknown kind or breaks the schema is reported with its file,
//! index, identity (when readable), field path and reason, and the others still load.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::model::{Resource, ResourceKind};

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
    UnknownTopLevelField(String),
    #[error("{0}")]
    Schema(String),
}

/// The outcome of loading many files: what loaded and what did not.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub resources: Vec<LoadedResource>,
    pub errors: Vec<LoadError>,
    pub files: usize,
    pub documents: usize,
}

const ROOT_PATH: &str = "<document>";

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
pub fn load_str(file: &Path, text: &str) -> (Vec<LoadedResource>, Vec<LoadError>) {
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in split_documents(text).iter().enumerate() {
        let location = DocumentLocation {
            file: file.to_path_buf(),
            index,
        };
        match load_document(document) {
            Ok(Some(resource)) => resources.push(LoadedResource { location, resource }),
            Ok(None) => {}
            Err(failure) => {
                let (identity, path, problem) = *failure;
                errors.push(LoadError::Document {
                    location,
                    identity,
                    path,
                    problem,
                });
            }
        }
    }
    (resources, errors)
}

type DocumentFailure = Box<(DocumentIdentity, String, DocumentProblem)>;

fn load_document(text: &str) -> Result<Option<Resource>, DocumentFailure> {
    let fail = |identity: &DocumentIdentity, path: &str, problem| {
        Err(Box::new((identity.clone(), path.to_owned(), problem)))
    };
    let mut identity = DocumentIdentity::default();
    let value: Value = match serde_yaml::from_str(text) {
        Ok(value) => value,
        Err(e) => return fail(&identity, ROOT_PATH, DocumentProblem::Syntax(e.to_string())),
    };
    let mut map = match value {
        Value::Null => return Ok(None),
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
        return fail(
            &identity,
            "kind",
            DocumentProblem::UnknownKind {
                api_version,
                kind: kind_name,
            },
        );
    };
    identity.kind = Some(kind.display_name().to_owned());

    let is_istio = !matches!(
        kind,
        ResourceKind::KubernetesGateway
            | ResourceKind::Namespace
            | ResourceKind::Pod
            | ResourceKind::Service
            | ResourceKind::ServiceAccount
            | ResourceKind::EndpointSlice
    );
    if is_istio {
        // Istio's CRDs are structural: anything beyond these is pruned by the API server, and
        // silently ignoring a typo at this level would hide a user's mistake.
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
                    DocumentProblem::UnknownTopLevelField(name.clone()),
                );
            }
        }
        // `spec` may be left out entirely (an AuthorizationPolicy without spec denies all).
        if map.get("spec").is_none_or(Value::is_null) {
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

    let value = Value::Mapping(map);
    let schema_error = |e: serde_path_to_error::Error<serde_yaml::Error>| {
        let path = e.path().to_string();
        let path = if path == "." {
            ROOT_PATH.to_owned()
        } else {
            path
        };
        (
            identity.clone(),
            path,
            DocumentProblem::Schema(e.into_inner().to_string()),
        )
    };
    macro_rules! parse {
        ($variant:ident) => {
            serde_path_to_error::deserialize(value)
                .map(Resource::$variant)
                .map_err(schema_error)
        };
    }
    let resource = match kind {
        ResourceKind::VirtualService => parse!(VirtualService),
        ResourceKind::DestinationRule => parse!(DestinationRule),
        ResourceKind::ServiceEntry => parse!(ServiceEntry),
        ResourceKind::Gateway => parse!(Gateway),
        ResourceKind::AuthorizationPolicy => parse!(AuthorizationPolicy),
        ResourceKind::PeerAuthentication => parse!(PeerAuthentication),
        ResourceKind::KubernetesGateway => parse!(KubernetesGateway),
        ResourceKind::Namespace => parse!(Namespace),
        ResourceKind::Pod => parse!(Pod),
        ResourceKind::Service => parse!(Service),
        ResourceKind::ServiceAccount => parse!(ServiceAccount),
        ResourceKind::EndpointSlice => parse!(EndpointSlice),
    }?;
    Ok(Some(resource))
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
            report.files += 1;
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(source) => {
                    report.errors.push(LoadError::Read { path: file, source });
                    continue;
                }
            };
            let (resources, errors) = load_str(&file, &text);
            report.documents += resources.len() + errors.len();
            report.resources.extend(resources);
            report.errors.extend(errors);
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
