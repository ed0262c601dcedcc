//! What running one Function locally takes, worked out from the Function alone (pure): its
//! language, code file, dependencies, handler and environment, and a checksum of them all that
//! names its directory and tells a code change from a no-op. A Function that cannot run here says
//! why, naming the field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::EnvVar;
use sha2::{Digest, Sha256};

use crate::functions::catalogue::{Catalogue, PHASE_INSTALLATION};
use crate::functions::objects::{code_of, split_handler, Code};
use crate::resources::Function;

/// The languages `runtimes/` ships, by the catalogue's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    Node,
    Ruby,
}

impl Language {
    fn from_id(id: &str) -> Option<Self> {
        match id {
            "python" => Some(Self::Python),
            "nodejs" => Some(Self::Node),
            "ruby" => Some(Self::Ruby),
            _ => None,
        }
    }

    /// The argument of `runtimes/run`.
    pub fn id(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Node => "nodejs",
            Self::Ruby => "ruby",
        }
    }

    /// The interpreter that must be on PATH.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Python => "python3",
            Self::Node => "node",
            Self::Ruby => "ruby",
        }
    }
}

/// How a Function's archive is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Zip,
    /// A tar archive, gzip, bzip2 or xz compressed (`+compressedtar`).
    Tar,
}

/// One Function, ready to run locally.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub language: Language,
    /// `spec.runtime`, e.g. `python3.7`.
    pub runtime: String,
    /// The code file's name (`<module><suffix>`) and contents: the file itself, or (with
    /// `archive`) the archive it is in.
    pub file_name: String,
    pub code: Vec<u8>,
    pub archive: Option<ArchiveKind>,
    /// The dependency file's name and contents (`requirements.txt`, `package.json`); empty: none.
    pub dep_name: String,
    pub deps: String,
    /// The catalogue's install command (`$KUBELESS_INSTALL_VOLUME`, `$KUBELESS_DEPS_FILE`).
    pub install: String,
    /// Kubeless's `FUNC_*` settings (without the port, chosen per process) and the container's
    /// own `env` values.
    pub env: BTreeMap<String, String>,
    /// The Function's timeout: the longest a request to a process of it may take.
    pub timeout: std::time::Duration,
    /// Of everything above: a change of any of it is a new version.
    pub checksum: String,
}

impl Plan {
    /// The hash of the dependency file and the language: versions sharing it share one install.
    pub fn deps_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.language.id());
        h.update([0]);
        h.update(&self.install);
        h.update([0]);
        h.update(&self.deps);
        hex::encode(h.finalize())
    }
}

/// Why a Function cannot run locally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unrunnable(pub String);

/// The plan for `function`, using the built-in runtimes.
pub fn plan(function: &Function) -> Result<Plan, Unrunnable> {
    let spec = &function.spec;
    let catalogue = Catalogue::builtin();
    let resolved = catalogue.resolve(&spec.runtime).map_err(|e| Unrunnable(format!("spec.runtime: {e}")))?;
    let language = Language::from_id(&resolved.info.id)
        .ok_or_else(|| Unrunnable(format!("spec.runtime {:?} has no local runtime", spec.runtime)))?;
    let container = first_container(function);
    if let Some(image) = container.and_then(|c| c.get("image")).and_then(|i| i.as_str()).filter(|i| !i.is_empty()) {
        return Err(Unrunnable(format!(
            "spec.deployment's container runs its own image {image:?} (a runtime image override), which only a cluster runs"
        )));
    }
    let (module, handler) = split_handler(&spec.handler).map_err(|e| Unrunnable(e.to_string()))?;
    // The module names a file in the function's directory: nothing that could reach out of it.
    if !module.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(Unrunnable(format!(
            "spec.handler {:?}: the module {module:?} must be a file name (letters, digits, _ and -)",
            spec.handler
        )));
    }
    let (code, archive) = match code_of(function).map_err(|e| Unrunnable(e.to_string()))? {
        Code::File(bytes) | Code::Archive { bytes, .. } if bytes.is_empty() => {
            return Err(Unrunnable("spec.function is empty".to_string()))
        }
        Code::File(bytes) => (bytes, None),
        Code::Archive { deps_inside: true, .. } => {
            return Err(Unrunnable(format!(
                "spec.function-content-type {:?}: an archive carrying its dependency file (+deps) is installed only in a cluster; give spec.deps",
                spec.function_content_type
            )))
        }
        Code::Archive { zip, bytes, .. } => (bytes, Some(if zip { ArchiveKind::Zip } else { ArchiveKind::Tar })),
        Code::Url => {
            return Err(Unrunnable(
                "spec.function-content-type url: the daemon does not download code; give it inline".to_string(),
            ))
        }
    };
    let mut env = user_env(container)?;
    let timeout = function.func_timeout();
    env.extend([
        ("FUNC_HANDLER".to_string(), handler.to_string()),
        ("MOD_NAME".to_string(), module.to_string()),
        ("FUNC_TIMEOUT".to_string(), timeout),
        ("FUNC_RUNTIME".to_string(), spec.runtime.clone()),
        ("FUNC_MEMORY_LIMIT".to_string(), "0".to_string()),
    ]);
    let install = resolved.image(PHASE_INSTALLATION).and_then(|i| i.command.clone()).unwrap_or_default();
    let mut plan = Plan {
        language,
        runtime: spec.runtime.clone(),
        file_name: format!("{module}{}", resolved.info.file_name_suffix),
        code,
        archive,
        dep_name: resolved.info.dep_name.clone(),
        deps: spec.deps.clone(),
        install,
        env,
        timeout: function.timeout(),
        checksum: String::new(),
    };
    plan.checksum = checksum(&plan);
    Ok(plan)
}

/// `spec.deployment.spec.template.spec.containers[0]`, if the Function gives one.
fn first_container(function: &Function) -> Option<&serde_json::Value> {
    function.spec.deployment.as_ref()?.pointer("/spec/template/spec/containers/0")
}

/// The container's `env` values. One taken from a Secret or ConfigMap (`valueFrom`) cannot be
/// resolved without a cluster.
fn user_env(container: Option<&serde_json::Value>) -> Result<BTreeMap<String, String>, Unrunnable> {
    let Some(list) = container.and_then(|c| c.get("env")) else { return Ok(BTreeMap::new()) };
    let vars: Vec<EnvVar> = serde_json::from_value(list.clone())
        .map_err(|e| Unrunnable(format!("spec.deployment's container env is not a list of env vars: {e}")))?;
    let mut env = BTreeMap::new();
    for var in vars {
        if var.value_from.is_some() {
            return Err(Unrunnable(format!(
                "spec.deployment's container env {} takes its value from a Secret, ConfigMap or field, which only a cluster resolves",
                var.name
            )));
        }
        env.insert(var.name, var.value.unwrap_or_default());
    }
    Ok(env)
}

fn checksum(plan: &Plan) -> String {
    let mut h = Sha256::new();
    let packed: &[u8] = match plan.archive {
        None => b"file",
        Some(ArchiveKind::Zip) => b"zip",
        Some(ArchiveKind::Tar) => b"tar",
    };
    for part in [plan.runtime.as_bytes(), plan.file_name.as_bytes(), &plan.code, packed, plan.deps.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    for (k, v) in &plan.env {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k);
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(yaml: &str) -> Function {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("fixture: {e}"))
    }

    const HELLO: &str = r#"
apiVersion: kubeless.io/v1beta1
kind: Function
metadata: {name: hello, namespace: default}
spec:
  runtime: python3.7
  handler: test.hello
  function: "def hello(event, context):\n    return event['data']\n"
  deps: "six==1.16.0\n"
  timeout: "30"
"#;

    #[test]
    fn a_python_function_becomes_kubeless_func_settings_and_a_code_file() {
        let p = plan(&function(HELLO)).expect("runnable");
        assert_eq!(p.language, Language::Python);
        assert_eq!(p.file_name, "test.py");
        assert!(String::from_utf8_lossy(&p.code).contains("def hello"));
        assert_eq!((p.dep_name.as_str(), p.deps.as_str()), ("requirements.txt", "six==1.16.0\n"));
        assert!(p.install.contains("pip install"), "{}", p.install);
        let env = |k: &str| p.env.get(k).map(String::as_str);
        assert_eq!(env("FUNC_HANDLER"), Some("hello"));
        assert_eq!(env("MOD_NAME"), Some("test"));
        assert_eq!(env("FUNC_TIMEOUT"), Some("30"));
        assert_eq!(env("FUNC_RUNTIME"), Some("python3.7"));
    }

    #[test]
    fn the_checksum_moves_with_code_deps_and_env_but_the_deps_hash_only_with_deps() {
        let base = plan(&function(HELLO)).expect("runnable");
        let code = plan(&function(&HELLO.replace("event['data']", "'x'"))).expect("runnable");
        let deps = plan(&function(&HELLO.replace("six==1.16.0", "six==1.15.0"))).expect("runnable");
        let timeout = plan(&function(&HELLO.replace("\"30\"", "\"31\""))).expect("runnable");
        assert_ne!(base.checksum, code.checksum);
        assert_ne!(base.checksum, deps.checksum);
        assert_ne!(base.checksum, timeout.checksum);
        assert_eq!(base.deps_hash(), code.deps_hash());
        assert_ne!(base.deps_hash(), deps.deps_hash());
        assert_eq!(base, plan(&function(HELLO)).expect("runnable"), "the same Function, the same plan");
    }

    #[test]
    fn a_function_that_only_a_cluster_can_run_says_which_field_and_why() {
        let cases = [
            (HELLO.replace("python3.7", "ruby9.9"), "spec.runtime"),
            (HELLO.replace("python3.7", "go1.14"), "spec.runtime"),
            (HELLO.replace("test.hello", "nodot"), "spec.handler"),
            (HELLO.replace("test.hello", "sub/dir.hello"), "must be a file name"),
            (HELLO.replace("test.hello", "/tmp/x.hello"), "must be a file name"),
            (HELLO.replace("  timeout: \"30\"", "  function-content-type: url"), "url"),
            (HELLO.replace("  timeout: \"30\"", "  function-content-type: text+zip+deps"), "+deps"),
            (
                HELLO.to_string() + "  deployment: {spec: {template: {spec: {containers: [{image: 'me/fn:1'}]}}}}\n",
                "runtime image override",
            ),
            (
                HELLO.to_string()
                    + "  deployment: {spec: {template: {spec: {containers: [{env: [{name: TOKEN, valueFrom: {secretKeyRef: {name: s, key: k}}}]}]}}}}\n",
                "env TOKEN",
            ),
        ];
        for (yaml, needle) in cases {
            let why = plan(&function(&yaml)).expect_err(needle).0;
            assert!(why.contains(needle), "{needle:?} not in {why:?}");
        }
    }

    #[test]
    fn container_env_values_reach_the_process_and_kubeless_settings_win() {
        let yaml = HELLO.to_string()
            + "  deployment: {spec: {template: {spec: {containers: [{env: [{name: GREETING, value: hi}, {name: MOD_NAME, value: other}]}]}}}}\n";
        let p = plan(&function(&yaml)).expect("runnable");
        assert_eq!(p.env.get("GREETING").map(String::as_str), Some("hi"));
        assert_eq!(p.env.get("MOD_NAME").map(String::as_str), Some("test"));
    }

    #[test]
    fn an_archive_is_kept_packed_with_its_kind() {
        let zipped = HELLO.replace("  timeout: \"30\"", "  function-content-type: base64+zip").replace(
            "\"def hello(event, context):\\n    return event['data']\\n\"",
            "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==",
        );
        let p = plan(&function(&zipped)).expect("runnable");
        assert_eq!((p.archive, p.file_name.as_str(), p.code.len()), (Some(ArchiveKind::Zip), "test.py", 22));
        let tar = HELLO.replace("  timeout: \"30\"", "  function-content-type: text+compressedtar");
        assert_eq!(plan(&function(&tar)).expect("runnable").archive, Some(ArchiveKind::Tar));
        assert_ne!(
            plan(&function(&tar)).expect("runnable").checksum,
            plan(&function(HELLO)).expect("runnable").checksum
        );
    }

    #[test]
    fn a_node_function_uses_package_json_and_npm() {
        let p = plan(&function(
            &HELLO.replace("python3.7", "nodejs14").replace("test.hello", "handler.foo").replace("six==1.16.0", "{}"),
        ))
        .expect("runnable");
        assert_eq!(
            (p.language, p.file_name.as_str(), p.dep_name.as_str()),
            (Language::Node, "handler.js", "package.json")
        );
        assert!(p.install.contains("npm install"), "{}", p.install);
    }
}
