//! A real Kubernetes API server on loopback: Debian's etcd and a kube-apiserver 1.20.2 built from
//! Debian's source package by `scripts/install-kube-apiserver`, with static-token identities and
//! RBAC on. Driven with kubectl, as a user would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, wait_for};

/// The admin identity's token (group `system:masters`).
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
/// The daemon's identity when a test runs it with only deploy/'s RBAC.
pub const BROKER_TOKEN: &str = "broker-token-for-tests";
pub const BROKER_USER: &str = "system:serviceaccount:kubeless:kubeless-broker";
/// Application teams: each has a user of its namespace's name, token `<team>-token`, rights in its
/// own namespace only (see [`KubeApi::tenant`]).
pub const TENANTS: [&str; 2] = ["team-a", "team-b"];
/// An identity with no rights until a test grants some (e.g. a daemon with narrower RBAC).
pub const SPARE_TOKEN: &str = "spare-token-for-tests";
pub const SPARE_USER: &str = "spare";

/// etcd + kube-apiserver, killed on drop.
pub struct KubeApi {
    etcd: Child,
    apiserver: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    /// A kubeconfig for the admin identity.
    pub kubeconfig: PathBuf,
}

fn apiserver_binary() -> PathBuf {
    if let Ok(p) = std::env::var("KUBE_APISERVER") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/install-kube-apiserver"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/install-kube-apiserver");
    assert!(out.status.success(), "scripts/install-kube-apiserver failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// kubectl closest to the 1.20 server among those the machine ships.
pub fn kubectl_binary() -> PathBuf {
    if let Ok(p) = std::env::var("KUBECTL") {
        return PathBuf::from(p);
    }
    let on_path = Command::new("sh").args(["-c", "readlink -f \"$(command -v kubectl)\""]).output();
    if let Ok(out) = on_path {
        let real = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if let Some(old) = real.parent().map(|d| d.join("kubectl.1.27")).filter(|p| p.exists()) {
            return old;
        }
    }
    PathBuf::from("kubectl")
}

impl KubeApi {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (etcd_port, etcd_peer) = (free_port(), free_port());
        let etcd_log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let etcd = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{etcd_port}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{etcd_port}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{etcd_peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{etcd_peer}")])
            .args(["--initial-cluster", &format!("default=http://127.0.0.1:{etcd_peer}")])
            .stdout(etcd_log.try_clone().expect("clone"))
            .stderr(etcd_log)
            .spawn()
            .expect("start etcd (scripts/install-deps installs etcd-server)");
        let addr = format!("127.0.0.1:{etcd_port}");
        wait_for("etcd to listen", Duration::from_secs(30), || std::net::TcpStream::connect(&addr).is_ok()).await;

        let key = dir.path().join("sa.key");
        let public = dir.path().join("sa.pub");
        run_ok(Command::new("openssl").arg("genrsa").arg("-out").arg(&key).arg("2048"));
        run_ok(Command::new("openssl").arg("rsa").arg("-in").arg(&key).arg("-pubout").arg("-out").arg(&public));
        let mut tokens =
            format!("{ADMIN_TOKEN},admin,admin-uid,system:masters\n{BROKER_TOKEN},{BROKER_USER},broker-uid\n");
        tokens.push_str(&format!("{SPARE_TOKEN},{SPARE_USER},spare-uid\n"));
        for team in TENANTS {
            tokens.push_str(&format!("{team}-token,{team},{team}-uid\n"));
        }
        std::fs::write(dir.path().join("tokens.csv"), tokens).expect("tokens");
        let port = free_port();
        let kubeconfig = dir.path().join("admin.kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(port, ADMIN_TOKEN, "default")).expect("kubeconfig");
        let mut api = Self { etcd, apiserver: None, dir, port, kubeconfig };
        api.spawn_apiserver(etcd_port);
        api.wait_ready().await;
        api
    }

    fn spawn_apiserver(&mut self, etcd_port: u16) {
        let d = self.dir.path();
        std::fs::write(d.join("etcd-port"), etcd_port.to_string()).expect("etcd port");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("kube-apiserver.log"))
            .expect("apiserver log");
        let child = Command::new(apiserver_binary())
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.port))
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!("--token-auth-file={}", d.join("tokens.csv").display()))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", d.join("sa.pub").display()))
            .arg(format!("--service-account-signing-key-file={}", d.join("sa.key").display()))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--enable-priority-and-fairness=false")
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("start kube-apiserver");
        self.apiserver = Some(child);
    }

    async fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "kube-apiserver not ready after 120 s: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("kube-apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The admin's kubeconfig reaching the API server through loopback port `port` (a proxy).
    pub fn kubeconfig_via(&self, port: u16) -> PathBuf {
        let path = self.dir.path().join(format!("admin-via-{port}.kubeconfig"));
        std::fs::write(&path, kubeconfig_yaml(port, ADMIN_TOKEN, "default")).expect("kubeconfig");
        path
    }

    /// A kubeconfig for another identity (by token), e.g. the daemon's under RBAC.
    pub fn kubeconfig_for(&self, token: &str, namespace: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{token}.kubeconfig"));
        std::fs::write(&path, kubeconfig_yaml(self.port, token, namespace)).expect("kubeconfig");
        path
    }

    /// Makes namespace `team` (one of [`TENANTS`]) and gives its user what an application team has
    /// there: Functions, triggers, Secrets and ConfigMaps of its namespace, and reading its Events;
    /// nothing elsewhere. Returns the team's kubeconfig.
    pub fn tenant(&self, team: &str) -> PathBuf {
        assert!(TENANTS.contains(&team), "{team} is not a test tenant");
        self.apply_ok(&format!(
            r#"apiVersion: v1
kind: Namespace
metadata: {{name: {team}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: developer, namespace: {team}}}
rules:
- apiGroups: [kubeless.io]
  resources: ["*"]
  verbs: ["*"]
- apiGroups: [""]
  resources: [secrets, configmaps]
  verbs: ["*"]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: developer, namespace: {team}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: developer}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {team}}}]
"#
        ));
        self.kubeconfig_for(&format!("{team}-token"), team)
    }

    /// `kubectl apply -f -` with `yaml` as the identity of `kubeconfig`; panics if it fails.
    pub fn apply_as(&self, kubeconfig: &Path, yaml: &str) {
        let (ok, out) = self.kubectl_stdin_as(kubeconfig, &["apply", "-f", "-"], yaml);
        assert!(ok, "kubectl apply as {} failed: {out}", kubeconfig.display());
    }

    /// Runs kubectl as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig, args)
    }

    /// Runs kubectl as the identity of `kubeconfig`.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new(kubectl_binary()).arg("--kubeconfig").arg(kubeconfig).args(args).output().expect("run kubectl")
    }

    /// Runs kubectl as the admin and returns its stdout; panics with stderr if it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `kubectl get <args> -o jsonpath=<path>` until `done` holds for its output (60 s).
    pub async fn wait_jsonpath(&self, args: &[&str], path: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        let jsonpath = format!("jsonpath={path}");
        loop {
            let mut all: Vec<&str> = args.to_vec();
            all.extend(["-o", &jsonpath]);
            let out = self.kubectl(&all);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && done(&text) {
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "kubectl get {args:?} {path}: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `kubectl get <args> -o json`, parsed; `None` if kubectl fails (e.g. not found).
    pub fn get_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut all: Vec<&str> = vec!["get"];
        all.extend(args);
        all.extend(["-o", "json"]);
        let out = self.kubectl(&all);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("kubectl's JSON"))
    }

    /// `kubectl apply -f -` with `yaml`; returns the output (stdout and stderr) and whether it succeeded.
    pub fn apply(&self, yaml: &str) -> (bool, String) {
        self.kubectl_stdin(&["apply", "-f", "-"], yaml)
    }

    /// `kubectl apply -f -` with `yaml`; panics with kubectl's output if it fails.
    pub fn apply_ok(&self, yaml: &str) {
        let (ok, out) = self.apply(yaml);
        assert!(ok, "kubectl apply failed: {out}");
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> (bool, String) {
        self.kubectl_stdin_as(&self.kubeconfig, args, input)
    }

    pub fn kubectl_stdin_as(&self, kubeconfig: &Path, args: &[&str], input: &str) -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new(kubectl_binary())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        let out = child.wait_with_output().expect("kubectl output");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Applies the project's `crds/` and waits until every CRD is established.
    pub async fn install_crds(&self) {
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        let out = self.kubectl(&["apply", "-f", &crds.display().to_string()]);
        assert!(out.status.success(), "kubectl apply -f crds/ failed: {}", String::from_utf8_lossy(&out.stderr));
        self.kubectl_ok(&["wait", "--for", "condition=established", "--timeout=60s", "crd", "--all"]);
    }

    /// Kills the API server (etcd keeps its data).
    pub fn kill_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the API server again on the same port and data, and waits until it is ready.
    pub async fn restart_apiserver(&mut self) {
        let etcd_port: u16 = std::fs::read_to_string(self.dir.path().join("etcd-port"))
            .expect("etcd port")
            .trim()
            .parse()
            .expect("port");
        self.spawn_apiserver(etcd_port);
        self.wait_ready().await;
    }
}

fn kubeconfig_yaml(port: u16, token: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: user\n    namespace: {namespace}\ncurrent-context: test\n"
    )
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.kill_apiserver();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}
