//! `kubeless function`: deploy, update, delete, list, describe, call, logs and top. `builder` makes
//! the Function from the flags and the code `content` read; `call` reaches a running function.

mod builder;
mod call;
mod content;

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use kube::ResourceExt;

pub use self::builder::{new_function, update_function, FunctionChange};

use self::call::{call, logs, top};
use self::content::{content, is_url};
use crate::cli::common::{catalogue, check_schedule, delete, list_or_print, open, save, FlagError};
use crate::cli::store::Store;
use crate::cli::trigger::cronjob::function_schedule;
use crate::cli::{table, Global, ListOutput, Output};
use crate::resources::{Function, URL_ANNOTATION};

#[derive(Debug, Clone, Args)]
pub struct FunctionFlags {
    /// Runtime (e.g. python3.9, nodejs14).
    #[arg(short = 'r', long)]
    pub runtime: Option<String>,
    /// Handler: file.function.
    #[arg(long)]
    pub handler: Option<String>,
    /// Code file, or a URL to it.
    #[arg(short = 'f', long)]
    pub from_file: Option<String>,
    /// Dependencies file (requirements.txt, package.json).
    #[arg(short = 'd', long)]
    pub dependencies: Option<String>,
    /// Labels, `k=v` or `k:v`, comma-separated or repeated.
    #[arg(short = 'l', long = "label", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Environment variables, `k=v` or `k:v`.
    #[arg(short = 'e', long = "env", value_delimiter = ',')]
    pub env: Vec<String>,
    /// Secrets mounted at /<secret>.
    #[arg(long, value_delimiter = ',')]
    pub secrets: Vec<String>,
    /// Node selectors, `k=v` or `k:v`.
    #[arg(long, value_delimiter = ',')]
    pub node_selectors: Vec<String>,
    #[arg(long)]
    pub service_account: Option<String>,
    /// Memory request and limit (e.g. 128Mi).
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU request and limit (e.g. 100m).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Custom runtime image.
    #[arg(long)]
    pub runtime_image: Option<String>,
    /// IfNotPresent, Always (deploy's default) or Never.
    #[arg(long)]
    pub image_pull_policy: Option<String>,
    /// Seconds a call may take (deploy's default: 180).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Port the function listens on (deploy's default: 8080).
    #[arg(long)]
    pub port: Option<i32>,
    /// Port of the Service (default: --port).
    #[arg(long = "servicePort")]
    pub service_port: Option<i32>,
    /// A headless Service (no cluster IP).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub headless: Option<bool>,
    /// Where the broker reaches the function (the `kubeless.io/url` annotation): for a function
    /// run outside the cluster, e.g. with --manifests.
    #[arg(long)]
    pub url: Option<String>,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, Subcommand)]
pub enum FunctionCommand {
    /// Deploy a function.
    Deploy {
        name: String,
        #[command(flatten)]
        flags: FunctionFlags,
        /// Also create a CronJobTrigger of this name with this schedule.
        #[arg(long)]
        schedule: Option<String>,
    },
    /// Change a function: only the flags given change.
    Update {
        name: String,
        #[command(flatten)]
        flags: FunctionFlags,
    },
    /// Delete functions.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List functions (all, or the ones named).
    #[command(alias = "ls")]
    List {
        names: Vec<String>,
        #[command(flatten)]
        out: ListOutput,
    },
    /// Show a function.
    Describe {
        name: String,
        #[command(flatten)]
        out: ListOutput,
    },
    /// Call a function: GET without data, POST with it.
    Call {
        name: String,
        #[arg(short = 'd', long)]
        data: Option<String>,
    },
    /// Print the logs of a function's pods.
    Logs {
        name: String,
        /// Keep streaming.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Calls, failures and durations from each function's /metrics.
    #[command(alias = "stats")]
    Top {
        /// One function; default: all.
        #[arg(short = 'f', long)]
        function: Option<String>,
        #[command(flatten)]
        out: ListOutput,
    },
}

pub async fn run(g: &Global, c: FunctionCommand) -> anyhow::Result<()> {
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
            let mut f = new_function(&name, store.namespace(), &change);
            set_url(&mut f, &flags.url)?;
            save(&store, f, &flags.out, true).await?;
            if let (Some(s), false) = (schedule, flags.out.dryrun) {
                let trigger = function_schedule(&name, store.namespace(), &s);
                save(&store, trigger, &Output { dryrun: false, output: None }, true).await?;
            }
            Ok(())
        }
        FunctionCommand::Update { name, flags } => {
            let change = function_change(&flags).await?;
            let store = open(g).await?;
            check_runtime(&store, &change.runtime).await?;
            let mut f: Function = store.need(&name).await?;
            update_function(&mut f, &change);
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
                    call::local_status(&store, f).unwrap_or_else(|| function_status(f)),
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
        FunctionCommand::Call { name, data } => call(&open(g).await?, &name, data).await,
        FunctionCommand::Logs { name, follow } => logs(&open(g).await?, &name, follow).await,
        FunctionCommand::Top { function, out } => top(&open(g).await?, function.as_deref(), &out).await,
    }
}

/// Code or dependencies from a file or an `http(s)` URL.
async fn read_source(flag: &str, source: &str) -> anyhow::Result<Vec<u8>> {
    if is_url(source) {
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
        Some(src) => Some(content(src, &read_source("--from-file", src).await?)),
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
