//! The Kubernetes-mode scenario: a real kube-apiserver and etcd on loopback (built by
//! `scripts/install-kube-apiserver`), `n` NATS triggers applied with kubectl, the daemon in
//! Kubernetes mode. Once every trigger is Ready, its daemon CPU at rest is measured, then again
//! while every trigger's status is written (merge patches of the status subresource through
//! `kubectl proxy`, each coming back to the daemon through its watch): what status writes cost the
//! daemon, per write and above rest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;

use crate::procs::{self, CpuWindow, Proc};
use crate::run::Scenario;

const ADMIN_TOKEN: &str = "loadtest-admin-token";
/// Status patches sent at once.
const PATCHES_IN_FLIGHT: usize = 8;

/// etcd, the API server and a `kubectl proxy` in front of it, killed when dropped.
struct Cluster {
    _etcd: Proc,
    _apiserver: Proc,
    _proxy: Proc,
    kubeconfig: PathBuf,
    /// `http://127.0.0.1:<port>` of `kubectl proxy`.
    proxy_url: String,
}

fn run_ok(command: &mut Command) -> anyhow::Result<String> {
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Cluster {
    async fn start(root: &Path, work: &Path) -> anyhow::Result<Self> {
        let apiserver_bin = run_ok(&mut Command::new(root.join("scripts/install-kube-apiserver")))?.trim().to_string();
        let (etcd_port, etcd_peer) = (procs::free_port()?, procs::free_port()?);
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut etcd = Proc::spawn(
            "etcd",
            Command::new("etcd")
                .arg("--data-dir")
                .arg(work.join("etcd"))
                .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("default={peer_url}")]),
            work,
        )?;
        procs::wait_listening(&mut etcd, &format!("127.0.0.1:{etcd_port}"), Duration::from_secs(30)).await?;
        let (key, public) = (work.join("sa.key"), work.join("sa.pub"));
        run_ok(Command::new("openssl").arg("genrsa").arg("-out").arg(&key).arg("2048"))?;
        run_ok(Command::new("openssl").arg("rsa").arg("-in").arg(&key).arg("-pubout").arg("-out").arg(&public))?;
        std::fs::write(work.join("tokens.csv"), format!("{ADMIN_TOKEN},admin,admin-uid,system:masters\n"))?;
        let port = procs::free_port()?;
        let apiserver = Proc::spawn(
            "kube-apiserver",
            Command::new(apiserver_bin)
                .arg(format!("--etcd-servers={client_url}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={port}"))
                .arg("--advertise-address=127.0.0.1")
                .arg(format!("--cert-dir={}", work.join("certs").display()))
                .arg(format!("--token-auth-file={}", work.join("tokens.csv").display()))
                .arg("--authorization-mode=RBAC")
                .arg("--service-account-issuer=https://kubernetes.default.svc")
                .arg(format!("--service-account-key-file={}", public.display()))
                .arg(format!("--service-account-signing-key-file={}", key.display()))
                .arg("--service-cluster-ip-range=10.96.0.0/16")
                .arg("--disable-admission-plugins=ServiceAccount")
                .arg("--enable-priority-and-fairness=false"),
            work,
        )?;
        let kubeconfig = work.join("admin.kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\ncontexts:\n- name: bench\n  context:\n    cluster: bench\n    user: admin\n    namespace: default\ncurrent-context: bench\n"
            ),
        )?;
        let kubectl = |args: &[&str]| run_ok(Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).args(args));
        let start = Instant::now();
        while kubectl(&["get", "--raw", "/readyz"]).is_err() {
            if start.elapsed() > Duration::from_secs(120) {
                bail!("kube-apiserver not ready after 120 s; see its log in {}", work.display());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        kubectl(&["apply", "-f", &root.join("deploy/00-crds.yaml").display().to_string()])?;
        kubectl(&["wait", "--for", "condition=established", "--timeout=60s", "crd", "--all"])?;
        let proxy_port = procs::free_port()?;
        let mut proxy = Proc::spawn(
            "kubectl-proxy",
            Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).args([
                "proxy",
                "--address=127.0.0.1",
                &format!("--port={proxy_port}"),
            ]),
            work,
        )?;
        procs::wait_listening(&mut proxy, &format!("127.0.0.1:{proxy_port}"), Duration::from_secs(30)).await?;
        Ok(Self {
            _etcd: etcd,
            _apiserver: apiserver,
            _proxy: proxy,
            kubeconfig,
            proxy_url: format!("http://127.0.0.1:{proxy_port}"),
        })
    }

    fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        run_ok(Command::new("kubectl").arg("--kubeconfig").arg(&self.kubeconfig).args(args))
    }

    /// How many NATS triggers report Ready=True.
    fn ready(&self) -> anyhow::Result<usize> {
        let path = r#"{range .items[*]}{.status.conditions[0].status}{"\n"}{end}"#;
        let out = self.kubectl(&["get", "natstriggers", "-o", &format!("jsonpath={path}")])?;
        Ok(out.lines().filter(|l| *l == "True").count())
    }
}

/// `n` NATS triggers in Kubernetes mode: the daemon's CPU at rest, then while every trigger's status
/// is written once.
pub async fn status_writes(
    root: &Path,
    work: &Path,
    name: &str,
    n: usize,
    nats_url: &str,
    sink_url: &str,
    daemon_args: &[String],
) -> anyhow::Result<Scenario> {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir)?;
    let cluster = Cluster::start(root, &dir).await?;
    let mut objects = vec![format!(
        "apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata: {{name: f, namespace: default, labels: {{bench: {name}}}, annotations: {{kubeless.io/url: \"{sink_url}/f\"}}}}\nspec: {{runtime: python3.7, handler: h.f, timeout: \"30\"}}\n"
    )];
    for i in 0..n {
        objects.push(format!(
            "apiVersion: kubeless.io/v1beta1\nkind: NATSTrigger\nmetadata: {{name: t{i}, namespace: default}}\nspec:\n  topic: bench.status.{i}\n  functionSelector:\n    matchLabels: {{bench: {name}}}\n"
        ));
    }
    let file = dir.join("objects.yaml");
    std::fs::write(&file, objects.join("---\n"))?;
    cluster.kubectl(&["apply", "-f", &file.display().to_string()])?;

    let (admin, status) = (format!("127.0.0.1:{}", procs::free_port()?), format!("127.0.0.1:{}", procs::free_port()?));
    let mut daemon = Proc::spawn(
        &format!("daemon-{name}"),
        Command::new(procs::sibling_binary("kubeless-broker")?)
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(["--admin-addr", &admin, "--status-addr", &status, "--nats-url", nats_url])
            .args(["--leader-election-namespace", "default", "--tenancy", "trusted"])
            .args(daemon_args)
            .env("RUST_LOG", "warn")
            .env("POD_NAME", "loadtest")
            .env("AWS_EC2_METADATA_DISABLED", "true"),
        &dir,
    )?;
    // Every trigger's Ready status, written by the daemon (20 writes a second at most).
    let start = Instant::now();
    loop {
        daemon.check_alive()?;
        if cluster.ready()? == n {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("only {} of {n} triggers Ready after 300 s", cluster.ready()?);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window = Duration::from_secs(20);
    let rest = CpuWindow::open(daemon.pid())?;
    tokio::time::sleep(window).await;
    let (rest_cpu, _) = rest.close()?;

    // Every trigger's status written once from outside (as another writer, or the leader's own
    // writes, reach every replica through its watch).
    let http = reqwest::Client::new();
    let burst = CpuWindow::open(daemon.pid())?;
    let sent = Instant::now();
    let patches = futures::stream::iter(0..n).map(|i| {
        let url = format!("{}/apis/kubeless.io/v1beta1/namespaces/default/natstriggers/t{i}/status", cluster.proxy_url);
        let http = http.clone();
        async move {
            let resp = http
                .patch(url)
                .header("content-type", "application/merge-patch+json")
                .body(format!(r#"{{"status":{{"lag":{i}}}}}"#))
                .send()
                .await?;
            anyhow::ensure!(resp.status().is_success(), "status patch answered {}", resp.status());
            Ok::<(), anyhow::Error>(())
        }
    });
    let results: Vec<anyhow::Result<()>> = patches.buffer_unordered(PATCHES_IN_FLIGHT).collect().await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let patching = sent.elapsed();
    // The last events reach the daemon; the window is as long as the one at rest.
    tokio::time::sleep(window.saturating_sub(patching)).await;
    let (burst_cpu, burst_wall) = burst.close()?;
    daemon.check_alive()?;
    let rss = procs::rss_mib(daemon.pid())?;
    let peak = procs::peak_rss_mib(daemon.pid())?;
    let extra_cpu_s = (burst_cpu - rest_cpu).max(0.0) / 100.0 * burst_wall;
    let us_per_write = extra_cpu_s * 1e6 / n as f64;
    eprintln!(
        "{name}: CPU {rest_cpu:.2}% at rest, {burst_cpu:.2}% over {burst_wall:.0} s with {n} status writes in {:.1} s: {us_per_write:.0} µs per write",
        patching.as_secs_f64()
    );
    let description = format!(
        "Kubernetes mode against a real kube-apiserver: {n} NATS triggers Ready; CPU for 20 s at rest, then for 20 s while each trigger's status is written once (merge patches through kubectl proxy, {PATCHES_IN_FLIGHT} at once) and comes back through the watch"
    );
    Ok(Scenario {
        daemon_cpu_us_per_msg: Some(us_per_write),
        target: "status writes add little above rest".into(),
        note: format!(
            "CPU {rest_cpu:.2}% at rest → {burst_cpu:.2}% with {n} status writes in {:.1} s ({us_per_write:.0} µs of daemon CPU per write); RSS {rss:.1} MiB",
            patching.as_secs_f64()
        ),
        ..Scenario::without_traffic(name, description, peak, burst_cpu)
    })
}
