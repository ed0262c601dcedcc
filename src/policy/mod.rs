//! The admin's tenancy policy: what the author of a trigger or a Function may make the daemon do.
//!
//! One broker serves every namespace of a shared cluster, and trigger and Function authors are
//! untrusted. Every knob lives here (set by flags, each with an environment variable: `config.rs`),
//! with safe defaults for a shared cluster ([`TenancyPolicy::shared_cluster`]); standalone mode,
//! whose manifest author is the admin, is unrestricted ([`TenancyPolicy::trusted`]). The checks
//! are pure: the index applies them to triggers, the reconcilers to Functions and HTTPTriggers.

mod args;
pub mod pods;

pub use args::PolicyArgs;

use std::time::Duration;

use crate::schedule::Schedule;

/// Where the policy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Tenancy {
    /// Shared in Kubernetes mode, trusted in standalone mode.
    #[default]
    Auto,
    /// Trigger and Function authors are untrusted: the policy applies.
    Shared,
    /// Whoever writes the resources is the admin: nothing is refused for policy.
    Trusted,
}

/// Ceilings on what one trigger may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_in_flight: u32,
    pub max_uncommitted: u32,
    pub max_topics: usize,
    pub max_functions: usize,
    /// The shortest time between two ticks of a cron schedule.
    pub min_cron_interval: Duration,
    /// Consuming triggers (Kafka, NATS, Kinesis, cron) one namespace may run.
    pub max_triggers_per_namespace: usize,
}

impl Limits {
    /// As high as validation allows: no ceiling beyond it.
    pub fn none() -> Self {
        Self {
            max_in_flight: crate::resources::MAX_MAX_IN_FLIGHT,
            max_uncommitted: *crate::resources::MAX_UNCOMMITTED_RANGE.end(),
            max_topics: usize::MAX,
            max_functions: usize::MAX,
            min_cron_interval: Duration::ZERO,
            max_triggers_per_namespace: usize::MAX,
        }
    }
}

/// Defaults of a shared cluster (each is a flag).
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 1_000;
pub const DEFAULT_MAX_UNCOMMITTED: u32 = 100_000;
pub const DEFAULT_MAX_TOPICS: usize = 16;
pub const DEFAULT_MAX_FUNCTIONS: usize = 16;
pub const DEFAULT_MIN_CRON_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_TRIGGERS_PER_NAMESPACE: usize = 100;
/// Dead-letter topics a tenant may write: under its own namespace's name. `.` and `_` cannot be in
/// a namespace's name, so `team.x` can only be `team`'s.
pub const DEFAULT_DEAD_LETTER_TOPICS: &str = "{namespace}.*,{namespace}_*";

/// What a trigger or Function author may make the daemon do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenancyPolicy {
    /// False: everything is allowed (standalone mode, `--tenancy trusted`).
    pub enforced: bool,
    /// `kubeless.io/url` values honoured (URL prefixes; `*`: any).
    pub function_urls: AllowList,
    /// Kafka brokers and NATS servers a trigger may name besides the daemon's own (`host[:port]`,
    /// `*.domain[:port]`, `*`). They never get the daemon's credentials.
    pub tenant_brokers: AllowList,
    /// A Kafka consumer group may be any string (else it is put under the trigger's namespace).
    pub foreign_consumer_groups: bool,
    /// Dead-letter topic and subject patterns (`*` any run of characters, `{namespace}` the
    /// trigger's).
    pub dead_letter_topics: Vec<String>,
    /// Topics and subjects a trigger may read (same patterns); default any, as in Kubeless.
    pub trigger_topics: Vec<String>,
    /// A KinesisTrigger without `secret` uses the pod's own AWS identity.
    pub kinesis_ambient_identity: bool,
    /// Kinesis `endpoint` overrides allowed (URL prefixes; `*`: any).
    pub kinesis_endpoints: AllowList,
    pub limits: Limits,
    /// What a Function's pod, Service and HTTPTrigger may ask for.
    pub pods: pods::PodPolicy,
}

impl TenancyPolicy {
    /// The manifest author is the admin.
    pub fn trusted() -> Self {
        Self {
            enforced: false,
            function_urls: AllowList::any(),
            tenant_brokers: AllowList::any(),
            foreign_consumer_groups: true,
            dead_letter_topics: vec!["*".to_string()],
            trigger_topics: vec!["*".to_string()],
            kinesis_ambient_identity: true,
            kinesis_endpoints: AllowList::any(),
            limits: Limits::none(),
            pods: pods::PodPolicy::trusted(),
        }
    }

    /// The defaults of a shared cluster.
    pub fn shared_cluster() -> Self {
        Self {
            enforced: true,
            function_urls: AllowList::default(),
            tenant_brokers: AllowList::default(),
            foreign_consumer_groups: false,
            dead_letter_topics: DEFAULT_DEAD_LETTER_TOPICS.split(',').map(str::to_string).collect(),
            trigger_topics: vec!["*".to_string()],
            kinesis_ambient_identity: false,
            kinesis_endpoints: AllowList::default(),
            limits: Limits {
                max_in_flight: DEFAULT_MAX_IN_FLIGHT,
                max_uncommitted: DEFAULT_MAX_UNCOMMITTED,
                max_topics: DEFAULT_MAX_TOPICS,
                max_functions: DEFAULT_MAX_FUNCTIONS,
                min_cron_interval: DEFAULT_MIN_CRON_INTERVAL,
                max_triggers_per_namespace: DEFAULT_MAX_TRIGGERS_PER_NAMESPACE,
            },
            pods: pods::PodPolicy::default(),
        }
    }

    /// The consumer group a trigger in `namespace` joins for the rendered `group`: unchanged when
    /// it already starts with the namespace and a separator no namespace name holds (`_`, `.`),
    /// as Kubeless's default `<ns>_<trigger>_<fn>_<topic>` does; else put under the namespace
    /// (`<ns>_<group>`), so no trigger can join another namespace's or an application's group.
    pub fn consumer_group(&self, namespace: &str, group: &str) -> String {
        if !self.enforced || self.foreign_consumer_groups || in_namespace(namespace, group) {
            return group.to_string();
        }
        format!("{namespace}_{group}")
    }

    /// Whether a trigger in `namespace` may dead-letter to `topic` (a Kafka topic or a NATS
    /// subject). NATS's own subjects (`$JS.API…`, `$SYS…`, `_INBOX…`) never: a dead letter there
    /// would be a request to the server (deleting a stream, say).
    pub fn dead_letter_topic_allowed(&self, namespace: &str, topic: &str) -> bool {
        self.topic_allowed(&self.dead_letter_topics, namespace, topic)
    }

    /// Whether a trigger in `namespace` may read `topic` (a Kafka topic, a NATS subject).
    pub fn trigger_topic_allowed(&self, namespace: &str, topic: &str) -> bool {
        self.topic_allowed(&self.trigger_topics, namespace, topic)
    }

    /// `topic` matches one of `patterns` (`{namespace}` filled in) and is none of NATS's own.
    fn topic_allowed(&self, patterns: &[String], namespace: &str, topic: &str) -> bool {
        !self.enforced
            || (!reserved_subject(topic)
                && patterns.iter().any(|p| glob_matches(&p.replace("{namespace}", namespace), topic)))
    }

    /// Whether a `kubeless.io/url` may be used.
    pub fn function_url_allowed(&self, url: &str) -> bool {
        !self.enforced || self.function_urls.allows_url(url)
    }

    /// Whether every broker of a comma-separated list may be named by a tenant.
    pub fn tenant_brokers_allowed(&self, brokers: &str) -> bool {
        !self.enforced || broker_list(brokers).iter().all(|b| self.tenant_brokers.allows_host_port(b))
    }

    /// The shortest gap between the next ticks of a schedule, if shorter than the admin's minimum.
    pub fn cron_too_frequent(&self, schedule: &str, timezone: Option<&str>) -> Option<Duration> {
        if !self.enforced || self.limits.min_cron_interval.is_zero() {
            return None;
        }
        let schedule = Schedule::parse(schedule, timezone).ok()?;
        let mut t = schedule.next_after(chrono::Utc::now())?;
        let mut shortest: Option<Duration> = None;
        // Enough ticks to see the shortest gap of any schedule that bunches its ticks together.
        for _ in 0..64 {
            let Some(next) = schedule.next_after(t) else { break };
            let gap = (next - t).to_std().unwrap_or_default();
            shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
            t = next;
        }
        shortest.filter(|s| *s < self.limits.min_cron_interval)
    }
}

/// NATS's own subjects: the JetStream and system APIs and request inboxes.
pub fn reserved_subject(subject: &str) -> bool {
    subject.starts_with('$') || subject.starts_with("_INBOX.")
}

/// The hosts of a broker list, normalised (`host:port`, trimmed, lower case).
pub fn broker_list(brokers: &str) -> Vec<String> {
    let mut out: Vec<String> =
        brokers.split(',').map(|b| b.trim().to_ascii_lowercase()).filter(|b| !b.is_empty()).collect();
    out.sort();
    out.dedup();
    out
}

/// Same brokers, whatever their order, spacing or case.
pub fn same_brokers(a: &str, b: &str) -> bool {
    broker_list(a) == broker_list(b)
}

fn in_namespace(namespace: &str, group: &str) -> bool {
    group.strip_prefix(namespace).is_some_and(|rest| rest.starts_with('_') || rest.starts_with('.'))
}

/// `*` matches any run of characters (none included); everything else matches itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// An admin's allow-list: URL prefixes or `host[:port]` entries; `*` alone allows anything; empty
/// allows nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowList(Vec<String>);

impl AllowList {
    pub fn any() -> Self {
        Self(vec!["*".to_string()])
    }

    /// From comma-separated or repeated flag values; blanks are dropped.
    pub fn new(entries: &[String]) -> Self {
        Self(entries.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect())
    }

    fn is_any(&self) -> bool {
        self.0.iter().any(|e| e == "*")
    }

    /// A URL is allowed when an entry has its scheme, host and port, and its path is a prefix of
    /// the URL's path. Compared parsed, so `http://ok.example@evil.example/` is evil.example's and
    /// `http://ok.example.evil.example/` is not ok.example's. Credentials in the URL do not count.
    pub fn allows_url(&self, url: &str) -> bool {
        if self.is_any() {
            return true;
        }
        let Ok(url) = url::Url::parse(url) else { return false };
        self.0.iter().filter_map(|e| url::Url::parse(e).ok()).any(|prefix| {
            prefix.scheme() == url.scheme()
                && prefix.host_str().map(str::to_ascii_lowercase) == url.host_str().map(str::to_ascii_lowercase)
                && prefix.port_or_known_default() == url.port_or_known_default()
                && path_prefix(prefix.path(), url.path())
        })
    }

    /// `host:port` against `host[:port]`, `*.domain[:port]` (any subdomain) or `*`.
    pub fn allows_host_port(&self, host_port: &str) -> bool {
        if self.is_any() {
            return true;
        }
        let (host, port) = split_host_port(host_port);
        self.0.iter().any(|e| {
            let (allowed_host, allowed_port) = split_host_port(&e.to_ascii_lowercase());
            let host_ok = match allowed_host.strip_prefix("*.") {
                Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
                None => allowed_host == host,
            };
            host_ok && (allowed_port.is_none() || allowed_port == port)
        })
    }
}

fn path_prefix(prefix: &str, path: &str) -> bool {
    prefix == "/" || path == prefix || path.starts_with(&format!("{}/", prefix.trim_end_matches('/')))
}

/// `host:port` → (`host`, `port`); IPv6 in brackets; no port → `None`.
fn split_host_port(s: &str) -> (String, Option<String>) {
    let s = s.trim().to_ascii_lowercase();
    let s = s.rsplit_once("://").map_or(s.as_str(), |(_, rest)| rest).to_string();
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host.to_string(), after.strip_prefix(':').map(str::to_string));
        }
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host.to_string(), Some(port.to_string())),
        _ => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> TenancyPolicy {
        TenancyPolicy::shared_cluster()
    }

    #[test]
    fn consumer_groups_are_put_under_the_trigger_namespace_unless_already_there() {
        let p = shared();
        assert_eq!(p.consumer_group("team-a", "team-a_t_f_orders"), "team-a_t_f_orders", "Kubeless's default");
        assert_eq!(p.consumer_group("team-a", "team-a.billing"), "team-a.billing");
        assert_eq!(p.consumer_group("team-b", "team-a_t_f_orders"), "team-b_team-a_t_f_orders");
        assert_eq!(p.consumer_group("team", "team-a_orders"), "team_team-a_orders", "a longer namespace is not ours");
        assert_eq!(p.consumer_group("team-b", "payments-app"), "team-b_payments-app");
        assert_eq!(TenancyPolicy::trusted().consumer_group("team-b", "payments-app"), "payments-app");
        let loose = TenancyPolicy { foreign_consumer_groups: true, ..shared() };
        assert_eq!(loose.consumer_group("team-b", "payments-app"), "payments-app");
    }

    #[test]
    fn dead_letter_topics_default_to_the_namespace_own() {
        let p = shared();
        assert!(p.dead_letter_topic_allowed("team-a", "team-a.dlq"));
        assert!(p.dead_letter_topic_allowed("team-a", "team-a_orders_dlq"));
        assert!(!p.dead_letter_topic_allowed("team-a", "payments"));
        assert!(!p.dead_letter_topic_allowed("team", "team-a.dlq"));
        assert!(TenancyPolicy::trusted().dead_letter_topic_allowed("team", "payments"));
        let any = TenancyPolicy { dead_letter_topics: vec!["*".into()], ..p.clone() };
        assert!(!any.dead_letter_topic_allowed("team-a", "$JS.API.STREAM.DELETE.orders"), "never NATS's own API");
        assert!(!any.dead_letter_topic_allowed("team-a", "_INBOX.abc"));
        assert!(p.trigger_topic_allowed("team-a", "hello-topic"), "any topic by default, as Kubeless");
        assert!(!p.trigger_topic_allowed("team-a", "$SYS.ACCOUNT.x.CONNECT"));
        let fenced = TenancyPolicy { trigger_topics: vec!["{namespace}.*".into()], ..p };
        assert!(fenced.trigger_topic_allowed("team-a", "team-a.orders"));
        assert!(!fenced.trigger_topic_allowed("team-a", "team-b.orders"));
    }

    #[test]
    fn globs_match_runs_of_any_characters() {
        assert!(glob_matches("a.*", "a.b.c"));
        assert!(glob_matches("a*c", "ac"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("x*y*z", "x1y2z"));
        assert!(!glob_matches("x*y*z", "x1z"));
        assert!(!glob_matches("a.*", "b.a.c"));
        assert!(!glob_matches("ab", "abc"));
        assert!(!glob_matches("a*a", "a"));
    }

    #[test]
    fn function_urls_are_fenced_by_parsed_prefix() {
        let p = TenancyPolicy {
            function_urls: AllowList::new(&["http://fn.internal:8080/".into(), "https://api.example/hooks".into()]),
            ..shared()
        };
        assert!(p.function_url_allowed("http://fn.internal:8080/x"));
        assert!(p.function_url_allowed("http://user:pass@fn.internal:8080/"), "credentials do not count");
        assert!(p.function_url_allowed("https://api.example/hooks/a"));
        assert!(p.function_url_allowed("https://api.example:443/hooks"));
        assert!(!p.function_url_allowed("https://api.example/hooksmith"));
        assert!(!p.function_url_allowed("http://fn.internal:8080@169.254.169.254/"));
        assert!(!p.function_url_allowed("http://fn.internal.evil.example:8080/"));
        assert!(!p.function_url_allowed("http://fn.internal:8081/"));
        assert!(!p.function_url_allowed("https://fn.internal:8080/"));
        assert!(!p.function_url_allowed("not a url"));
        assert!(!shared().function_url_allowed("http://127.0.0.1/"), "none by default");
        let any = TenancyPolicy { function_urls: AllowList::any(), ..shared() };
        assert!(any.function_url_allowed("http://10.0.0.1/"));
    }

    #[test]
    fn tenant_brokers_match_hosts_ports_and_domains() {
        let p = TenancyPolicy {
            tenant_brokers: AllowList::new(&["kafka.team-a:9092".into(), "*.msk.example".into()]),
            ..shared()
        };
        assert!(p.tenant_brokers_allowed("kafka.team-a:9092"));
        assert!(p.tenant_brokers_allowed("b-1.msk.example:9096, b-2.msk.example:9096"));
        assert!(!p.tenant_brokers_allowed("kafka.team-a:9092,evil:9092"), "every broker of the list");
        assert!(!p.tenant_brokers_allowed("kafka.team-a:9093"));
        assert!(!p.tenant_brokers_allowed("msk.example:9096"));
        assert!(!p.tenant_brokers_allowed("evilmsk.example:9096"));
        assert!(!shared().tenant_brokers_allowed("127.0.0.1:9092"));
        assert!(same_brokers("a:1, B:2", "b:2,a:1"));
    }

    #[test]
    fn cron_schedules_more_frequent_than_the_minimum_are_found() {
        let p = shared();
        assert_eq!(p.cron_too_frequent("* * * * * *", None), Some(Duration::from_secs(1)));
        assert_eq!(p.cron_too_frequent("@every 2s", None), Some(Duration::from_secs(2)));
        assert_eq!(p.cron_too_frequent("0,1 * * * * *", None), Some(Duration::from_secs(1)));
        assert_eq!(p.cron_too_frequent("*/15 * * * * *", None), None);
        assert_eq!(p.cron_too_frequent("*/5 * * * *", None), None);
        assert_eq!(TenancyPolicy::trusted().cron_too_frequent("* * * * * *", None), None);
    }
}
