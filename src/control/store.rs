//! The resource store: every object either source (manifest directory or API server) knows,
//! keyed by object reference, valid or not. Sources change it only through [`Change`]s; the
//! index reads it. This is the seam that makes standalone and Kubernetes mode one code path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::resources::{Kind, ObjectRef, Resource};

/// Where an object was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A document of a manifest file (1-based).
    File { file: PathBuf, doc: usize },
    /// The API server. (No resourceVersion: a status write must not look like a change.)
    Api { uid: String, generation: Option<i64> },
}

/// An object as a source read it: a valid resource, or why it is not one.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub origin: Origin,
    pub resource: Result<Resource, String>,
}

impl Stored {
    /// `metadata.generation` of an object read from the API.
    pub fn generation(&self) -> Option<i64> {
        match &self.origin {
            Origin::Api { generation, .. } => *generation,
            Origin::File { .. } => None,
        }
    }
}

/// Which objects a [`Change::Reset`] replaces: one kind, in one namespace or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub kind: Option<Kind>,
    pub namespace: Option<String>,
}

impl Scope {
    /// Every object.
    pub const ALL: Scope = Scope { kind: None, namespace: None };

    fn contains(&self, r: &ObjectRef) -> bool {
        self.kind.is_none_or(|k| k == r.kind) && self.namespace.as_ref().is_none_or(|ns| *ns == r.namespace)
    }
}

/// What the local-function runner (standalone mode) reports of a Function it runs itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalState {
    /// Being prepared (code written, dependencies installed) or awaiting its first `/healthz`.
    Starting,
    /// A process answers, or is being restarted after one did: triggers deliver to it.
    Serving,
    /// No process of it ever served, and why (a missing runtime binary, a failed dependency
    /// install, an exit before `/healthz` answered); it is tried again with backoff.
    Failed(String),
    /// It cannot be run here as written, and why; nothing is tried until the Function changes.
    Unrunnable(String),
}

/// What a source tells the store.
#[derive(Debug, Clone)]
pub enum Change {
    Apply(ObjectRef, Box<Stored>),
    Delete(ObjectRef),
    /// Everything in the scope is now exactly these objects (a fresh listing).
    Reset(Scope, Vec<(ObjectRef, Stored)>),
    /// A local function's state (none: the runner no longer runs it).
    Local(ObjectRef, Option<LocalState>),
}

/// Every known object, by reference, and the state of the functions run locally.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Store {
    objects: BTreeMap<ObjectRef, Arc<Stored>>,
    local: BTreeMap<ObjectRef, LocalState>,
}

impl Store {
    /// Applies a change; true if anything differs afterwards.
    pub fn change(&mut self, change: Change) -> bool {
        match change {
            Change::Apply(r, stored) => {
                if self.objects.get(&r).is_some_and(|s| **s == *stored) {
                    return false;
                }
                self.objects.insert(r, Arc::new(*stored));
                true
            }
            Change::Delete(r) => self.objects.remove(&r).is_some(),
            Change::Reset(scope, objects) => {
                let before = self.objects.clone();
                self.objects.retain(|r, _| !scope.contains(r));
                for (r, stored) in objects.into_iter().filter(|(r, _)| scope.contains(r)) {
                    let kept = before.get(&r).filter(|s| ***s == stored).cloned();
                    self.objects.insert(r, kept.unwrap_or_else(|| Arc::new(stored)));
                }
                self.objects != before
            }
            Change::Local(r, Some(state)) => self.local.insert(r, state.clone()).is_none_or(|old| old != state),
            Change::Local(r, None) => self.local.remove(&r).is_some(),
        }
    }

    /// What the local-function runner last said of `function`.
    pub fn local(&self, function: &ObjectRef) -> Option<&LocalState> {
        self.local.get(function)
    }

    pub fn get(&self, r: &ObjectRef) -> Option<&Stored> {
        self.objects.get(r).map(|s| &**s)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectRef, &Stored)> {
        self.objects.iter().map(|(r, s)| (r, &**s))
    }

    /// The valid resources.
    pub fn resources(&self) -> impl Iterator<Item = (&ObjectRef, &Resource)> {
        self.iter().filter_map(|(r, s)| s.resource.as_ref().ok().map(|res| (r, res)))
    }

    /// The objects that are not valid, with why.
    pub fn invalid(&self) -> impl Iterator<Item = (&ObjectRef, &str)> {
        self.iter().filter_map(|(r, s)| s.resource.as_ref().err().map(|e| (r, e.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object the store keeps as invalid with `problem` (the store does not care which).
    fn stored(uid: &str, problem: &str) -> Stored {
        Stored { origin: Origin::Api { uid: uid.into(), generation: Some(1) }, resource: Err(problem.into()) }
    }

    #[test]
    fn apply_delete_and_reset_report_whether_anything_changed() {
        let mut store = Store::default();
        let a = ObjectRef::new(Kind::KafkaTrigger, "ns", "a");
        let b = ObjectRef::new(Kind::KafkaTrigger, "other", "b");
        let f = ObjectRef::new(Kind::Function, "ns", "f");
        assert!(store.change(Change::Apply(a.clone(), Box::new(stored("1", "one")))));
        assert!(
            !store.change(Change::Apply(a.clone(), Box::new(stored("1", "one")))),
            "the same object again is no change"
        );
        assert!(store.change(Change::Apply(b.clone(), Box::new(stored("2", "two")))));
        assert!(store.change(Change::Apply(f.clone(), Box::new(stored("3", "three")))));

        // A relist of KafkaTriggers in "ns" keeps other namespaces and kinds.
        let scope = Scope { kind: Some(Kind::KafkaTrigger), namespace: Some("ns".into()) };
        assert!(!store.change(Change::Reset(scope.clone(), vec![(a.clone(), stored("1", "one"))])));
        assert!(store.change(Change::Reset(scope, vec![])));
        assert!(store.get(&a).is_none());
        assert!(store.get(&b).is_some() && store.get(&f).is_some());

        assert!(store.change(Change::Delete(b.clone())));
        assert!(!store.change(Change::Delete(b)));
        assert_eq!(store.invalid().collect::<Vec<_>>(), [(&f, "three")]);
        assert!(store.change(Change::Apply(f.clone(), Box::new(stored("3", "bad")))), "a changed spec is a change");
        assert_eq!(store.invalid().collect::<Vec<_>>(), [(&f, "bad")]);
    }
}
