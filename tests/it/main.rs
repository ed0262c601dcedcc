//! Every integration test in one binary: one link instead of one per file (each is several hundred
//! megabytes with the AWS SDK, rdkafka and kube), so a cold build fits a small disk and links once.
mod chaos_brokers;
mod chaos_function;
mod chaos_state;
mod cli;
mod common;
mod compose;
mod cron;
mod demo;
mod deploy;
mod examples_makefile;
mod functions;
mod hostile_messages;
mod kafka_backpressure;
mod kafka_delivery;
mod kafka_restarts;
mod kinesis;
mod kubernetes;
mod local_functions;
mod manifest_changes;
mod memory_budget;
mod nats;
mod runtimes;
mod status_reasons;
mod tenancy;
