//! `powerapi run -- CMD`: `perf stat` for energy. CMD runs in a cgroup of its own, so every
//! descendant — however short-lived — is counted, and its share of each domain's energy is
//! summed until it exits.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    attribution::{DomainJoules, IdleSource},
    cgroup::read_cgroup2_mount,
    collect::{CollectError, Collector, CollectorConfig},
    energy::{Domain, DomainKey},
    record::{announce, run_info},
    report::{Mode, SCHEMA},
};

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error(
        "powerapi run follows CMD through a cgroup v2 of its own and cannot create one ({path}: {source}); mount cgroup2 read-write or run as root"
    )]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error("interrupted while measuring the idle baseline, before CMD started")]
    Interrupted,
    #[error("cannot run {command}: {source}; check its name, PATH and permissions")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
}

impl RunError {
    /// What a shell exits with when it cannot run the command: 127 not found, 126 not
    /// executable; `None` for powerapi's own failures.
    pub fn shell_exit_code(&self) -> Option<i32> {
        match self {
            Self::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Some(127)
            }
            Self::Spawn { .. } => Some(126),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub collector: CollectorConfig,
    pub interval: Duration,
    pub repeat: u32,
    /// How long to measure idle power before the first run (zero: no baseline).
    pub baseline: Duration,
    pub command: Vec<String>,
}

/// One execution of CMD.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMeasurement {
    pub exit_code: i32,
    /// The signal that killed CMD (`SIGKILL`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Stopped by Ctrl-C/SIGTERM before CMD ended on its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    pub duration_s: f64,
    pub cpu_time_s: f64,
    pub counters: BTreeMap<String, u64>,
    /// CMD's active energy per domain (above idle), joules.
    pub joules: BTreeMap<Domain, f64>,
    /// The machine's idle power over CMD's run, per domain: what CMD would have cost had it
    /// been alone on an otherwise idle machine is `joules + idle_joules`.
    #[serde(default)]
    pub idle_joules: BTreeMap<Domain, f64>,
    /// The whole machine's measured energy per domain over the same time.
    pub machine_joules: BTreeMap<Domain, f64>,
    /// Per interval and domain, what the background correction needs.
    #[serde(skip)]
    pub samples: Vec<IntervalSample>,
}

/// One interval of one domain during CMD's run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntervalSample {
    pub domain: Domain,
    /// CMD's active joules as attributed.
    pub command_j: f64,
    pub measured_j: f64,
    /// The idle power that attribution used.
    pub idle_w: f64,
    pub seconds: f64,
    /// Busy fraction of the machine's CPUs.
    pub busy: f64,
}

/// The machine before CMD: power per domain and busy fraction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Baseline {
    pub watts: BTreeMap<Domain, f64>,
    /// The same power per domain and socket (what the idle store keeps).
    pub per_key: Vec<(DomainKey, f64)>,
    pub busy: f64,
}

impl Baseline {
    /// The fitted idle power per domain and socket: each socket's baseline scaled by its
    /// domain's fitted idle over its baseline (the fit is per domain; sockets keep their shares).
    pub fn fitted_per_key(&self, fitted_w: &BTreeMap<Domain, f64>) -> Vec<(DomainKey, f64)> {
        self.per_key
            .iter()
            .filter_map(|&(key, w)| {
                let base = *self.watts.get(&key.domain)?;
                let fitted = *fitted_w.get(&key.domain)?;
                (base > 0.0).then(|| (key, w * fitted / base))
            })
            .collect()
    }
}

/// What [`background_corrected`] makes of one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Corrected {
    /// CMD's active joules per domain.
    pub command: BTreeMap<Domain, f64>,
    /// Idle joules per domain over the run.
    pub idle: BTreeMap<Domain, f64>,
    /// The machine's power at zero busy, for the domains where a line could be fitted.
    pub fitted_idle_w: BTreeMap<Domain, f64>,
}

/// CMD's active and idle joules per domain, with the baseline's background load taken out.
///
/// The baseline is the machine's power with its background running (the meter, daemons), not
/// its idle power: used as idle as is, the background's power is discounted twice (once in the
/// baseline, once as its CPU-time share of the rest), and CMD comes out a few % low. The
/// baseline and the run give two (busy, power) points of each domain; the line through them
/// says what the machine draws at zero busy, and CMD's share is recomputed above that. With
/// too little change in load between the two (< 2 % of the CPUs) there is no line to draw and
/// the figures stay as attributed. Pure.
pub fn background_corrected(samples: &[IntervalSample], baseline: &Baseline) -> Corrected {
    let mut out = Corrected::default();
    let domains: std::collections::BTreeSet<Domain> = samples.iter().map(|s| s.domain).collect();
    for domain in domains {
        let of: Vec<&IntervalSample> = samples.iter().filter(|s| s.domain == domain).collect();
        let seconds: f64 = of.iter().map(|s| s.seconds).sum();
        let attributed: f64 = of.iter().map(|s| s.command_j).sum();
        let used_idle: f64 = of.iter().map(|s| s.idle_w * s.seconds).sum();
        let fallback = || (attributed, used_idle);
        let (cmd, idle_j) = match baseline.watts.get(&domain) {
            // No time (seconds = 0) gives a NaN slope below, which falls back like a flat line.
            Some(&base_w) => {
                let power = of.iter().map(|s| s.measured_j).sum::<f64>() / seconds;
                let busy = of.iter().map(|s| s.busy * s.seconds).sum::<f64>() / seconds;
                let slope = (power - base_w) / (busy - baseline.busy);
                if busy - baseline.busy < 0.02 || !slope.is_finite() || slope <= 0.0 {
                    fallback()
                } else {
                    let idle_w = (base_w - slope * baseline.busy).clamp(0.0, base_w);
                    out.fitted_idle_w.insert(domain, idle_w);
                    let cmd = of
                        .iter()
                        .map(|s| {
                            let used = s.measured_j - s.idle_w * s.seconds;
                            let above = s.measured_j - idle_w * s.seconds;
                            if used > 0.0 {
                                s.command_j * above / used
                            } else {
                                s.command_j
                            }
                        })
                        .sum();
                    (cmd, idle_w * seconds)
                }
            }
            _ => fallback(),
        };
        out.command.insert(domain, cmd);
        out.idle.insert(domain, idle_j);
    }
    out
}

/// Mean and sample standard deviation over the repetitions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub stddev: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Self {
        let n = values.len() as f64;
        if values.is_empty() {
            return Self::default();
        }
        let mean = values.iter().sum::<f64>() / n;
        let var = if values.len() > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Self {
            mean,
            stddev: var.sqrt(),
        }
    }
}

/// What `powerapi run --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The record schema version this report's vocabulary follows.
    pub schema: u32,
    pub command: Vec<String>,
    /// CMD's exit code, or 128 + the signal that killed it (what powerapi exits with).
    pub exit_code: i32,
    /// The signal behind `exit_code`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// True when the series was cut short: only complete runs are in it (or, when none was
    /// complete, the interrupted one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    pub source: Option<String>,
    /// True when energy comes from the model (no RAPL): every joule here is an estimate.
    pub estimated: bool,
    /// `time-only` or `counters`, as in the records; the counters themselves are in `runs`.
    pub mode: Mode,
    pub runs: Vec<RunMeasurement>,
    pub duration_s: Stat,
    pub cpu_time_s: Stat,
    /// Active energy (above idle).
    pub joules: BTreeMap<Domain, Stat>,
    /// Idle energy over CMD's run.
    pub idle_joules: BTreeMap<Domain, Stat>,
    /// `joules + idle_joules`.
    pub total_joules: BTreeMap<Domain, Stat>,
    /// Where the idle power came from: baseline, flag, online, persisted, model or none.
    pub idle_source: Option<String>,
    pub watts: BTreeMap<Domain, Stat>,
    /// CMD's share of the machine's energy per domain (mean over runs, 0–1).
    pub share: BTreeMap<Domain, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<f64>,
}

/// Summarises the repetitions. Pure.
pub fn summarise(
    command: &[String],
    runs: Vec<RunMeasurement>,
    source: Option<String>,
    estimated: bool,
    mode: &Mode,
    idle_source: Option<String>,
) -> RunReport {
    let stat =
        |f: &dyn Fn(&RunMeasurement) -> f64| Stat::of(&runs.iter().map(f).collect::<Vec<_>>());
    let domains: Vec<Domain> = runs
        .iter()
        .flat_map(|r| r.joules.keys().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut joules = BTreeMap::new();
    let mut idle_joules = BTreeMap::new();
    let mut total_joules = BTreeMap::new();
    let mut watts = BTreeMap::new();
    let mut share = BTreeMap::new();
    for d in domains {
        joules.insert(d, stat(&|r| r.joules.get(&d).copied().unwrap_or(0.0)));
        idle_joules.insert(d, stat(&|r| r.idle_joules.get(&d).copied().unwrap_or(0.0)));
        total_joules.insert(
            d,
            stat(&|r| {
                r.joules.get(&d).copied().unwrap_or(0.0)
                    + r.idle_joules.get(&d).copied().unwrap_or(0.0)
            }),
        );
        watts.insert(
            d,
            stat(&|r| {
                if r.duration_s > 0.0 {
                    r.joules.get(&d).copied().unwrap_or(0.0) / r.duration_s
                } else {
                    0.0
                }
            }),
        );
        share.insert(
            d,
            stat(&|r| match r.machine_joules.get(&d) {
                Some(&m) if m > 0.0 => r.joules.get(&d).copied().unwrap_or(0.0) / m,
                _ => 0.0,
            })
            .mean,
        );
    }
    let cycles: u64 = runs.iter().filter_map(|r| r.counters.get("cycles")).sum();
    let instructions: u64 = runs
        .iter()
        .filter_map(|r| r.counters.get("instructions"))
        .sum();
    let failed = runs.iter().find(|r| r.exit_code != 0);
    RunReport {
        schema: SCHEMA,
        command: command.to_vec(),
        exit_code: failed.map_or(0, |r| r.exit_code),
        signal: failed.and_then(|r| r.signal.clone()),
        interrupted: runs.iter().any(|r| r.interrupted),
        source,
        estimated,
        mode: mode.clone(),
        duration_s: stat(&|r| r.duration_s),
        cpu_time_s: stat(&|r| r.cpu_time_s),
        joules,
        idle_joules,
        total_joules,
        idle_source,
        watts,
        share,
        ipc: (cycles > 0 && instructions > 0).then(|| instructions as f64 / cycles as f64),
        runs,
    }
}

fn plus_minus(stat: &Stat, n: usize, unit: &str, precision: usize) -> String {
    if n > 1 {
        let rel = if stat.mean != 0.0 {
            stat.stddev / stat.mean * 100.0
        } else {
            0.0
        };
        format!(
            "{:>10.precision$} {unit:<2} ± {:.precision$} ({rel:.1}%)",
            stat.mean, stat.stddev
        )
    } else {
        format!("{:>10.precision$} {unit}", stat.mean)
    }
}

/// The human-readable report. Pure.
pub fn render(report: &RunReport) -> String {
    let n = report.runs.len();
    let mut out = String::new();
    let runs = if n > 1 {
        format!(" ({n} runs)")
    } else {
        String::new()
    };
    let interrupted = if report.interrupted {
        " — interrupted"
    } else {
        ""
    };
    out.push_str(&format!(
        "\n powerapi run {}{runs}{interrupted}:\n\n",
        quoted(&report.command)
    ));
    out.push_str(&format!(
        "   {:<20}{}\n",
        "duration",
        plus_minus(&report.duration_s, n, "s", 3)
    ));
    out.push_str(&format!(
        "   {:<20}{}\n",
        "cpu time",
        plus_minus(&report.cpu_time_s, n, "s", 3)
    ));
    let mut total_cycles = 0;
    for run in &report.runs {
        total_cycles += run.counters.get("cycles").copied().unwrap_or(0);
    }
    if let Some(first) = report.runs.first() {
        for name in first.counters.keys() {
            let stat = Stat::of(
                &report
                    .runs
                    .iter()
                    .map(|r| r.counters.get(name).copied().unwrap_or(0) as f64)
                    .collect::<Vec<_>>(),
            );
            out.push_str(&format!("   {:<20}{}\n", name, plus_minus(&stat, n, "", 0)));
        }
    }
    if let Some(ipc) = report.ipc.filter(|_| total_cycles > 0) {
        out.push_str(&format!("   {:<20}{ipc:>10.2}\n", "IPC"));
    }
    for (domain, joules) in &report.joules {
        let watts = &report.watts[domain];
        let share = report.share.get(domain).copied().unwrap_or(0.0) * 100.0;
        out.push_str(&format!(
            "   {:<20}{}   {}   {share:5.1}% of machine\n",
            format!("energy {domain}"),
            plus_minus(joules, n, "J", 3),
            plus_minus(watts, n, "W", 2).trim_start()
        ));
        if let (Some(idle), Some(total)) = (
            report.idle_joules.get(domain),
            report.total_joules.get(domain),
        ) {
            out.push_str(&format!(
                "   {:<20}{}\n   {:<20}{}\n",
                format!("  + idle {domain}"),
                plus_minus(idle, n, "J", 3),
                format!("  = total {domain}"),
                plus_minus(total, n, "J", 3),
            ));
        }
    }
    if let Some(idle_source) = &report.idle_source {
        out.push_str(&format!(
            "\n   energy is CMD's share above idle; idle power: {idle_source}\n"
        ));
    }
    let how = match (&report.source, report.estimated) {
        (None, _) => "no energy source (--energy-source none): CPU time only".to_string(),
        (Some(_), true) => {
            "energy ESTIMATED by the linear model (no RAPL here): compare runs, do not quote watts"
                .to_string()
        }
        (Some(source), false) => format!("energy measured by RAPL ({source})"),
    };
    let counters = match report.runs.first() {
        Some(run) if !run.counters.is_empty() => {
            run.counters.keys().cloned().collect::<Vec<_>>().join(",")
        }
        _ => "none (time-only)".to_string(),
    };
    out.push_str(&format!("\n   {how}; counters: {counters}\n"));
    match &report.signal {
        Some(signal) => out.push_str(&format!("   command killed by {signal}\n")),
        None if report.exit_code != 0 => {
            out.push_str(&format!("   command exited with {}\n", report.exit_code))
        }
        None => {}
    }
    out
}

/// The command line as a shell would take it back (`sh -c 'i=0; …'`), so it can be pasted.
pub fn quoted(command: &[String]) -> String {
    shlex::try_join(command.iter().map(String::as_str)).unwrap_or_else(|_| format!("{command:?}"))
}

/// `SIGKILL` for 9: std and libc give the number only. Unknown numbers read `signal N`.
pub fn signal_name(signal: i32) -> String {
    const NAMES: [(i32, &str); 20] = [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGTRAP, "SIGTRAP"),
        (libc::SIGABRT, "SIGABRT"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGXFSZ, "SIGXFSZ"),
        (libc::SIGSYS, "SIGSYS"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == signal)
        .map_or_else(|| format!("signal {signal}"), |(_, name)| name.to_string())
}

/// A cgroup made for one execution; removed on drop when empty.
struct RunCgroup {
    dir: PathBuf,
    procs: CString,
    id: u64,
}

impl RunCgroup {
    fn create(mount: &Path, n: u32) -> Result<Self, RunError> {
        use std::os::unix::fs::MetadataExt;
        let dir = mount.join(format!("powerapi-run-{}-{n}", std::process::id()));
        let err = |source| RunError::Cgroup {
            path: dir.display().to_string(),
            source,
        };
        fs::create_dir(&dir).map_err(err)?;
        let id = fs::metadata(&dir).map_err(err)?.ino();
        let procs = CString::new(
            dir.join("cgroup.procs")
                .as_os_str()
                .as_encoded_bytes()
                .to_vec(),
        )
        .map_err(|_| err(std::io::Error::other("path contains NUL")))?;
        Ok(Self { dir, procs, id })
    }
}

impl RunCgroup {
    /// SIGKILL to every process in the cgroup (`cgroup.kill`, Linux ≥ 5.14), else to CMD.
    fn kill(&self, child_pid: i32) {
        if fs::write(self.dir.join("cgroup.kill"), "1").is_err() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child_pid, libc::SIGKILL) };
        }
    }

    /// Moves what CMD left running (daemons) to the parent cgroup, so the directory can go.
    fn release_survivors(&self) -> Vec<u32> {
        let Some(parent) = self.dir.parent() else {
            return Vec::new();
        };
        let pids: Vec<u32> = fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for pid in &pids {
            let _ = fs::write(parent.join("cgroup.procs"), pid.to_string());
        }
        pids
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        let survivors = self.release_survivors();
        if !survivors.is_empty() {
            let list: Vec<String> = survivors.iter().map(u32::to_string).collect();
            eprintln!(
                "powerapi: CMD left {} process(es) running (pid {}); they were measured until CMD ended and are no longer followed",
                survivors.len(),
                list.join(", ")
            );
        }
        // Emptying a cgroup is asynchronous in the kernel: retry briefly before giving up.
        for attempt in 0..50 {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(_) if attempt < 49 => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => eprintln!(
                    "powerapi: cannot remove {} ({e}); remove it with rmdir when its processes end",
                    self.dir.display()
                ),
            }
        }
    }
}

/// A shell's exit code for CMD's status (128 + signal when killed), and the signal's name.
fn exit_code(status: std::process::ExitStatus) -> (i32, Option<String>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal_name(signal))),
        (None, None) => (1, None),
    }
}

fn measure_once(
    collector: &mut Collector,
    config: &RunConfig,
    mount: &Path,
    n: u32,
    stop: &Receiver<()>,
    idle_source: &mut Option<String>,
    baseline: Option<&Baseline>,
) -> Result<RunMeasurement, RunError> {
    let cgroup = RunCgroup::create(mount, n)?;
    let mut command = Command::new(&config.command[0]);
    command.args(&config.command[1..]);
    let procs = cgroup.procs.clone();
    // SAFETY: the closure only calls async-signal-safe syscalls (open, write, close) on data
    // prepared before fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    collector.collect()?; // start from a clean interval boundary
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| RunError::Spawn {
        command: config.command[0].clone(),
        source,
    })?;
    let child_pid = child.id() as i32;
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = done_tx.send(());
        status
    });

    let mut measurement = RunMeasurement::default();
    loop {
        match done_rx.recv_timeout(config.interval) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                accumulate(collector, cgroup.id, &mut measurement, idle_source)?
            }
        }
        // Ctrl-C reaches CMD through the terminal; SIGTERM sent to powerapi alone is passed on.
        // A second one kills whatever is left in CMD's cgroup: a command may ignore SIGTERM.
        if stop.try_recv().is_ok() {
            if measurement.interrupted {
                eprintln!("powerapi: killing CMD and its descendants");
                cgroup.kill(child_pid);
            } else {
                measurement.interrupted = true;
                eprintln!("powerapi: stopping CMD (SIGTERM); interrupt again to kill it (SIGKILL)");
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child_pid, libc::SIGTERM) };
            }
        }
    }
    // Ctrl-C from a terminal reaches CMD too, which may end before the loop above saw it.
    if stop.try_recv().is_ok() {
        measurement.interrupted = true;
    }
    measurement.duration_s = started.elapsed().as_secs_f64();
    accumulate(collector, cgroup.id, &mut measurement, idle_source)?;
    let corrected = background_corrected(
        &measurement.samples,
        baseline.unwrap_or(&Baseline::default()),
    );
    measurement.joules.extend(corrected.command);
    measurement.idle_joules = corrected.idle;
    if let Some(baseline) = baseline {
        // The raw baseline still holds the background's power; the fitted idle is what the next
        // command should start from.
        let fitted = baseline.fitted_per_key(&corrected.fitted_idle_w);
        if !fitted.is_empty() {
            collector.keep_idle_estimate(fitted);
        }
    }
    for domain in measurement.machine_joules.keys() {
        measurement.joules.entry(*domain).or_default();
    }
    let status = waiter.join().map_err(|_| RunError::Spawn {
        command: config.command[0].clone(),
        source: std::io::Error::other("waiter thread panicked"),
    })?;
    (measurement.exit_code, measurement.signal) = status.map_or((1, None), exit_code);
    Ok(measurement)
}

/// Closes an interval and adds CMD's cgroup's share of it to `m`.
fn accumulate(
    collector: &mut Collector,
    cgroup_id: u64,
    m: &mut RunMeasurement,
    idle_source: &mut Option<String>,
) -> Result<(), RunError> {
    let snapshot = collector.collect()?;
    let counters = collector.sensor().counter_names();
    for name in &counters {
        m.counters.entry(name.clone()).or_default();
    }
    let group = snapshot
        .aggregate
        .cgroups
        .iter()
        .find(|g| g.cgroup_id == cgroup_id);
    if let Some(group) = group {
        m.cpu_time_s += group.usage.on_cpu_ns as f64 / 1e9;
        for (name, value) in counters.iter().zip(group.usage.counters) {
            *m.counters.entry(name.clone()).or_default() += value;
        }
    }
    if let Some(power) = &snapshot.power {
        let seconds = snapshot.deltas.duration_ns() as f64 / 1e9;
        let capacity = snapshot.deltas.capacity_ns as f64;
        let busy = if capacity > 0.0 {
            snapshot.aggregate.busy.on_cpu_ns as f64 / capacity
        } else {
            0.0
        };
        // One sample per domain, sockets summed (CMD's joules already are).
        let mut per_domain: BTreeMap<Domain, IntervalSample> = BTreeMap::new();
        for d in &power.domains {
            *m.machine_joules.entry(d.key.domain).or_default() += d.measured_j;
            let sample = per_domain
                .entry(d.key.domain)
                .or_insert_with(|| IntervalSample {
                    domain: d.key.domain,
                    command_j: group.map_or(0.0, |g| g.usage.joules[d.key.domain.index()]),
                    measured_j: 0.0,
                    idle_w: 0.0,
                    seconds,
                    busy,
                });
            sample.measured_j += d.measured_j;
            // The idle energy attribution actually set aside (capped at the measurement).
            sample.idle_w += if seconds > 0.0 {
                (d.idle_w * seconds).min(d.measured_j) / seconds
            } else {
                0.0
            };
        }
        m.samples.extend(per_domain.into_values());
        *idle_source = power
            .domains
            .iter()
            .find(|d| d.key.domain == Domain::Package)
            .or(power.domains.first())
            .map(|d| idle_source_name(d.idle_source));
        if let Some(group) = group {
            add_joules(
                &mut m.joules,
                &group.usage.joules,
                power.domains.iter().map(|d| d.key.domain),
            );
        }
    }
    Ok(())
}

/// Adds each domain once (a domain measured on several sockets is summed in `joules` already).
fn add_joules(
    total: &mut BTreeMap<Domain, f64>,
    joules: &DomainJoules,
    domains: impl Iterator<Item = Domain>,
) {
    let mut seen = Vec::new();
    for domain in domains {
        if !seen.contains(&domain) {
            seen.push(domain);
            *total.entry(domain).or_default() += joules[domain.index()];
        }
    }
}

/// Runs CMD `repeat` times and reports; the caller exits with `report.exit_code`.
pub fn run(config: &RunConfig, stop: &Receiver<()>) -> Result<RunReport, RunError> {
    let mount = read_cgroup2_mount(Path::new("/")).map_err(|e| RunError::Cgroup {
        path: "cgroup2".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut collector = Collector::start(&config.collector)?;
    let info = run_info(&collector);
    announce(&collector, &info);
    let baseline = measure_baseline(&mut collector, config, stop)?;
    let mut runs = Vec::new();
    let mut idle_source = None;
    for n in 0..config.repeat.max(1) {
        let run = measure_once(
            &mut collector,
            config,
            &mount,
            n,
            stop,
            &mut idle_source,
            baseline.as_ref(),
        )?;
        if run.interrupted {
            // A run cut short would drag the series' mean down: keep it only when it is all
            // there is, marked.
            if runs.is_empty() {
                runs.push(run);
            }
            break;
        }
        runs.push(run);
    }
    let cut_short = runs.len() < config.repeat.max(1) as usize;
    let mut report = summarise(
        &config.command,
        runs,
        collector.energy_source_name(),
        collector.energy_estimated(),
        &info.mode,
        idle_source,
    );
    report.interrupted |= cut_short;
    Ok(report)
}

fn idle_source_name(source: IdleSource) -> String {
    match source {
        IdleSource::Flag => "--idle-watts",
        IdleSource::Model => "the model",
        IdleSource::Baseline => "baseline measured before CMD",
        IdleSource::Online => "online estimate",
        IdleSource::Persisted => "saved estimate from an earlier run",
        IdleSource::Formula => "the fitted model's intercept",
        IdleSource::None => "none known (idle counted as CMD's)",
    }
    .to_string()
}

/// Measures the machine's power for `config.baseline` before CMD starts and uses it as idle
/// power: without it, a command shorter than the online estimate's warm-up was charged the
/// machine's whole idle power. Skipped with `--idle-watts`, with the model (which knows its own
/// idle) and without an energy source.
fn measure_baseline(
    collector: &mut Collector,
    config: &RunConfig,
    stop: &Receiver<()>,
) -> Result<Option<Baseline>, RunError> {
    if config.baseline.is_zero()
        || config.collector.attribution.idle_watts.is_some()
        || collector.energy_source_name().is_none()
        || collector.energy_estimated()
    {
        return Ok(None);
    }
    collector.collect()?;
    match stop.recv_timeout(config.baseline) {
        Err(RecvTimeoutError::Timeout) => {}
        _ => return Err(RunError::Interrupted),
    }
    let snapshot = collector.collect()?;
    let seconds = snapshot.deltas.duration_ns() as f64 / 1e9;
    if let Some(power) = snapshot.power.as_ref().filter(|_| seconds > 0.0) {
        let idle: Vec<_> = power
            .domains
            .iter()
            .map(|d| (d.key, d.measured_j / seconds))
            .collect();
        collector.set_idle_baseline(&idle);
        let capacity = snapshot.deltas.capacity_ns as f64;
        let mut watts = BTreeMap::new();
        for (key, w) in &idle {
            *watts.entry(key.domain).or_default() += w;
        }
        return Ok(Some(Baseline {
            watts,
            per_key: idle,
            busy: if capacity > 0.0 {
                snapshot.aggregate.busy.on_cpu_ns as f64 / capacity
            } else {
                0.0
            },
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(j: f64, machine: f64, secs: f64) -> RunMeasurement {
        RunMeasurement {
            exit_code: 0,
            signal: None,
            interrupted: false,
            duration_s: secs,
            cpu_time_s: secs,
            counters: BTreeMap::new(),
            joules: [(Domain::Package, j)].into_iter().collect(),
            idle_joules: [(Domain::Package, 1.0)].into_iter().collect(),
            machine_joules: [(Domain::Package, machine)].into_iter().collect(),
            samples: Vec::new(),
        }
    }

    #[test]
    fn background_in_the_baseline_is_not_discounted_twice() {
        // Machine: P = 10 W + 20 W × busy. Baseline: 5 % busy background → 11 W. Run: CMD
        // keeps half the CPUs busy beside the same background → 21 W; attribution with 11 W as
        // idle gave CMD (21 − 11) × 0.5/0.55 J per second, the truth is 20 × 0.5 = 10 J.
        let sample = |busy: f64, measured: f64| IntervalSample {
            domain: Domain::Package,
            command_j: (measured - 11.0) * 0.5 / busy,
            measured_j: measured,
            idle_w: 11.0,
            seconds: 1.0,
            busy,
        };
        let key = |socket| DomainKey {
            domain: Domain::Package,
            socket,
        };
        let baseline = Baseline {
            watts: [(Domain::Package, 11.0)].into_iter().collect(),
            per_key: vec![(key(0), 6.6), (key(1), 4.4)],
            busy: 0.05,
        };
        let fit = background_corrected(&[sample(0.55, 21.0), sample(0.55, 21.0)], &baseline);
        assert!(
            (fit.command[&Domain::Package] - 20.0).abs() < 1e-9,
            "{fit:?}"
        );
        assert!((fit.idle[&Domain::Package] - 20.0).abs() < 1e-9, "{fit:?}");
        // What is saved for the next command is the fitted 10 W, split as the baseline was.
        let saved = baseline.fitted_per_key(&fit.fitted_idle_w);
        assert_eq!(saved.len(), 2);
        assert!((saved[0].1 - 6.0).abs() < 1e-9 && (saved[1].1 - 4.0).abs() < 1e-9);
        // No change in load to fit a line through: figures stay as attributed.
        let fit = background_corrected(&[sample(0.06, 11.2)], &baseline);
        assert!((fit.command[&Domain::Package] - 0.2 * 0.5 / 0.06).abs() < 1e-9);
        assert!((fit.idle[&Domain::Package] - 11.0).abs() < 1e-9);
        assert!(baseline.fitted_per_key(&fit.fitted_idle_w).is_empty());
        // Without a baseline the attributed figures pass through.
        let fit = background_corrected(&[sample(0.55, 21.0)], &Baseline::default());
        assert!((fit.command[&Domain::Package] - 10.0 * 0.5 / 0.55).abs() < 1e-9);
    }

    #[test]
    fn background_correction_over_half_seconds_and_when_it_cannot_fit() {
        // Machine: P = 10 W + 20 W × busy. Half-second samples at 55 % busy, of which CMD is
        // 50 %: CMD caused 20 × 0.5 × 0.5 = 5 J per sample, idle is 5 J per sample.
        let half = |busy: f64, watts: f64, idle_w: f64, command_j: f64| IntervalSample {
            domain: Domain::Package,
            command_j,
            measured_j: watts * 0.5,
            idle_w,
            seconds: 0.5,
            busy,
        };
        let key = |socket| DomainKey {
            domain: Domain::Package,
            socket,
        };
        let baseline = Baseline {
            watts: [(Domain::Package, 11.0)].into_iter().collect(),
            per_key: vec![(key(0), 11.0)],
            busy: 0.05,
        };
        let attributed = (10.5 - 5.5) * 0.5 / 0.55;
        let fit = background_corrected(
            &[
                half(0.55, 21.0, 11.0, attributed),
                half(0.55, 21.0, 11.0, attributed),
            ],
            &baseline,
        );
        assert!(
            (fit.command[&Domain::Package] - 10.0).abs() < 1e-9,
            "{fit:?}"
        );
        assert!((fit.idle[&Domain::Package] - 10.0).abs() < 1e-9, "{fit:?}");
        assert!((fit.fitted_idle_w[&Domain::Package] - 10.0).abs() < 1e-9);
        // Less power while busier: no line to fit; the figures stay as attributed, idle as used.
        let flat = background_corrected(&[half(0.55, 10.0, 8.0, 1.0)], &baseline);
        assert_eq!(
            (flat.command[&Domain::Package], flat.idle[&Domain::Package]),
            (1.0, 4.0)
        );
        assert!(flat.fitted_idle_w.is_empty());
        // Exactly 2 % more busy than the baseline is enough to fit (from an idle baseline).
        let idle_baseline = Baseline {
            watts: [(Domain::Package, 10.0)].into_iter().collect(),
            per_key: vec![(key(0), 10.0)],
            busy: 0.0,
        };
        let fit = background_corrected(&[half(0.02, 10.4, 10.2, 0.0)], &idle_baseline);
        assert_eq!(fit.fitted_idle_w.get(&Domain::Package), Some(&10.0));
        assert!((fit.idle[&Domain::Package] - 5.0).abs() < 1e-9);
        // A sample with nothing above the idle used keeps CMD's figure (no 0/0).
        let fit = background_corrected(
            &[
                half(0.55, 21.0, 11.0, attributed),
                half(0.55, 22.0, 22.0, 0.0),
            ],
            &baseline,
        );
        assert!(fit.command[&Domain::Package].is_finite(), "{fit:?}");
        // No time at all: nothing to fit.
        let mut none = half(0.55, 21.0, 11.0, 1.0);
        none.seconds = 0.0;
        let fit = background_corrected(&[none], &baseline);
        assert_eq!(fit.command[&Domain::Package], 1.0);
        // A domain whose baseline was 0 W is not scaled (no division by zero).
        let zero = Baseline {
            watts: [(Domain::Package, 0.0)].into_iter().collect(),
            per_key: vec![(key(0), 0.0)],
            busy: 0.0,
        };
        assert!(
            zero.fitted_per_key(&[(Domain::Package, 5.0)].into_iter().collect())
                .is_empty()
        );
    }

    #[test]
    fn a_run_of_no_time_and_no_machine_energy_has_no_power_or_share() {
        let report = summarise(
            &["true".to_string()],
            vec![measurement(0.0, 0.0, 0.0)],
            None,
            false,
            &Mode::TimeOnly,
            None,
        );
        assert_eq!(report.watts[&Domain::Package].mean, 0.0);
        assert_eq!(report.share[&Domain::Package], 0.0);
    }

    #[test]
    fn exit_codes_as_a_shell_gives_them() {
        let spawn = |kind| RunError::Spawn {
            command: "x".into(),
            source: std::io::Error::from(kind),
        };
        assert_eq!(
            spawn(std::io::ErrorKind::NotFound).shell_exit_code(),
            Some(127)
        );
        assert_eq!(
            spawn(std::io::ErrorKind::PermissionDenied).shell_exit_code(),
            Some(126)
        );
        assert_eq!(RunError::Interrupted.shell_exit_code(), None);
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(99), "signal 99");
        assert_eq!(
            quoted(&["sh".into(), "-c".into(), "echo a b".into()]),
            "sh -c 'echo a b'"
        );
    }

    #[test]
    fn mean_and_stddev() {
        let s = Stat::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(s.mean, 5.0);
        assert!((s.stddev - 2.138089935299395).abs() < 1e-12);
        assert_eq!(Stat::of(&[3.0]).stddev, 0.0);
    }

    #[test]
    fn summary_and_render() {
        let cmd = vec!["make".to_string(), "-j2".to_string()];
        let report = summarise(
            &cmd,
            vec![measurement(10.0, 40.0, 2.0), measurement(12.0, 40.0, 2.0)],
            Some("powercap".into()),
            false,
            &Mode::TimeOnly,
            Some("baseline measured before CMD".into()),
        );
        assert_eq!(report.joules[&Domain::Package].mean, 11.0);
        assert_eq!(report.idle_joules[&Domain::Package].mean, 1.0);
        assert_eq!(report.total_joules[&Domain::Package].mean, 12.0);
        assert_eq!(report.watts[&Domain::Package].mean, 5.5);
        assert!((report.share[&Domain::Package] - 0.275).abs() < 1e-12);
        let text = render(&report);
        assert!(text.contains("energy package"), "{text}");
        assert!(text.contains("± 1.414"), "{text}");
        assert!(text.contains("measured by RAPL (powercap)"));
        // The whole report, with counters, IPC and a run killed by a signal, word for word.
        let mut runs = vec![measurement(10.0, 40.0, 2.0), measurement(12.0, 40.0, 2.0)];
        for (run, cycles) in runs.iter_mut().zip([1000u64, 3000]) {
            run.counters.insert("cycles".into(), cycles);
            run.counters.insert("instructions".into(), cycles * 2);
        }
        runs[1].exit_code = 137;
        runs[1].signal = Some("SIGKILL".into());
        let mut report = summarise(
            &["sh".into(), "-c".into(), "make -j2".into()],
            runs,
            Some("perf".into()),
            false,
            &Mode::Counters,
            Some("baseline measured before CMD".into()),
        );
        report.interrupted = true;
        assert_eq!(
            render(&report),
            "\n powerapi run sh -c 'make -j2' (2 runs) — interrupted:\n\n\
             \x20  duration                 2.000 s  ± 0.000 (0.0%)\n\
             \x20  cpu time                 2.000 s  ± 0.000 (0.0%)\n\
             \x20  cycles                    2000    ± 1414 (70.7%)\n\
             \x20  instructions              4000    ± 2828 (70.7%)\n\
             \x20  IPC                       2.00\n\
             \x20  energy package          11.000 J  ± 1.414 (12.9%)   5.50 W  ± 0.71 (12.9%)    27.5% of machine\n\
             \x20    + idle package         1.000 J  ± 0.000 (0.0%)\n\
             \x20    = total package       12.000 J  ± 1.414 (11.8%)\n\
             \n   energy is CMD's share above idle; idle power: baseline measured before CMD\n\
             \n   energy measured by RAPL (perf); counters: cycles,instructions\n\
             \x20  command killed by SIGKILL\n"
        );
        let one = summarise(
            &cmd,
            vec![measurement(1.0, 2.0, 1.0)],
            None,
            false,
            &Mode::TimeOnly,
            None,
        );
        let mut failed = one.clone();
        failed.exit_code = 3;
        assert!(render(&failed).ends_with("   command exited with 3\n"));
        assert!(!render(&one).contains("command exited"));
        assert!(render(&one).contains("counters: none (time-only)"));
        assert!(render(&one).contains("no energy source (--energy-source none)"));
        let estimated = render(&summarise(
            &cmd,
            vec![measurement(1.0, 2.0, 1.0)],
            Some("model".into()),
            true,
            &Mode::TimeOnly,
            None,
        ));
        assert!(estimated.contains("ESTIMATED"), "{estimated}");
        let json = serde_json::to_string(&report).expect("json");
        assert_eq!(
            serde_json::from_str::<RunReport>(&json).expect("parse"),
            report
        );
    }
}
