//! Wiring: metrics, admin server, the resource source (manifest directory or API server), the
//! index, the supervisor, the status writer, and an orderly shutdown.

use std::future::Future;
use std::sync::Arc;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::{self, AdminState};
use crate::config::{Mode, Settings};
use crate::control::supervisor::Supervisor;
use crate::control::{self, SharedReport, Snapshot};
use crate::cron::runner::Scheduling;
use crate::delivery::HttpClient;
use crate::dispatch::consumer::Services;
use crate::kubernetes::lease::{LeaseLock, LEASE_DURATION};
use crate::kubernetes::shards::ApiShardLeases;
use crate::kubernetes::ticks::ApiTickStore;
use crate::{kubernetes, telemetry};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

/// The Lease whose holder fires cron ticks and writes status (Kubernetes mode).
pub const LEADER_LEASE: &str = "kubeless-broker-leader";

/// How long, after the consumers stopped, the side tasks (the leader Lease's release, a status
/// write) get to finish before they are abandoned.
const SIDE_TASK_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Changes a source may queue before it waits for the index.
const SOURCE_QUEUE: usize = 1024;

/// Installs the Prometheus recorder (once per process) and describes every metric.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), telemetry::LATENCY_BUCKETS)?
        // A gauge nobody sets any more (the lag of a deleted trigger's consumer) leaves /metrics
        // instead of showing its last value for ever; live gauges are set every second.
        .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(telemetry::GAUGE_IDLE_TIMEOUT))
        .install_recorder()?;
    telemetry::describe();
    Ok(handle)
}

/// Where resources come from.
enum Source<'a> {
    Directory(&'a std::path::Path, std::time::Duration),
    Api(Box<Kube<'a>>),
}

/// Kubernetes mode's shared pieces: the client, the leader flag and the Leases' namespace.
struct Kube<'a> {
    settings: &'a crate::kubernetes::KubeSettings,
    clients: kubernetes::Clients,
    leading: tokio::sync::watch::Receiver<bool>,
    leases: Api<Lease>,
    /// Status, Event and cron-claim writes share one rate.
    writes: kubernetes::ApiWrites,
}

impl Kube<'_> {
    /// Cron ticks on the API, fired by the leader; Kinesis shards split by Leases.
    fn services(&self, http: HttpClient, budget: kubeless_connector::MemoryBudget) -> Services {
        let (leases, identity) = (self.leases.clone(), self.settings.identity.clone());
        Services {
            http,
            scheduling: Some(Scheduling {
                ticks: Arc::new(ApiTickStore::new(
                    self.clients.calls.clone(),
                    &self.settings.field_manager,
                    self.writes.clone(),
                )),
                leading: self.leading.clone(),
            }),
            shard_leases: Some(Arc::new(
                move |reader: &str, legacy: Option<&str>| -> Arc<dyn kubeless_kinesis::ShardLeases> {
                    Arc::new(ApiShardLeases::new(leases.clone(), reader, &identity).reading_first_from(legacy))
                },
            )),
            budget,
            routes: crate::delivery::route::Routes::default(),
        }
    }
}

/// Runs the daemon until `shutdown` resolves, then stops every consumer (each drains and commits).
pub async fn run(
    settings: Settings,
    admin_listener: TcpListener,
    status_listener: TcpListener,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let mut side_tasks = Vec::new();
    // Kubernetes mode: one client, and a leader that alone fires cron ticks and writes status.
    let source = match &settings.mode {
        Mode::Standalone { manifests, scan_interval } => Source::Directory(manifests, *scan_interval),
        Mode::Kubernetes(k) => {
            let clients = kubernetes::clients(k).await?;
            let namespace = k.lease_namespace.clone().unwrap_or_else(|| clients.calls.default_namespace().to_string());
            let (leading_tx, leading) = tokio::sync::watch::channel(false);
            let leases: Api<Lease> = Api::namespaced(clients.calls.clone(), &namespace);
            let lock = LeaseLock::new(leases.clone(), LEADER_LEASE, &k.identity, LEASE_DURATION);
            side_tasks.push(tokio::spawn(kubernetes::lease::elect(lock, leading_tx, stop.clone())));
            Source::Api(Box::new(Kube { settings: k, clients, leading, leases, writes: kubernetes::api_writes() }))
        }
    };
    let budget = kubeless_connector::MemoryBudget::new(settings.memory_budget);
    info!(
        memory_budget_mib = settings.memory_budget >> 20,
        "Message bytes held in memory are capped, shared fairly between consumers."
    );
    let http = HttpClient::new().with_connection_lifetime(settings.connection_lifetime);
    let routes = crate::delivery::route::Routes::default();
    let local_reports = crate::local::LocalReports::default();
    let gateway_reports = crate::local::gateway::GatewayReports::default();
    let services = match &source {
        Source::Directory(..) => Services::standalone(http.clone(), budget.clone(), routes.clone()),
        Source::Api(kube) => kube.services(http.clone(), budget.clone()),
    };
    let supervisor = Supervisor::new(Arc::new(services), budget.clone());
    let report = SharedReport::default();
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(SOURCE_QUEUE);
    let (snapshot_tx, snapshot_rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));

    let upkeep = tokio::spawn({
        let (handle, stop, budget) = (prometheus.clone(), stop.clone(), budget.clone());
        let (supervisor, report, local) = (supervisor.clone(), report.clone(), local_reports.clone());
        async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            let mut ticks = 0u64;
            while !stop.is_cancelled() {
                tick.tick().await;
                // The daemon-wide gauges, set again every second (from the facts their owners set
                // them from) so the idle timeout never takes them.
                crate::telemetry::set_memory_budget(budget.total(), budget.held());
                crate::telemetry::set_consumers(supervisor.running());
                crate::telemetry::set_manifest_errors(crate::control::lock_report(&report).manifest_errors.len());
                for (function, r) in local.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    crate::telemetry::set_local_function_up(function, r.url.is_some());
                }
                ticks += 1;
                if ticks % 5 == 0 {
                    handle.run_upkeep();
                }
            }
        }
    });
    let admin = tokio::spawn({
        let state = AdminState {
            prometheus,
            supervisor: supervisor.clone(),
            report: report.clone(),
            snapshot: snapshot_rx.clone(),
            token: settings.admin_token.clone(),
            local: local_reports.clone(),
            gateway: gateway_reports.clone(),
        };
        let (admin_app, status_app) = (admin::router(state.clone()), admin::status_router(state));
        let stop = stop.clone();
        async move {
            let status = admin::serve(status_listener, status_app, stop.clone().cancelled_owned());
            let admin = admin::serve(admin_listener, admin_app, stop.cancelled_owned());
            let (a, s) = tokio::join!(admin, status);
            a.and(s)
        }
    });
    let local_stop = CancellationToken::new();
    let mut local_functions = None;
    let index = tokio::spawn(control::run_index(events_rx, settings.index.clone(), snapshot_tx));
    let applier = tokio::spawn(supervisor.clone().run(snapshot_rx.clone(), stop.clone()));
    let source = match source {
        Source::Api(kube) => {
            let Kube { settings: k, clients, leading, writes, .. } = *kube;
            let client = clients.calls.clone();
            let mut writer =
                kubernetes::status::StatusWriter::new(client.clone(), &k.field_manager, &k.identity, writes);
            if k.function_controller {
                writer = writer.without_http_status();
            }
            side_tasks.push(tokio::spawn(writer.run(
                snapshot_rx.clone(),
                supervisor.clone(),
                leading.clone(),
                stop.clone(),
            )));
            side_tasks.push(tokio::spawn(kubernetes::cleanup::run(
                client.clone(),
                snapshot_rx.clone(),
                leading.clone(),
                stop.clone(),
            )));
            side_tasks.push(tokio::spawn(kubernetes::durables::run(
                snapshot_rx.clone(),
                leading.clone(),
                stop.clone(),
            )));
            if k.function_controller {
                let functions = crate::functions::reconciler::Settings {
                    field_manager: k.field_manager.clone(),
                    namespaces: k.namespaces.clone(),
                    url_template: settings.index.url_template.clone(),
                    config_namespace: k.config_namespace.clone(),
                    config_name: k.config_name.clone(),
                    acme_cluster_issuer: k.acme_cluster_issuer.clone(),
                    policy: settings.index.policy.clone(),
                };
                side_tasks.push(tokio::spawn(crate::functions::reconciler::run(
                    clients.clone(),
                    functions,
                    leading,
                    stop.clone(),
                )));
            }
            side_tasks.push(tokio::spawn(kubernetes::secrets::run(
                client.clone(),
                snapshot_rx.clone(),
                events_tx.clone(),
                stop.clone(),
            )));
            tokio::spawn(kubernetes::watch::run(clients.watches, k.namespaces.clone(), events_tx, report, stop.clone()))
        }
        Source::Directory(manifests, scan_interval) => {
            if let Some(addr) = settings.gateway_addr {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on --gateway-addr {addr}: {e}"))?;
                info!(gateway = %addr, "HTTPTriggers are served here (host-name and path to their function).");
                side_tasks.push(tokio::spawn({
                    let local = settings.local.is_some();
                    let (http, routes, reports, snapshots, stop) = (
                        http.clone(),
                        routes.clone(),
                        gateway_reports.clone(),
                        snapshot_rx.clone(),
                        local_stop.clone(),
                    );
                    async move {
                        if let Err(e) =
                            crate::local::gateway::run(listener, http, routes, local, reports, snapshots, stop).await
                        {
                            tracing::error!(error = %e, "The local gateway stopped.");
                        }
                    }
                }));
            }
            if let Some(local) = settings.local.clone() {
                local_functions = Some(tokio::spawn(crate::local::run(
                    local,
                    http.clone(),
                    routes.clone(),
                    local_reports.clone(),
                    snapshot_rx.clone(),
                    events_tx.clone(),
                    local_stop.clone(),
                )));
            }
            tokio::spawn(control::watch::run(manifests.to_path_buf(), scan_interval, events_tx, report, stop.clone()))
        }
    };

    shutdown.await;
    info!("Shutting down: stopping consumers (each drains in-flight messages and commits).");
    stop.cancel();
    let _ = applier.await;
    // The consumers drain and commit first: nothing on the API server (a hung connection at
    // SIGTERM) may hold that up.
    supervisor.shutdown().await;
    // Local functions stop once nothing delivers to them any more.
    local_stop.cancel();
    if let Some(local) = local_functions {
        let _ = local.await;
    }
    let _ = source.await;
    let _ = index.await;
    let finished = futures::future::join_all(side_tasks.iter_mut());
    if tokio::time::timeout(SIDE_TASK_GRACE, finished).await.is_err() {
        side_tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
    let _ = admin.await;
    upkeep.abort();
    info!("Stopped.");
    Ok(())
}

/// Picks rustls's crypto provider for the whole process. The AWS SDK and async-nats enable
/// different ones (aws-lc-rs, ring), and with both present rustls will not choose on its own: every
/// TLS connection would panic. Call before any TLS client is built; calling twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The daemon's entry point after flag parsing: logging, listener, signals.
pub async fn main(args: crate::config::Args) -> anyhow::Result<()> {
    install_crypto_provider();
    init_logging(&args.log_format);
    let settings = args.settings(|k| std::env::var(k).ok())?;
    let prometheus = install_metrics()?;
    let listener = TcpListener::bind(args.admin_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --admin-addr {}: {e}", args.admin_addr))?;
    let status_listener = TcpListener::bind(args.status_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --status-addr {}: {e}", args.status_addr))?;
    match &settings.mode {
        Mode::Standalone { manifests, .. } => {
            info!(admin = %listener.local_addr()?, manifests = %manifests.display(), "kubeless-broker starting (standalone mode).");
        }
        Mode::Kubernetes(k) => {
            info!(admin = %listener.local_addr()?, namespaces = ?k.namespaces, identity = %k.identity, "kubeless-broker starting (Kubernetes mode).");
        }
    }
    run(settings, listener, status_listener, prometheus, crate::shutdown::signal()).await
}

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        // Kubeless's switch for debug logs.
        let debug = std::env::var("KUBELESS_LOG_LEVEL").is_ok_and(|v| v.eq_ignore_ascii_case("debug"));
        EnvFilter::new(if debug { "debug" } else { "info,librdkafka=warn,rdkafka=warn" })
    });
    // Colour codes only for a person at a terminal; a file or a log collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
}
