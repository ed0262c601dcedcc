//! The runtime catalogue: which images run, and install dependencies for, a Function's `runtime`
//! (`python3.9`, `nodejs14`, …). The schema is Kubeless's `runtime-images` (a key of the
//! `kubeless-config` ConfigMap, YAML or JSON), so an existing configuration keeps working; without
//! one, [`Catalogue::builtin`] serves Kubeless's Python 3 and Node runtime ids with this project's
//! images (`runtimes/`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Probe;
use serde::{Deserialize, Serialize};

/// The phase whose image runs the function.
pub const PHASE_RUNTIME: &str = "runtime";
/// The phase whose image installs the dependencies (an init container).
pub const PHASE_INSTALLATION: &str = "installation";
/// The phase whose image compiles the function (an init container), for compiled languages.
pub const PHASE_COMPILATION: &str = "compilation";

/// One language: its dependency file, its code file's suffix, and its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub versions: Vec<RuntimeVersion>,
    #[serde(rename = "livenessProbeInfo", default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// The dependency file's name in the ConfigMap (`requirements.txt`, `package.json`).
    #[serde(rename = "depName", default)]
    pub dep_name: String,
    /// The code file's suffix (`.py`, `.js`).
    #[serde(rename = "fileNameSuffix", default)]
    pub file_name_suffix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeVersion {
    #[serde(default)]
    pub name: String,
    pub version: String,
    /// One image per phase.
    #[serde(rename = "runtimeImage", default)]
    pub images: Vec<PhaseImage>,
    #[serde(rename = "imagePullSecrets", default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<ImageSecret>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseImage {
    pub phase: String,
    pub image: String,
    /// A shell command (`sh -c`), for the installation and compilation phases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSecret {
    #[serde(rename = "imageSecret")]
    pub image_secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRef {
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CatalogueError {
    #[error("runtime-images is not a valid runtime catalogue: {0}")]
    Parse(String),
    #[error("runtime-images: runtime {id} version {version} has no {PHASE_RUNTIME} image")]
    NoRuntimeImage { id: String, version: String },
    #[error("unknown runtime {runtime:?}; known runtimes: {}", known.join(", "))]
    Unknown { runtime: String, known: Vec<String> },
}

/// What a Function's runtime resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved<'a> {
    pub info: &'a RuntimeInfo,
    pub version: &'a RuntimeVersion,
}

impl Resolved<'_> {
    pub fn image(&self, phase: &str) -> Option<&PhaseImage> {
        self.version.images.iter().find(|i| i.phase == phase)
    }

    /// The image that runs the function (present: checked when the catalogue was read).
    pub fn runtime_image(&self) -> &str {
        self.image(PHASE_RUNTIME).map_or("", |i| i.image.as_str())
    }
}

/// Every runtime a cluster knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue(Vec<RuntimeInfo>);

/// The images built from `runtimes/` (`runtimes/<language>/Dockerfile`).
pub const PYTHON_IMAGE: &str = "kubeless-broker/runtime-python:0.1.0";
pub const NODEJS_IMAGE: &str = "kubeless-broker/runtime-nodejs:0.1.0";
pub const RUBY_IMAGE: &str = "kubeless-broker/runtime-ruby:0.1.0";

impl Catalogue {
    /// Reads Kubeless's `runtime-images` (a YAML or JSON list); every version must name a runtime
    /// image.
    pub fn parse(text: &str) -> Result<Self, CatalogueError> {
        let runtimes: Vec<RuntimeInfo> =
            serde_yaml::from_str(text).map_err(|e| CatalogueError::Parse(e.to_string()))?;
        for info in &runtimes {
            for version in &info.versions {
                if !version.images.iter().any(|i| i.phase == PHASE_RUNTIME) {
                    return Err(CatalogueError::NoRuntimeImage {
                        id: info.id.clone(),
                        version: version.version.clone(),
                    });
                }
            }
        }
        Ok(Self(runtimes))
    }

    /// Kubeless's Python 3, Node and Ruby runtime ids, served by this project's runtimes: Python
    /// code written for 3.6–3.9 runs on 3.12, Node code written for 8–14 on 20, Ruby code written
    /// for 2.4–2.6 on 3.x.
    pub fn builtin() -> Self {
        let pip = "pip install --prefix=$KUBELESS_INSTALL_VOLUME -r $KUBELESS_DEPS_FILE";
        let npm = "cd $KUBELESS_INSTALL_VOLUME && npm install --omit=dev --no-audit --no-fund";
        // Kubeless's `--path=$KUBELESS_INSTALL_VOLUME`, as an environment variable: Bundler 2.5
        // and later refuse the flag.
        let bundle = "BUNDLE_PATH=$KUBELESS_INSTALL_VOLUME bundle install --gemfile=$KUBELESS_DEPS_FILE";
        Self(vec![
            builtin_language(
                "python",
                &["3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12"],
                PYTHON_IMAGE,
                pip,
                "requirements.txt",
                ".py",
            ),
            builtin_language(
                "nodejs",
                &["8", "10", "12", "14", "16", "18", "20"],
                NODEJS_IMAGE,
                npm,
                "package.json",
                ".js",
            ),
            builtin_language(
                "ruby",
                &["2.4", "2.5", "2.6", "2.7", "3.0", "3.1", "3.2", "3.3"],
                RUBY_IMAGE,
                bundle,
                "Gemfile",
                ".rb",
            ),
        ])
    }

    /// Every runtime id, as a Function names it (`python3.9`).
    pub fn known(&self) -> Vec<String> {
        self.0.iter().flat_map(|i| i.versions.iter().map(move |v| format!("{}{}", i.id, v.version))).collect()
    }

    /// The runtime a Function names: its language is the leading letters (`python`, `nodejs`),
    /// its version the trailing digits and dots (`3.9`, `14`), as Kubeless read them.
    pub fn resolve(&self, runtime: &str) -> Result<Resolved<'_>, CatalogueError> {
        let id_end =
            runtime.find(|c: char| !(c.is_ascii_alphabetic() || c == '_' || c == '-')).unwrap_or(runtime.len());
        let version_start = runtime.rfind(|c: char| !(c.is_ascii_digit() || c == '.')).map_or(0, |i| i + 1);
        let (id, version) = (&runtime[..id_end], &runtime[version_start..]);
        self.0
            .iter()
            .filter(|i| i.id == id)
            .find_map(|info| {
                let version = info.versions.iter().find(|v| v.version == version)?;
                Some(Resolved { info, version })
            })
            .ok_or_else(|| CatalogueError::Unknown { runtime: runtime.to_string(), known: self.known() })
    }
}

/// One language of the built-in catalogue: every version runs on `image`, which also installs the
/// dependencies with `install`.
fn builtin_language(
    id: &str,
    versions: &[&str],
    image: &str,
    install: &str,
    dep_name: &str,
    suffix: &str,
) -> RuntimeInfo {
    let phase = |phase: &str, command: Option<&str>| PhaseImage {
        phase: phase.to_string(),
        image: image.to_string(),
        command: command.map(str::to_string),
        env: BTreeMap::new(),
        secrets: Vec::new(),
    };
    RuntimeInfo {
        id: id.to_string(),
        versions: versions
            .iter()
            .map(|v| RuntimeVersion {
                name: format!("{id}{}", v.replace('.', "")),
                version: v.to_string(),
                images: vec![phase(PHASE_INSTALLATION, Some(install)), phase(PHASE_RUNTIME, None)],
                image_pull_secrets: Vec::new(),
            })
            .collect(),
        liveness_probe: None,
        dep_name: dep_name.to_string(),
        file_name_suffix: suffix.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kubeless's own `runtime-images`, as its kubeless-config shipped it (abridged).
    const KUBELESS: &str = r#"[
      {"ID": "python", "depName": "requirements.txt", "fileNameSuffix": ".py",
       "versions": [
         {"name": "python36", "version": "3.6", "runtimeImage": [
           {"phase": "installation", "image": "python:3.6", "command": "pip install --prefix=$KUBELESS_INSTALL_VOLUME -r $KUBELESS_DEPS_FILE"},
           {"phase": "runtime", "image": "kubeless/python@sha256:aa", "env": {"PYTHONPATH": "$(KUBELESS_INSTALL_VOLUME)/lib/python3.6/site-packages:$(KUBELESS_INSTALL_VOLUME)"}}
         ], "imagePullSecrets": [{"imageSecret": "p1"}]}
       ]},
      {"ID": "go", "depName": "Gopkg.toml", "fileNameSuffix": ".go",
       "versions": [{"name": "go1.14", "version": "1.14", "runtimeImage": [
         {"phase": "compilation", "image": "kubeless/go-init@sha256:bb", "command": "/compile-function.sh"},
         {"phase": "runtime", "image": "kubeless/go@sha256:cc"}]}],
       "livenessProbeInfo": {"exec": {"command": ["curl", "-f", "http://localhost:8080/healthz"]}, "initialDelaySeconds": 5}}
    ]"#;

    #[test]
    fn kubeless_runtime_images_are_read_and_resolved_by_language_and_version() {
        let c = Catalogue::parse(KUBELESS).expect("Kubeless's schema");
        assert_eq!(c.known(), ["python3.6", "go1.14"]);
        let py = c.resolve("python3.6").expect("python3.6");
        assert_eq!(py.runtime_image(), "kubeless/python@sha256:aa");
        assert_eq!(py.image(PHASE_INSTALLATION).map(|i| i.image.as_str()), Some("python:3.6"));
        assert_eq!(py.info.dep_name, "requirements.txt");
        assert_eq!(py.version.image_pull_secrets, [ImageSecret { image_secret: "p1".into() }]);
        let go = c.resolve("go1.14").expect("go1.14");
        assert_eq!(go.image(PHASE_COMPILATION).and_then(|i| i.command.as_deref()), Some("/compile-function.sh"));
        assert_eq!(go.info.liveness_probe.as_ref().and_then(|p| p.initial_delay_seconds), Some(5));
    }

    #[test]
    fn an_unknown_runtime_or_version_names_the_known_ones() {
        let c = Catalogue::builtin();
        for bad in ["python2.7", "ruby1.9", "", "python", "nodejs99", "go1.14"] {
            let err = c.resolve(bad).expect_err(bad);
            let text = err.to_string();
            assert!(
                text.contains(&format!("{bad:?}")) && text.contains("python3.9, ") && text.contains("nodejs14"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_builtin_catalogue_serves_kubeless_python3_node_and_ruby_ids_with_this_projects_images() {
        let c = Catalogue::builtin();
        for (runtime, image, deps, suffix) in [
            ("python3.6", PYTHON_IMAGE, "requirements.txt", ".py"),
            ("python3.9", PYTHON_IMAGE, "requirements.txt", ".py"),
            ("python3.12", PYTHON_IMAGE, "requirements.txt", ".py"),
            ("nodejs8", NODEJS_IMAGE, "package.json", ".js"),
            ("nodejs14", NODEJS_IMAGE, "package.json", ".js"),
            ("nodejs20", NODEJS_IMAGE, "package.json", ".js"),
            ("ruby2.4", RUBY_IMAGE, "Gemfile", ".rb"),
            ("ruby3.3", RUBY_IMAGE, "Gemfile", ".rb"),
        ] {
            let r = c.resolve(runtime).unwrap_or_else(|e| panic!("{runtime}: {e}"));
            assert_eq!(
                (r.runtime_image(), r.info.dep_name.as_str(), r.info.file_name_suffix.as_str()),
                (image, deps, suffix)
            );
            assert!(r
                .image(PHASE_INSTALLATION)
                .and_then(|i| i.command.as_deref())
                .is_some_and(|c| c.contains("$KUBELESS_INSTALL_VOLUME")));
        }
        // The builtin catalogue is itself valid Kubeless schema.
        let text = serde_json::to_string(&c.0).expect("serialize");
        assert_eq!(Catalogue::parse(&text), Ok(c));
    }

    #[test]
    fn a_catalogue_that_is_not_the_schema_or_lacks_a_runtime_image_is_refused_clearly() {
        assert!(matches!(Catalogue::parse("{not: a list}"), Err(CatalogueError::Parse(_))));
        let no_runtime = r#"[{"ID": "python", "versions": [{"version": "3.9", "runtimeImage": [{"phase": "installation", "image": "x"}]}]}]"#;
        assert_eq!(
            Catalogue::parse(no_runtime),
            Err(CatalogueError::NoRuntimeImage { id: "python".into(), version: "3.9".into() })
        );
    }
}
