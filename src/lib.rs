//! Kubeless's trigger system, rebuilt: `kubeless-broker` reads `kubeless.io/v1beta1` triggers and
//! functions, consumes the event buses they name, and delivers every message to every matching
//! function as an HTTP POST, at least once.
//!
//! ```text
//! manifests dir ─► control::manifests (parse, validate) ─► control::index (desired consumers)
//!              ─► control::supervisor (diff: start / stop / restart only what changed)
//! broker ─► connectors::<kind> source (position held) ─► bounded channel
//!        ─► dispatch (ordering lanes, max in flight, rate limit) ─► delivery (POST, retry, DLQ)
//!        ─► ack ─► source commits the contiguous finished prefix
//! ```

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod cron;
pub mod delivery;
pub mod dispatch;
pub mod functions;
pub mod kubernetes;
pub mod local;
pub mod policy;
pub mod resources;
pub mod schedule;
pub mod shutdown;
pub mod telemetry;

#[cfg(test)]
mod hostile_input;
