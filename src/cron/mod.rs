//! The built-in scheduler for `CronJobTrigger`: ticks fired in-process through the same delivery
//! path as messages (headers, retries, metrics), with concurrency policies and a remembered last
//! tick so a restart never fires a tick twice.

pub mod runner;
pub mod state;
