//! The records powerapi writes (JSON lines), versioned by [`SCHEMA`]. Sinks serialise these and
//! know nothing of where a number came from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    attribution::{DomainJoules, DomainReport, IdlePolicy, PowerReport},
    cgroup::Container,
    energy::{Domain, Unmeasured},
    smartwatts::ModelFit,
};

/// Bump on any incompatible change to a record's fields.
pub const SCHEMA: u32 = 3;

/// When an interval ran; repeated in every record so each line stands alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// 1 for the first interval of a run.
    pub seq: u64,
    /// CLOCK_MONOTONIC nanoseconds (the clock `bpf_ktime_get_ns` uses).
    pub start_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds at the interval's end.
    pub end_ns: u64,
    /// `end_ns - start_ns`.
    pub duration_ns: u64,
    /// Wall-clock end of the interval, RFC 3339 UTC.
    pub time: String,
    /// The same instant in nanoseconds since the Unix epoch (jq 1.6's `fromdate` rejects the
    /// nanoseconds of `time`).
    pub time_unix_ns: u64,
    /// Cut short by SIGINT/SIGTERM or the end of `--duration`.
    pub partial: bool,
}

/// Whether hardware counters were read, and which.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// On-CPU time only: this machine (or the configuration) has no usable counters.
    TimeOnly,
    /// Hardware (or software) counters read at every switch.
    Counters,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
/// What the sensor could not book in an interval, and why.
pub struct Losses {
    /// Slices not booked: every `--max-tasks` slot was in use.
    pub lost_slices: u64,
    /// Their time.
    pub lost_ns: u64,
    /// Exits collected from the slots because the ring buffer was full (not lost).
    pub exit_overflow: u64,
    /// Slices left open on a CPU while it was offline, discarded when it returned.
    pub stale_slices: u64,
    /// Slices whose counter reads failed: their counts are missing, not charged to anyone.
    pub counter_read_errors: u64,
}

impl From<&powerapi_common::SensorStats> for Losses {
    fn from(s: &powerapi_common::SensorStats) -> Self {
        Self {
            lost_slices: s.lost_slices,
            lost_ns: s.lost_ns,
            exit_overflow: s.exit_overflow,
            stale_slices: s.stale_slices,
            counter_read_errors: s.counter_read_errors,
        }
    }
}

/// What running the meter itself cost during the interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeterCost {
    /// CPU time of the powerapi process (user + system).
    pub cpu_ns: u64,
    /// Time to flush, drain and turn the maps into deltas.
    pub drain_us: u64,
    /// Peak resident memory of the powerapi process, in KiB.
    pub peak_rss_kib: u64,
    /// Records the network sinks gave up since the start, because their server was away longer
    /// than `--sink-buffer` holds (what a collector is missing, said in what it did get).
    #[serde(default)]
    pub dropped_records: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// The machine in one interval: CPU time, losses, the meter's cost, energy.
pub struct MachineRecord {
    /// [`SCHEMA`] when written.
    pub schema: u32,
    /// When the interval ran.
    pub interval: Interval,
    /// This machine's name, to join records from a fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Time-only or counters.
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Why counters are off, when they are.
    pub mode_reason: Option<String>,
    /// Counter names in use (empty in time-only mode).
    pub counters: Vec<String>,
    /// CPUs online at the end of the interval.
    pub cpus: u32,
    /// CPUs went offline or online during the interval.
    #[serde(default)]
    pub cpus_changed: bool,
    /// Each socket's CPU frequency at the end of the interval, where cpufreq exists (what
    /// `replay` gives model-based formulas).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frequencies: Vec<SocketFrequency>,
    /// Busy time, counters and CPUs per socket, on machines with more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<SocketShare>,
    /// On-CPU time of every task but the idle tasks.
    pub busy_ns: u64,
    /// On-CPU time of the per-CPU idle tasks.
    pub idle_ns: u64,
    /// CPU time the CPUs had in this interval, each from its own flush instant to the next (or
    /// to when it went offline, or from when it came back): what busy + idle + lost add up to.
    /// `cpus × duration_ns` when no CPU changed, within each CPU's flush delay.
    pub capacity_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Counter totals over busy tasks, by name.
    pub counter_totals: Option<BTreeMap<String, u64>>,
    /// Processes that ran (or ended) in the interval.
    pub processes: u64,
    /// Threads that ran (or ended) in the interval.
    pub threads: u64,
    /// What could not be booked.
    pub losses: Losses,
    /// What the meter cost.
    pub meter: MeterCost,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Measured energy and where it went (`None` without an energy source).
    pub energy: Option<MachineEnergy>,
}

/// What tasks did on one socket (records of machines with more than one socket): what `replay`
/// needs to share each socket's energy again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SocketShare {
    /// The socket.
    pub socket: u32,
    /// On-CPU time there.
    pub on_cpu_ns: u64,
    /// Counter deltas there, by name (counters mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<BTreeMap<String, u64>>,
    /// CPUs online on the socket (machine records only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
}

/// A socket's CPU frequency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SocketFrequency {
    /// The socket.
    pub socket: u32,
    /// Average over its online CPUs, in MHz.
    pub mhz: f64,
}

/// The machine's energy in one interval: what was measured and where it went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineEnergy {
    /// `perf`, `powercap`, `powercap-dir`, `msr` or `model`.
    pub source: String,
    /// True when the figures come from the model, not from RAPL.
    pub estimated: bool,
    /// The idle policy energy was split with.
    pub idle_policy: IdlePolicy,
    /// One entry per domain and socket.
    pub domains: Vec<DomainReport>,
    /// Domains whose reading was rejected or unreadable this interval: they have no figure
    /// (rather than one that balances but lies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmeasured: Vec<Unmeasured>,
    /// Readings rejected since the start because they implied an impossible power.
    #[serde(default)]
    pub implausible_readings: u64,
    /// Readings that failed (after retries) since the start.
    #[serde(default)]
    pub unreadable_readings: u64,
    /// With `--load-model`: the fitted model's training error, in watts (the figures are
    /// estimates within about this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate_error_w: Option<f64>,
}

/// A task's or cgroup's share of the energy, per domain (sockets summed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEnergy {
    /// True when derived from a model's figures.
    pub estimated: bool,
    /// Joules per domain, sockets summed.
    pub joules: BTreeMap<Domain, f64>,
    /// Average watts per domain over the interval.
    pub watts: BTreeMap<Domain, f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
/// A cgroup as records name it.
pub struct CgroupInfo {
    /// cgroup v2 id (inode of the cgroup directory).
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Its path under the cgroup v2 root, when known.
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The container it belongs to, when its path names one.
    pub container: Option<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The systemd unit it belongs to, when its path names one.
    pub unit: Option<String>,
}

/// One process (`type: process`) or thread (`type: thread`) for one interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// [`SCHEMA`] when written.
    pub schema: u32,
    /// When the interval ran.
    pub interval: Interval,
    /// Time-only or counters.
    pub mode: Mode,
    /// The process (tgid).
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The thread (thread records only).
    pub tid: Option<u32>,
    /// Parent pid from `/proc` when the process was first reported (absent if it was gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// Command name (`/proc/PID/comm`) at the end of the interval.
    pub comm: String,
    /// Real uid as the kernel read it when the task ran, and its name (the uid when passwd
    /// does not know it).
    pub uid: u32,
    /// The passwd name of `uid`, or the uid as text.
    pub user: String,
    /// The command line from `/proc`, with `record --cmdline` (absent if the process was gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Time on CPU in the interval, in nanoseconds.
    pub on_cpu_ns: u64,
    /// Share of one CPU over the interval (200 = two CPUs fully).
    pub cpu_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Counter deltas by name (counters mode only).
    pub counters: Option<BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Instructions per cycle, when both are counted.
    pub ipc: Option<f64>,
    /// Threads seen in the interval (processes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// The cgroup at the end of the interval.
    pub cgroup: CgroupInfo,
    /// Died during the interval: these are its final figures.
    pub exited: bool,
    /// `on_cpu_ns` and `counters` per socket, on machines with more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<SocketShare>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Its share of the energy (`None` without an energy source).
    pub energy: Option<TaskEnergy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// A cgroup in one interval (`--granularity cgroup`).
pub struct CgroupRecord {
    /// [`SCHEMA`] when written.
    pub schema: u32,
    /// When the interval ran.
    pub interval: Interval,
    /// Time-only or counters.
    pub mode: Mode,
    /// Which cgroup.
    pub cgroup: CgroupInfo,
    /// Time on CPU of its tasks, in nanoseconds.
    pub on_cpu_ns: u64,
    /// That time as a percentage of one CPU.
    pub cpu_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Counter deltas by name (counters mode only).
    pub counters: Option<BTreeMap<String, u64>>,
    /// Processes of the cgroup that ran.
    pub processes: u32,
    /// `on_cpu_ns` and `counters` per socket, on machines with more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<SocketShare>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Its share of the energy.
    pub energy: Option<TaskEnergy>,
}

/// One JSON line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record {
    /// The machine: written first in every interval.
    Machine(MachineRecord),
    /// A process (`--granularity process`).
    Process(TaskRecord),
    /// A thread (`--granularity thread`).
    Thread(TaskRecord),
    /// A cgroup (`--granularity cgroup`).
    Cgroup(CgroupRecord),
    /// A model the formula fitted (`--formula smartwatts`), in the interval it was fitted.
    Model(ModelRecord),
}

/// A fitted power model: what SmartWatts learned for a domain, socket and frequency layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// [`SCHEMA`] when written.
    pub schema: u32,
    /// The interval whose sample completed the fit.
    pub interval: Interval,
    /// Domain, socket, layer, coefficients, samples, error and why it was fitted.
    #[serde(flatten)]
    pub fit: ModelFit,
}

/// The machine-level energy record of an interval.
pub fn machine_energy(power: &PowerReport) -> MachineEnergy {
    MachineEnergy {
        source: power.source.clone(),
        estimated: power.estimated,
        idle_policy: power.idle_policy,
        domains: power.domains.clone(),
        unmeasured: power.unmeasured.clone(),
        implausible_readings: power.implausible_readings,
        unreadable_readings: power.unreadable_readings,
        estimate_error_w: power.estimate_error_w,
    }
}

/// A task's (or group's) energy over `seconds`, for the domains the source measured.
pub fn task_energy(power: &PowerReport, joules: &DomainJoules, seconds: f64) -> TaskEnergy {
    let mut energy = TaskEnergy {
        estimated: power.estimated,
        joules: BTreeMap::new(),
        watts: BTreeMap::new(),
    };
    for d in &power.domains {
        let j = joules[d.key.domain.index()];
        energy.joules.insert(d.key.domain, j);
        energy
            .watts
            .insert(d.key.domain, if seconds > 0.0 { j / seconds } else { 0.0 });
    }
    energy
}

/// Counter values by name; `None` in time-only mode so a missing PMU never looks like zeros.
pub fn named_counters(names: &[String], values: &[u64]) -> Option<BTreeMap<String, u64>> {
    (!names.is_empty()).then(|| names.iter().cloned().zip(values.iter().copied()).collect())
}

/// Instructions per cycle when both counters are in use and cycles ran.
pub fn ipc(counters: Option<&BTreeMap<String, u64>>) -> Option<f64> {
    let counters = counters?;
    let (cycles, instructions) = (*counters.get("cycles")?, *counters.get("instructions")?);
    (cycles > 0).then(|| instructions as f64 / cycles as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval() -> Interval {
        Interval {
            seq: 1,
            start_ns: 10,
            end_ns: 1_000_000_010,
            duration_ns: 1_000_000_000,
            time: "2026-11-24T15:00:00.000000000Z".into(),
            time_unix_ns: 1_795_964_400_000_000_000,
            partial: false,
        }
    }

    #[test]
    fn round_trip_and_shape() {
        let names = vec!["cycles".to_string(), "instructions".to_string()];
        let counters = named_counters(&names, &[100, 250]);
        let record = Record::Process(TaskRecord {
            schema: SCHEMA,
            interval: interval(),
            mode: Mode::Counters,
            pid: 42,
            tid: None,
            ppid: Some(1),
            comm: "burn".into(),
            uid: 1000,
            user: "alice".into(),
            cmdline: None,
            on_cpu_ns: 500,
            cpu_percent: 0.00005,
            ipc: ipc(counters.as_ref()),
            counters,
            threads: Some(1),
            cgroup: CgroupInfo {
                id: 7,
                path: Some("/a".into()),
                ..Default::default()
            },
            exited: false,
            sockets: Vec::new(),
            energy: Some(TaskEnergy {
                estimated: true,
                joules: [(Domain::Package, 1.5)].into_iter().collect(),
                watts: [(Domain::Package, 1.5)].into_iter().collect(),
            }),
        });
        let line = serde_json::to_string(&record).expect("serialize");
        assert!(
            line.starts_with(r#"{"type":"process","schema":3,"#),
            "{line}"
        );
        assert!(line.contains(r#""ipc":2.5"#));
        assert!(
            line.contains(
                r#""energy":{"estimated":true,"joules":{"package":1.5},"watts":{"package":1.5}}"#
            ),
            "{line}"
        );
        assert_eq!(
            serde_json::from_str::<Record>(&line).expect("parse"),
            record
        );
    }

    #[test]
    fn task_watts_over_the_interval_and_ipc_without_cycles() {
        use crate::{
            attribution::{DomainReport, IdleSource, PowerReport},
            energy::DomainKey,
        };
        let power = PowerReport {
            fits: Vec::new(),
            estimate_error_w: None,
            source: "test".into(),
            estimated: true,
            idle_policy: Default::default(),
            domains: vec![DomainReport {
                key: DomainKey {
                    domain: Domain::Package,
                    socket: 0,
                },
                measured_j: 0.0,
                attributed_j: 0.0,
                idle_j: 0.0,
                unattributed_j: 0.0,
                power_w: 0.0,
                idle_w: 0.0,
                idle_source: IdleSource::None,
                idle_method: None,
                metric: "cpu-time".into(),
                formula: None,
            }],
            task_joules: vec![],
            unmeasured: vec![],
            implausible_readings: 0,
            unreadable_readings: 0,
        };
        let mut joules = [0.0; Domain::ALL.len()];
        joules[Domain::Package.index()] = 3.0;
        let e = task_energy(&power, &joules, 0.5);
        assert_eq!(e.watts[&Domain::Package], 6.0);
        assert!(e.estimated);
        assert_eq!(
            task_energy(&power, &joules, 0.0).watts[&Domain::Package],
            0.0
        );
        let names = vec!["cycles".to_string(), "instructions".to_string()];
        assert_eq!(ipc(named_counters(&names, &[0, 100]).as_ref()), None);
    }

    #[test]
    fn losses_keep_every_kernel_count() {
        let stats = powerapi_common::SensorStats {
            lost_slices: 1,
            lost_ns: 2,
            exit_overflow: 3,
            stale_slices: 4,
            counter_read_errors: 5,
        };
        assert_eq!(
            Losses::from(&stats),
            Losses {
                lost_slices: 1,
                lost_ns: 2,
                exit_overflow: 3,
                stale_slices: 4,
                counter_read_errors: 5,
            }
        );
    }

    #[test]
    fn time_only_has_no_counter_fields() {
        assert_eq!(named_counters(&[], &[]), None);
        let record = Record::Thread(TaskRecord {
            schema: SCHEMA,
            interval: interval(),
            mode: Mode::TimeOnly,
            pid: 1,
            tid: Some(2),
            ppid: None,
            comm: "x".into(),
            uid: 0,
            user: "root".into(),
            cmdline: None,
            on_cpu_ns: 1,
            cpu_percent: 0.0,
            counters: None,
            ipc: None,
            threads: None,
            cgroup: CgroupInfo::default(),
            exited: true,
            sockets: Vec::new(),
            energy: None,
        });
        let line = serde_json::to_string(&record).expect("serialize");
        assert!(line.contains(r#""mode":"time-only""#));
        assert!(!line.contains("counters"));
        assert_eq!(
            serde_json::from_str::<Record>(&line).expect("parse"),
            record
        );
    }
}
