//! Cron schedules: standard 5 fields, an optional leading seconds field (6 fields), `@hourly`-style
//! macros, in an optional IANA time zone (default UTC) — and what Kubeless's robfig/cron
//! (`ParseStandard`) accepted besides: `@midnight`, `@every <duration>`, and a `CRON_TZ=<zone>` or
//! `TZ=<zone>` prefix.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{pattern:?} is not a cron schedule ({reason}); use 5 fields (\"*/5 * * * *\"), 6 with seconds first, or @hourly/@daily/…")]
    BadPattern { pattern: String, reason: String },
    #[error("{0:?} is not a known time zone (use an IANA name such as Europe/Berlin)")]
    UnknownTimezone(String),
    #[error("the schedule's {prefix} names {in_schedule:?} but timezone is {in_field:?}; keep one")]
    TwoTimezones { prefix: &'static str, in_schedule: String, in_field: String },
    #[error("{pattern:?}: {reason}; write @every with a duration such as 5m, 1h30m or 90s")]
    BadEvery { pattern: String, reason: String },
}

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    tz: Tz,
}

#[derive(Debug, Clone)]
enum Kind {
    Cron(Box<Cron>),
    /// `@every`: ticks on whole multiples of the interval since the Unix epoch, so every replica
    /// and every restart computes the same ticks (robfig counted from when its cron started).
    Every(chrono::Duration),
}

impl Schedule {
    pub fn parse(pattern: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        let (pattern, prefixed) = split_timezone_prefix(pattern);
        let field = timezone.map(str::trim).filter(|t| !t.is_empty());
        let name = match (prefixed, field) {
            (Some((prefix, a)), Some(b)) if a != b => {
                return Err(ScheduleError::TwoTimezones { prefix, in_schedule: a.to_string(), in_field: b.to_string() })
            }
            (Some((_, name)), _) | (None, Some(name)) => Some(name),
            (None, None) => None,
        };
        let tz = match name {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| ScheduleError::UnknownTimezone(name.to_string()))?,
        };
        let pattern = pattern.trim();
        if let Some(every) = pattern.strip_prefix("@every") {
            let bad = |reason: String| ScheduleError::BadEvery { pattern: pattern.to_string(), reason };
            let interval = humantime::parse_duration(every.trim()).map_err(|e| bad(e.to_string()))?;
            if interval < std::time::Duration::from_secs(1) {
                return Err(bad("the interval must be at least 1s".to_string()));
            }
            let interval = chrono::Duration::from_std(interval).map_err(|e| bad(e.to_string()))?;
            return Ok(Self { kind: Kind::Every(interval), tz });
        }
        // robfig's `@midnight` is `@daily`.
        let pattern = if pattern == "@midnight" { "@daily" } else { pattern };
        let fields = pattern.split_whitespace().count();
        if !pattern.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(ScheduleError::BadPattern { pattern: pattern.to_string(), reason: format!("{fields} fields") });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| ScheduleError::BadPattern { pattern: pattern.to_string(), reason: e.to_string() })?;
        Ok(Self { kind: Kind::Cron(Box::new(cron)), tz })
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron(cron) => {
                cron.find_next_occurrence(&t.with_timezone(&self.tz), false).ok().map(|d| d.with_timezone(&Utc))
            }
            // None past the end of time (`@every 100000y`), never an overflow.
            Kind::Every(interval) => floor(t, *interval)?.checked_add_signed(*interval),
        }
    }

    /// The time between the next two ticks after `t`: how long one tick's call may be retried
    /// before the next tick is due.
    pub fn interval_after(&self, t: DateTime<Utc>) -> Option<Duration> {
        let next = self.next_after(t)?;
        (self.next_after(next)? - next).to_std().ok()
    }

    /// The last tick at or before `t`.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron(cron) => {
                cron.find_previous_occurrence(&t.with_timezone(&self.tz), true).ok().map(|d| d.with_timezone(&Utc))
            }
            Kind::Every(interval) => floor(t, *interval),
        }
    }
}

/// The last whole multiple of `interval` since the epoch at or before `t`.
fn floor(t: DateTime<Utc>, interval: chrono::Duration) -> Option<DateTime<Utc>> {
    let step = interval.num_milliseconds();
    let ms = t.timestamp_millis();
    DateTime::from_timestamp_millis(ms - ms.rem_euclid(step.max(1)))
}

/// `CRON_TZ=Europe/Berlin 0 9 * * *` → (`0 9 * * *`, the prefix and zone).
fn split_timezone_prefix(pattern: &str) -> (&str, Option<(&'static str, &str)>) {
    let trimmed = pattern.trim_start();
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = trimmed.strip_prefix(prefix) {
            let (zone, schedule) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            return (schedule, Some((prefix.trim_end_matches('='), zone)));
        }
    }
    (pattern, None)
}

/// The missed tick to fire when the scheduler starts (after downtime), if any: the latest tick after
/// the last one fired, if it is within `starting_deadline` of now (no deadline: any age). Without a
/// remembered tick nothing is missed: a new trigger starts with its next tick. Never a tick at or
/// before `last_fired`, so a restart never fires a tick twice.
pub fn missed_tick(
    schedule: &Schedule,
    last_fired: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    starting_deadline: Option<Duration>,
) -> Option<DateTime<Utc>> {
    let last_fired = last_fired?;
    let latest = schedule.last_at_or_before(now)?;
    if latest <= last_fired {
        return None;
    }
    match starting_deadline {
        Some(deadline) if (now - latest).to_std().unwrap_or_default() > deadline => None,
        _ => Some(latest),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, h, m, s).single().expect("valid time")
    }

    #[test]
    fn five_fields_six_fields_and_macros_parse() {
        let every5 = Schedule::parse("*/5 * * * *", None).expect("5 fields");
        assert_eq!(every5.next_after(at(10, 2, 30)), Some(at(10, 5, 0)));
        let every2s = Schedule::parse("*/2 * * * * *", None).expect("6 fields");
        assert_eq!(every2s.next_after(at(10, 0, 1)), Some(at(10, 0, 2)));
        let hourly = Schedule::parse("@hourly", None).expect("macro");
        assert_eq!(hourly.next_after(at(10, 0, 0)), Some(at(11, 0, 0)));
        assert!(Schedule::parse("@daily", None).is_ok());
    }

    #[test]
    fn what_kubeless_robfig_cron_accepted_parses_too() {
        let every = Schedule::parse("@every 5m", None).expect("@every");
        assert_eq!(every.next_after(at(10, 2, 30)), Some(at(10, 5, 0)));
        assert_eq!(every.last_at_or_before(at(10, 5, 0)), Some(at(10, 5, 0)));
        assert_eq!(Schedule::parse("@every 1h30m", None).expect("h m").next_after(at(10, 0, 0)), Some(at(10, 30, 0)));
        let midnight = Schedule::parse("@midnight", None).expect("@midnight");
        assert_eq!(midnight.next_after(at(10, 0, 0)), Some(at(0, 0, 0) + chrono::Duration::days(1)));
        // 09:00 in Berlin is 08:00 UTC in November, whichever prefix names the zone.
        for prefixed in ["CRON_TZ=Europe/Berlin 0 9 * * *", "TZ=Europe/Berlin 0 9 * * *"] {
            let s = Schedule::parse(prefixed, None).expect(prefixed);
            assert_eq!(s.next_after(at(7, 0, 0)), Some(at(8, 0, 0)), "{prefixed}");
        }
        assert!(
            Schedule::parse("CRON_TZ=Europe/Berlin 0 9 * * *", Some("Europe/Berlin")).is_ok(),
            "the same zone twice"
        );
        let err = Schedule::parse("CRON_TZ=Europe/Berlin 0 9 * * *", Some("UTC")).expect_err("two zones").to_string();
        assert!(err.contains("CRON_TZ") && err.contains("UTC"), "{err}");
        let err = Schedule::parse("@every soon", None).expect_err("bad").to_string();
        assert!(err.contains("@every with a duration"), "{err}");
        assert!(Schedule::parse("@every 0s", None).is_err());
    }

    #[test]
    fn bad_schedules_and_zones_are_errors_that_say_what_to_write() {
        for bad in ["", "* * *", "61 * * * *", "* * * * * * *", "every minute", "*/0 * * * *"] {
            let err = Schedule::parse(bad, None).expect_err(bad).to_string();
            assert!(err.contains("not a cron schedule"), "{bad:?}: {err}");
        }
        let err = Schedule::parse("* * * * *", Some("Mars/Olympus")).expect_err("zone").to_string();
        assert!(err.contains("Mars/Olympus") && err.contains("IANA"), "{err}");
    }

    #[test]
    fn a_time_zone_shifts_the_ticks() {
        // 09:00 in Berlin is 08:00 UTC in November (CET, UTC+1).
        let s = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).expect("valid");
        assert_eq!(s.next_after(at(7, 0, 0)), Some(at(8, 0, 0)));
    }

    #[test]
    fn missed_ticks_fire_once_within_the_deadline_and_never_twice() {
        let s = Schedule::parse("*/10 * * * *", None).expect("valid");
        let now = at(10, 25, 0);
        // Down since 09:55: 10:00, 10:10 and 10:20 were missed; only the latest fires.
        assert_eq!(missed_tick(&s, Some(at(9, 50, 0)), now, None), Some(at(10, 20, 0)));
        assert_eq!(missed_tick(&s, Some(at(9, 50, 0)), now, Some(Duration::from_secs(600))), Some(at(10, 20, 0)));
        assert_eq!(missed_tick(&s, Some(at(9, 50, 0)), now, Some(Duration::from_secs(60))), None, "too late");
        assert_eq!(missed_tick(&s, Some(at(10, 20, 0)), now, None), None, "already fired");
        assert_eq!(missed_tick(&s, None, now, None), None, "a new trigger has nothing missed");
    }
}
