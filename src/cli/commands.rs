//! What each command does: read files and flags, build the object (`objects`), write it to the
//! store, print tables.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::CommandFactory;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::SelectorExt as _;
use kube::{Api, ResourceExt};

use super::objects::{self, FlagError, FunctionChange, HttpChange, KinesisChange};
use super::publish::{self, KafkaSink, KinesisSink, NatsSink, Source};
use super::store::{Object, Store};
use super::table;
use super::*;
use crate::control::manifests::DEFAULT_NAMESPACE;
use crate::cron::schedule::Schedule;
use crate::functions::catalogue::Catalogue;
use crate::functions::objects::FunctionConfig;
use crate::resources::{
    CronJobTrigger, Function, HTTPTrigger, KafkaTrigger, KinesisTrigger, NATSTrigger, URL_ANNOTATION,
};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    match cli.command {
        Command::Function(c) => function(&g, c).await,
        Command::Trigger(TriggerCommand::Kafka(c)) => selector_trigger::<KafkaTrigger>(&g, c).await,
        Command::Trigger(TriggerCommand::Nats(NatsCommand::Trigger(c))) => selector_trigger::<NATSTrigger>(&g, c).await,
        Command::Trigger(TriggerCommand::Nats(NatsCommand::Publish { url, topic, message, input })) => {
            nats_publish(&url, &topic, message, &input).await
        }
        Command::Trigger(TriggerCommand::Kinesis(c)) => kinesis(&g, c).await,
        Command::Trigger(TriggerCommand::Cronjob(c)) => cronjob(&g, c).await,
        Command::Trigger(TriggerCommand::Http(c)) => http(&g, c).await,
        Command::Topic(c) => topic(c).await,
        Command::Autoscale(c) => autoscale(&g, c).await,
        Command::GetServerConfig => {
            let store = open(&g).await?;
            let catalogue = catalogue(&store).await?;
            println!("Supported runtimes are: {}", catalogue.known().join(", "));
            Ok(())
        }
        Command::Version => {
            println!("kubeless {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "kubeless", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// The store the global flags name: a manifest directory, else the cluster.
pub async fn open(g: &Global) -> anyhow::Result<Store> {
    if let Some(dir) = &g.manifests {
        if !dir.is_dir() {
            bail!("--manifests {}: no such directory", dir.display());
        }
        let namespace = g.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        return Ok(Store::Dir { dir: dir.clone(), namespace });
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
async fn catalogue(store: &Store) -> anyhow::Result<Catalogue> {
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
async fn save<K: Object>(store: &Store, obj: K, out: &Output, create: bool) -> anyhow::Result<()> {
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

fn list_or_print<K: Object>(
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

async fn delete<K: Object>(store: &Store, name: &str) -> anyhow::Result<()> {
    store.delete::<K>(name).await?;
    eprintln!("{} {name} deleted from namespace {}.", K::kind(&()), store.namespace());
    Ok(())
}

/// A required flag of `create` (optional on `update`).
fn required<T: Clone>(value: &Option<T>, flag: &str) -> Result<T, FlagError> {
    value.clone().ok_or_else(|| FlagError::new(flag, "is required"))
}

async fn need_function(store: &Store, name: &str) -> anyhow::Result<Function> {
    store.get::<Function>(name).await?.ok_or_else(|| {
        anyhow!(
            "function {name} not found in namespace {}; deploy it first (kubeless function deploy {name} …)",
            store.namespace()
        )
    })
}

fn check_schedule(flag: &str, schedule: &str) -> Result<(), FlagError> {
    Schedule::parse(schedule, None).map(|_| ()).map_err(|e| FlagError::new(flag, format!("{schedule:?}: {e}")))
}

/// Code or dependencies from a file or an `http(s)` URL.
async fn read_source(flag: &str, source: &str) -> anyhow::Result<Vec<u8>> {
    if objects::is_url(source) {
        let request = http::Request::get(source)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .map_err(|e| FlagError::new(flag, format!("{source:?} is not a URL: {e}")))?;
        let client = crate::delivery::HttpClient::new();
        let (status, body) = client
            .fetch(request, Duration::from_secs(60), 64 << 20)
            .await
            .map_err(|e| FlagError::new(flag, format!("downloading {source}: {e}")))?;
        if !(200..300).contains(&status) {
            bail!(FlagError::new(flag, format!("downloading {source}: HTTP {status}")));
        }
        return Ok(body.to_vec());
    }
    std::fs::read(source).map_err(|e| FlagError::new(flag, format!("cannot read {source}: {e}")).into())
}

async fn function_change(f: &FunctionFlags) -> anyhow::Result<FunctionChange> {
    let code = match &f.from_file {
        Some(src) => Some(objects::content(src, &read_source("--from-file", src).await?)),
        None => None,
    };
    let deps = match &f.dependencies {
        Some(src) => {
            let bytes = read_source("--dependencies", src).await?;
            Some(String::from_utf8(bytes).map_err(|_| FlagError::new("--dependencies", format!("{src} is not text")))?)
        }
        None => None,
    };
    let change = FunctionChange {
        runtime: f.runtime.clone(),
        handler: f.handler.clone(),
        code,
        deps,
        labels: f.labels.clone(),
        env: (!f.env.is_empty()).then(|| f.env.clone()),
        secrets: f.secrets.clone(),
        node_selectors: (!f.node_selectors.is_empty()).then(|| f.node_selectors.clone()),
        service_account: f.service_account.clone(),
        memory: f.memory.clone(),
        cpu: f.cpu.clone(),
        runtime_image: f.runtime_image.clone(),
        image_pull_policy: f.image_pull_policy.clone(),
        timeout: f.timeout.clone(),
        port: f.port,
        service_port: f.service_port,
        headless: f.headless,
    };
    change.validate()?;
    Ok(change)
}

fn set_url(function: &mut Function, url: &Option<String>) -> Result<(), FlagError> {
    if let Some(u) = url {
        match url::Url::parse(u) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
            _ => return Err(FlagError::new("--url", format!("{u:?} is not an http(s) URL"))),
        }
        function.annotations_mut().insert(URL_ANNOTATION.to_string(), u.clone());
    }
    Ok(())
}

async fn check_runtime(store: &Store, runtime: &Option<String>) -> anyhow::Result<()> {
    if let Some(r) = runtime {
        let catalogue = catalogue(store).await?;
        if catalogue.resolve(r).is_err() {
            bail!(FlagError::new(
                "--runtime",
                format!("unknown runtime {r:?}; supported: {}", catalogue.known().join(", "))
            ));
        }
    }
    Ok(())
}

async fn function(g: &Global, c: FunctionCommand) -> anyhow::Result<()> {
    match c {
        FunctionCommand::Deploy { name, flags, schedule } => {
            if flags.runtime.is_none() && flags.runtime_image.is_none() {
                bail!(FlagError::new("--runtime", "is required (or --runtime-image)"));
            }
            if flags.runtime.is_some() && flags.handler.is_none() {
                bail!(FlagError::new("--handler", "is required with --runtime"));
            }
            if let Some(s) = &schedule {
                check_schedule("--schedule", s)?;
            }
            let change = function_change(&flags).await?.with_deploy_defaults();
            let store = open(g).await?;
            check_runtime(&store, &change.runtime).await?;
            let mut f = objects::new_function(&name, store.namespace(), &change);
            set_url(&mut f, &flags.url)?;
            save(&store, f, &flags.out, true).await?;
            if let (Some(s), false) = (schedule, flags.out.dryrun) {
                let trigger = objects::function_schedule(&name, store.namespace(), &s);
                save(&store, trigger, &Output { dryrun: false, output: None }, true).await?;
            }
            Ok(())
        }
        FunctionCommand::Update { name, flags } => {
            let change = function_change(&flags).await?;
            let store = open(g).await?;
            check_runtime(&store, &change.runtime).await?;
            let mut f: Function = store.need(&name).await?;
            objects::update_function(&mut f, &change);
            set_url(&mut f, &flags.url)?;
            save(&store, f, &flags.out, false).await
        }
        FunctionCommand::Delete { names } => {
            let store = open(g).await?;
            for name in names {
                delete::<Function>(&store, &name).await?;
            }
            Ok(())
        }
        FunctionCommand::List { names, out } => {
            let store = open(g).await?;
            let items: Vec<Function> = if names.is_empty() {
                store.list().await?
            } else {
                let mut items = Vec::new();
                for n in &names {
                    items.push(store.need(n).await?);
                }
                items
            };
            list_or_print(&items, &out, &["NAME", "NAMESPACE", "HANDLER", "RUNTIME", "DEPENDENCIES", "STATUS"], |f| {
                vec![
                    f.name_any(),
                    f.namespace().unwrap_or_default(),
                    f.spec.handler.clone(),
                    f.spec.runtime.clone(),
                    f.spec.deps.trim().replace('\n', ", "),
                    function_status(f),
                ]
            })
        }
        FunctionCommand::Describe { name, out } => {
            let store = open(g).await?;
            let f: Function = store.need(&name).await?;
            if let Some(format) = &out.output {
                print!("{}", table::format(format, &[f])?);
                return Ok(());
            }
            print!("{}", describe(&f));
            Ok(())
        }
        FunctionCommand::Call { name, data } => super::function::call(&open(g).await?, &name, data).await,
        FunctionCommand::Logs { name, follow } => super::function::logs(&open(g).await?, &name, follow).await,
        FunctionCommand::Top { function, out } => {
            super::function::top(&open(g).await?, function.as_deref(), &out).await
        }
    }
}

/// `READY`, `NOT READY (reason)`, or `-` where no reconciler writes status (manifest directory).
fn function_status(f: &Function) -> String {
    match table::ready(f.status.as_ref().map(|s| s.conditions.as_slice())).as_str() {
        "True" => "READY".to_string(),
        "-" => "-".to_string(),
        other => format!("NOT READY: {}", other.trim_start_matches("False ")),
    }
}

fn describe(f: &Function) -> String {
    let labels = f.labels().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
    let container = f
        .spec
        .deployment
        .as_ref()
        .and_then(|d| d.pointer("/spec/template/spec/containers/0"))
        .cloned()
        .unwrap_or_default();
    let env = container
        .get("env")
        .and_then(|e| e.as_array())
        .map(|e| {
            e.iter()
                .map(|v| format!("{}={}", v["name"].as_str().unwrap_or(""), v["value"].as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let memory = container.pointer("/resources/limits/memory").and_then(|m| m.as_str()).unwrap_or("").to_string();
    let rows = vec![
        vec!["Name:".to_string(), f.name_any()],
        vec!["Namespace:".to_string(), f.namespace().unwrap_or_default()],
        vec!["Handler:".to_string(), f.spec.handler.clone()],
        vec!["Runtime:".to_string(), f.spec.runtime.clone()],
        vec!["Label:".to_string(), labels],
        vec!["Envvar:".to_string(), env],
        vec!["Memory:".to_string(), memory],
        vec!["Dependencies:".to_string(), f.spec.deps.trim().replace('\n', ", ")],
        vec!["Status:".to_string(), function_status(f)],
    ];
    let (header, rest) = rows.split_first().expect("rows");
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table::render(&header, rest)
}

/// What Kafka and NATS triggers share: a topic and a function selector.
trait SelectorTrigger: Object {
    fn build(name: &str, ns: &str, topic: &str, selector: LabelSelector) -> Self;
    fn set(&mut self, topic: Option<&str>, selector: Option<LabelSelector>);
    fn topic(&self) -> String;
    fn selector(&self) -> Option<&LabelSelector>;
    fn ready(&self) -> String;
}

impl SelectorTrigger for KafkaTrigger {
    fn build(name: &str, ns: &str, topic: &str, selector: LabelSelector) -> Self {
        objects::kafka_trigger(name, ns, topic, selector)
    }
    fn set(&mut self, topic: Option<&str>, selector: Option<LabelSelector>) {
        if let Some(t) = topic {
            self.spec.topic = Some(t.to_string());
        }
        if selector.is_some() {
            self.spec.function_selector = selector;
        }
    }
    fn topic(&self) -> String {
        let mut topics: Vec<String> = self.spec.topic.iter().cloned().collect();
        topics.extend(self.spec.topics.iter().flatten().cloned());
        topics.join(",")
    }
    fn selector(&self) -> Option<&LabelSelector> {
        self.spec.function_selector.as_ref()
    }
    fn ready(&self) -> String {
        table::trigger_ready(self.status.as_ref())
    }
}

impl SelectorTrigger for NATSTrigger {
    fn build(name: &str, ns: &str, topic: &str, selector: LabelSelector) -> Self {
        objects::nats_trigger(name, ns, topic, selector)
    }
    fn set(&mut self, topic: Option<&str>, selector: Option<LabelSelector>) {
        if let Some(t) = topic {
            self.spec.topic = t.to_string();
        }
        if selector.is_some() {
            self.spec.function_selector = selector;
        }
    }
    fn topic(&self) -> String {
        self.spec.topic.clone()
    }
    fn selector(&self) -> Option<&LabelSelector> {
        self.spec.function_selector.as_ref()
    }
    fn ready(&self) -> String {
        table::trigger_ready(self.status.as_ref())
    }
}

/// Warns (on stderr) when no function in the namespace carries the selected labels: the trigger
/// is kept (the function may come later), but a typo should not go unnoticed.
async fn warn_if_unmatched(store: &Store, selector: &LabelSelector) -> anyhow::Result<()> {
    let matcher = kube::core::Selector::try_from(selector.clone())
        .map_err(|e| FlagError::new("--function-selector", e.to_string()))?;
    let functions: Vec<Function> = store.list().await?;
    let empty = BTreeMap::new();
    if !functions.iter().any(|f| matcher.matches(f.metadata.labels.as_ref().unwrap_or(&empty))) {
        eprintln!(
            "warning: --function-selector {} matches no function in namespace {} yet",
            objects::format_selector(Some(selector)),
            store.namespace()
        );
    }
    Ok(())
}

async fn selector_trigger<K: SelectorTrigger>(g: &Global, c: TriggerCrud<SelectorFlags>) -> anyhow::Result<()> {
    match c {
        TriggerCrud::Create { name, flags } => {
            let topic = required(&flags.trigger_topic, "--trigger-topic")?;
            let selector = objects::parse_selector(&required(&flags.function_selector, "--function-selector")?)?;
            let store = open(g).await?;
            if !flags.out.dryrun {
                warn_if_unmatched(&store, &selector).await?;
            }
            save(&store, K::build(&name, store.namespace(), &topic, selector), &flags.out, true).await
        }
        TriggerCrud::Update { name, flags } => {
            let selector = flags.function_selector.as_deref().map(objects::parse_selector).transpose()?;
            let store = open(g).await?;
            let mut t: K = store.need(&name).await?;
            if let Some(s) = &selector {
                warn_if_unmatched(&store, s).await?;
            }
            t.set(flags.trigger_topic.as_deref(), selector);
            save(&store, t, &flags.out, false).await
        }
        TriggerCrud::Delete { name } => delete::<K>(&open(g).await?, &name).await,
        TriggerCrud::List { out } => {
            let items: Vec<K> = open(g).await?.list().await?;
            list_or_print(&items, &out, &["NAME", "NAMESPACE", "TOPIC", "FUNCTION SELECTOR", "READY"], |t| {
                vec![
                    t.name_any(),
                    t.namespace().unwrap_or_default(),
                    t.topic(),
                    objects::format_selector(t.selector()),
                    t.ready(),
                ]
            })
        }
    }
}

fn check_endpoint(endpoint: Option<&str>) -> Result<(), FlagError> {
    match endpoint.filter(|e| !e.is_empty()).map(url::Url::parse) {
        Some(Err(err)) => {
            Err(FlagError::new("--endpoint", format!("{:?} is not a URL: {err}", endpoint.unwrap_or_default())))
        }
        _ => Ok(()),
    }
}

fn kinesis_change(f: &KinesisFlags) -> anyhow::Result<KinesisChange> {
    check_endpoint(f.endpoint.as_deref())?;
    Ok(KinesisChange {
        function_name: f.function_name.clone(),
        region: f.aws_region.clone(),
        stream: f.stream.clone(),
        shard: f.shard_id.clone(),
        secret: f.secret.clone(),
        endpoint: f.endpoint.clone(),
    })
}

async fn kinesis(g: &Global, c: KinesisCommand) -> anyhow::Result<()> {
    match c {
        KinesisCommand::Trigger(TriggerCrud::Create { name, flags }) => {
            for (v, flag) in [
                (&flags.stream, "--stream"),
                (&flags.aws_region, "--aws-region"),
                (&flags.function_name, "--function-name"),
            ] {
                required(v, flag)?;
            }
            let change = kinesis_change(&flags)?;
            let store = open(g).await?;
            need_function(&store, flags.function_name.as_deref().unwrap_or_default()).await?;
            save(&store, objects::kinesis_trigger(&name, store.namespace(), &change), &flags.out, true).await
        }
        KinesisCommand::Trigger(TriggerCrud::Update { name, flags }) => {
            let change = kinesis_change(&flags)?;
            let store = open(g).await?;
            let mut t: KinesisTrigger = store.need(&name).await?;
            if let Some(f) = &change.function_name {
                need_function(&store, f).await?;
            }
            objects::update_kinesis(&mut t.spec, &change);
            save(&store, t, &flags.out, false).await
        }
        KinesisCommand::Trigger(TriggerCrud::Delete { name }) => delete::<KinesisTrigger>(&open(g).await?, &name).await,
        KinesisCommand::Trigger(TriggerCrud::List { out }) => {
            let items: Vec<KinesisTrigger> = open(g).await?.list().await?;
            list_or_print(
                &items,
                &out,
                &["NAME", "NAMESPACE", "REGION", "STREAM", "SHARD", "FUNCTION NAME", "READY"],
                |t| {
                    vec![
                        t.name_any(),
                        t.namespace().unwrap_or_default(),
                        t.spec.aws_region.clone(),
                        t.spec.stream.clone(),
                        t.spec.shard.clone().unwrap_or_else(|| "<all>".to_string()),
                        t.spec.function_name.clone(),
                        table::trigger_ready(t.status.as_ref()),
                    ]
                },
            )
        }
        KinesisCommand::CreateStream { stream_name, shard_count, aws } => {
            let client = kinesis_client(g, &aws).await?;
            client.create_stream().stream_name(&stream_name).shard_count(shard_count).send().await.map_err(|e| {
                anyhow!("creating Kinesis stream {stream_name}: {}", aws_sdk_kinesis::error::DisplayErrorContext(e))
            })?;
            eprintln!("Kinesis stream {stream_name} created with {shard_count} shard(s).");
            Ok(())
        }
        KinesisCommand::Publish { stream, partition_key, records, aws, input } => {
            if !input.headers.is_empty() {
                bail!(FlagError::new("--header", "Kinesis records have no headers"));
            }
            if partition_key.is_some() && input.key.is_some() {
                bail!(FlagError::new("--key", "give --partition-key or --key, not both"));
            }
            let source = Source::open(&input, records).await?;
            let client = kinesis_client(g, &aws).await?;
            let sink = KinesisSink::new(client, &stream, partition_key.or(input.key.clone()), input.timeout);
            let target = format!("Kinesis stream {stream}");
            publish::publish(sink, source, &input, &target).await
        }
    }
}

/// A Kinesis client: keys from `--secret` (read from the cluster, or the manifest directory), else
/// the AWS SDK's own chain.
async fn kinesis_client(g: &Global, aws: &AwsFlags) -> anyhow::Result<aws_sdk_kinesis::Client> {
    let keys = match &aws.secret {
        None => None,
        Some(name) => {
            let store = open(g).await?;
            let secret: Secret = store.need(name).await.map_err(|e| anyhow!("--secret {name}: {e}"))?;
            let data = crate::control::index::secret_data(&secret);
            let key = |k: &str| -> anyhow::Result<String> {
                let bytes = data.get(k).ok_or_else(|| anyhow!("--secret {name}: has no key {k}"))?;
                let text = std::str::from_utf8(bytes).map_err(|_| anyhow!("--secret {name}: {k} is not text"))?;
                Ok(text.trim().to_string())
            };
            Some((key("aws_access_key_id")?, key("aws_secret_access_key")?))
        }
    };
    check_endpoint(aws.endpoint.as_deref())?;
    Ok(kubeless_kinesis::client(
        &aws.aws_region,
        aws.endpoint.as_deref(),
        keys.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
    )
    .await)
}

async fn cron_payload(flags: &CronJobFlags) -> anyhow::Result<Option<serde_json::Value>> {
    if let Some(p) = &flags.payload {
        return Ok(Some(objects::parse_payload("--payload", p)?));
    }
    let Some(path) = &flags.payload_from_file else { return Ok(None) };
    if path.extension().and_then(|e| e.to_str()) != Some("json") {
        bail!(FlagError::new("--payload-from-file", format!("{}: must be a .json file", path.display())));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| FlagError::new("--payload-from-file", format!("cannot read {}: {e}", path.display())))?;
    Ok(Some(objects::parse_payload("--payload-from-file", &text)?))
}

async fn cronjob(g: &Global, c: TriggerCrud<CronJobFlags>) -> anyhow::Result<()> {
    match c {
        TriggerCrud::Create { name, flags } => {
            let function = required(&flags.function, "--function")?;
            let schedule = required(&flags.schedule, "--schedule")?;
            check_schedule("--schedule", &schedule)?;
            let payload = cron_payload(&flags).await?;
            let store = open(g).await?;
            need_function(&store, &function).await?;
            save(
                &store,
                objects::cronjob_trigger(&name, store.namespace(), &function, &schedule, payload),
                &flags.out,
                true,
            )
            .await
        }
        TriggerCrud::Update { name, flags } => {
            if let Some(s) = &flags.schedule {
                check_schedule("--schedule", s)?;
            }
            let payload = cron_payload(&flags).await?;
            let store = open(g).await?;
            let mut t: CronJobTrigger = store.need(&name).await?;
            if let Some(f) = &flags.function {
                need_function(&store, f).await?;
                t.spec.function_name.clone_from(f);
            }
            if let Some(s) = &flags.schedule {
                t.spec.schedule.clone_from(s);
            }
            if payload.is_some() {
                t.spec.payload = payload;
            }
            save(&store, t, &flags.out, false).await
        }
        TriggerCrud::Delete { name } => delete::<CronJobTrigger>(&open(g).await?, &name).await,
        TriggerCrud::List { out } => {
            let items: Vec<CronJobTrigger> = open(g).await?.list().await?;
            list_or_print(&items, &out, &["NAME", "NAMESPACE", "SCHEDULE", "FUNCTION NAME", "READY"], |t| {
                vec![
                    t.name_any(),
                    t.namespace().unwrap_or_default(),
                    t.spec.schedule.clone(),
                    t.spec.function_name.clone(),
                    table::trigger_ready(t.status.as_ref()),
                ]
            })
        }
    }
}

fn http_change(f: &HttpFlags) -> Result<HttpChange, FlagError> {
    let change = HttpChange {
        function_name: f.function_name.clone(),
        hostname: f.hostname.clone(),
        path: f.path.clone(),
        tls_acme: f.enable_tls_acme,
        tls_secret: f.tls_secret.clone(),
        gateway: f.gateway.clone(),
        basic_auth_secret: f.basic_auth_secret.clone(),
        cors_enable: f.cors_enable,
    };
    change.validate()?;
    Ok(change)
}

async fn http(g: &Global, c: TriggerCrud<HttpFlags>) -> anyhow::Result<()> {
    match c {
        TriggerCrud::Create { name, flags } => {
            let function = required(&flags.function_name, "--function-name")?;
            let mut change = http_change(&flags)?;
            let gateway = change.gateway.get_or_insert_with(|| "nginx".to_string()).clone();
            let store = open(g).await?;
            need_function(&store, &function).await?;
            if change.hostname.is_none() {
                change.hostname = match (&store, gateway.as_str()) {
                    (Store::Kube { server, .. }, "nginx") => objects::local_hostname(&function, server),
                    _ => None,
                };
            }
            if change.hostname.is_none() {
                bail!(FlagError::new(
                    "--hostname",
                    format!("is required (with gateway {gateway}, or without a cluster)")
                ));
            }
            save(&store, objects::http_trigger(&name, store.namespace(), &change), &flags.out, true).await
        }
        TriggerCrud::Update { name, flags } => {
            let change = http_change(&flags)?;
            let store = open(g).await?;
            let mut t: HTTPTrigger = store.need(&name).await?;
            if let Some(f) = &change.function_name {
                need_function(&store, f).await?;
            }
            objects::update_http(&mut t.spec, &change);
            if t.spec.tls && !t.spec.tls_secret.is_empty() {
                bail!(FlagError::new("--enableTLSAcme", "cannot be set together with a TLS secret"));
            }
            save(&store, t, &flags.out, false).await
        }
        TriggerCrud::Delete { name } => delete::<HTTPTrigger>(&open(g).await?, &name).await,
        TriggerCrud::List { out } => {
            let items: Vec<HTTPTrigger> = open(g).await?.list().await?;
            list_or_print(&items, &out, &["NAME", "NAMESPACE", "FUNCTION NAME", "HOST", "PATH", "READY"], |t| {
                vec![
                    t.name_any(),
                    t.namespace().unwrap_or_default(),
                    t.spec.function_name.clone(),
                    t.spec.host_name.clone(),
                    t.spec.path.clone(),
                    table::trigger_ready(t.status.as_ref()),
                ]
            })
        }
    }
}

fn kafka_props() -> anyhow::Result<BTreeMap<String, String>> {
    Ok(kubeless_kafka::security_properties(|k| std::env::var(k).ok())?.into_inner())
}

fn note_kafka_namespace(k: &KafkaFlags) {
    if k.kafka_namespace.is_some() {
        eprintln!(
            "note: --kafka-namespace is ignored: this CLI talks to the brokers at {} (--brokers, KAFKA_BROKERS)",
            k.brokers
        );
    }
}

/// The setting that named the brokers, for errors (which themselves name the address).
const KAFKA_SETTING: &str = "--brokers (or KAFKA_BROKERS)";

async fn topic(c: TopicCommand) -> anyhow::Result<()> {
    let props = kafka_props()?;
    match c {
        TopicCommand::Create { topic_name, partitions, replication_factor, kafka } => {
            note_kafka_namespace(&kafka);
            kubeless_kafka::create_topic(&kafka.brokers, &props, &topic_name, partitions, replication_factor)
                .await
                .context(KAFKA_SETTING)?;
            eprintln!("Topic {topic_name} ready ({partitions} partitions, replication {replication_factor}).");
        }
        TopicCommand::Delete { topic_name, kafka } => {
            note_kafka_namespace(&kafka);
            kubeless_kafka::delete_topic(&kafka.brokers, &props, &topic_name).await.context(KAFKA_SETTING)?;
            eprintln!("Topic {topic_name} deleted.");
        }
        TopicCommand::List { kafka } => {
            note_kafka_namespace(&kafka);
            let topics = kubeless_kafka::list_topics(&kafka.brokers, &props).await.context(KAFKA_SETTING)?;
            let rows: Vec<Vec<String>> = topics
                .iter()
                .map(|t| vec![t.name.clone(), t.partitions.to_string(), t.replication.to_string()])
                .collect();
            print!("{}", table::render(&["NAME", "PARTITIONS", "REPLICATION"], &rows));
        }
        TopicCommand::Publish { topic, input, kafka } => {
            note_kafka_namespace(&kafka);
            let source = Source::open(&input, Vec::new()).await?;
            let publisher = kubeless_kafka::BulkPublisher::connect(&kafka.brokers, &props, &topic, input.timeout)
                .await
                .context(KAFKA_SETTING)?;
            let headers = input.headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
            let sink = KafkaSink { publisher, headers, timeout: input.timeout };
            let target = format!("Kafka topic {topic} at {}", kafka.brokers);
            publish::publish(sink, source, &input, &target).await?;
        }
    }
    std::io::stdout().flush().ok();
    Ok(())
}

async fn nats_publish(url: &str, subject: &str, message: Option<String>, input: &publish::Input) -> anyhow::Result<()> {
    if input.key.is_some() || input.key_separator.is_some() {
        bail!(FlagError::new("--key", "NATS messages have no key; use --header name=value"));
    }
    let source = Source::open(input, message.into_iter().collect()).await?;
    let client = kubeless_nats::connect(url, &kubeless_nats::NatsAuth::None, false, None)
        .await
        .with_context(|| "the NATS server (--url, NATS_URL)".to_string())?;
    let (sink, stream) = NatsSink::new(client, subject, &input.headers, input.timeout).await;
    let target = match stream {
        Some(s) => format!("NATS subject {subject} (JetStream stream {s}) at {url}"),
        None => format!("NATS subject {subject} at {url}"),
    };
    publish::publish(sink, source, input, &target).await
}

async fn autoscale(g: &Global, c: AutoscaleCommand) -> anyhow::Result<()> {
    let store = open(g).await?;
    match c {
        AutoscaleCommand::Create { name, min, max, metric, value } => {
            let mut f = need_function(&store, &name).await?;
            f.spec.horizontal_pod_autoscaler = Some(objects::autoscaler(&f, min, max, &metric, &value)?);
            store.update(&f).await?;
            eprintln!("Autoscaler of function {name} set: {min} to {max} replicas on {metric} {value}.");
        }
        AutoscaleCommand::Delete { name } => {
            let mut f = need_function(&store, &name).await?;
            if f.spec.horizontal_pod_autoscaler.take().is_none() {
                bail!("function {name} has no autoscaler");
            }
            store.update(&f).await?;
            eprintln!("Autoscaler of function {name} removed.");
        }
        AutoscaleCommand::List { out } => {
            let functions: Vec<Function> = store.list().await?;
            let scaled: Vec<Function> =
                functions.into_iter().filter(|f| f.spec.horizontal_pod_autoscaler.is_some()).collect();
            list_or_print(&scaled, &out, &["NAME", "NAMESPACE", "TARGET", "MIN", "MAX", "METRIC", "VALUE"], |f| {
                let hpa = f.spec.horizontal_pod_autoscaler.clone().unwrap_or_default();
                let metric = hpa.pointer("/spec/metrics/0").cloned().unwrap_or_default();
                let (kind, value) = match metric["type"].as_str() {
                    Some("Object") => {
                        ("qps", metric.pointer("/object/targetValue").or(metric.pointer("/object/target/value")))
                    }
                    _ => (
                        "cpu",
                        metric
                            .pointer("/resource/targetAverageUtilization")
                            .or(metric.pointer("/resource/target/averageUtilization")),
                    ),
                };
                let text = |v: Option<&serde_json::Value>| {
                    v.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).unwrap_or_default()
                };
                vec![
                    f.name_any(),
                    f.namespace().unwrap_or_default(),
                    text(hpa.pointer("/spec/scaleTargetRef/name")),
                    text(hpa.pointer("/spec/minReplicas")),
                    text(hpa.pointer("/spec/maxReplicas")),
                    kind.to_string(),
                    text(value),
                ]
            })?;
        }
    }
    Ok(())
}
