//! `kubeless trigger kafka`: a topic delivered to the functions a selector picks. Its commands are
//! the selector triggers' (in `trigger`); Kafka topics, and publishing to them, are `kubeless topic`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::SelectorTrigger;
use crate::cli::common::{created_by, meta};
use crate::cli::table;
use crate::resources::{KafkaTrigger, KafkaTriggerSpec};

/// `kubeless trigger kafka create NAME --trigger-topic T --function-selector S`.
pub fn kafka_trigger(name: &str, namespace: &str, topic: &str, selector: LabelSelector) -> KafkaTrigger {
    let mut t = KafkaTrigger::new(
        name,
        KafkaTriggerSpec { function_selector: Some(selector), topic: Some(topic.to_string()), ..Default::default() },
    );
    t.metadata = meta(name, namespace, created_by());
    t
}

impl SelectorTrigger for KafkaTrigger {
    fn build(name: &str, ns: &str, topic: &str, selector: LabelSelector) -> Self {
        kafka_trigger(name, ns, topic, selector)
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
