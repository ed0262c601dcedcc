//! Where the CLI's objects live: the Kubernetes API (server-side apply, field manager
//! `kubeless-cli`) or a manifest directory that `kubeless-broker --manifests` reads (one file per
//! object the CLI writes; objects in other files are read, and changed in place when they are
//! alone in their file).

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};

use crate::control::manifests::{manifest_files, DEFAULT_NAMESPACE};

/// The field manager of what the CLI applies.
pub const FIELD_MANAGER: &str = "kubeless-cli";

/// A namespaced kind the CLI reads and writes.
pub trait Object:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Object for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name} not found in namespace {namespace}")]
    NotFound { kind: String, name: String, namespace: String },
    #[error("{kind} {name} already exists in namespace {namespace}; use `update` to change it")]
    Exists { kind: String, name: String, namespace: String },
    #[error("the API server refused: {0}")]
    Refused(String),
    #[error("cannot reach the Kubernetes API server at {server}: {reason} (set --kubeconfig/--context, or --manifests for a manifest directory)")]
    Unreachable { server: String, reason: String },
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// The back end of one CLI invocation.
pub enum Store {
    Kube {
        client: Client,
        namespace: String,
        server: url::Url,
    },
    /// `state_dir`: the broker's `--state-dir`, where its local functions' logs and addresses are.
    Dir {
        dir: PathBuf,
        namespace: String,
        state_dir: Option<PathBuf>,
    },
}

fn kind_of<K: Object>() -> String {
    K::kind(&()).to_string()
}

impl Store {
    pub fn namespace(&self) -> &str {
        match self {
            Self::Kube { namespace, .. } | Self::Dir { namespace, .. } => namespace,
        }
    }

    fn api<K: Object>(&self) -> Option<Api<K>> {
        match self {
            Self::Kube { client, namespace, .. } => Some(Api::namespaced(client.clone(), namespace)),
            Self::Dir { .. } => None,
        }
    }

    fn kube_error(&self, e: kube::Error) -> StoreError {
        match e {
            kube::Error::Api(s) => StoreError::Refused(format!("{} ({} {})", s.message, s.code, s.reason)),
            other => StoreError::Unreachable {
                server: match self {
                    Self::Kube { server, .. } => server.to_string(),
                    Self::Dir { dir, .. } => dir.display().to_string(),
                },
                reason: other.to_string(),
            },
        }
    }

    fn not_found<K: Object>(&self, name: &str) -> StoreError {
        StoreError::NotFound { kind: kind_of::<K>(), name: name.to_string(), namespace: self.namespace().to_string() }
    }

    /// The object, if it exists.
    pub async fn get<K: Object>(&self, name: &str) -> Result<Option<K>, StoreError> {
        match self.api::<K>() {
            Some(api) => api.get_opt(name).await.map_err(|e| self.kube_error(e)),
            None => Ok(self.find::<K>(name)?.map(|f| f.object)),
        }
    }

    /// The object, or an error naming it.
    pub async fn need<K: Object>(&self, name: &str) -> Result<K, StoreError> {
        self.get::<K>(name).await?.ok_or_else(|| self.not_found::<K>(name))
    }

    /// Every object of the kind in the namespace, sorted by name.
    pub async fn list<K: Object>(&self) -> Result<Vec<K>, StoreError> {
        let mut items = match self.api::<K>() {
            Some(api) => api.list(&ListParams::default()).await.map_err(|e| self.kube_error(e))?.items,
            None => self.documents::<K>()?.into_iter().map(|f| f.object).collect(),
        };
        items.sort_by_key(|o| o.name_any());
        Ok(items)
    }

    /// Writes a new object; an existing one of the same name is an error (as in Kubeless).
    pub async fn create<K: Object>(&self, obj: &K) -> Result<K, StoreError> {
        let name = obj.name_any();
        if self.get::<K>(&name).await?.is_some() {
            return Err(StoreError::Exists { kind: kind_of::<K>(), name, namespace: self.namespace().to_string() });
        }
        self.write(obj).await
    }

    /// Writes an object read with [`Store::get`] and changed: on the API server a forced apply that
    /// fails if the object changed since it was read (its resourceVersion).
    pub async fn update<K: Object>(&self, obj: &K) -> Result<K, StoreError> {
        self.write(obj).await
    }

    async fn write<K: Object>(&self, obj: &K) -> Result<K, StoreError> {
        let name = obj.name_any();
        match self {
            Self::Kube { .. } => {
                let api = self.api::<K>().expect("the Kube store has an API");
                let mut body = serde_json::to_value(obj).map_err(|e| StoreError::Refused(e.to_string()))?;
                clean_for_apply(&mut body);
                let params = PatchParams::apply(FIELD_MANAGER).force();
                api.patch(&name, &params, &Patch::Apply(&body)).await.map_err(|e| self.kube_error(e))
            }
            Self::Dir { dir, namespace, .. } => {
                let path = match self.find::<K>(&name)? {
                    Some(found) if found.alone => found.path,
                    Some(found) => {
                        return Err(StoreError::File {
                            path: found.path.display().to_string(),
                            reason: format!(
                                "{} {name} is defined there with other documents; change it in that file",
                                kind_of::<K>()
                            ),
                        })
                    }
                    None => dir.join(file_name::<K>(namespace, &name)),
                };
                let mut body = serde_json::to_value(obj).map_err(|e| file_error(&path, e))?;
                clean_for_file(&mut body);
                let text = serde_yaml::to_string(&body).map_err(|e| file_error(&path, e))?;
                write_atomically(&path, &text)?;
                Ok(obj.clone())
            }
        }
    }

    /// Deletes the object; a missing one is an error.
    pub async fn delete<K: Object>(&self, name: &str) -> Result<(), StoreError> {
        match self.api::<K>() {
            Some(api) => match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Err(self.not_found::<K>(name)),
                Err(e) => Err(self.kube_error(e)),
            },
            None => match self.find::<K>(name)? {
                None => Err(self.not_found::<K>(name)),
                Some(found) if found.alone => std::fs::remove_file(&found.path).map_err(|e| file_error(&found.path, e)),
                Some(found) => Err(StoreError::File {
                    path: found.path.display().to_string(),
                    reason: format!(
                        "{} {name} is defined there with other documents; delete it from that file",
                        kind_of::<K>()
                    ),
                }),
            },
        }
    }

    fn find<K: Object>(&self, name: &str) -> Result<Option<Found<K>>, StoreError> {
        Ok(self.documents::<K>()?.into_iter().find(|f| f.object.name_any() == name))
    }

    /// Every document of kind `K` in the namespace, from every manifest file.
    fn documents<K: Object>(&self) -> Result<Vec<Found<K>>, StoreError> {
        let Self::Dir { dir, namespace, .. } = self else { return Ok(Vec::new()) };
        let files = manifest_files(dir).map_err(|e| file_error(dir, e))?;
        let kind = kind_of::<K>();
        let api_version = K::api_version(&()).to_string();
        let mut found = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
            let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
                .map(serde_yaml::Value::deserialize)
                .filter(|d| !matches!(d, Ok(serde_yaml::Value::Null)))
                .collect::<Result<_, _>>()
                .map_err(|e| file_error(&path, e))?;
            let alone = docs.len() == 1;
            for doc in docs {
                let field = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
                if field("apiVersion").as_deref() != Some(api_version.as_str())
                    || field("kind").as_deref() != Some(kind.as_str())
                {
                    continue;
                }
                let ns = doc.get("metadata").and_then(|m| m.get("namespace")).and_then(|v| v.as_str());
                if ns.unwrap_or(DEFAULT_NAMESPACE) != namespace {
                    continue;
                }
                let mut object: K =
                    serde_yaml::from_value(doc).map_err(|e| file_error(&path, format!("{kind}: {e}")))?;
                object.meta_mut().namespace.get_or_insert_with(|| namespace.clone());
                found.push(Found { path: path.clone(), alone, object });
            }
        }
        Ok(found)
    }
}

struct Found<K> {
    path: PathBuf,
    /// The only document of its file.
    alone: bool,
    object: K,
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::File { path: path.display().to_string(), reason: e.to_string() }
}

/// `function-default-hello.yaml`.
fn file_name<K: Object>(namespace: &str, name: &str) -> String {
    format!("{}-{namespace}-{name}.yaml", kind_of::<K>().to_lowercase())
}

/// Written beside and renamed, so that the daemon never reads half a file (its scan skips
/// hidden files).
fn write_atomically(path: &Path, text: &str) -> Result<(), StoreError> {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("object")));
    std::fs::write(&tmp, text).map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

/// What the API server sets and an apply must not carry.
fn clean_for_apply(body: &mut serde_json::Value) {
    if let Some(meta) = body.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for key in ["managedFields", "creationTimestamp", "generation", "uid"] {
            meta.remove(key);
        }
    }
    if let Some(obj) = body.as_object_mut() {
        obj.remove("status");
    }
}

/// A manifest file holds what a person would write: no server-side metadata or status.
fn clean_for_file(body: &mut serde_json::Value) {
    clean_for_apply(body);
    if let Some(meta) = body.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("resourceVersion");
    }
}
