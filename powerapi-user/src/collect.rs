//! Turns the sensor into a stream of interval snapshots: read, delta, aggregate, resolve cgroups.
//! Every consumer (record, top, run) takes snapshots from here and nothing else.

use std::time::{Instant, SystemTime};

use thiserror::Error;

use crate::{
    aggregate::{Aggregate, aggregate},
    attribution::{Attribution, AttributionConfig, IdleSource, Metric, PowerReport},
    cgroup::{CgroupResolver, read_cgroup2_mount},
    delta::{IntervalDeltas, Tracker},
    energy::{
        DomainKey, EnergyError, EnergyOptions, EnergySource, SocketUsage, Source, SourceSpec,
        UnmeasuredReason, fitted::FittedModel,
    },
    formula::Formula,
    frequency::Frequencies,
    idle::IdleStore,
    report::{Interval, MeterCost},
    sensor::{Sensor, SensorConfig, SensorError, SensorReading},
    smartwatts::{SmartWatts, SmartWattsConfig},
    topology::cpus_by_socket,
};

#[derive(Debug, Error)]
/// Why a pipeline could not start or take an interval.
pub enum CollectError {
    #[error(transparent)]
    /// The kernel sensor failed (privileges, kernel features, maps).
    Sensor(#[from] SensorError),
    #[error("energy source: {0}")]
    /// The energy source failed.
    Energy(#[from] EnergyError),
    /// Options that cannot work together on this machine.
    #[error("{0}")]
    Config(String),
}

/// Refuses a `--metric` whose counter this run does not read: it used to become cpu-time
/// silently, and figures labelled "by cycles" were not.
fn check_metric(
    metric: Metric,
    counters: &[String],
    time_only: Option<&str>,
) -> Result<(), String> {
    let wanted = match metric {
        Metric::Cycles => "cycles",
        Metric::Instructions => "instructions",
        Metric::Auto | Metric::CpuTime => return Ok(()),
    };
    if counters.iter().any(|c| c == wanted) {
        return Ok(());
    }
    let why = match time_only {
        Some(reason) => format!("time-only mode: {reason}"),
        None => format!("--counters reads {}", counters.join(",")),
    };
    Err(format!(
        "--metric {wanted} needs the {wanted} counter, which this run does not read ({why}); add it to --counters or use --metric cpu-time"
    ))
}

/// Everything a pipeline measures with: the sensor, the energy source, the attribution formula.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    /// The kernel sensor: counters, table size, where `/sys` is.
    pub sensor: SensorConfig,
    /// Which built-in energy source to open.
    pub energy: SourceSpec,
    /// The model's coefficients and how long a measured source may stay unreadable.
    pub model: EnergyOptions,
    /// How energy is split among tasks.
    pub attribution: AttributionConfig,
    /// Where the idle estimate is kept between commands (`None`: not kept).
    pub state_dir: Option<std::path::PathBuf>,
    /// The formula, when not the proportional one (`None`).
    pub smartwatts: Option<SmartWattsConfig>,
    /// `--save-model`: where the fitted model is written at every fit.
    pub save_model: Option<std::path::PathBuf>,
    /// `--load-model`: a fitted model that estimates the energy (with `--energy-source model`).
    pub load_model: Option<std::path::PathBuf>,
}

impl Default for CollectorConfig {
    /// The command line's defaults, with the idle estimate not kept between runs.
    fn default() -> Self {
        Self {
            sensor: SensorConfig::default(),
            energy: SourceSpec::Auto,
            model: EnergyOptions::default(),
            attribution: AttributionConfig::default(),
            state_dir: None,
            smartwatts: None,
            save_model: None,
            load_model: None,
        }
    }
}

/// Parts a library user brings instead of the built-in ones (`None`: built from the config).
#[derive(Default)]
pub struct Parts {
    /// Replaces `CollectorConfig::energy`.
    pub source: Option<Box<dyn Source>>,
    /// Replaces the proportional formula of `CollectorConfig::attribution`.
    pub formula: Option<Box<dyn Formula>>,
}

/// One interval, fully digested.
#[derive(Debug)]
pub struct Snapshot {
    /// Per-task deltas of the interval, as the sensor booked them.
    pub deltas: IntervalDeltas,
    /// The deltas grouped by thread, process and cgroup, with their energy.
    pub aggregate: Aggregate,
    /// `None` with `--energy-source none`.
    pub power: Option<PowerReport>,
    /// Wall-clock time at the end of the interval.
    pub wall_end: SystemTime,
    /// What the meter itself cost during the interval.
    pub meter: MeterCost,
    /// Each socket's CPU frequency at the end of the interval (MHz), where cpufreq exists.
    pub frequencies: Vec<(u32, f64)>,
    /// (socket, online CPUs on it).
    pub cpus_by_socket: Vec<(u32, u32)>,
}

impl Snapshot {
    /// The `interval` block of this snapshot's records.
    pub fn interval(&self, seq: u64, partial: bool) -> Interval {
        Interval {
            seq,
            start_ns: self.deltas.start_ns,
            end_ns: self.deltas.end_ns,
            duration_ns: self.deltas.duration_ns(),
            time: humantime::format_rfc3339_nanos(self.wall_end).to_string(),
            time_unix_ns: self
                .wall_end
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            partial,
        }
    }
}

/// The sensor, the energy source and the formula, taking one interval at a time.
pub struct Collector {
    energy: Option<Box<dyn Source>>,
    energy_note: Option<String>,
    attribution: Attribution,
    cpus_by_socket: Vec<(u32, u32)>,
    sensor: Sensor,
    tracker: Tracker,
    resolver: Option<CgroupResolver>,
    last_cpu_ns: u64,
    /// Reused every interval: its buffers are megabytes at 10,000 tasks.
    reading: SensorReading,
    /// The thread whose priority `collect` raised (the collector may move to another thread).
    prioritized_tid: Option<i64>,
    idle_store: Option<IdleStore>,
    last_idle_save: Instant,
    /// A better idle figure than the online estimate, to save instead of it (`run`'s fit).
    kept_idle: Option<Vec<(DomainKey, f64)>>,
    /// Which kinds of unmeasured energy were already said on stderr (each is said once).
    said_unmeasured: Vec<UnmeasuredReason>,
    /// Each socket's CPU frequency (the formula's layer), where cpufreq exists.
    frequencies: Option<Frequencies>,
    /// Where `/sys` is (for the frequency files of CPUs that come back).
    root: std::path::PathBuf,
    /// `--save-model`: written at every fit; `None` once writing failed (said once).
    save_model: Option<std::path::PathBuf>,
}

/// How often a long-running command refreshes the saved idle estimate.
const IDLE_SAVE_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs the calling thread at nice -10 (when permitted). A drain is a few milliseconds a second,
/// but if CPU hogs preempt it halfway, tasks read late carry more time than tasks read early and
/// the interval's totals skew; a meter should also not report late under load.
fn raise_thread_priority() -> i64 {
    // SAFETY: gettid and setpriority have no memory-safety preconditions; on Linux,
    // PRIO_PROCESS with a thread id changes only that thread. Failure (no CAP_SYS_NICE) is fine.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10);
        tid
    }
}

/// User + system CPU time and peak RSS of this process.
fn self_usage() -> (u64, u64) {
    // SAFETY: `usage` is a valid rusage to write into.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    (
        ns(usage.ru_utime) + ns(usage.ru_stime),
        usage.ru_maxrss as u64,
    )
}

impl Collector {
    /// Starts the built-in parts `config` names.
    pub fn start(config: &CollectorConfig) -> Result<Self, CollectError> {
        Self::start_with(config, Parts::default())
    }

    /// Starts with the caller's energy source and formula where `parts` has them.
    pub fn start_with(config: &CollectorConfig, parts: Parts) -> Result<Self, CollectError> {
        let mut sensor = Sensor::start(&config.sensor)?;
        check_metric(
            config.attribution.metric,
            &sensor.counter_names(),
            sensor.time_only_reason(),
        )
        .map_err(CollectError::Config)?;
        let (energy, mut energy_note): (Option<Box<dyn Source>>, _) = match parts.source {
            Some(source) => (Some(source), None),
            None if config.load_model.is_some() => {
                if config.energy != SourceSpec::Model {
                    return Err(CollectError::Config(
                        "--load-model estimates energy with a fitted model: add --energy-source model (a measured source needs no model)".into(),
                    ));
                }
                let path = config
                    .load_model
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""));
                let model = FittedModel::load(path, &sensor.counter_names())?;
                (Some(Box::new(model) as Box<dyn Source>), None)
            }
            None => {
                let (energy, note) = EnergySource::open(
                    &config.energy,
                    &config.sensor.root,
                    sensor.cpus(),
                    &config.model,
                )?;
                (energy.map(|e| Box::new(e) as Box<dyn Source>), note)
            }
        };
        if config.model.max_watts.is_some() && energy.as_ref().is_some_and(|e| !e.estimated()) {
            let ignored = "--max-watts is the model's and is ignored: energy is measured";
            energy_note = Some(match energy_note {
                Some(note) => format!("{note}; {ignored}"),
                None => ignored.to_string(),
            });
        }
        let cpus_by_socket = cpus_by_socket(sensor.cpus());
        // Sized up front: when thousands of tasks first run in the same interval, growing these
        // (and rehashing the tracker) doubled that interval's drain time.
        let expected = (config.sensor.max_tasks as usize).min(16_384);
        let mut reading = SensorReading {
            live: Vec::with_capacity(expected),
            ..Default::default()
        };
        sensor.read_into(&mut reading)?;
        let tracker = Tracker::new(sensor.counter_names().len(), &reading, expected);
        // Without a cgroup2 mount records carry only cgroup ids; that is worth a warning, not a stop.
        // Our own mount table: the cgroup tree this process can walk.
        let resolver = read_cgroup2_mount(std::path::Path::new("/"))
            .ok()
            .map(CgroupResolver::new);
        let mut attribution = match (parts.formula, &config.smartwatts) {
            (Some(formula), _) => Attribution::with_formula(config.attribution.clone(), formula),
            (None, Some(smartwatts)) => {
                let smartwatts = SmartWattsConfig {
                    fallback: config.attribution.metric,
                    ..smartwatts.clone()
                };
                Attribution::with_formula(
                    config.attribution.clone(),
                    Box::new(SmartWatts::new(smartwatts)),
                )
            }
            (None, None) => Attribution::new(config.attribution.clone()),
        };
        let frequencies = Frequencies::open(&config.sensor.root, sensor.cpus());
        let idle_store = match (&energy, &config.state_dir) {
            (Some(energy), Some(dir)) if !energy.estimated() => {
                // Keyed by what is measured: a powercap-dir tree is its own source.
                let source = match &config.energy {
                    SourceSpec::PowercapDir(path) => format!("powercap-dir:{}", path.display()),
                    _ => energy.name().to_string(),
                };
                let store = IdleStore::new(dir, &source);
                attribution.set_idle_prior(&store.load(), IdleSource::Persisted);
                Some(store)
            }
            _ => None,
        };
        Ok(Self {
            energy,
            energy_note,
            attribution,
            cpus_by_socket,
            sensor,
            tracker,
            resolver,
            last_cpu_ns: self_usage().0,
            reading,
            prioritized_tid: None,
            idle_store,
            last_idle_save: Instant::now(),
            kept_idle: None,
            said_unmeasured: Vec::new(),
            frequencies,
            root: config.sensor.root.clone(),
            save_model: config.save_model.clone(),
        })
    }

    /// Writes the formula's fitted model to `--save-model`, whole or not at all (a temporary
    /// file renamed over it).
    fn save_model(&mut self) {
        let Some(path) = &self.save_model else {
            return;
        };
        let Some(mut model) = self.attribution.formula().saved_model() else {
            return;
        };
        model.hostname = crate::identity::hostname();
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_string_pretty(&model)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(&tmp, text + "\n"))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            eprintln!(
                "powerapi: cannot save the model to {} ({e}); recording goes on, the model is not saved",
                path.display()
            );
            self.save_model = None;
        }
    }

    /// Uses `domains` (idle watts measured just before a command ran) as the idle power.
    pub fn set_idle_baseline(&mut self, domains: &[(DomainKey, f64)]) {
        self.attribution
            .set_idle_prior(domains, IdleSource::Baseline);
    }

    /// Saves `domains` instead of the online estimate: the online estimate is the power of a
    /// quiet interval, background included, and a caller that fitted the background out knows
    /// better.
    pub fn keep_idle_estimate(&mut self, domains: Vec<(DomainKey, f64)>) {
        self.kept_idle = Some(domains);
    }

    /// Saves the idle estimate for the next command (once there is one). A failure is
    /// said once and otherwise ignored: it costs only the next command's first intervals.
    pub fn save_idle(&mut self) {
        let Some(store) = &self.idle_store else {
            return;
        };
        self.last_idle_save = Instant::now();
        let estimates = match &self.kept_idle {
            Some(kept) => kept.clone(),
            None => self.attribution.online_idle_estimates(),
        };
        if estimates.is_empty() {
            return;
        }
        if let Err(e) = store.save(&estimates) {
            eprintln!(
                "powerapi: cannot save the idle estimate to {} ({e}); set POWERAPI_STATE_DIR to a writable directory",
                store.path().display()
            );
            self.idle_store = None;
        }
    }

    /// The kernel sensor (counters in use, CPUs, sockets).
    pub fn sensor(&self) -> &Sensor {
        &self.sensor
    }

    /// Why the energy figures are what they are (a fallback to the model), if worth saying.
    pub fn energy_note(&self) -> Option<&str> {
        self.energy_note.as_deref()
    }

    /// `perf`, `powercap`, … or `None` without an energy source. Known after the first sample.
    pub fn energy_source_name(&self) -> Option<String> {
        self.energy.as_ref().map(|e| e.name().to_string())
    }

    /// True when energy comes from a model: every figure is then labelled estimated.
    pub fn energy_estimated(&self) -> bool {
        self.energy.as_ref().is_some_and(|e| e.estimated())
    }

    /// How energy is split among tasks.
    pub fn attribution_config(&self) -> &AttributionConfig {
        self.attribution.config()
    }

    /// Cgroup ids to paths (`None` without cgroup v2).
    pub fn resolver(&self) -> Option<&CgroupResolver> {
        self.resolver.as_ref()
    }

    /// Closes the current interval now.
    pub fn collect(&mut self) -> Result<Snapshot, CollectError> {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        if self.prioritized_tid != Some(tid) {
            self.prioritized_tid = Some(raise_thread_priority());
        }
        let began = Instant::now();
        self.sensor.read_into(&mut self.reading)?;
        let wall_end = SystemTime::now();
        let deltas = self.tracker.advance(&self.reading);
        if deltas.cpus_changed {
            // CPU hotplug: share each socket's energy over the CPUs it has now.
            self.cpus_by_socket = cpus_by_socket(&self.reading.cpus);
            self.frequencies = Frequencies::open(&self.root, &self.reading.cpus);
            if let Some(energy) = &mut self.energy
                && let Err(e) = energy.cpus_changed(&self.reading.cpus)
            {
                eprintln!(
                    "powerapi: the energy model keeps its figures from before CPUs changed: {e}"
                );
            }
        }
        let drain_us = began.elapsed().as_micros() as u64;
        let frequencies = self
            .frequencies
            .as_mut()
            .map(Frequencies::read)
            .unwrap_or_default();
        let power = match &mut self.energy {
            Some(energy) => {
                let counters = self.sensor.counter_names();
                let mut usage: Vec<SocketUsage> = self
                    .cpus_by_socket
                    .iter()
                    .map(|(socket, _)| SocketUsage {
                        socket: *socket,
                        busy_ns: 0,
                        counters: vec![0; counters.len()],
                    })
                    .collect();
                for task in deltas.tasks.iter().filter(|t| !t.key.is_idle()) {
                    if let Some(u) = usage.iter_mut().find(|u| u.socket == task.socket) {
                        u.busy_ns += task.on_cpu_ns;
                        for (sum, v) in u.counters.iter_mut().zip(task.counters.iter()) {
                            *sum += v;
                        }
                    }
                }
                let busy_by_socket: Vec<(u32, u64)> =
                    usage.iter().map(|u| (u.socket, u.busy_ns)).collect();
                energy.observe(&counters, &usage, &frequencies);
                let sample = energy.sample(deltas.duration_ns(), &busy_by_socket)?;
                for u in &sample.unmeasured {
                    if !self.said_unmeasured.contains(&u.reason) {
                        self.said_unmeasured.push(u.reason);
                        eprintln!(
                            "powerapi: {} energy of socket {} left unmeasured for an interval ({}); such intervals are listed in the machine record's energy.unmeasured, recording goes on",
                            u.domain, u.socket, u.detail
                        );
                    }
                }
                self.attribution.set_frequencies(&frequencies);
                let power =
                    self.attribution
                        .attribute(&deltas, &counters, &self.cpus_by_socket, &sample);
                if !power.fits.is_empty() {
                    self.save_model();
                }
                Some(power)
            }
            None => None,
        };
        let aggregate = aggregate(&deltas, power.as_ref().map_or(&[][..], |p| &p.task_joules));
        if let Some(resolver) = &mut self.resolver {
            resolver.learn(aggregate.processes.iter().map(|p| p.cgroup_id));
        }
        let (cpu_ns, peak_rss_kib) = self_usage();
        let meter = MeterCost {
            cpu_ns: cpu_ns.saturating_sub(self.last_cpu_ns),
            drain_us,
            peak_rss_kib,
            dropped_records: 0,
        };
        self.last_cpu_ns = cpu_ns;
        if self.last_idle_save.elapsed() >= IDLE_SAVE_PERIOD {
            self.save_idle();
        }
        Ok(Snapshot {
            frequencies,
            cpus_by_socket: self.cpus_by_socket.clone(),
            deltas,
            aggregate,
            power,
            wall_end,
            meter,
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.save_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_needs_its_counter() {
        let read = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(check_metric(Metric::Cycles, &read(&["cycles"]), None).is_ok());
        assert!(check_metric(Metric::CpuTime, &[], Some("no PMU")).is_ok());
        assert!(check_metric(Metric::Auto, &[], Some("no PMU")).is_ok());
        assert_eq!(
            check_metric(Metric::Cycles, &[], Some("this machine has no PMU")),
            Err("--metric cycles needs the cycles counter, which this run does not read (time-only mode: this machine has no PMU); add it to --counters or use --metric cpu-time".into())
        );
        let err = check_metric(Metric::Instructions, &read(&["cycles", "cpu-clock"]), None)
            .expect_err("instructions not read");
        assert!(err.contains("(--counters reads cycles,cpu-clock)"), "{err}");
    }
}
