//! `powerapi report`: a recorded trace summed up: energy and average power per target (process,
//! command, cgroup or container), per-domain totals, the idle share, the meter's own cost and the
//! time span. Pure: records in, a [`Summary`] out, rendered as a table, JSON, CSV or Markdown.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    io::BufRead,
    time::{Duration, UNIX_EPOCH},
};

use clap::ValueEnum;
use serde::Serialize;

use crate::{
    energy::{Domain, headline_domains},
    report::{CgroupInfo, MachineRecord, Record},
};

/// What targets are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// Each process (pid and command name).
    #[default]
    Process,
    /// Each command name, its processes summed.
    Command,
    /// Each cgroup.
    Cgroup,
    /// Each container (processes outside containers summed as one).
    Container,
}

/// How the summary is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SummaryFormat {
    /// Aligned text for a terminal.
    #[default]
    Table,
    /// One JSON object.
    Json,
    /// One row per target (then other, idle, unattributed).
    Csv,
    /// Markdown tables, for a report or an issue.
    Markdown,
}

/// A domain's energy over the whole trace, sockets summed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DomainTotal {
    /// The domain.
    pub domain: Domain,
    /// Energy measured.
    pub measured_j: f64,
    /// Energy handed to tasks.
    pub attributed_j: f64,
    /// Idle energy kept as such.
    pub idle_j: f64,
    /// Active energy no task took.
    pub unattributed_j: f64,
    /// `measured_j` over the trace's duration.
    pub average_w: f64,
}

/// One target's totals.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetTotal {
    /// How the target is named (`nginx (1234)`, `nginx`, `/system.slice/x.service`, …).
    pub name: String,
    /// Energy of the headline domains (package + DRAM, else psys, else what was measured).
    pub joules: f64,
    /// `joules` over the trace's duration.
    pub average_w: f64,
    /// `joules` as a share of the headline domains' measured energy.
    pub share: f64,
    /// Energy per domain.
    pub domains: BTreeMap<Domain, f64>,
    /// CPU time, in seconds.
    pub cpu_s: f64,
}

/// What running the meter cost over the trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MeterTotal {
    /// CPU time of powerapi itself, in seconds.
    pub cpu_s: f64,
    /// That time as a percentage of one CPU over the trace.
    pub cpu_percent: f64,
    /// Peak resident memory, in KiB.
    pub peak_rss_kib: u64,
    /// Records the network sinks dropped.
    pub dropped_records: u64,
}

/// A trace, summed up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// What targets are.
    pub by: By,
    /// Wall-clock start of the first interval (RFC 3339).
    pub start: String,
    /// Wall-clock end of the last interval (RFC 3339).
    pub end: String,
    /// Summed interval durations, in seconds.
    pub seconds: f64,
    /// Intervals in the trace.
    pub intervals: u64,
    /// True when any energy figure came from a model.
    pub estimated: bool,
    /// The domains a target's `joules` adds up.
    pub headline: Vec<Domain>,
    /// Energy per domain.
    pub domains: Vec<DomainTotal>,
    /// Idle energy as a share of the headline domains' measured energy.
    pub idle_share: Option<f64>,
    /// The top targets, by energy (by CPU time without energy).
    pub targets: Vec<TargetTotal>,
    /// Every other target, summed.
    pub other: Option<TargetTotal>,
    /// The meter's own cost.
    pub meter: MeterTotal,
    /// Lines that were not records (a line cut by a crash, another program's output).
    pub skipped_lines: u64,
}

/// Why a trace cannot be summed up.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// The trace holds no machine record.
    #[error(
        "the trace holds no complete interval ({0} line(s) were not records); give a file written by `powerapi record`"
    )]
    Empty(u64),
    /// The targets asked for are not in the trace.
    #[error("{0}")]
    Missing(String),
}

/// Reads records, one per line; lines that are not records are counted, not fatal.
pub fn read_records(input: impl BufRead) -> std::io::Result<(Vec<Record>, u64)> {
    let mut records = Vec::new();
    let mut skipped = 0;
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(record) => records.push(record),
            Err(_) => skipped += 1,
        }
    }
    Ok((records, skipped))
}

fn container_name(cgroup: &CgroupInfo) -> String {
    match &cgroup.container {
        Some(c) => format!(
            "{}:{}",
            c.runtime,
            c.id.chars().take(12).collect::<String>()
        ),
        None => "(no container)".into(),
    }
}

fn cgroup_name(cgroup: &CgroupInfo) -> String {
    cgroup.path.clone().unwrap_or_else(|| cgroup.id.to_string())
}

/// Joules per domain, as records carry them.
type Joules = BTreeMap<Domain, f64>;

/// The target a record counts for, with its CPU time and energy. Cgroup records count only
/// when the trace has no task records (they would count twice).
fn target_of(record: &Record, by: By, has_tasks: bool) -> Option<(String, u64, Option<&Joules>)> {
    match record {
        Record::Process(t) | Record::Thread(t) => {
            let name = match by {
                By::Process => format!("{} ({})", t.comm, t.pid),
                By::Command => t.comm.clone(),
                By::Cgroup => cgroup_name(&t.cgroup),
                By::Container => container_name(&t.cgroup),
            };
            Some((name, t.on_cpu_ns, t.energy.as_ref().map(|e| &e.joules)))
        }
        Record::Cgroup(c) if !has_tasks => {
            let name = match by {
                By::Container => container_name(&c.cgroup),
                _ => cgroup_name(&c.cgroup),
            };
            Some((name, c.on_cpu_ns, c.energy.as_ref().map(|e| &e.joules)))
        }
        _ => None,
    }
}

/// Power over time, for a stacked chart: per interval, idle, each of the summary's targets, and
/// everything else (other targets and unattributed energy), in watts. Stacked, they add up to
/// the measured power of the headline domains.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    /// Seconds from the trace's start to each interval's end.
    pub seconds: Vec<f64>,
    /// `idle`, then the targets in the summary's order, then `other`; one value per interval.
    pub series: Vec<(String, Vec<f64>)>,
}

/// The timeline of `summary`'s targets in `records`.
pub fn timeline(records: &[Record], summary: &Summary) -> Timeline {
    let has_tasks = records
        .iter()
        .any(|r| matches!(r, Record::Process(_) | Record::Thread(_)));
    let names: Vec<&str> = summary.targets.iter().map(|t| t.name.as_str()).collect();
    let mut seconds = Vec::new();
    let mut series: Vec<(String, Vec<f64>)> = std::iter::once("idle".to_string())
        .chain(names.iter().map(|n| n.to_string()))
        .chain(std::iter::once("other".to_string()))
        .map(|n| (n, Vec::new()))
        .collect();
    let mut start_ns = None;
    let mut duration_s = 1.0;
    let mut measured_w = 0.0;
    let close = |series: &mut Vec<(String, Vec<f64>)>, measured_w: f64| {
        // `other`: what the measured power holds beyond idle and the listed targets.
        let listed: f64 = series[..series.len() - 1]
            .iter()
            .filter_map(|(_, v)| v.last())
            .sum();
        if let Some((_, other)) = series.last_mut() {
            other.push((measured_w - listed).max(0.0));
        }
    };
    for record in records {
        if let Record::Machine(m) = record {
            if !seconds.is_empty() {
                close(&mut series, measured_w);
            }
            let start = *start_ns.get_or_insert(
                m.interval
                    .time_unix_ns
                    .saturating_sub(m.interval.duration_ns),
            );
            seconds.push(m.interval.time_unix_ns.saturating_sub(start) as f64 / 1e9);
            duration_s = (m.interval.duration_ns as f64 / 1e9).max(1e-9);
            let headline = |f: fn(&crate::attribution::DomainReport) -> f64| -> f64 {
                m.energy
                    .iter()
                    .flat_map(|e| &e.domains)
                    .filter(|d| summary.headline.contains(&d.key.domain))
                    .map(f)
                    .sum()
            };
            measured_w = headline(|d| d.measured_j) / duration_s;
            let n = series.len();
            for (i, (_, values)) in series.iter_mut().enumerate().take(n - 1) {
                values.push(if i == 0 {
                    headline(|d| d.idle_j) / duration_s
                } else {
                    0.0
                });
            }
            continue;
        }
        if seconds.is_empty() {
            continue;
        }
        if let Some((name, _, Some(energy))) = target_of(record, summary.by, has_tasks)
            && let Some(i) = names.iter().position(|n| *n == name)
            && let Some(last) = series[i + 1].1.last_mut()
        {
            let joules: f64 = summary.headline.iter().filter_map(|d| energy.get(d)).sum();
            *last += joules / duration_s;
        }
    }
    if !seconds.is_empty() {
        close(&mut series, measured_w);
    }
    Timeline { seconds, series }
}

fn rfc3339(unix_ns: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(unix_ns)).to_string()
}

#[derive(Default)]
struct Acc {
    domains: BTreeMap<Domain, f64>,
    cpu_ns: u64,
}

/// Sums `records` up by `by`, keeping the `top` targets with the most energy.
pub fn summarize(
    records: &[Record],
    skipped: u64,
    by: By,
    top: usize,
) -> Result<Summary, SummaryError> {
    let machines: Vec<&MachineRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Machine(m) => Some(m),
            _ => None,
        })
        .collect();
    let (Some(first), Some(last)) = (machines.first(), machines.last()) else {
        return Err(SummaryError::Empty(skipped));
    };
    let seconds: f64 = machines
        .iter()
        .map(|m| m.interval.duration_ns as f64 / 1e9)
        .sum();
    let measured: BTreeSet<Domain> = machines
        .iter()
        .flat_map(|m| m.energy.iter().flat_map(|e| &e.domains))
        .map(|d| d.key.domain)
        .collect();
    let headline = headline_domains(&measured.iter().copied().collect::<Vec<_>>());
    let mut domains: BTreeMap<Domain, DomainTotal> = BTreeMap::new();
    for d in machines
        .iter()
        .flat_map(|m| m.energy.iter().flat_map(|e| &e.domains))
    {
        let total = domains.entry(d.key.domain).or_insert(DomainTotal {
            domain: d.key.domain,
            measured_j: 0.0,
            attributed_j: 0.0,
            idle_j: 0.0,
            unattributed_j: 0.0,
            average_w: 0.0,
        });
        total.measured_j += d.measured_j;
        total.attributed_j += d.attributed_j;
        total.idle_j += d.idle_j;
        total.unattributed_j += d.unattributed_j;
    }
    for total in domains.values_mut() {
        total.average_w = if seconds > 0.0 {
            total.measured_j / seconds
        } else {
            0.0
        };
    }
    let headline_of = |f: fn(&DomainTotal) -> f64| -> f64 {
        headline.iter().filter_map(|d| domains.get(d)).map(f).sum()
    };
    let measured_headline = headline_of(|d| d.measured_j);
    let idle_share =
        (measured_headline > 0.0).then(|| headline_of(|d| d.idle_j) / measured_headline);

    let has_tasks = records
        .iter()
        .any(|r| matches!(r, Record::Process(_) | Record::Thread(_)));
    let has_cgroups = records.iter().any(|r| matches!(r, Record::Cgroup(_)));
    if !has_tasks && (matches!(by, By::Process | By::Command) || !has_cgroups) {
        return Err(SummaryError::Missing(format!(
            "the trace has no process or thread records{}; use --by cgroup or --by container",
            if has_cgroups {
                " (it was recorded with --granularity cgroup)"
            } else {
                ""
            }
        )));
    }
    let mut targets: HashMap<String, Acc> = HashMap::new();
    let mut add = |name: String, cpu_ns: u64, energy: Option<&BTreeMap<Domain, f64>>| {
        let acc = targets.entry(name).or_default();
        acc.cpu_ns += cpu_ns;
        for (d, j) in energy.into_iter().flatten() {
            *acc.domains.entry(*d).or_default() += j;
        }
    };
    for record in records {
        if let Some((name, cpu_ns, energy)) = target_of(record, by, has_tasks) {
            add(name, cpu_ns, energy);
        }
    }
    let total = |name: String, acc: &Acc| {
        let joules: f64 = headline.iter().filter_map(|d| acc.domains.get(d)).sum();
        TargetTotal {
            name,
            joules,
            average_w: if seconds > 0.0 { joules / seconds } else { 0.0 },
            share: if measured_headline > 0.0 {
                joules / measured_headline
            } else {
                0.0
            },
            domains: acc.domains.clone(),
            cpu_s: acc.cpu_ns as f64 / 1e9,
        }
    };
    let mut ranked: Vec<TargetTotal> = targets
        .iter()
        .map(|(name, acc)| total(name.clone(), acc))
        .collect();
    ranked.sort_by(|a, b| {
        b.joules
            .total_cmp(&a.joules)
            .then(b.cpu_s.total_cmp(&a.cpu_s))
            .then(a.name.cmp(&b.name))
    });
    let rest = ranked.split_off(top.min(ranked.len()));
    let other = (!rest.is_empty()).then(|| {
        let mut acc = Acc::default();
        for t in &rest {
            acc.cpu_ns += (t.cpu_s * 1e9).round() as u64;
            for (d, j) in &t.domains {
                *acc.domains.entry(*d).or_default() += j;
            }
        }
        total(format!("other ({} targets)", rest.len()), &acc)
    });
    let meter_cpu_s: f64 = machines.iter().map(|m| m.meter.cpu_ns as f64 / 1e9).sum();
    Ok(Summary {
        by,
        start: rfc3339(
            first
                .interval
                .time_unix_ns
                .saturating_sub(first.interval.duration_ns),
        ),
        end: rfc3339(last.interval.time_unix_ns),
        seconds,
        intervals: machines.len() as u64,
        estimated: machines
            .iter()
            .any(|m| m.energy.as_ref().is_some_and(|e| e.estimated)),
        headline,
        domains: domains.into_values().collect(),
        idle_share,
        targets: ranked,
        other,
        meter: MeterTotal {
            cpu_s: meter_cpu_s,
            cpu_percent: if seconds > 0.0 {
                meter_cpu_s / seconds * 100.0
            } else {
                0.0
            },
            peak_rss_kib: machines
                .iter()
                .map(|m| m.meter.peak_rss_kib)
                .max()
                .unwrap_or(0),
            dropped_records: machines
                .iter()
                .map(|m| m.meter.dropped_records)
                .max()
                .unwrap_or(0),
        },
        skipped_lines: skipped,
    })
}

fn headline_label(s: &Summary) -> String {
    if s.headline.is_empty() {
        "no energy in this trace".into()
    } else {
        s.headline
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// Writes `summary` in `format`.
pub fn render(s: &Summary, format: SummaryFormat) -> String {
    match format {
        SummaryFormat::Json => serde_json::to_string_pretty(s)
            .map(|j| j + "\n")
            .unwrap_or_default(),
        SummaryFormat::Csv => render_csv(s),
        SummaryFormat::Table => render_text(s, false),
        SummaryFormat::Markdown => render_text(s, true),
    }
}

fn render_csv(s: &Summary) -> String {
    let mut out = String::from("kind,name,joules,average_w,share,cpu_s\n");
    let quote = |v: &str| {
        if v.contains([',', '"', '\n']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_string()
        }
    };
    for (kind, t) in s
        .targets
        .iter()
        .map(|t| ("target", t))
        .chain(s.other.iter().map(|t| ("other", t)))
    {
        let _ = writeln!(
            out,
            "{kind},{},{},{},{},{}",
            quote(&t.name),
            t.joules,
            t.average_w,
            t.share,
            t.cpu_s
        );
    }
    for (kind, f) in [
        (
            "idle",
            (|d: &DomainTotal| d.idle_j) as fn(&DomainTotal) -> f64,
        ),
        ("unattributed", |d: &DomainTotal| d.unattributed_j),
    ] {
        let joules: f64 = s
            .domains
            .iter()
            .filter(|d| s.headline.contains(&d.domain))
            .map(f)
            .sum();
        let measured: f64 = s
            .domains
            .iter()
            .filter(|d| s.headline.contains(&d.domain))
            .map(|d| d.measured_j)
            .sum();
        let share = if measured > 0.0 {
            joules / measured
        } else {
            0.0
        };
        let watts = if s.seconds > 0.0 {
            joules / s.seconds
        } else {
            0.0
        };
        let _ = writeln!(out, "{kind},{kind},{joules},{watts},{share},");
    }
    out
}

fn render_text(s: &Summary, markdown: bool) -> String {
    let mut out = String::new();
    let estimated = if s.estimated {
        " (ESTIMATED by a model)"
    } else {
        ""
    };
    let title = |out: &mut String, text: &str| {
        if markdown {
            let _ = writeln!(out, "\n### {text}\n");
        } else {
            let _ = writeln!(out, "\n{text}");
        }
    };
    let row = |out: &mut String, cells: &[String]| {
        if markdown {
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        } else {
            let _ = writeln!(
                out,
                "  {:<40} {:>12} {:>10} {:>8} {:>10}",
                cells[0], cells[1], cells[2], cells[3], cells[4]
            );
        }
    };
    let rule = |out: &mut String| {
        if markdown {
            let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        }
    };
    if markdown {
        let _ = writeln!(out, "## powerapi report");
    }
    let _ = writeln!(
        out,
        "{}{} → {} ({:.1} s, {} intervals); energy: {}{estimated}",
        if markdown { "\n" } else { "" },
        s.start,
        s.end,
        s.seconds,
        s.intervals,
        headline_label(s)
    );
    if !s.domains.is_empty() {
        title(
            &mut out,
            "Energy by domain (sockets summed; domains overlap: package holds core)",
        );
        row(
            &mut out,
            &["domain", "measured J", "avg W", "idle J", "unattr. J"].map(String::from),
        );
        rule(&mut out);
        for d in &s.domains {
            row(
                &mut out,
                &[
                    d.domain.name().to_string(),
                    format!("{:.2}", d.measured_j),
                    format!("{:.2}", d.average_w),
                    format!("{:.2}", d.idle_j),
                    format!("{:.2}", d.unattributed_j),
                ],
            );
        }
        if let Some(idle) = s.idle_share {
            let _ = writeln!(
                out,
                "{}idle: {:.1} % of the measured energy",
                if markdown { "\n" } else { "  " },
                idle * 100.0
            );
        }
    }
    let by = match s.by {
        By::Process => "process",
        By::Command => "command",
        By::Cgroup => "cgroup",
        By::Container => "container",
    };
    title(&mut out, &format!("Top {} by {by}", s.targets.len()));
    row(
        &mut out,
        &[by, "energy J", "avg W", "share", "CPU s"].map(String::from),
    );
    rule(&mut out);
    for t in s.targets.iter().chain(&s.other) {
        let name = if markdown {
            t.name.replace('|', "\\|")
        } else {
            t.name.chars().take(40).collect()
        };
        row(
            &mut out,
            &[
                name,
                format!("{:.2}", t.joules),
                format!("{:.3}", t.average_w),
                format!("{:.1} %", t.share * 100.0),
                format!("{:.2}", t.cpu_s),
            ],
        );
    }
    let _ = writeln!(
        out,
        "\nmeter: {:.2} CPU s ({:.2} % of one CPU), peak RSS {} KiB{}{}",
        s.meter.cpu_s,
        s.meter.cpu_percent,
        s.meter.peak_rss_kib,
        if s.meter.dropped_records > 0 {
            format!(
                ", {} records dropped by network sinks",
                s.meter.dropped_records
            )
        } else {
            String::new()
        },
        if s.skipped_lines > 0 {
            format!(
                "; {} line(s) of the trace were not records",
                s.skipped_lines
            )
        } else {
            String::new()
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: &str = r#""interval":{"seq":1,"start_ns":0,"end_ns":1000000000,"duration_ns":1000000000,"time":"2026-11-24T21:22:04Z","time_unix_ns":1795555324000000000,"partial":false}"#;

    fn machine(measured: f64, idle: f64, meter_cpu_ns: u64) -> String {
        format!(
            r#"{{"type":"machine","schema":3,{INTERVAL},"mode":"time-only","counters":[],"cpus":2,"busy_ns":1,"idle_ns":1,"capacity_ns":2,"processes":2,"threads":2,"losses":{{"lost_slices":0,"lost_ns":0,"exit_overflow":0,"stale_slices":0,"counter_read_errors":0}},"meter":{{"cpu_ns":{meter_cpu_ns},"drain_us":1,"peak_rss_kib":100,"dropped_records":3}},"energy":{{"source":"powercap","estimated":false,"idle_policy":"none","domains":[{{"domain":"package","socket":0,"measured_j":{measured},"attributed_j":{},"idle_j":{idle},"unattributed_j":0.0,"power_w":{measured},"idle_w":{idle},"idle_source":"flag","metric":"cpu-time"}},{{"domain":"dram","socket":0,"measured_j":2.0,"attributed_j":2.0,"idle_j":0.0,"unattributed_j":0.0,"power_w":2.0,"idle_w":0.0,"idle_source":"none","metric":"cpu-time"}}]}}}}"#,
            measured - idle
        )
    }

    fn process(
        pid: u32,
        comm: &str,
        container: Option<&str>,
        package: f64,
        on_cpu_ns: u64,
    ) -> String {
        let container = container.map_or(String::new(), |id| {
            format!(r#","container":{{"runtime":"docker","id":"{id}"}}"#)
        });
        format!(
            r#"{{"type":"process","schema":3,{INTERVAL},"mode":"time-only","pid":{pid},"comm":"{comm}","uid":0,"user":"root","on_cpu_ns":{on_cpu_ns},"cpu_percent":1.0,"cgroup":{{"id":{pid},"path":"/c{pid}"{container}}},"exited":false,"energy":{{"estimated":false,"joules":{{"package":{package},"dram":1.0}},"watts":{{"package":{package}}}}}}}"#
        )
    }

    fn trace(lines: &[String]) -> (Vec<Record>, u64) {
        read_records(lines.join("\n").as_bytes()).expect("in memory")
    }

    #[test]
    fn targets_domains_idle_and_the_meter_add_up() {
        let (records, skipped) = trace(&[
            machine(30.0, 10.0, 5_000_000),
            process(1, "web", Some("abcdef0123456789"), 12.0, 600_000_000),
            process(2, "web", None, 6.0, 300_000_000),
            process(3, "db", None, 2.0, 100_000_000),
            machine(20.0, 10.0, 3_000_000),
            process(1, "web", Some("abcdef0123456789"), 4.0, 200_000_000),
            "{\"type\":\"process\",\"cut".into(),
        ]);
        assert_eq!((records.len(), skipped), (6, 1));
        let s = summarize(&records, skipped, By::Process, 2).expect("summary");
        assert_eq!((s.intervals, s.seconds, s.estimated), (2, 2.0, false));
        assert_eq!(s.headline, [Domain::Package, Domain::Dram]);
        let package = s
            .domains
            .iter()
            .find(|d| d.domain == Domain::Package)
            .expect("package");
        assert_eq!(
            (package.measured_j, package.idle_j, package.average_w),
            (50.0, 20.0, 25.0)
        );
        // Headline = package + DRAM: 50 + 4 measured, 20 idle.
        assert_eq!(s.idle_share, Some(20.0 / 54.0));
        let names: Vec<&str> = s.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["web (1)", "web (2)"]);
        // web (1): package 12 + 4, DRAM 1 + 1.
        assert_eq!(
            (
                s.targets[0].joules,
                s.targets[0].average_w,
                s.targets[0].cpu_s
            ),
            (18.0, 9.0, 0.8)
        );
        assert_eq!(s.targets[0].share, 18.0 / 54.0);
        let other = s.other.as_ref().expect("db is beyond the top 2");
        assert_eq!(
            (other.name.as_str(), other.joules),
            ("other (1 targets)", 3.0)
        );
        assert_eq!(s.meter.cpu_s, 0.008);
        assert_eq!(
            (
                s.meter.cpu_percent,
                s.meter.peak_rss_kib,
                s.meter.dropped_records
            ),
            (0.4, 100, 3)
        );
        assert_eq!(s.start, "2026-11-24T21:22:03Z");

        let by_command = summarize(&records, 0, By::Command, 10).expect("summary");
        let web = &by_command.targets[0];
        assert_eq!(
            (web.name.as_str(), web.joules, by_command.other.is_none()),
            ("web", 25.0, true)
        );
        let by_container = summarize(&records, 0, By::Container, 10).expect("summary");
        let names: Vec<(&str, f64)> = by_container
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t.joules))
            .collect();
        assert_eq!(
            names,
            [("docker:abcdef012345", 18.0), ("(no container)", 10.0)]
        );
    }

    #[test]
    fn the_timeline_stacks_up_to_the_measured_power() {
        let (records, _) = trace(&[
            machine(30.0, 10.0, 1),
            process(1, "web", None, 12.0, 600_000_000),
            process(3, "db", None, 2.0, 100_000_000),
            machine(20.0, 10.0, 1),
            process(1, "web", None, 4.0, 200_000_000),
        ]);
        let s = summarize(&records, 0, By::Command, 1).expect("summary");
        let t = timeline(&records, &s);
        assert_eq!(
            t.seconds,
            [1.0, 1.0],
            "both test intervals end at the same instant"
        );
        let names: Vec<&str> = t.series.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["idle", "web", "other"]);
        // Interval 1: 32 W headline (30 package + 2 DRAM); idle 10, web 13, other 9.
        assert_eq!(t.series[0].1, [10.0, 10.0]);
        assert_eq!(t.series[1].1, [13.0, 5.0]);
        assert_eq!(t.series[2].1, [9.0, 7.0]);
    }

    #[test]
    fn traces_without_intervals_or_targets_are_said() {
        let e = summarize(&[], 4, By::Process, 10).expect_err("empty");
        assert!(
            e.to_string().contains("no complete interval (4 line(s)"),
            "{e}"
        );
        let (records, _) = trace(&[machine(1.0, 0.5, 1)]);
        let e = summarize(&records, 0, By::Command, 10).expect_err("no tasks");
        assert!(e.to_string().contains("--by cgroup"), "{e}");
    }

    #[test]
    fn renderings_carry_the_figures() {
        let (records, _) = trace(&[
            machine(30.0, 10.0, 1),
            process(1, "a|b,c", None, 12.0, 600_000_000),
        ]);
        let s = summarize(&records, 0, By::Command, 10).expect("summary");
        let csv = render(&s, SummaryFormat::Csv);
        assert!(
            csv.starts_with("kind,name,joules,average_w,share,cpu_s\ntarget,\"a|b,c\",13,13,"),
            "{csv}"
        );
        assert!(csv.contains("\nidle,idle,10,10,"), "{csv}");
        let md = render(&s, SummaryFormat::Markdown);
        assert!(
            md.contains("| a\\|b,c | 13.00 | 13.000 | 40.6 % | 0.60 |"),
            "{md}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&s, SummaryFormat::Json)).expect("JSON");
        assert_eq!(json["targets"][0]["joules"], 13.0);
        let table = render(&s, SummaryFormat::Table);
        assert!(
            table.contains("energy: package + dram") && table.contains("idle: 31.2 %"),
            "{table}"
        );
    }

    /// `line` with its one-second interval made `ns` long.
    fn lasting(ns: u64, line: String) -> String {
        line.replace(
            r#""end_ns":1000000000,"duration_ns":1000000000"#,
            &format!(r#""end_ns":{ns},"duration_ns":{ns}"#),
        )
    }

    fn two_seconds(line: String) -> String {
        lasting(2_000_000_000, line)
    }

    fn cgroup(
        id: u64,
        path: &str,
        container: Option<&str>,
        package: f64,
        on_cpu_ns: u64,
    ) -> String {
        let container = container.map_or(String::new(), |id| {
            format!(r#","container":{{"runtime":"docker","id":"{id}"}}"#)
        });
        format!(
            r#"{{"type":"cgroup","schema":3,{INTERVAL},"mode":"time-only","cgroup":{{"id":{id},"path":"{path}"{container}}},"on_cpu_ns":{on_cpu_ns},"cpu_percent":1.0,"processes":1,"energy":{{"estimated":false,"joules":{{"package":{package}}},"watts":{{"package":{package}}}}}}}"#
        )
    }

    #[test]
    fn two_second_intervals_average_over_their_length() {
        // Package: 30 J measured (10 idle, 20 attributed, unattributed 0), DRAM 2 J; 2 s.
        let (records, _) = trace(&[
            two_seconds(machine(30.0, 10.0, 1_000_000_000)),
            two_seconds(process(1, "web", None, 12.0, 600_000_000)),
            two_seconds(process(2, "db", None, 4.0, 400_000_000)),
            two_seconds(process(3, "cron", None, 2.0, 100_000_000)),
        ]);
        let s = summarize(&records, 0, By::Process, 1).expect("summary");
        assert_eq!(s.seconds, 2.0);
        let package = &s
            .domains
            .iter()
            .find(|d| d.domain == Domain::Package)
            .expect("package");
        assert_eq!(
            (
                package.attributed_j,
                package.unattributed_j,
                package.average_w
            ),
            (20.0, 0.0, 15.0)
        );
        assert_eq!((s.targets[0].average_w, s.meter.cpu_percent), (6.5, 50.0));
        let other = s.other.as_ref().expect("db and cron");
        assert_eq!((other.joules, other.cpu_s), (8.0, 0.5));
        let csv = render(&s, SummaryFormat::Csv);
        // Idle: 10 J of 32 headline J, 5 W over 2 s.
        assert!(csv.contains("\nidle,idle,10,5,0.3125,\n"), "{csv}");
        let t = timeline(&records, &s);
        assert_eq!(t.seconds, [2.0]);
        assert_eq!(t.series[0].1, [5.0], "idle W");
        assert_eq!(t.series[1].1, [6.5], "web W");
        assert_eq!(t.series[2].1, [4.5], "other W: 16 − 5 − 6.5");
    }

    #[test]
    fn cgroups_count_once_and_cgroup_traces_answer_by_cgroup_or_container() {
        // Task records and cgroup records of one interval: by cgroup, the tasks count, once.
        let (mixed, _) = trace(&[
            machine(30.0, 10.0, 1),
            process(1, "web", None, 12.0, 600_000_000),
            cgroup(1, "/c1", None, 12.0, 600_000_000),
        ]);
        let s = summarize(&mixed, 0, By::Cgroup, 10).expect("summary");
        let got: Vec<(&str, f64)> = s
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t.joules))
            .collect();
        assert_eq!(got, [("/c1", 13.0)]);
        // A trace of cgroup records only (--granularity cgroup).
        let (cgroups, _) = trace(&[
            machine(30.0, 10.0, 1),
            cgroup(7, "/system.slice/a.service", None, 5.0, 1),
            cgroup(8, "/docker/x", Some("abcdef0123456789"), 9.0, 1),
        ]);
        let s = summarize(&cgroups, 0, By::Cgroup, 10).expect("by cgroup");
        let names: Vec<&str> = s.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["/docker/x", "/system.slice/a.service"]);
        let s = summarize(&cgroups, 0, By::Container, 10).expect("by container");
        let names: Vec<&str> = s.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["docker:abcdef012345", "(no container)"]);
        let e = summarize(&cgroups, 0, By::Process, 10).expect_err("no processes");
        assert!(e.to_string().contains("--granularity cgroup"), "{e}");
    }

    #[test]
    fn a_trace_of_zero_length_intervals_has_no_averages() {
        let zero = |line| lasting(0, line);
        let (records, _) = trace(&[
            zero(machine(0.0, 0.0, 1)),
            zero(process(1, "web", None, 0.0, 0)),
        ]);
        let s = summarize(&records, 0, By::Process, 10).expect("summary");
        assert_eq!(
            (s.seconds, s.meter.cpu_percent, s.idle_share),
            (0.0, 0.0, Some(0.0))
        );
        // Its DRAM joule is half the measured DRAM: a share needs no duration.
        assert_eq!((s.targets[0].average_w, s.targets[0].share), (0.0, 0.5));
        assert!(s.domains.iter().all(|d| d.average_w == 0.0));
        let csv = render(&s, SummaryFormat::Csv);
        assert!(csv.contains("\nidle,idle,0,0,0,\n"), "{csv}");
    }

    #[test]
    fn unattributed_energy_adds_up_and_nothing_measured_means_no_shares() {
        let unattributed = |line: String| {
            line.replace(
                r#""unattributed_j":0.0,"power_w":30"#,
                r#""unattributed_j":3.0,"power_w":30"#,
            )
        };
        let (records, _) = trace(&[
            unattributed(machine(30.0, 10.0, 1)),
            unattributed(machine(30.0, 10.0, 1)),
            process(1, "web", None, 1.0, 1),
        ]);
        let s = summarize(&records, 0, By::Process, 10).expect("summary");
        let package = s
            .domains
            .iter()
            .find(|d| d.domain == Domain::Package)
            .expect("package");
        assert_eq!(package.unattributed_j, 6.0);
        // Nothing measured in any domain: no idle share, no shares, no division by zero.
        let nothing = |line: String| line.replace(r#""measured_j":2.0"#, r#""measured_j":0.0"#);
        let (records, _) = trace(&[
            nothing(machine(0.0, 0.0, 1)),
            process(1, "web", None, 0.0, 1),
        ]);
        let s = summarize(&records, 0, By::Process, 10).expect("summary");
        assert_eq!((s.idle_share, s.targets[0].share), (None, 0.0));
        let csv = render(&s, SummaryFormat::Csv);
        assert!(csv.contains("\nidle,idle,0,0,0,\n"), "{csv}");
    }
}
