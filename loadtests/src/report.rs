//! What a run writes: `results/<date>.json` (the scenarios, the ceilings, the machine and the
//! commit), `results/<date>.md` (a summary table) and `results/<date>.svg` (throughput against the
//! ceiling, and p50/p99 latency, per scenario).

use std::path::Path;

use plotters::prelude::*;
use procfs::Current;
use serde::Serialize;

use crate::run::{Ceiling, Scenario};

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub commit: String,
    pub machine: Machine,
    pub seconds: f64,
    pub ceilings: Vec<Ceiling>,
    pub scenarios: Vec<Scenario>,
    pub failed: Vec<Failed>,
}

#[derive(Debug, Serialize)]
pub struct Failed {
    pub name: String,
    pub error: String,
}

pub fn machine() -> Machine {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = procfs::CpuInfo::current()
        .ok()
        .and_then(|c| c.model_name(0).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let memory_gib = procfs::Meminfo::current().map(|m| m.mem_total as f64 / (1u64 << 30) as f64).unwrap_or(0.0);
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
    Machine { cores, model, memory_gib, kernel }
}

/// `git describe`-like: the commit, with `-dirty` if the tree has changes.
pub fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) => {
            format!("{c}-dirty")
        }
        Some(c) => c,
        None => "unknown".into(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "–".into())
}

pub fn markdown(report: &Report) -> String {
    let m = &report.machine;
    let mut out = format!(
        "Run of {} at commit `{}` on {} cores ({}), {:.0} GiB, Linux {}; {:.0} s in all.\n\n",
        report.date, report.commit, m.cores, m.model, m.memory_gib, m.kernel, report.seconds
    );
    out.push_str(
        "| scenario | msgs/s | ceiling | ratio | p50 ms | p99 ms | p99.9 ms | peak RSS MiB | CPU % | broker CPU % | sink CPU % | daemon µs/msg | bare client µs/req | target |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for s in &report.scenarios {
        out.push_str(&format!(
            "| `{}` | {:.0} | {} | {} | {} | {} | {} | {:.1} | {:.0} | {} | {} | {} | {} | {} |\n",
            s.name,
            s.msgs_per_sec,
            opt(s.ceiling_msgs_per_sec, 0),
            opt(s.ratio_to_ceiling, 2),
            opt(s.p50_ms, 2),
            opt(s.p99_ms, 2),
            opt(s.p999_ms, 2),
            s.peak_rss_mib,
            s.cpu_percent,
            opt(s.broker_cpu_percent, 0),
            opt(s.sink_cpu_percent, 0),
            opt(s.daemon_cpu_us_per_msg, 1),
            opt(s.ceiling_client_cpu_us_per_req, 1),
            s.target
        ));
    }
    for f in &report.failed {
        out.push_str(&format!("| `{}` | failed: {} | | | | | | | | | | | | |\n", f.name, f.error.replace('|', "/")));
    }
    out.push('\n');
    for s in &report.scenarios {
        out.push_str(&format!("- `{}` ({}): {}", s.name, s.mode, s.description));
        if !s.note.is_empty() {
            out.push_str(&format!(". {}", s.note));
        }
        out.push('\n');
    }
    out
}

/// One series of a chart: legend label, the value per scenario, colour, and where in its row the
/// bar starts (each row holds two bars of 0.35).
type Bar<T> = (&'static str, fn(&Scenario) -> T, RGBAColor, f64);

/// Two horizontal bar panels: msgs/s (ours and the ceiling) and p50/p99 latency (log scale).
pub fn chart(report: &Report, path: &Path) -> anyhow::Result<()> {
    let rows: Vec<&Scenario> = report.scenarios.iter().filter(|s| s.mode != "idle").collect();
    let n = rows.len().max(1);
    let height = 90 + 60 * n as u32;
    let root = SVGBackend::new(path, (1400, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(760);
    let name = |y: &f64| rows.get(y.floor() as usize).map(|s| s.name.clone()).unwrap_or_default();

    let max_rate =
        rows.iter().flat_map(|s| [s.msgs_per_sec, s.ceiling_msgs_per_sec.unwrap_or(0.0)]).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption(format!("msgs/s ({} cores, commit {})", report.machine.cores, report.commit), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(250)
        .build_cartesian_2d(0.0..max_rate * 1.1, 0.0..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| if (y.fract() - 0.5).abs() < 0.01 { name(y) } else { String::new() })
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    // Two bars per scenario: ours in the upper half of its row, the ceiling in the lower.
    let bars: [Bar<f64>; 2] = [
        ("kubeless-broker", |s| s.msgs_per_sec, BLUE.mix(0.8), 0.5),
        ("HTTP ceiling, same concurrency", |s| s.ceiling_msgs_per_sec.unwrap_or(0.0), BLACK.mix(0.25), 0.15),
    ];
    for (label, value, colour, low) in bars {
        chart
            .draw_series(rows.iter().enumerate().map(|(i, s)| {
                Rectangle::new([(0.0, i as f64 + low), (value(s), i as f64 + low + 0.35)], colour.filled())
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    let max_ms = rows.iter().filter_map(|s| s.p99_ms).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&right)
        .caption("end-to-end latency, ms (log)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(10)
        .build_cartesian_2d((0.01..max_ms * 2.0).log_scale(), 0.0..n as f64)?;
    chart.configure_mesh().disable_y_mesh().y_labels(0).x_label_formatter(&|x| format!("{x}")).draw()?;
    let bars: [Bar<Option<f64>>; 2] =
        [("p50", |s| s.p50_ms, GREEN.mix(0.7), 0.5), ("p99", |s| s.p99_ms, RED.mix(0.7), 0.15)];
    for (label, value, colour, low) in bars {
        chart
            .draw_series(rows.iter().enumerate().map(|(i, s)| {
                let ms = value(s).unwrap_or(0.01).max(0.01);
                Rectangle::new([(0.01, i as f64 + low), (ms, i as f64 + low + 0.35)], colour.filled())
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
