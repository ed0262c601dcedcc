//! What the command groups share: the store the global flags name; writing, listing and deleting
//! objects; the errors of flags; and the metadata and flag syntax every object the CLI makes has.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use kube::{Api, ResourceExt};

use super::store::{Object, Store};
use super::{table, Global, ListOutput, Output};
use crate::control::manifests::DEFAULT_NAMESPACE;
use crate::functions::catalogue::Catalogue;
use crate::functions::objects::FunctionConfig;
use crate::resources::Function;
use crate::schedule::Schedule;

/// A flag's value the CLI refuses, and why (shown as `error: --flag: why`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct FlagError {
    pub flag: String,
    pub problem: String,
}

impl FlagError {
    pub fn new(flag: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { flag: flag.into(), problem: problem.into() }
    }
}

/// The store the global flags name: a manifest directory, else the cluster.
pub async fn open(g: &Global) -> anyhow::Result<Store> {
    if let Some(dir) = &g.manifests {
        if !dir.is_dir() {
            bail!("--manifests {}: no such directory", dir.display());
        }
        let namespace = g.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let state_dir =
            g.state_dir.clone().or_else(|| crate::config::default_state_dir(&|k: &str| std::env::var(k).ok()).ok());
        return Ok(Store::Dir { dir: dir.clone(), namespace, state_dir });
    }
    let config = crate::kubernetes::config(g.kubeconfig.as_deref(), g.context.as_deref())
        .await
        .context("no cluster to talk to (use --manifests DIR for a manifest directory)")?;
    let namespace = g.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let server = url::Url::parse(&config.cluster_url.to_string()).context("the kubeconfig's server URL")?;
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    Ok(Store::Kube { client, namespace, server })
}

/// The runtimes `function deploy` accepts: the cluster's `kubeless-config`, else the built-in ones.
pub async fn catalogue(store: &Store) -> anyhow::Result<Catalogue> {
    let Store::Kube { client, .. } = store else { return Ok(Catalogue::builtin()) };
    let ns = std::env::var("KUBELESS_NAMESPACE").ok();
    let name = std::env::var("KUBELESS_CONFIG").ok();
    let (ns, name) = crate::functions::reconciler::config_location(client, ns.as_deref(), name.as_deref()).await;
    match Api::<ConfigMap>::namespaced(client.clone(), &ns).get_opt(&name).await {
        Ok(Some(cm)) => Ok(FunctionConfig::from_data(&cm.data.unwrap_or_default())
            .with_context(|| format!("ConfigMap {ns}/{name}"))?
            .catalogue),
        Ok(None) => Ok(Catalogue::builtin()),
        Err(e) => {
            eprintln!("warning: cannot read ConfigMap {ns}/{name} ({e}); checking runtimes against the built-in list");
            Ok(Catalogue::builtin())
        }
    }
}

/// Prints the object (`--dryrun`), or writes it and says so (and prints it with `-o`).
pub async fn save<K: Object>(store: &Store, obj: K, out: &Output, create: bool) -> anyhow::Result<()> {
    if out.dryrun {
        print!("{}", table::format(out.output.as_deref().unwrap_or("yaml"), &[obj])?);
        return Ok(());
    }
    let stored = if create { store.create(&obj).await? } else { store.update(&obj).await? };
    let verb = if create { "created" } else { "updated" };
    eprintln!("{} {} {verb} in namespace {}.", K::kind(&()), stored.name_any(), store.namespace());
    if let Some(format) = &out.output {
        print!("{}", table::format(format, &[stored])?);
    }
    Ok(())
}

pub fn list_or_print<K: Object>(
    items: &[K],
    out: &ListOutput,
    header: &[&str],
    row: impl Fn(&K) -> Vec<String>,
) -> anyhow::Result<()> {
    match &out.output {
        Some(format) => print!("{}", table::format(format, items)?),
        None => print!("{}", table::render(header, &items.iter().map(row).collect::<Vec<_>>())),
    }
    Ok(())
}

pub async fn delete<K: Object>(store: &Store, name: &str) -> anyhow::Result<()> {
    store.delete::<K>(name).await?;
    eprintln!("{} {name} deleted from namespace {}.", K::kind(&()), store.namespace());
    Ok(())
}

/// A required flag of `create` (optional on `update`).
pub fn required<T: Clone>(value: &Option<T>, flag: &str) -> Result<T, FlagError> {
    value.clone().ok_or_else(|| FlagError::new(flag, "is required"))
}

pub async fn need_function(store: &Store, name: &str) -> anyhow::Result<Function> {
    store.get::<Function>(name).await?.ok_or_else(|| {
        anyhow!(
            "function {name} not found in namespace {}; deploy it first (kubeless function deploy {name} …)",
            store.namespace()
        )
    })
}

pub fn check_schedule(flag: &str, schedule: &str) -> Result<(), FlagError> {
    Schedule::parse(schedule, None).map(|_| ()).map_err(|e| FlagError::new(flag, format!("{schedule:?}: {e}")))
}

/// `created-by: kubeless`, on every object the CLI makes.
pub fn created_by() -> BTreeMap<String, String> {
    BTreeMap::from([("created-by".to_string(), "kubeless".to_string())])
}

pub fn meta(name: &str, namespace: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// `k=v` or `k:v` (Kubeless's `getKV`: the first `=` or `:` splits; none gives an empty value).
pub fn key_value(input: &str) -> (String, String) {
    match input.find(['=', ':']) {
        Some(i) => (input[..i].to_string(), input[i + 1..].to_string()),
        None => (input.to_string(), String::new()),
    }
}

/// A map from `k=v`/`k:v` items, later keys winning.
pub fn key_values(items: &[String]) -> BTreeMap<String, String> {
    items.iter().map(|i| key_value(i)).collect()
}

/// A quantity as Kubernetes accepts it (`128Mi`, `0.5`, `100m`, `1e3`).
pub fn check_quantity(flag: &str, q: &str) -> Result<(), FlagError> {
    let number_end = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_end);
    let digits = number.trim_start_matches(['+', '-']);
    let number_ok = !digits.is_empty()
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit())
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || (suffix.len() > 1
        && suffix.starts_with(['e', 'E'])
        && suffix[1..].trim_start_matches(['+', '-']).chars().all(|c| c.is_ascii_digit())
        && suffix[1..].trim_start_matches(['+', '-']).chars().next().is_some());
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(FlagError::new(flag, format!("{q:?} is not a quantity (e.g. 128Mi, 0.5, 100m)")))
    }
}

#[cfg(test)]
mod tests {
    use super::{check_quantity, key_value};

    #[test]
    fn key_values_split_at_the_first_equals_or_colon() {
        assert_eq!(key_value("a=b"), ("a".into(), "b".into()));
        assert_eq!(key_value("a:b=c"), ("a".into(), "b=c".into()));
        assert_eq!(key_value("url=http://x"), ("url".into(), "http://x".into()));
        assert_eq!(key_value("bare"), ("bare".into(), String::new()));
    }

    #[test]
    fn quantities_are_checked() {
        for ok in ["128Mi", "1", "0.5", "100m", "1e3", "2G", "+1.5Gi"] {
            assert!(check_quantity("--memory", ok).is_ok(), "{ok}");
        }
        for bad in ["", "128MB", "abc", "1.2.3", "Mi", "1e"] {
            assert!(check_quantity("--memory", bad).is_err(), "{bad}");
        }
    }
}
