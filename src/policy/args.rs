//! The policy's flags, each with an environment variable: the one place an admin sets what
//! tenants may do (docs/shared-cluster.md).

use std::time::Duration;

use clap::{ArgAction, Args};

use super::pods::PodPolicy;
use super::{AllowList, Limits, Tenancy, TenancyPolicy};

#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Who writes the resources. `shared`: application teams, untrusted (the limits below apply);
    /// `trusted`: the admin (nothing is refused for policy); `auto`: shared in Kubernetes mode,
    /// trusted in standalone mode.
    #[arg(long, env = "KUBELESS_TENANCY", value_enum, default_value_t = Tenancy::Auto)]
    pub tenancy: Tenancy,

    /// `kubeless.io/url` values honoured (Kubernetes mode): URL prefixes (scheme, host, port and
    /// path prefix), comma-separated; `*` for any. Default: none (functions are reached at their
    /// Service).
    #[arg(long, env = "KUBELESS_FUNCTION_URL_ALLOW", value_delimiter = ',')]
    pub function_url_allow: Vec<String>,

    /// Kafka brokers and NATS servers a trigger may name besides the daemon's own: `host[:port]`,
    /// `*.domain[:port]` or `*`, comma-separated. They never get the daemon's credentials (a
    /// trigger brings its own in a Secret). Default: none.
    #[arg(long, env = "KUBELESS_TENANT_BROKERS", value_delimiter = ',')]
    pub tenant_brokers: Vec<String>,

    /// Let `spec.consumerGroup` name any group. Default: a group not starting with
    /// `<namespace>_` or `<namespace>.` is put under the trigger's namespace.
    #[arg(long, env = "KUBELESS_ALLOW_FOREIGN_CONSUMER_GROUPS", default_value_t = false, action = ArgAction::Set)]
    pub allow_foreign_consumer_groups: bool,

    /// Dead-letter topics a trigger may write: patterns where `*` is any run of characters and
    /// `{namespace}` the trigger's namespace, comma-separated.
    #[arg(long, env = "KUBELESS_DEAD_LETTER_TOPICS", value_delimiter = ',', default_value = super::DEFAULT_DEAD_LETTER_TOPICS)]
    pub dead_letter_topics: Vec<String>,

    /// Kafka topics and NATS subjects a trigger may read: patterns as for dead letters,
    /// comma-separated. Default any (as Kubeless); e.g. `{namespace}.*` keeps each team to its own.
    /// NATS's own subjects (`$…`, `_INBOX.…`) are never read.
    #[arg(long, env = "KUBELESS_TRIGGER_TOPICS", value_delimiter = ',', default_value = "*")]
    pub trigger_topics: Vec<String>,

    /// A KinesisTrigger without `secret` reads with the pod's own AWS identity. Default: the
    /// Secret is required, as in Kubeless.
    #[arg(long, env = "KUBELESS_KINESIS_AMBIENT_IDENTITY", default_value_t = false, action = ArgAction::Set)]
    pub kinesis_ambient_identity: bool,

    /// Kinesis `endpoint` overrides allowed: URL prefixes, comma-separated; `*` for any. Default: none.
    #[arg(long, env = "KUBELESS_KINESIS_ENDPOINT_ALLOW", value_delimiter = ',')]
    pub kinesis_endpoint_allow: Vec<String>,

    /// The most `delivery.maxInFlight` a trigger may ask for.
    #[arg(long, env = "KUBELESS_MAX_IN_FLIGHT", default_value_t = super::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: u32,

    /// The most `delivery.maxUncommitted` a trigger may ask for.
    #[arg(long, env = "KUBELESS_MAX_UNCOMMITTED", default_value_t = super::DEFAULT_MAX_UNCOMMITTED)]
    pub max_uncommitted: u32,

    /// The most topics one KafkaTrigger may read.
    #[arg(long, env = "KUBELESS_MAX_TOPICS_PER_TRIGGER", default_value_t = super::DEFAULT_MAX_TOPICS)]
    pub max_topics_per_trigger: usize,

    /// The most Functions one trigger's selector may feed.
    #[arg(long, env = "KUBELESS_MAX_FUNCTIONS_PER_TRIGGER", default_value_t = super::DEFAULT_MAX_FUNCTIONS)]
    pub max_functions_per_trigger: usize,

    /// The most consuming triggers (Kafka, NATS, Kinesis, cron) one namespace may run; past it, the
    /// latest created are refused. Bounds what one team takes of the memory budget's shares.
    #[arg(long, env = "KUBELESS_MAX_TRIGGERS_PER_NAMESPACE", default_value_t = super::DEFAULT_MAX_TRIGGERS_PER_NAMESPACE)]
    pub max_triggers_per_namespace: usize,

    /// The shortest time between two ticks of a CronJobTrigger's schedule.
    #[arg(long, env = "KUBELESS_MIN_CRON_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub min_cron_interval: Duration,

    /// ServiceAccounts a Function's pods may run as, comma-separated.
    #[arg(long, env = "KUBELESS_FUNCTION_SERVICE_ACCOUNTS", value_delimiter = ',', default_value = "default")]
    pub function_service_accounts: Vec<String>,

    /// Let a Function's pods mount their ServiceAccount token. Default: off
    /// (`automountServiceAccountToken: false`).
    #[arg(long, env = "KUBELESS_FUNCTION_TOKEN_AUTOMOUNT", default_value_t = false, action = ArgAction::Set)]
    pub function_token_automount: bool,

    /// Service types a Function may ask for, comma-separated.
    #[arg(long, env = "KUBELESS_FUNCTION_SERVICE_TYPES", value_delimiter = ',', default_value = "ClusterIP")]
    pub function_service_types: Vec<String>,

    /// Annotations an HTTPTrigger may carry to its Ingress (globs, comma-separated), beyond those
    /// the gateway mapping writes. `*-snippet` is never copied. Default: none.
    #[arg(long, env = "KUBELESS_INGRESS_ANNOTATION_ALLOW", value_delimiter = ',')]
    pub ingress_annotation_allow: Vec<String>,

    /// Domains an HTTPTrigger's `host-name` must be in, comma-separated. Default: any.
    #[arg(long, env = "KUBELESS_INGRESS_DOMAINS", value_delimiter = ',')]
    pub ingress_domains: Vec<String>,
}

impl PolicyArgs {
    /// The policy these flags describe; `standalone` decides `--tenancy auto`.
    pub fn policy(&self, standalone: bool) -> anyhow::Result<TenancyPolicy> {
        let shared = match self.tenancy {
            Tenancy::Auto => !standalone,
            Tenancy::Shared => true,
            Tenancy::Trusted => false,
        };
        if !shared {
            return Ok(TenancyPolicy::trusted());
        }
        if self.max_in_flight == 0 || self.max_uncommitted == 0 {
            anyhow::bail!("--max-in-flight and --max-uncommitted must be at least 1");
        }
        let clean = |v: &[String]| -> Vec<String> {
            v.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
        };
        for prefix in clean(&self.function_url_allow).iter().chain(&clean(&self.kinesis_endpoint_allow)) {
            if prefix != "*" {
                url::Url::parse(prefix).map_err(|e| {
                    anyhow::anyhow!("--function-url-allow/--kinesis-endpoint-allow {prefix:?} is not a URL prefix such as http://fn.internal:8080/: {e}")
                })?;
            }
        }
        Ok(TenancyPolicy {
            enforced: true,
            function_urls: AllowList::new(&self.function_url_allow),
            tenant_brokers: AllowList::new(&self.tenant_brokers),
            foreign_consumer_groups: self.allow_foreign_consumer_groups,
            dead_letter_topics: clean(&self.dead_letter_topics),
            trigger_topics: clean(&self.trigger_topics),
            kinesis_ambient_identity: self.kinesis_ambient_identity,
            kinesis_endpoints: AllowList::new(&self.kinesis_endpoint_allow),
            limits: Limits {
                max_in_flight: self.max_in_flight,
                max_uncommitted: self.max_uncommitted,
                max_topics: self.max_topics_per_trigger,
                max_functions: self.max_functions_per_trigger,
                min_cron_interval: self.min_cron_interval,
                max_triggers_per_namespace: self.max_triggers_per_namespace,
            },
            pods: PodPolicy {
                enforced: true,
                service_accounts: clean(&self.function_service_accounts),
                automount_token: self.function_token_automount,
                service_types: clean(&self.function_service_types),
                ingress_annotations: clean(&self.ingress_annotation_allow),
                ingress_domains: clean(&self.ingress_domains),
            },
        })
    }
}
