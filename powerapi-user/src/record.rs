//! `powerapi record`: snapshots → JSON-lines records, every interval, until the duration ends or
//! a signal arrives (the last, partial interval is still written, marked `partial`).

use std::{sync::mpsc::Receiver, time::Duration};

use clap::ValueEnum;
use thiserror::Error;

use crate::{
    aggregate::Group,
    cgroup::{CgroupResolver, parse_container, parse_systemd_unit},
    collect::{CollectError, Collector, CollectorConfig, Snapshot},
    identity::Identities,
    pipeline::Pipeline,
    report::{
        CgroupInfo, CgroupRecord, Interval, Losses, MachineRecord, Mode, ModelRecord, Record,
        SCHEMA, SocketShare, TaskRecord, ipc, machine_energy, named_counters, task_energy,
    },
    sink::{Sink, SinkError},
};

#[derive(Debug, Error)]
/// Why a recording stopped.
pub enum RecordError {
    #[error(transparent)]
    /// Measuring failed.
    Collect(#[from] CollectError),
    #[error(transparent)]
    /// The only sink failed.
    Sink(#[from] SinkError),
}

/// Which records to write besides the machine record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    #[default]
    /// One record per process (thread group).
    Process,
    /// One record per thread.
    Thread,
    /// One record per cgroup.
    Cgroup,
}

/// Which tasks to report. Empty lists match everything; the machine record is never filtered.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only these processes (tgid).
    pub pids: Vec<u32>,
    /// Only processes with these command names.
    pub comms: Vec<String>,
    /// cgroup path prefixes (`/system.slice/docker-…`) or numeric ids.
    pub cgroups: Vec<String>,
}

/// The kernel keeps 15 bytes of a command name (`TASK_COMM_LEN` − 1).
const COMM_LEN: usize = 15;

impl Filter {
    /// True when nothing is filtered out.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.comms.is_empty() && self.cgroups.is_empty()
    }

    /// Makes filters that could never match do what the user meant, or says why they won't:
    /// a cgroup given as its `/sys/fs/cgroup/…` path (accepted), or without its leading `/`
    /// (fixed), a comm longer than the kernel keeps (cut to it), a cgroup or pid that does not
    /// exist now (kept: it may appear). `mount`: the cgroup2 mount; `exists(cgroup path)` and
    /// `alive(pid)` look at the system. Returns one warning per questionable filter. Pure.
    pub fn normalize(
        &mut self,
        mount: Option<&std::path::Path>,
        exists: impl Fn(&str) -> bool,
        alive: impl Fn(u32) -> bool,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        for comm in &mut self.comms {
            if comm.len() > COMM_LEN {
                let mut cut = COMM_LEN;
                while !comm.is_char_boundary(cut) {
                    cut -= 1;
                }
                warnings.push(format!(
                    "--comm {comm}: the kernel keeps only the first {COMM_LEN} bytes of a command name; matching {:?}",
                    &comm[..cut]
                ));
                comm.truncate(cut);
            }
        }
        for cgroup in &mut self.cgroups {
            if cgroup.parse::<u64>().is_ok() {
                continue;
            }
            if let Some(rest) =
                mount.and_then(|m| std::path::Path::new(cgroup.as_str()).strip_prefix(m).ok())
            {
                *cgroup = format!("/{}", rest.display());
            } else if !cgroup.starts_with('/') {
                warnings.push(format!(
                    "--cgroup {cgroup}: cgroup paths start at the cgroup root; matching /{cgroup}"
                ));
                cgroup.insert(0, '/');
            }
            if !exists(cgroup) {
                warnings.push(format!(
                    "--cgroup {cgroup}: no such cgroup now; it is reported if it appears"
                ));
            }
        }
        for &pid in &self.pids {
            if !alive(pid) {
                warnings.push(format!(
                    "--pid {pid}: no such process now; it is reported if it appears"
                ));
            }
        }
        warnings
    }

    /// Whether a process with this pid, command name and cgroup is reported.
    pub fn matches(&self, pid: u32, comm: &str, cgroup: &CgroupInfo) -> bool {
        (self.pids.is_empty() || self.pids.contains(&pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == comm))
            && self.matches_cgroup(cgroup)
    }

    /// A path matches a prefix at a component boundary (`/system.slice` matches
    /// `/system.slice/nginx.service`, `/system.sl` does not).
    pub fn matches_cgroup(&self, cgroup: &CgroupInfo) -> bool {
        self.cgroups.is_empty()
            || self.cgroups.iter().any(|want| {
                want.parse::<u64>().is_ok_and(|id| id == cgroup.id)
                    || cgroup.path.as_deref().is_some_and(|path| {
                        path.strip_prefix(want.trim_end_matches('/'))
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                    })
            })
    }
}

#[derive(Clone, Debug)]
/// What a recording measures, how often, for how long, and which records it writes.
pub struct RecordConfig {
    /// How often an interval closes.
    pub interval: Duration,
    /// Read each process's command line from `/proc` into its records.
    pub cmdline: bool,
    /// Stop after this long (`None`: until stopped).
    pub duration: Option<Duration>,
    /// One record per process, thread or cgroup.
    pub granularity: Granularity,
    /// Which tasks are reported.
    pub filter: Filter,
    /// The sensor, energy source and formula.
    pub collector: CollectorConfig,
}

impl Default for RecordConfig {
    /// The command line's defaults: 1 s intervals until stopped, a record per process.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            cmdline: false,
            duration: None,
            granularity: Granularity::Process,
            filter: Filter::default(),
            collector: CollectorConfig::default(),
        }
    }
}

/// What every record of a run shares.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// Time-only or counters.
    pub mode: Mode,
    /// Why counters are off, when they are.
    pub mode_reason: Option<String>,
    /// Counter names in use.
    pub counters: Vec<String>,
    /// CPUs online at the start.
    pub cpus: u32,
}

/// The cgroup `id` as records show it: path, container and systemd unit where known.
pub fn cgroup_info(resolver: Option<&CgroupResolver>, id: u64) -> CgroupInfo {
    let path = resolver.and_then(|r| r.path(id)).map(str::to_string);
    CgroupInfo {
        id,
        container: path.as_deref().and_then(parse_container),
        unit: path
            .as_deref()
            .and_then(parse_systemd_unit)
            .map(str::to_string),
        path,
    }
}

fn percent(ns: u64, duration_ns: u64) -> f64 {
    if duration_ns == 0 {
        0.0
    } else {
        ns as f64 * 100.0 / duration_ns as f64
    }
}

/// A group's per-socket usage as records carry it.
fn shares(run: &RunInfo, sockets: &[(u32, crate::aggregate::Usage)]) -> Vec<SocketShare> {
    sockets
        .iter()
        .map(|(socket, u)| SocketShare {
            socket: *socket,
            on_cpu_ns: u.on_cpu_ns,
            counters: named_counters(&run.counters, &u.counters),
            cpus: None,
        })
        .collect()
}

/// Builds one interval's records: the machine record first, then the chosen granularity.
pub fn build_records(
    run: &RunInfo,
    snapshot: &Snapshot,
    resolver: Option<&CgroupResolver>,
    interval: &Interval,
    granularity: Granularity,
    filter: &Filter,
    ids: &mut Identities,
) -> Vec<Record> {
    let agg = &snapshot.aggregate;
    let mut records = vec![Record::Machine(MachineRecord {
        schema: SCHEMA,
        interval: interval.clone(),
        hostname: ids.hostname.clone(),
        mode: run.mode.clone(),
        mode_reason: run.mode_reason.clone(),
        counters: run.counters.clone(),
        cpus: snapshot.deltas.cpus,
        cpus_changed: snapshot.deltas.cpus_changed,
        frequencies: snapshot
            .frequencies
            .iter()
            .map(|&(socket, mhz)| crate::report::SocketFrequency { socket, mhz })
            .collect(),
        sockets: {
            let mut sockets = shares(run, &agg.busy_by_socket);
            for share in &mut sockets {
                share.cpus = Some(
                    snapshot
                        .cpus_by_socket
                        .iter()
                        .find(|(s, _)| *s == share.socket)
                        .map_or(0, |(_, n)| *n),
                );
            }
            sockets
        },
        busy_ns: agg.busy.on_cpu_ns,
        idle_ns: agg.idle.on_cpu_ns,
        capacity_ns: snapshot.deltas.capacity_ns,
        counter_totals: named_counters(&run.counters, &agg.busy.counters),
        processes: agg.processes.len() as u64,
        threads: agg.threads.len() as u64,
        losses: Losses::from(&snapshot.deltas.losses),
        meter: snapshot.meter.clone(),
        energy: snapshot.power.as_ref().map(machine_energy),
    })];
    for fit in snapshot.power.iter().flat_map(|p| &p.fits) {
        records.push(Record::Model(ModelRecord {
            schema: SCHEMA,
            interval: interval.clone(),
            fit: fit.clone(),
        }));
    }
    let seconds = interval.duration_ns as f64 / 1e9;
    let energy_of = |joules: &crate::attribution::DomainJoules| {
        snapshot
            .power
            .as_ref()
            .map(|p| task_energy(p, joules, seconds))
    };
    let mut task_record = |group: &Group, thread: bool| {
        let counters = named_counters(&run.counters, &group.usage.counters);
        let details = ids.procs.details(group.pid, group.start_ns).clone();
        TaskRecord {
            schema: SCHEMA,
            interval: interval.clone(),
            mode: run.mode.clone(),
            pid: group.pid,
            tid: thread.then_some(group.tid),
            ppid: details.ppid,
            comm: group.comm.clone(),
            uid: group.uid,
            user: ids.users.name(group.uid),
            cmdline: details.cmdline,
            on_cpu_ns: group.usage.on_cpu_ns,
            cpu_percent: percent(group.usage.on_cpu_ns, interval.duration_ns),
            ipc: ipc(counters.as_ref()),
            counters,
            threads: (!thread).then_some(group.members),
            cgroup: cgroup_info(resolver, group.cgroup_id),
            exited: group.exited,
            sockets: shares(run, &group.sockets),
            energy: energy_of(&group.usage.joules),
        }
    };
    match granularity {
        Granularity::Process | Granularity::Thread => {
            let thread = granularity == Granularity::Thread;
            let groups = if thread { &agg.threads } else { &agg.processes };
            let mut seen = std::collections::HashSet::with_capacity(groups.len());
            for group in groups {
                if !filter.is_empty()
                    && !filter.matches(
                        group.pid,
                        &group.comm,
                        &cgroup_info(resolver, group.cgroup_id),
                    )
                {
                    continue;
                }
                seen.insert((group.pid, group.start_ns));
                let record = task_record(group, thread);
                records.push(if thread {
                    Record::Thread(record)
                } else {
                    Record::Process(record)
                });
            }
            ids.procs.retain(&seen);
        }
        Granularity::Cgroup => {
            records.extend(agg.cgroups.iter().filter_map(|g| {
                let cgroup = cgroup_info(resolver, g.cgroup_id);
                filter.matches_cgroup(&cgroup).then(|| {
                    Record::Cgroup(CgroupRecord {
                        schema: SCHEMA,
                        interval: interval.clone(),
                        mode: run.mode.clone(),
                        on_cpu_ns: g.usage.on_cpu_ns,
                        cpu_percent: percent(g.usage.on_cpu_ns, interval.duration_ns),
                        counters: named_counters(&run.counters, &g.usage.counters),
                        processes: g.members,
                        sockets: shares(run, &g.sockets),
                        energy: energy_of(&g.usage.joules),
                        cgroup,
                    })
                })
            }));
        }
    }
    records
}

/// Says on stderr, once, what degrades the figures: no counters, or estimated energy.
pub fn announce(collector: &Collector, run: &RunInfo) {
    if let Some(reason) = &run.mode_reason {
        eprintln!("powerapi: time-only mode (no counters): {reason}");
    }
    let lanes = collector.sensor().lanes();
    if lanes.overflowed {
        eprintln!(
            "powerapi: more than {} sockets: time on the extra sockets is reported on socket {}",
            powerapi_common::MAX_SOCKETS,
            lanes.sockets().last().copied().unwrap_or(0)
        );
    }
    if let Some(note) = collector.energy_note() {
        eprintln!("powerapi: {note}");
    } else if collector.energy_estimated() {
        eprintln!(
            "powerapi: energy is ESTIMATED by the linear model (--energy-source model), not measured"
        );
    }
}

/// What the records of a run share, from the running collector.
pub fn run_info(collector: &Collector) -> RunInfo {
    let sensor = collector.sensor();
    let counters = sensor.counter_names();
    RunInfo {
        mode: if counters.is_empty() {
            Mode::TimeOnly
        } else {
            Mode::Counters
        },
        mode_reason: sensor.time_only_reason().map(str::to_string),
        counters,
        cpus: sensor.cpus().len() as u32,
    }
}

/// Runs until `duration` ends, `stop` receives (or disconnects) or the output's reader goes
/// away; returns how many intervals were written. The sink is opened by `open_sink` only once
/// the sensor runs, so a start that fails leaves an existing output untouched.
pub fn record<S: Sink + 'static>(
    config: &RecordConfig,
    open_sink: impl FnOnce(&Receiver<()>) -> Result<S, SinkError>,
    stop: &Receiver<()>,
) -> Result<u64, RecordError> {
    let mut pipeline = Pipeline::builder().config(config.clone()).start()?;
    announce(pipeline.collector(), pipeline.run_info());
    pipeline.add_sink("output", Box::new(open_sink(stop)?));
    pipeline.run(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_that_could_never_match_are_fixed_or_said() {
        let mut f = Filter {
            pids: vec![1, 999_999],
            comms: vec!["systemd-journald".into(), "sh".into()],
            cgroups: vec![
                "/sys/fs/cgroup/unified/system.slice".into(),
                "user.slice".into(),
                "/gone".into(),
                "42".into(),
            ],
        };
        let warnings = f.normalize(
            Some(std::path::Path::new("/sys/fs/cgroup/unified")),
            |path| path != "/gone",
            |pid| pid == 1,
        );
        assert_eq!(f.comms, ["systemd-journal", "sh"]);
        assert_eq!(f.cgroups, ["/system.slice", "/user.slice", "/gone", "42"]);
        assert_eq!(
            warnings,
            [
                "--comm systemd-journald: the kernel keeps only the first 15 bytes of a command name; matching \"systemd-journal\"",
                "--cgroup user.slice: cgroup paths start at the cgroup root; matching /user.slice",
                "--cgroup /gone: no such cgroup now; it is reported if it appears",
                "--pid 999999: no such process now; it is reported if it appears",
            ]
        );
    }

    #[test]
    fn filters() {
        let cg = CgroupInfo {
            id: 42,
            path: Some("/system.slice/nginx.service".into()),
            ..Default::default()
        };
        assert!(Filter::default().matches(1, "x", &cg));
        let f = Filter {
            pids: vec![7],
            ..Default::default()
        };
        assert!(f.matches(7, "x", &cg) && !f.matches(8, "x", &cg));
        let f = Filter {
            comms: vec!["nginx".into()],
            ..Default::default()
        };
        assert!(f.matches(1, "nginx", &cg) && !f.matches(1, "ngin", &cg));
        let f = Filter {
            cgroups: vec!["/system.slice".into()],
            ..Default::default()
        };
        assert!(f.matches(1, "x", &cg));
        let f = Filter {
            cgroups: vec!["/system.sl".into()],
            ..Default::default()
        };
        assert!(!f.matches(1, "x", &cg));
        let f = Filter {
            cgroups: vec!["42".into()],
            ..Default::default()
        };
        assert!(f.matches(1, "x", &cg));
    }
}
