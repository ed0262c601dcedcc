//! What names an object the broker reads ([`Kind`], [`ObjectRef`]) and one valid object of any
//! kind ([`Resource`]): the vocabulary the control plane, the API watches and status share.

use std::fmt;

use super::{CronJobTrigger, DeliveryPolicy, Function, HTTPTrigger, KafkaTrigger, KinesisTrigger, NATSTrigger};

/// The kinds the broker reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    Secret,
    Function,
    KafkaTrigger,
    NATSTrigger,
    KinesisTrigger,
    CronJobTrigger,
    HTTPTrigger,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Secret,
        Kind::Function,
        Kind::KafkaTrigger,
        Kind::NATSTrigger,
        Kind::KinesisTrigger,
        Kind::CronJobTrigger,
        Kind::HTTPTrigger,
    ];
    /// The kinds that carry a trigger status.
    pub const TRIGGERS: [Kind; 5] =
        [Kind::KafkaTrigger, Kind::NATSTrigger, Kind::KinesisTrigger, Kind::CronJobTrigger, Kind::HTTPTrigger];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Secret => "Secret",
            Kind::Function => "Function",
            Kind::KafkaTrigger => "KafkaTrigger",
            Kind::NATSTrigger => "NATSTrigger",
            Kind::KinesisTrigger => "KinesisTrigger",
            Kind::CronJobTrigger => "CronJobTrigger",
            Kind::HTTPTrigger => "HTTPTrigger",
        }
    }

    pub fn parse(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    pub fn is_trigger(self) -> bool {
        Kind::TRIGGERS.contains(&self)
    }

    /// The resource's plural, as the API serves it.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Secret => "secrets",
            Kind::Function => "functions",
            Kind::KafkaTrigger => "kafkatriggers",
            Kind::NATSTrigger => "natstriggers",
            Kind::KinesisTrigger => "kinesistriggers",
            Kind::CronJobTrigger => "cronjobtriggers",
            Kind::HTTPTrigger => "httptriggers",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { kind, namespace: namespace.into(), name: name.into() }
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl serde::Serialize for ObjectRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One valid resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A `v1` Secret: in standalone mode, the source of credentials triggers refer to.
    Secret(k8s_openapi::api::core::v1::Secret),
    Function(Function),
    Kafka(KafkaTrigger, DeliveryPolicy),
    Nats(NATSTrigger, DeliveryPolicy),
    Kinesis(KinesisTrigger, DeliveryPolicy),
    CronJob(CronJobTrigger, DeliveryPolicy),
    Http(HTTPTrigger),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Secret(_) => Kind::Secret,
            Self::Function(_) => Kind::Function,
            Self::Kafka(..) => Kind::KafkaTrigger,
            Self::Nats(..) => Kind::NATSTrigger,
            Self::Kinesis(..) => Kind::KinesisTrigger,
            Self::CronJob(..) => Kind::CronJobTrigger,
            Self::Http(_) => Kind::HTTPTrigger,
        }
    }
}
