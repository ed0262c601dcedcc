//! Kubernetes mode: resources come from the API server (kube-rs watchers feeding the same store as
//! the manifest directory), and each trigger's state goes back onto it as status and Events.

pub mod cleanup;
pub mod durables;
pub mod lease;
pub mod secrets;
pub mod shards;
pub mod status;
pub mod ticks;
pub mod watch;

/// Trigger status and Event writes and cron tick claims per second, together: one budget, so no
/// number of triggers or schedule can flood the API server with writes.
pub const WRITES_PER_SECOND: u32 = 20;

/// The write budget shared by the status writer and the cron tick claims.
pub type ApiWrites = std::sync::Arc<governor::DefaultDirectRateLimiter>;

pub fn api_writes() -> ApiWrites {
    let per_second = std::num::NonZeroU32::new(WRITES_PER_SECOND).unwrap_or(std::num::NonZeroU32::MIN);
    std::sync::Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(per_second)))
}

use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::PathBuf;

use kube::{Client, Config};

/// Kubernetes mode's settings, from the daemon's flags.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Empty: every namespace.
    pub namespaces: Vec<String>,
    pub field_manager: String,
    /// This pod's name (env `POD_NAME`), for Events and leases; else the host name.
    pub identity: String,
    /// Where Leases live; none: the client's default namespace.
    pub lease_namespace: Option<String>,
    /// Run the Function reconciler.
    pub function_controller: bool,
    /// Where `kubeless-config` is (env `KUBELESS_NAMESPACE`, `KUBELESS_CONFIG`), if set.
    pub config_namespace: Option<String>,
    pub config_name: Option<String>,
    /// `--acme-cluster-issuer`.
    pub acme_cluster_issuer: Option<String>,
}

/// Errors of Kubernetes mode's setup.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig { path: String, source: kube::config::KubeconfigError },
    #[error("no Kubernetes configuration found (in-cluster service account, KUBECONFIG or ~/.kube/config): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("kubeconfig context {context:?}: {source}")]
    Context { context: String, source: kube::config::KubeconfigError },
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// How long the API server may leave a call (a read, a write, a Lease renew) unanswered: shorter
/// than the leader's renew deadline, so a call on a half-open connection fails in time for the
/// leader to step down before another replica may take over.
pub const API_CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(6);

/// The daemon's two clients of one API server.
#[derive(Clone)]
pub struct Clients {
    /// For watches: long polls, which may rightly stay quiet for minutes (kube-runtime's watcher
    /// has its own idle timeout).
    pub watches: Client,
    /// For every other call: each answered within [`API_CALL_DEADLINE`] or failed.
    pub calls: Client,
}

/// The clients `settings` name.
pub async fn clients(settings: &KubeSettings) -> Result<Clients, KubeError> {
    let config = config(settings.kubeconfig.as_deref(), settings.context.as_deref()).await?;
    let mut calls = config.clone();
    calls.read_timeout = Some(API_CALL_DEADLINE);
    // Counted from when the request went out, not from when its pooled connection went idle.
    calls.reset_reader_on_write = true;
    Ok(Clients { watches: Client::try_from(config)?, calls: Client::try_from(calls)? })
}

/// The configuration `kubeconfig` and `context` name, else kube-rs's inferred one (in-cluster
/// service account or the local kubeconfig), as kubectl finds it.
pub async fn config(kubeconfig: Option<&std::path::Path>, context: Option<&str>) -> Result<Config, KubeError> {
    let options = KubeConfigOptions { context: context.map(str::to_string), ..KubeConfigOptions::default() };
    Ok(match (kubeconfig, context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|source| KubeError::Kubeconfig { path: path.display().to_string(), source })?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|source| KubeError::Kubeconfig { path: path.display().to_string(), source })?
        }
        (None, Some(context)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|source| KubeError::Context { context: context.to_string(), source })?,
        (None, None) => Config::infer().await?,
    })
}
