//! `kubeless trigger http`: an Ingress to a function.

use anyhow::bail;
use clap::Args;
use kube::ResourceExt;

use super::TriggerCrud;
use crate::cli::common::{created_by, delete, list_or_print, meta, need_function, open, required, save, FlagError};
use crate::cli::store::Store;
use crate::cli::{table, Global, Output};
use crate::resources::{HTTPTrigger, HTTPTriggerSpec};

#[derive(Debug, Clone, Args)]
pub struct HttpFlags {
    #[arg(long)]
    pub function_name: Option<String>,
    /// Ingress path.
    #[arg(long)]
    pub path: Option<String>,
    /// Host name (with nginx, default: <function>.<API server address>.nip.io).
    #[arg(long)]
    pub hostname: Option<String>,
    /// TLS from cert-manager (ACME).
    #[arg(long = "enableTLSAcme", num_args = 0..=1, default_missing_value = "true")]
    pub enable_tls_acme: Option<bool>,
    /// nginx (default), traefik or kong.
    #[arg(long)]
    pub gateway: Option<String>,
    #[arg(long)]
    pub basic_auth_secret: Option<String>,
    #[arg(long)]
    pub tls_secret: Option<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub cors_enable: Option<bool>,
    #[command(flatten)]
    pub out: Output,
}

/// `kubeless trigger http create` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpChange {
    pub function_name: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<String>,
    pub tls_acme: Option<bool>,
    pub tls_secret: Option<String>,
    pub gateway: Option<String>,
    pub basic_auth_secret: Option<String>,
    pub cors_enable: Option<bool>,
}

impl HttpChange {
    pub fn validate(&self) -> Result<(), FlagError> {
        if let Some(g) = &self.gateway {
            if !matches!(g.as_str(), "nginx" | "traefik" | "kong") {
                return Err(FlagError::new("--gateway", format!("{g:?} is not supported; use nginx, traefik or kong")));
            }
        }
        if self.tls_acme == Some(true) && self.tls_secret.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(FlagError::new("--enableTLSAcme", "cannot be given with --tls-secret"));
        }
        Ok(())
    }
}

pub fn update_http(spec: &mut HTTPTriggerSpec, c: &HttpChange) {
    for (field, v) in [
        (&mut spec.function_name, &c.function_name),
        (&mut spec.host_name, &c.hostname),
        (&mut spec.path, &c.path),
        (&mut spec.tls_secret, &c.tls_secret),
        (&mut spec.gateway, &c.gateway),
        (&mut spec.basic_auth_secret, &c.basic_auth_secret),
    ] {
        if let Some(v) = v {
            field.clone_from(v);
        }
    }
    if let Some(v) = c.tls_acme {
        spec.tls = v;
    }
    if let Some(v) = c.cors_enable {
        spec.cors_enable = v;
    }
}

pub fn http_trigger(name: &str, namespace: &str, change: &HttpChange) -> HTTPTrigger {
    let mut spec = HTTPTriggerSpec::default();
    update_http(&mut spec, change);
    let mut t = HTTPTrigger::new(name, spec);
    t.metadata = meta(name, namespace, created_by());
    t
}

/// `nip.io` host of a function behind an nginx ingress on the API server's address, as Kubeless's
/// `GetLocalHostname` made it when `--hostname` was not given.
pub fn local_hostname(function: &str, server: &url::Url) -> Option<String> {
    let host = server.host_str()?.trim_start_matches('[').trim_end_matches(']');
    Some(format!("{function}.{host}.nip.io"))
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

pub async fn run(g: &Global, c: TriggerCrud<HttpFlags>) -> anyhow::Result<()> {
    match c {
        TriggerCrud::Create { name, flags } => {
            let function = required(&flags.function_name, "--function-name")?;
            let mut change = http_change(&flags)?;
            let gateway = change.gateway.get_or_insert_with(|| "nginx".to_string()).clone();
            let store = open(g).await?;
            need_function(&store, &function).await?;
            if change.hostname.is_none() {
                change.hostname = match (&store, gateway.as_str()) {
                    (Store::Kube { server, .. }, "nginx") => local_hostname(&function, server),
                    _ => None,
                };
            }
            if change.hostname.is_none() {
                bail!(FlagError::new(
                    "--hostname",
                    format!("is required (with gateway {gateway}, or without a cluster)")
                ));
            }
            save(&store, http_trigger(&name, store.namespace(), &change), &flags.out, true).await
        }
        TriggerCrud::Update { name, flags } => {
            let change = http_change(&flags)?;
            let store = open(g).await?;
            let mut t: HTTPTrigger = store.need(&name).await?;
            if let Some(f) = &change.function_name {
                need_function(&store, f).await?;
            }
            update_http(&mut t.spec, &change);
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{http_trigger, local_hostname, HttpChange};
    use crate::cli::test_support::as_json;

    /// `kubeless trigger http create web --function-name hello --hostname hello.example.com --path
    /// api --gateway traefik --tls-secret tls --basic-auth-secret auth --cors-enable`.
    #[test]
    fn http_trigger_matches_kubeless() {
        let change = HttpChange {
            function_name: Some("hello".into()),
            hostname: Some("hello.example.com".into()),
            path: Some("api".into()),
            tls_acme: Some(false),
            tls_secret: Some("tls".into()),
            gateway: Some("traefik".into()),
            basic_auth_secret: Some("auth".into()),
            cors_enable: Some(true),
        };
        change.validate().expect("valid");
        assert_eq!(
            as_json(&http_trigger("web", "default", &change)),
            json!({
                "kind": "HTTPTrigger",
                "apiVersion": "kubeless.io/v1beta1",
                "metadata": {"name": "web", "namespace": "default", "labels": {"created-by": "kubeless"}},
                "spec": {
                    "function-name": "hello",
                    "host-name": "hello.example.com",
                    "path": "api",
                    "tls-secret": "tls",
                    "gateway": "traefik",
                    "basic-auth-secret": "auth",
                    "cors-enable": true,
                },
            })
        );
        let server = url::Url::parse("https://192.168.99.100:8443").expect("url");
        assert_eq!(local_hostname("hello", &server).as_deref(), Some("hello.192.168.99.100.nip.io"));
        let bad = HttpChange { gateway: Some("envoy".into()), ..HttpChange::default() };
        assert_eq!(bad.validate().expect_err("envoy").flag, "--gateway");
        let both = HttpChange { tls_acme: Some(true), tls_secret: Some("t".into()), ..HttpChange::default() };
        assert_eq!(both.validate().expect_err("both").flag, "--enableTLSAcme");
    }
}
