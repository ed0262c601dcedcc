//! Standalone mode's source of truth: every `*.yaml`/`*.yml` in a directory, multi-document files
//! included. Each document is parsed and validated on its own; a bad one becomes a
//! [`ManifestError`] naming the file, the document, the resource and the field, and the rest load.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use crate::resources::{
    CronJobTrigger, FieldError, Function, HTTPTrigger, KafkaTrigger, Kind, KinesisTrigger, NATSTrigger, ObjectRef,
    Resource, API_VERSION,
};

/// Namespace of a resource whose metadata names none (kubectl's default).
pub const DEFAULT_NAMESPACE: &str = "default";

/// A valid resource and where it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub file: PathBuf,
    /// 1-based index of the document in its file.
    pub doc: usize,
    pub object: ObjectRef,
    pub resource: Resource,
}

/// A document that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    pub doc: usize,
    /// `Kind namespace/name`, when the document got far enough to say.
    pub resource: Option<String>,
    pub problem: String,
    /// The file could not be read past this document (a YAML syntax error, as in a file caught
    /// half written): what it defined before is kept, see [`keep_last_good`].
    pub unreadable: bool,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.doc)?;
        if let Some(r) = &self.resource {
            write!(f, ", {r}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// Everything read from the directory at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ManifestSet {
    pub resources: Vec<Loaded>,
    pub errors: Vec<ManifestError>,
}

/// The manifest files in `dir`, sorted so that loading is deterministic.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    files.sort();
    Ok(files)
}

/// A file that cannot be read to its end (a YAML syntax error: typically caught half written by
/// an editor or a copy) keeps the objects it defined in `previous`, so their consumers do not stop
/// and rejoin until the write is done; its error is still reported.
pub fn keep_last_good(mut set: ManifestSet, previous: Option<&ManifestSet>) -> ManifestSet {
    let Some(previous) = previous else { return set };
    let broken: Vec<PathBuf> = set.errors.iter().filter(|e| e.unreadable).map(|e| e.file.clone()).collect();
    for file in broken {
        set.resources.retain(|l| l.file != file);
        let present: std::collections::HashSet<ObjectRef> = set.resources.iter().map(|l| l.object.clone()).collect();
        let kept: Vec<Loaded> =
            previous.resources.iter().filter(|l| l.file == file && !present.contains(&l.object)).cloned().collect();
        if !kept.is_empty() {
            for e in set.errors.iter_mut().filter(|e| e.file == file && e.unreadable) {
                e.problem.push_str(&format!(
                    "; the {} object(s) of its last good reading are kept until it reads again",
                    kept.len()
                ));
            }
        }
        set.resources.extend(kept);
    }
    set
}

/// Parses files already read (path, contents) into one set, reporting duplicates: the first
/// definition (by file name, then document) wins and later ones are errors.
pub fn parse_files(files: &[(PathBuf, String)]) -> ManifestSet {
    let mut set = ManifestSet::default();
    let mut seen: HashMap<ObjectRef, (PathBuf, usize)> = HashMap::new();
    for (path, text) in files {
        for item in parse_file(path, text) {
            match item {
                Ok(loaded) => {
                    let key = loaded.object.clone();
                    if let Some((file, doc)) = seen.get(&key) {
                        set.errors.push(ManifestError {
                            file: loaded.file.clone(),
                            doc: loaded.doc,
                            resource: Some(key.to_string()),
                            problem: format!(
                                "duplicate: already defined in {} (document {doc}); this definition is ignored",
                                file.display()
                            ),
                            unreadable: false,
                        });
                    } else {
                        seen.insert(key, (loaded.file.clone(), loaded.doc));
                        set.resources.push(loaded);
                    }
                }
                Err(e) => set.errors.push(e),
            }
        }
    }
    set
}

/// Parses every document of one file.
pub fn parse_file(path: &Path, text: &str) -> Vec<Result<Loaded, ManifestError>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_no = i + 1;
        let err = |resource: Option<String>, problem: String| ManifestError {
            file: path.to_path_buf(),
            doc: doc_no,
            resource,
            problem,
            unreadable: false,
        };
        let value = match Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                let problem = format!("not valid YAML: {e}");
                out.push(Err(ManifestError { unreadable: true, ..err(None, problem) }));
                // The parser cannot resynchronise after a syntax error: the rest of the file is unread.
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        out.push(parse_document(value).map_err(|(r, p)| err(r, p)).map(|(object, resource)| Loaded {
            file: path.to_path_buf(),
            doc: doc_no,
            object,
            resource,
        }));
    }
    out
}

/// Why a document is not a valid resource: `Kind namespace/name` when it got far enough to say,
/// and the problem (field, what is wrong).
pub type DocError = (Option<String>, String);

/// Parses and validates one object, whether it came from a file or from the API server: the same
/// checks and the same messages in both modes.
pub fn parse_document(mut value: Value) -> Result<(ObjectRef, Resource), DocError> {
    let Value::Mapping(map) = &mut value else {
        return Err((None, "a manifest must be a mapping with apiVersion, kind and metadata".to_string()));
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
    let kind = text("kind").ok_or((None, "kind: is required (e.g. KafkaTrigger)".to_string()))?;
    let meta = map.get("metadata").and_then(Value::as_mapping);
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default().to_string();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_string();
    let label = Some(format!("{kind} {namespace}/{name}"));
    if name.is_empty() {
        return Err((Some(kind), "metadata.name: is required".to_string()));
    }
    let Some(parsed_kind) = Kind::parse(&kind) else {
        let known: Vec<&str> = Kind::ALL.iter().skip(1).chain(&Kind::ALL[..1]).map(|k| k.as_str()).collect();
        return Err((label, format!("kind: {kind:?} is not a Kubeless kind (expected one of {})", known.join(", "))));
    };
    let object = ObjectRef::new(parsed_kind, namespace.as_str(), name.as_str());
    let api_version = if kind == "Secret" { "v1" } else { API_VERSION };
    match text("apiVersion") {
        Some(v) if v == api_version => {}
        Some(v) => return Err((label, format!("apiVersion: {v:?} is not served; use {api_version}"))),
        None => return Err((label, format!("apiVersion: is required ({api_version})"))),
    }
    // Fill in the namespace so every later step sees the one the id names.
    if let Some(Value::Mapping(m)) = map.get_mut("metadata") {
        m.insert(Value::from("namespace"), Value::from(namespace.as_str()));
    }
    let fields = |errors: Vec<FieldError>| -> DocError {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        (label.clone(), list.join("; "))
    };
    let resource = match parsed_kind {
        Kind::Secret => Resource::Secret(typed(value, &label).map_err(|(label, why)| (label, hide_values(&why)))?),
        Kind::Function => {
            let f: Function = typed(value, &label)?;
            f.validate().map_err(fields)?;
            Resource::Function(f)
        }
        Kind::KafkaTrigger => {
            let t: KafkaTrigger = typed(value, &label)?;
            let policy = t.validate().map_err(fields)?;
            Resource::Kafka(t, policy)
        }
        Kind::NATSTrigger => {
            let t: NATSTrigger = typed(value, &label)?;
            let policy = t.validate().map_err(fields)?;
            Resource::Nats(t, policy)
        }
        Kind::KinesisTrigger => {
            let t: KinesisTrigger = typed(value, &label)?;
            let policy = t.validate().map_err(fields)?;
            Resource::Kinesis(t, policy)
        }
        Kind::CronJobTrigger => {
            let t: CronJobTrigger = typed(value, &label)?;
            let policy = t.validate().map_err(fields)?;
            Resource::CronJob(t, policy)
        }
        Kind::HTTPTrigger => {
            let t: HTTPTrigger = typed(value, &label)?;
            t.validate().map_err(fields)?;
            Resource::Http(t)
        }
    };
    Ok((object, resource))
}

/// A Secret's parse error without the values it quotes (serde names an offending value in
/// backticks or double quotes: `invalid type: integer `12345`, expected a string`).
fn hide_values(why: &str) -> String {
    let mut out = String::with_capacity(why.len());
    let mut quote: Option<char> = None;
    for c in why.chars() {
        match quote {
            Some(q) if c == q => {
                out.push_str("(value hidden)");
                quote = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' => quote = Some(c),
            None => out.push(c),
        }
    }
    if quote.is_some() {
        out.push_str("(value hidden)");
    }
    out
}

/// Deserializes with the path of the offending field in the error.
fn typed<T: DeserializeOwned>(value: Value, label: &Option<String>) -> Result<T, DocError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        (label.clone(), if path == "." { inner } else { format!("{path}: {inner}") })
    })
}

#[cfg(test)]
#[path = "manifests_tests.rs"]
mod tests;
