//! docker-compose.yml, checked rather than run (there is no Docker engine where the tests run):
//! valid against the Compose Specification's JSON schema (vendored, tests/data/compose-spec), and
//! every file, directory, build target, port, image tag and address it names checks out.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tools virtualenv's Python (scripts/install-deps puts jsonschema and PyYAML there).
fn tools_python() -> PathBuf {
    let out = Command::new(root().join("scripts/tools-bin")).output().expect("scripts/tools-bin");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("python3")
}

/// Validates `compose` against the vendored schema; the validator's complaint if it is not valid.
fn schema_errors(compose: &Path) -> Option<String> {
    let check = "import json, sys, yaml, jsonschema\n\
                 schema = json.load(open(sys.argv[1]))\n\
                 doc = yaml.safe_load(open(sys.argv[2]))\n\
                 cls = jsonschema.validators.validator_for(schema)\n\
                 errors = [f\"{'/'.join(map(str, e.absolute_path))}: {e.message}\" for e in cls(schema).iter_errors(doc)]\n\
                 print('\\n'.join(errors)); sys.exit(1 if errors else 0)\n";
    let out = Command::new(tools_python())
        .args(["-c", check])
        .arg(root().join("tests/data/compose-spec/compose-spec.json"))
        .arg(compose)
        .output()
        .expect("run the schema check");
    (!out.status.success())
        .then(|| format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn compose() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml"))
        .expect("docker-compose.yml is YAML")
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

#[test]
fn docker_compose_yml_is_valid_against_the_compose_specification() {
    let file = root().join("docker-compose.yml");
    assert_eq!(schema_errors(&file), None, "docker-compose.yml against the Compose Specification");
    // The check can fail: a service with a mistyped key is refused.
    let broken = tempfile::NamedTempFile::new().expect("temp file");
    let text = std::fs::read_to_string(&file)
        .expect("read")
        .replace("    depends_on:\n      - broker", "    depend_on:\n      - broker");
    std::fs::write(broken.path(), text).expect("write");
    let complaint = schema_errors(broken.path()).expect("a mistyped key is not valid");
    assert!(complaint.contains("depend_on"), "{complaint}");
}

#[test]
fn everything_docker_compose_yml_names_exists_and_fits_together() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services.keys().map(text).collect();
    let mut host_ports = BTreeSet::new();
    for (name, service) in services {
        let name = text(name);
        // Images pinned to a version, never `latest`; the one built here carries the crate's.
        let image = text(&service["image"]);
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        assert!(
            tag.chars().any(|c| c.is_ascii_digit()) && tag != "latest",
            "service {name}: image {image:?} is not pinned to a version"
        );
        if service.get("build").is_some() {
            assert!(tag.starts_with(env!("CARGO_PKG_VERSION")), "service {name}: {image:?} is not this version's");
        }
        // Built from this repository's Dockerfile, at a stage it has.
        if let Some(build) = service.get("build") {
            let context = root().join(text(&build["context"]));
            let dockerfile =
                std::fs::read_to_string(context.join("Dockerfile")).expect("the build context's Dockerfile");
            let target = text(&build["target"]);
            assert!(
                dockerfile.lines().any(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {target}"))),
                "service {name}: the Dockerfile has no stage {target:?}"
            );
        }
        // Bind mounts name files and directories that exist.
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = text(volume).split(':').next().unwrap_or_default().to_string();
            if source.starts_with('.') {
                assert!(root().join(&source).exists(), "service {name}: {source} does not exist");
            } else {
                let named = doc["volumes"].as_mapping().is_some_and(|v| v.contains_key(source.as_str()));
                assert!(named, "service {name}: volume {source} is not declared");
            }
        }
        // Published on the host's loopback only, each host port once.
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = text(port);
            let parts: Vec<&str> = port.split(':').collect();
            assert!(parts.len() == 3 && parts[0] == "127.0.0.1", "service {name}: port {port:?} is not on loopback");
            assert!(host_ports.insert(parts[1].to_string()), "host port {} published twice", parts[1]);
        }
        for dependency in service["depends_on"].as_sequence().into_iter().flatten() {
            assert!(names.contains(&text(dependency)), "service {name} depends on unknown {dependency:?}");
        }
        for dependency in service["depends_on"].as_mapping().into_iter().flat_map(|m| m.keys()) {
            assert!(names.contains(&text(dependency)), "service {name} depends on unknown {dependency:?}");
        }
    }

    // The broker's flags are its own, and name the other services where they listen.
    let broker = &doc["services"]["broker"];
    let flags: Vec<String> = broker["command"].as_sequence().expect("broker command").iter().map(text).collect();
    let flag = |name: &str| {
        flags.iter().find_map(|f| f.strip_prefix(&format!("--{name}="))).map(str::to_string).unwrap_or_default()
    };
    let help = Command::new(env!("CARGO_BIN_EXE_kubeless-broker")).arg("--help").output().expect("--help");
    let help = String::from_utf8_lossy(&help.stdout);
    for f in &flags {
        let name = f.split('=').next().unwrap_or_default();
        assert!(help.contains(&format!("{name} ")), "the broker has no flag {name}");
    }
    let kafka_env = &doc["services"]["kafka"]["environment"];
    let advertised = text(&kafka_env["KAFKA_ADVERTISED_LISTENERS"]);
    assert!(
        advertised.contains(&format!("://{}", flag("kafka-brokers"))),
        "the broker's Kafka address is advertised: {advertised}"
    );
    assert!(advertised.contains("://localhost:9092"), "the host's Kafka address is advertised: {advertised}");
    assert!(host_ports.contains("9092"), "Kafka's host listener is published");
    assert_eq!(flag("nats-url"), "nats://nats:4222");
    assert!(flag("manifests").starts_with('/'));
    let mounts: Vec<String> = broker["volumes"].as_sequence().expect("volumes").iter().map(text).collect();
    assert!(
        mounts.iter().any(|m| m == &format!("./examples:{}:ro", flag("manifests"))),
        "examples/ is the manifest directory"
    );
    assert_eq!(text(&broker["environment"]["AWS_EC2_METADATA_DISABLED"]), "true");
    for addr in ["admin-addr", "status-addr", "gateway-addr"] {
        let port = flag(addr).rsplit(':').next().unwrap_or_default().to_string();
        assert!(host_ports.contains(&port), "--{addr} port {port} is published");
    }

    // Prometheus scrapes the broker's admin port; Grafana gets the dashboard and the data source.
    let prometheus = std::fs::read_to_string(root().join("deploy/compose/prometheus.yml")).expect("prometheus.yml");
    let admin_port = flag("admin-addr").rsplit(':').next().unwrap_or_default().to_string();
    assert!(prometheus.contains(&format!("\"broker:{admin_port}\"")), "{prometheus}");
    let provider =
        std::fs::read_to_string(root().join("deploy/compose/grafana/provisioning/dashboards/kubeless-broker.yml"))
            .expect("dashboard provider");
    let grafana_mounts: Vec<String> =
        doc["services"]["grafana"]["volumes"].as_sequence().expect("volumes").iter().map(text).collect();
    assert!(grafana_mounts.iter().any(|m| m.starts_with("./deploy/grafana:/var/lib/grafana/dashboards")));
    assert!(provider.contains("path: /var/lib/grafana/dashboards"), "{provider}");
    assert!(root().join("deploy/grafana/kubeless-broker.json").is_file());
    let datasource =
        std::fs::read_to_string(root().join("deploy/compose/grafana/provisioning/datasources/prometheus.yml"))
            .expect("datasource");
    assert!(datasource.contains("url: http://prometheus:9090"), "{datasource}");

    // The mounted examples are valid manifests with a function the broker runs itself.
    let examples = std::fs::read_to_string(root().join("examples/hello.yaml")).expect("examples/hello.yaml");
    let loaded = kubeless_broker::control::manifests::parse_file(Path::new("examples/hello.yaml"), &examples);
    assert!(
        loaded.iter().all(Result::is_ok),
        "examples/hello.yaml: {:?}",
        loaded.iter().filter(|r| r.is_err()).collect::<Vec<_>>()
    );
    assert!(!examples.contains("kubeless.io/url"), "the example function is run by the broker itself");
}
