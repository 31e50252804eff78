//! Energy sources: RAPL through the perf `power` PMU, powercap sysfs or MSRs, or a labelled
//! linear model when there is no RAPL. Sources report raw cumulative counters; [`EnergyMeter`]
//! turns them into joules per interval and handles wraparound — here, once, for every source.

pub mod fitted;
pub(crate) mod model;
pub(crate) mod msr;
pub(crate) mod perf_pmu;
pub(crate) mod powercap;

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::topology::Cpu;

/// A RAPL domain. Domains overlap: package ⊇ core + uncore, psys ⊇ package + dram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    /// The whole processor package (RAPL PKG).
    Package,
    /// The cores (RAPL PP0), inside the package.
    Core,
    /// The uncore, often the integrated GPU (RAPL PP1), inside the package.
    Uncore,
    /// Memory (RAPL DRAM).
    Dram,
    /// Integrated graphics (RAPL PP1 / perf `energy-gpu`).
    Gpu,
    /// The whole platform (RAPL PSYS): a platform-wide figure, not per socket.
    Psys,
}

impl Domain {
    /// Every domain, in index order.
    pub const ALL: [Domain; 6] = [
        Domain::Package,
        Domain::Core,
        Domain::Uncore,
        Domain::Dram,
        Domain::Gpu,
        Domain::Psys,
    ];

    /// The name records use (`package`, `core`, …).
    pub fn name(self) -> &'static str {
        match self {
            Domain::Package => "package",
            Domain::Core => "core",
            Domain::Uncore => "uncore",
            Domain::Dram => "dram",
            Domain::Gpu => "gpu",
            Domain::Psys => "psys",
        }
    }

    /// This domain's position in [`Domain::ALL`] and in per-domain arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The domains whose sum is "the power" of a task in one number (the `W` of `top`): package plus
/// DRAM, which do not overlap; else psys; else whatever was measured.
pub fn headline_domains(measured: &[Domain]) -> Vec<Domain> {
    if measured.contains(&Domain::Package) {
        [Domain::Package, Domain::Dram]
            .into_iter()
            .filter(|d| measured.contains(d))
            .collect()
    } else if measured.contains(&Domain::Psys) {
        vec![Domain::Psys]
    } else {
        measured.to_vec()
    }
}

/// Where an energy figure comes from: a domain on a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DomainKey {
    /// Which domain.
    pub domain: Domain,
    /// Which socket (0 for platform-wide domains).
    pub socket: u32,
}

/// One raw cumulative counter as a source read it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CounterValue {
    /// Which domain on which socket.
    pub key: DomainKey,
    /// The counter as read, in the source's units.
    pub raw: u64,
    /// The counter wraps to 0 after this value (powercap `max_energy_range_uj`, 2³² for MSRs);
    /// `None` for 64-bit counters (perf), which are treated as modular 2⁶⁴.
    pub range: Option<u64>,
    /// Joules per unit of `raw`.
    pub joules_per_unit: f64,
}

/// Joules per domain and socket over one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnergySample {
    /// `perf`, `powercap`, `powercap-dir`, `msr` or `model`.
    pub source: String,
    /// True for the model: every figure derived from it must be labelled estimated.
    pub estimated: bool,
    /// Joules per domain and socket over the interval.
    pub domains: Vec<(DomainKey, f64)>,
    /// The model's own idle power per key (watts), when the source knows it.
    pub known_idle_w: Vec<(DomainKey, f64)>,
    /// Domains whose reading this interval could not be used: absent from `domains`.
    pub unmeasured: Vec<Unmeasured>,
    /// The estimating model's own error (watts), when the figures come from a fitted model.
    pub estimate_error_w: Option<f64>,
    /// Readings rejected since the start, by reason.
    pub implausible_readings: u64,
    /// Readings that failed since the start.
    pub unreadable_readings: u64,
}

/// Why a domain has no figure for an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnmeasuredReason {
    /// The delta implies a power above the domain's plausible bound (a counter reset, a garbage
    /// `max_energy_range_uj`, a rewritten file).
    Implausible,
    /// The counter could not be read (after retries), or this is the first reading after one
    /// that could not: there is no honest delta for the interval.
    Unreadable,
}

/// A domain left out of an interval, and why, for the machine record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unmeasured {
    /// The domain left out.
    pub domain: Domain,
    /// Its socket.
    pub socket: u32,
    /// Why.
    pub reason: UnmeasuredReason,
    /// What was read, for a person.
    pub detail: String,
}

/// Above this power a reading is not believed, when the source gives no limit of its own
/// (powercap's `constraint_*_max_power_uw`, of which 5 × is used). Per domain and socket: about
/// 4 × the largest parts shipping in 2026 (500 W packages), so that no real reading is lost.
pub fn default_bound_watts(domain: Domain) -> f64 {
    match domain {
        Domain::Package | Domain::Core => 2000.0,
        Domain::Uncore | Domain::Dram | Domain::Gpu => 1000.0,
        Domain::Psys => 5000.0,
    }
}

#[derive(Debug, Error)]
/// Why an energy source could not open or be read.
pub enum EnergyError {
    #[error(
        "cannot read {path}: permission denied; energy_uj is root-only since Linux 5.10 (PLATYPUS): run as root, and in Docker unmask /sys/devices/virtual/powercap"
    )]
    /// A file of the source is root-only.
    PermissionDenied {
        /// The file.
        path: String,
    },
    #[error("cannot read {path}: {source}; check --energy-source and --sysfs-root")]
    /// A file of the source could not be read.
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {detail}; whatever writes it does not write an energy counter")]
    /// A file of the source did not hold a counter.
    Parse {
        /// The file.
        path: String,
        /// What was wrong.
        detail: String,
    },
    #[error("{0}")]
    /// The source does not exist on this machine (absent RAPL, no MSR device).
    Unavailable(String),
    /// Options that contradict each other or the machine.
    #[error("{0}")]
    Config(String),
    #[error(
        "the energy source stayed unreadable for {seconds} s (last: {cause}); fix the source or raise --energy-timeout"
    )]
    /// A measured source stayed unreadable longer than `--energy-timeout`.
    Unreadable {
        /// For how long.
        seconds: f64,
        /// The last failure.
        cause: String,
    },
    #[error(
        "cannot open perf event {event} on CPU {cpu}: {source}; run as root or with CAP_PERFMON"
    )]
    /// A perf `power` event could not be opened.
    PerfOpen {
        /// The event's name.
        event: String,
        /// The CPU it was opened on.
        cpu: u32,
        /// The cause.
        source: std::io::Error,
    },
}

pub(crate) fn read_text(path: &Path) -> Result<String, EnergyError> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            EnergyError::PermissionDenied {
                path: path.display().to_string(),
            }
        } else {
            EnergyError::Read {
                path: path.display().to_string(),
                source,
            }
        }
    })
}

/// One counter's reading; a failure names its counter so that the others stay usable.
pub type Reading = Result<CounterValue, (DomainKey, EnergyError)>;

/// A hardware source of cumulative energy counters.
pub trait CounterSource: Send {
    /// `perf`, `powercap`, `powercap-dir` or `msr`.
    fn name(&self) -> &str;
    /// One reading per counter, in a stable order.
    fn read(&mut self) -> Vec<Reading>;
    /// The most power `key` can plausibly draw, when the hardware says (watts).
    fn bound_watts(&self, _key: DomainKey) -> Option<f64> {
        None
    }
}

/// The first failure among `readings`, as the error a start reports.
pub fn first_error(readings: Vec<Reading>) -> Result<Vec<CounterValue>, EnergyError> {
    readings
        .into_iter()
        .map(|r| r.map_err(|(_, e)| e))
        .collect()
}

/// Units since the previous reading, with wraparound: a counter that went down wrapped once at
/// `range` (the reader must sample faster than the wrap period, minutes even at high power).
pub fn counter_delta(previous: u64, current: u64, range: Option<u64>) -> u64 {
    match range {
        Some(range) if current < previous => range.saturating_sub(previous).saturating_add(current),
        Some(_) => current - previous,
        None => current.wrapping_sub(previous),
    }
}

/// How often a failed reading is retried within one interval, and how long apart: a host that
/// rewrites `energy_uj` in place leaves it empty for microseconds.
const READ_ATTEMPTS: u32 = 3;
const READ_RETRY: Duration = Duration::from_millis(2);

/// Turns a counter source's readings into per-interval joules, and refuses to lie: a delta that
/// implies an impossible power, or one that spans a failed read, is reported unmeasured rather
/// than as a number that balances.
pub struct EnergyMeter {
    source: Box<dyn CounterSource>,
    /// The last good raw value of each counter and when it was read.
    previous: HashMap<DomainKey, (u64, Instant)>,
    implausible: u64,
    unreadable: u64,
    /// Since when every counter has failed (None while any reads).
    failing_since: Option<Instant>,
    /// How long the whole source may stay unreadable before the run ends.
    timeout: Duration,
}

impl EnergyMeter {
    /// A counter that cannot be read at start (a host rewriting `energy_uj` just then) is not
    /// fatal: it starts with the next good reading. Missing permissions are: they will not fix
    /// themselves.
    pub fn new(source: Box<dyn CounterSource>, timeout: Duration) -> Result<Self, EnergyError> {
        let mut meter = Self {
            source,
            previous: HashMap::new(),
            implausible: 0,
            unreadable: 0,
            failing_since: None,
            timeout,
        };
        let now = Instant::now();
        let mut any = false;
        for reading in meter.read_with_retries() {
            match reading {
                Ok(c) => {
                    any = true;
                    meter.previous.insert(c.key, (c.raw, now));
                }
                Err((_, e @ EnergyError::PermissionDenied { .. })) => return Err(e),
                Err(_) => {}
            }
        }
        if !any {
            meter.failing_since = Some(now);
        }
        Ok(meter)
    }

    /// Reads every counter, retrying the ones that fail a few times.
    fn read_with_retries(&mut self) -> Vec<Reading> {
        let mut readings = self.source.read();
        for _ in 1..READ_ATTEMPTS {
            if readings.iter().all(Result::is_ok) {
                break;
            }
            std::thread::sleep(READ_RETRY);
            for (slot, again) in readings.iter_mut().zip(self.source.read()) {
                if slot.is_err() {
                    *slot = again;
                }
            }
        }
        readings
    }

    /// Energy since the previous sample, with wraps, resets and implausible readings handled.
    pub fn sample(&mut self) -> Result<EnergySample, EnergyError> {
        let readings = self.read_with_retries();
        self.sample_from(readings, Instant::now())
    }

    /// The delta logic, apart from the reading (unit-tested with made-up readings).
    fn sample_from(
        &mut self,
        readings: Vec<Reading>,
        now: Instant,
    ) -> Result<EnergySample, EnergyError> {
        let mut sample = EnergySample {
            source: self.source.name().to_string(),
            ..Default::default()
        };
        let mut last_error = None;
        let mut any_read = false;
        for reading in readings {
            let value = match reading {
                Ok(value) => value,
                Err((key, e)) => {
                    self.unreadable += 1;
                    self.previous.remove(&key);
                    sample.unmeasured.push(Unmeasured {
                        domain: key.domain,
                        socket: key.socket,
                        reason: UnmeasuredReason::Unreadable,
                        detail: e.to_string(),
                    });
                    last_error = Some(e);
                    continue;
                }
            };
            any_read = true;
            let key = value.key;
            let Some((previous, then)) = self.previous.insert(key, (value.raw, now)) else {
                sample.unmeasured.push(Unmeasured {
                    domain: key.domain,
                    socket: key.socket,
                    reason: UnmeasuredReason::Unreadable,
                    detail: "first reading after one that failed".into(),
                });
                continue;
            };
            let joules =
                counter_delta(previous, value.raw, value.range) as f64 * value.joules_per_unit;
            let seconds = now.duration_since(then).as_secs_f64().max(1e-3);
            let bound = self
                .source
                .bound_watts(key)
                .unwrap_or_else(|| default_bound_watts(key.domain));
            let watts = joules / seconds;
            if !watts.is_finite() || watts > bound {
                self.implausible += 1;
                sample.unmeasured.push(Unmeasured {
                    domain: key.domain,
                    socket: key.socket,
                    reason: UnmeasuredReason::Implausible,
                    detail: format!(
                        "{joules:.3e} J in {seconds:.3} s is {watts:.3e} W, above the {bound} W bound (a counter reset?)"
                    ),
                });
                continue;
            }
            sample.domains.push((key, joules));
        }
        match (any_read, last_error) {
            (false, Some(e)) => {
                let since = *self.failing_since.get_or_insert(now);
                if now.duration_since(since) >= self.timeout {
                    return Err(EnergyError::Unreadable {
                        seconds: self.timeout.as_secs_f64(),
                        cause: e.to_string(),
                    });
                }
            }
            _ => self.failing_since = None,
        }
        sample.domains.sort_by_key(|(k, _)| *k);
        sample.implausible_readings = self.implausible;
        sample.unreadable_readings = self.unreadable;
        Ok(sample)
    }
}

/// `--energy-source`.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// perf PMU, else powercap, else MSR, else the model (with a warning).
    Auto,
    /// RAPL through the perf `power` PMU.
    Perf,
    /// RAPL through `/sys/class/powercap`.
    Powercap,
    /// A powercap-shaped directory that a host writes for its guest.
    PowercapDir(PathBuf),
    /// RAPL MSRs through `/dev/cpu/*/msr`.
    Msr,
    /// ESTIMATED from CPU utilisation by the linear model.
    Model,
    /// CPU time and counters only.
    None,
}

impl FromStr for SourceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => Self::Auto,
            "perf" => Self::Perf,
            "powercap" => Self::Powercap,
            "msr" => Self::Msr,
            "model" => Self::Model,
            "none" => Self::None,
            _ => match s.strip_prefix("powercap-dir:") {
                Some(path) if !path.is_empty() => Self::PowercapDir(PathBuf::from(path)),
                _ => {
                    return Err(format!(
                        "unknown energy source {s:?}: use auto, perf, powercap, powercap-dir:PATH, msr, model or none"
                    ));
                }
            },
        })
    }
}

/// An energy input of a pipeline: joules per domain and socket over each interval. The built-in
/// sources are [`EnergySource`]s (RAPL through perf, powercap or MSRs, or the model); implement
/// this to feed another (a wattmeter, a BMC, a host's figures for its guest).
pub trait Source: Send {
    /// Recorded as the machine record's `energy.source`.
    fn name(&self) -> &str;
    /// True when the figures are a model's, not a measurement: every figure derived from them is
    /// then labelled estimated.
    fn estimated(&self) -> bool;
    /// Energy over the interval that just ended (`duration_ns` long); `busy_ns_by_socket` (on-CPU
    /// time of every task but idle, per socket) is there for sources that model.
    fn sample(
        &mut self,
        duration_ns: u64,
        busy_ns_by_socket: &[(u32, u64)],
    ) -> Result<EnergySample, EnergyError>;

    /// What the sensor saw in the interval about to be sampled, for sources that estimate
    /// from usage: counter names, per-socket usage, per-socket frequency (MHz).
    fn observe(
        &mut self,
        _counters: &[String],
        _usage: &[SocketUsage],
        _frequencies: &[(u32, f64)],
    ) {
    }

    /// The online CPUs changed (hotplug): a source that models from the CPU count rebuilds for
    /// `cpus`. On an error the source keeps its previous figures.
    fn cpus_changed(&mut self, _cpus: &[Cpu]) -> Result<(), EnergyError> {
        Ok(())
    }
}

/// What the tasks of one socket did in an interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SocketUsage {
    /// The socket.
    pub socket: u32,
    /// On-CPU time of every task but the idle ones.
    pub busy_ns: u64,
    /// Their counter deltas, by counter slot.
    pub counters: Vec<u64>,
}

/// Energy options: the model's coefficients (`--idle-watts`, `--max-watts`) and how long a
/// measured source may stay unreadable (`--energy-timeout`).
#[derive(Clone, Debug)]
pub struct EnergyOptions {
    /// The model's idle power (default 2 W per CPU), or the package's idle power for attribution.
    pub idle_watts: Option<f64>,
    /// The model's power at 100 % CPU (default 10 W per CPU).
    pub max_watts: Option<f64>,
    /// How long a measured source may stay unreadable before the run ends (`--energy-timeout`).
    pub timeout: Duration,
}

impl Default for EnergyOptions {
    /// The command line's defaults: the model's coefficients from the CPU count, 30 s.
    fn default() -> Self {
        Self {
            idle_watts: None,
            max_watts: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The energy input of a pipeline: a measured source or the model.
pub enum EnergySource {
    /// RAPL, through one of its interfaces.
    Measured(EnergyMeter),
    /// The linear model (estimated).
    Model(model::LinearModel),
}

impl EnergySource {
    /// Opens the source `spec` asks for (`None` for [`SourceSpec::None`]). `Auto` falls back in
    /// order and, at the end, to the model; the returned note says so, for the user.
    pub fn open(
        spec: &SourceSpec,
        root: &Path,
        cpus: &[Cpu],
        model: &EnergyOptions,
    ) -> Result<(Option<Self>, Option<String>), EnergyError> {
        if *spec == SourceSpec::None {
            return Ok((None, None));
        }
        let (source, note) = Self::open_some(spec, root, cpus, model)?;
        Ok((Some(source), note))
    }

    fn open_some(
        spec: &SourceSpec,
        root: &Path,
        cpus: &[Cpu],
        model: &EnergyOptions,
    ) -> Result<(Self, Option<String>), EnergyError> {
        let measured = |spec: &SourceSpec| -> Result<Self, EnergyError> {
            let source: Box<dyn CounterSource> = match spec {
                SourceSpec::Perf => Box::new(perf_pmu::PerfPmu::open(root, cpus)?),
                SourceSpec::Powercap => Box::new(powercap::Powercap::open(
                    &root.join("sys/class/powercap"),
                    "powercap",
                )?),
                SourceSpec::PowercapDir(dir) => {
                    Box::new(powercap::Powercap::open(dir, "powercap-dir")?)
                }
                _ => Box::new(msr::Msr::open(cpus)?),
            };
            Ok(Self::Measured(EnergyMeter::new(source, model.timeout)?))
        };
        match spec {
            SourceSpec::Model | SourceSpec::None => Ok((
                Self::Model(model::LinearModel::new(
                    cpus,
                    model.idle_watts,
                    model.max_watts,
                )?),
                None,
            )),
            SourceSpec::Auto => {
                let mut reasons: Vec<String> = Vec::new();
                for (name, candidate) in [
                    ("perf", SourceSpec::Perf),
                    ("powercap", SourceSpec::Powercap),
                    ("msr", SourceSpec::Msr),
                ] {
                    match measured(&candidate) {
                        Ok(source) => return Ok((source, None)),
                        // Absent is the normal VM case; present but failing is worth saying.
                        Err(EnergyError::Unavailable(_)) => {}
                        Err(e) => reasons.push(format!("{name}: {e}")),
                    }
                }
                let why = if reasons.is_empty() {
                    "none here".to_string()
                } else {
                    reasons.join("; ")
                };
                let (model, _) = Self::open_some(&SourceSpec::Model, root, cpus, model)?;
                Ok((
                    model,
                    Some(format!(
                        "no usable RAPL energy source ({why}): energy is ESTIMATED from CPU utilisation (--energy-source model)"
                    )),
                ))
            }
            other => Ok((measured(other)?, None)),
        }
    }
}

impl Source for EnergySource {
    fn sample(
        &mut self,
        duration_ns: u64,
        busy_ns_by_socket: &[(u32, u64)],
    ) -> Result<EnergySample, EnergyError> {
        match self {
            Self::Measured(meter) => meter.sample(),
            Self::Model(model) => Ok(model.sample(duration_ns, busy_ns_by_socket)),
        }
    }

    fn estimated(&self) -> bool {
        matches!(self, Self::Model(_))
    }

    fn cpus_changed(&mut self, cpus: &[Cpu]) -> Result<(), EnergyError> {
        match self {
            // RAPL measures whatever CPUs are there.
            Self::Measured(_) => Ok(()),
            Self::Model(model) => {
                *model = model.for_cpus(cpus)?;
                Ok(())
            }
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Measured(meter) => meter.source.name(),
            Self::Model(_) => "model",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline() {
        assert_eq!(
            headline_domains(&[Domain::Psys, Domain::Dram, Domain::Package, Domain::Core]),
            vec![Domain::Package, Domain::Dram]
        );
        assert_eq!(headline_domains(&[Domain::Psys]), vec![Domain::Psys]);
        assert_eq!(headline_domains(&[Domain::Core]), vec![Domain::Core]);
    }

    #[test]
    fn wraparound() {
        assert_eq!(counter_delta(100, 150, Some(1000)), 50);
        assert_eq!(counter_delta(100, 100, Some(1000)), 0, "equal is no wrap");
        assert_eq!(counter_delta(900, 50, Some(1000)), 150);
        assert_eq!(counter_delta(u32::MAX as u64 - 9, 10, Some(1 << 32)), 20);
        assert_eq!(counter_delta(u64::MAX - 4, 5, None), 10);
    }

    /// Readings scripted per call: `Some(raw)` or `None` for a failed read.
    struct Scripted {
        calls: std::collections::VecDeque<Vec<Option<u64>>>,
        range: Option<u64>,
        bound: Option<f64>,
    }

    fn key(socket: u32) -> DomainKey {
        DomainKey {
            domain: Domain::Package,
            socket,
        }
    }

    impl CounterSource for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn read(&mut self) -> Vec<Reading> {
            let call = self.calls.pop_front().unwrap_or_default();
            call.into_iter()
                .enumerate()
                .map(|(i, raw)| match raw {
                    Some(raw) => Ok(CounterValue {
                        key: key(i as u32),
                        raw,
                        range: self.range,
                        joules_per_unit: 1e-6,
                    }),
                    None => Err((key(i as u32), EnergyError::Unavailable("empty read".into()))),
                })
                .collect()
        }
        fn bound_watts(&self, _key: DomainKey) -> Option<f64> {
            self.bound
        }
    }

    fn meter(calls: Vec<Vec<Option<u64>>>, range: Option<u64>, bound: Option<f64>) -> EnergyMeter {
        EnergyMeter::new(
            Box::new(Scripted {
                calls: calls.into(),
                range,
                bound,
            }),
            Duration::from_secs(3),
        )
        .expect("first reading")
    }

    /// Feeds the meter's own scripted source one call per second after `t0`.
    fn step(m: &mut EnergyMeter, t0: Instant, second: u64) -> Result<EnergySample, EnergyError> {
        let readings = m.source.read();
        m.sample_from(readings, t0 + Duration::from_secs(second))
    }

    #[test]
    fn impossible_jumps_are_unmeasured_not_numbers_that_balance() {
        // Socket 0: a reset with a garbage range (u64::MAX) read as 1.8e13 J; socket 1 a reset
        // with a valid 262 kJ range; both at 1 s intervals.
        let range = 262_143_328_850;
        let mut m = meter(
            vec![
                vec![Some(1_000_000_000), Some(5_000_000)],
                vec![Some(1_050_000_000), Some(5_000)],
                vec![Some(1_100_000_000), Some(55_000)],
            ],
            Some(range),
            None,
        );
        m.previous
            .values_mut()
            .for_each(|(_, t)| *t -= Duration::from_secs(1));
        let t0 = Instant::now();
        // 50 J in 1 s on socket 0 is fine; socket 1 went from 5 J to 0.005 J: a "wrap" of 262 kJ.
        let s = step(&mut m, t0, 0).expect("sample");
        assert_eq!(s.domains, vec![(key(0), 50.0)]);
        assert_eq!(s.unmeasured.len(), 1);
        assert_eq!(s.unmeasured[0].socket, 1);
        assert_eq!(s.unmeasured[0].reason, UnmeasuredReason::Implausible);
        assert!(
            s.unmeasured[0].detail.contains("above the 2000 W bound"),
            "{:?}",
            s.unmeasured
        );
        assert_eq!(s.implausible_readings, 1);
        // The rejected reading becomes the new base: the next interval is measured again.
        let s = step(&mut m, t0, 1).expect("sample");
        assert_eq!(s.domains.len(), 2);
        assert!((s.domains[1].1 - 0.05).abs() < 1e-12, "{s:?}");
        assert!(s.unmeasured.is_empty());
        assert_eq!(s.implausible_readings, 1, "a running total");

        // With no valid range, a reset reads as 1.8e13 J: rejected too.
        let mut m = meter(vec![vec![Some(1000)], vec![Some(10)]], None, None);
        let s = m.sample().expect("sample");
        assert!(s.domains.is_empty() && s.unmeasured[0].reason == UnmeasuredReason::Implausible);
    }

    /// A source that declares no bound of its own.
    struct Plain(std::collections::VecDeque<u64>);

    impl CounterSource for Plain {
        fn name(&self) -> &str {
            "plain"
        }
        fn read(&mut self) -> Vec<Reading> {
            vec![Ok(CounterValue {
                key: key(0),
                raw: self.0.pop_front().unwrap_or(0),
                range: None,
                joules_per_unit: 1.0,
            })]
        }
    }

    #[test]
    fn without_a_declared_bound_the_domain_default_applies_over_the_real_interval() {
        // 3000 J in 2 s: 1500 W, under the 2000 W package default (3000 × 2 would not be).
        let mut m = EnergyMeter::new(
            Box::new(Plain([0, 3000, 9000].into())),
            Duration::from_secs(3),
        )
        .expect("start");
        m.previous
            .values_mut()
            .for_each(|(_, t)| *t -= Duration::from_secs(2));
        let readings = m.source.read();
        let s = m.sample_from(readings, Instant::now()).expect("sample");
        assert_eq!(s.source, "plain");
        assert_eq!(s.domains, vec![(key(0), 3000.0)]);
        // Exactly at the bound is still believed: 4000 J in 2 s.
        let mut at = EnergyMeter::new(Box::new(Plain([0, 4000].into())), Duration::from_secs(3))
            .expect("start");
        let then = at.previous[&key(0)].1;
        let readings = at.source.read();
        let s = at
            .sample_from(readings, then + Duration::from_secs(2))
            .expect("sample");
        assert_eq!(s.domains, vec![(key(0), 4000.0)]);
        // 6000 J in 2 s: 3000 W, rejected.
        let readings = m.source.read();
        let later = Instant::now() + Duration::from_secs(2);
        let s = m.sample_from(readings, later).expect("sample");
        assert!(s.domains.is_empty() && s.implausible_readings == 1, "{s:?}");
    }

    #[test]
    fn open_picks_what_was_asked_and_labels_it() {
        let cpus = [crate::topology::Cpu { id: 0, socket: 0 }];
        let options = EnergyOptions {
            idle_watts: None,
            max_watts: None,
            timeout: Duration::from_secs(1),
        };
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/powercap/client");
        let (source, note) = EnergySource::open(
            &SourceSpec::PowercapDir(fixture),
            Path::new("/"),
            &cpus,
            &options,
        )
        .expect("fixture opens");
        let mut source = source.expect("a source");
        assert_eq!(
            (source.name(), source.estimated(), note),
            ("powercap-dir", false, None)
        );
        let s = source.sample(1_000_000_000, &[]).expect("sample");
        assert_eq!(s.source, "powercap-dir");
        assert!(
            !s.domains.is_empty(),
            "the fixture's zones, read twice: zero deltas"
        );
        let (model, _) = EnergySource::open(&SourceSpec::Model, Path::new("/"), &cpus, &options)
            .expect("the model");
        let mut model = model.expect("a source");
        assert_eq!((model.name(), model.estimated()), ("model", true));
        let s = model
            .sample(1_000_000_000, &[(0, 1_000_000_000)])
            .expect("sample");
        assert_eq!(
            s.domains,
            vec![(key(0), 10.0)],
            "2 W idle + 8 W at full load, 1 CPU"
        );
        let (none, note) =
            EnergySource::open(&SourceSpec::None, Path::new("/"), &cpus, &options).expect("none");
        assert!(none.is_none() && note.is_none());
        // perf and powercap under a root without them: unavailable, and the error names the
        // interface that was tried (not another one).
        for (spec, names) in [
            (SourceSpec::Perf, "event_source/devices/power"),
            (SourceSpec::Powercap, "/nonexistent-root/sys/class/powercap"),
        ] {
            let err = EnergySource::open(&spec, Path::new("/nonexistent-root"), &cpus, &options)
                .err()
                .expect("absent");
            assert!(err.to_string().contains(names), "{spec:?}: {err}");
        }
    }

    #[test]
    fn read_errors_say_what_failed() {
        let err = read_text(Path::new("/nonexistent/energy_uj")).expect_err("missing");
        assert!(matches!(err, EnergyError::Read { .. }), "{err}");
    }

    #[test]
    fn the_sources_own_limit_sets_the_bound() {
        // 150 J in 1 s: under the 2000 W default, over a declared 100 W bound.
        let mut m = meter(
            vec![vec![Some(0)], vec![Some(150_000_000)]],
            None,
            Some(100.0),
        );
        m.previous
            .values_mut()
            .for_each(|(_, t)| *t -= Duration::from_secs(1));
        let s = step(&mut m, Instant::now(), 0).expect("sample");
        assert!(s.domains.is_empty(), "{s:?}");
        assert!(s.unmeasured[0].detail.contains("100 W bound"));
    }

    #[test]
    fn a_failed_read_is_retried_then_unmeasured_and_only_a_lasting_one_ends_the_run() {
        // A read that fails once is retried within the interval: nothing is lost.
        let mut m = meter(
            vec![vec![Some(0)], vec![None], vec![Some(1_000_000)]],
            None,
            None,
        );
        let s = m.sample().expect("sample");
        assert_eq!(s.domains.len(), 1, "{s:?}");
        assert_eq!(s.unreadable_readings, 0);
        // Also at start: one empty read, then a good one.
        let mut m = meter(
            vec![vec![None], vec![Some(0)], vec![Some(1_000_000)]],
            None,
            None,
        );
        assert_eq!(m.sample().expect("sample").domains.len(), 1);

        let mut m = meter(
            vec![
                vec![Some(0), Some(0)],
                vec![None, Some(1_000_000)],
                vec![Some(3_000_000), Some(2_000_000)],
                vec![Some(4_000_000), Some(3_000_000)],
                vec![None, None],
                vec![None, None],
                vec![None, None],
                vec![None, None],
            ],
            None,
            None,
        );
        let t0 = Instant::now();
        let s = step(&mut m, t0, 1).expect("one counter failing: the other is measured");
        assert_eq!(s.domains, vec![(key(1), 1.0)]);
        assert_eq!(s.unmeasured[0].reason, UnmeasuredReason::Unreadable);
        assert_eq!(s.unreadable_readings, 1);
        // The first good reading after a failure has no honest delta: still unmeasured.
        let s = step(&mut m, t0, 2).expect("sample");
        assert_eq!(s.domains, vec![(key(1), 1.0)]);
        assert_eq!(
            s.unmeasured[0].detail,
            "first reading after one that failed"
        );
        let s = step(&mut m, t0, 3).expect("sample");
        assert_eq!(s.domains, vec![(key(0), 1.0), (key(1), 1.0)]);
        // Everything failing: unmeasured intervals until the 3 s timeout, then the cause.
        for second in [4, 5, 6] {
            let s = step(&mut m, t0, second).expect("within the timeout");
            assert!(s.domains.is_empty() && s.unmeasured.len() == 2);
        }
        let err = step(&mut m, t0, 7).expect_err("unreadable for 3 s");
        assert_eq!(
            err.to_string(),
            "the energy source stayed unreadable for 3 s (last: empty read); fix the source or raise --energy-timeout"
        );
    }

    #[test]
    fn source_specs() {
        for (text, spec) in [
            ("auto", SourceSpec::Auto),
            ("perf", SourceSpec::Perf),
            ("powercap", SourceSpec::Powercap),
            ("msr", SourceSpec::Msr),
            ("model", SourceSpec::Model),
            ("none", SourceSpec::None),
        ] {
            assert_eq!(text.parse(), Ok(spec), "{text}");
        }
        assert_eq!(
            "powercap-dir:/x/y".parse(),
            Ok(SourceSpec::PowercapDir("/x/y".into()))
        );
        assert!("powercap-dir:".parse::<SourceSpec>().is_err());
        assert!("rapl".parse::<SourceSpec>().is_err());
    }
}
