//! Command-line definitions and the glue that assembles a pipeline from them.

use std::{io::Write, path::PathBuf, sync::mpsc, time::Duration};

use anyhow::{Result, bail};
use clap::{
    ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, parser::ValueSource,
};

use crate::{
    attribution::{AttributionConfig, IdlePolicy, Metric},
    collect::CollectorConfig,
    config::{self, MeterConfig},
    doctor,
    energy::{EnergyOptions, SourceSpec},
    formula::FormulaKind,
    record::{self, Filter, Granularity, RecordConfig},
    rotate::Rotation,
    run,
    sensor::{self, CounterSpec, SensorConfig, SlotLookup, SwitchClock, default_counters},
    sink::{Existing, Format, OutputSpec},
    sinks::{Outputs, SinkSpec},
    smartwatts::SmartWattsConfig,
    summary::{self, By, SummaryFormat},
    tui,
};

#[derive(Debug, Parser)]
#[command(
    name = "powerapi",
    version,
    about = "eBPF software power meter: watts, CPU time and counters per process, container and command"
)]
pub struct Cli {
    /// A JSON file declaring the pipeline (sensor, energy source, formula, sinks, outputs);
    /// the command line and POWERAPI_* environment variables override it. See
    /// examples/configs/.
    #[arg(long, global = true, value_name = "FILE", env = "POWERAPI_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write per-interval, per-task measurements as JSON lines.
    Record(RecordArgs),
    /// Live view of watts per process, thread, cgroup/container, command or user.
    Top(TopArgs),
    /// Run a command and report its energy, CPU time and counters, like `perf stat` for energy.
    Run(RunArgs),
    /// Export power per node, process, container, cgroup and command to Prometheus.
    Serve(ServeArgs),
    /// Attribute a recorded trace again, offline, with another formula or other options (the
    /// same code as live); writes the trace with its energy figures recomputed.
    Replay(ReplayArgs),
    /// Sum a recorded trace up: energy and power per process, command, cgroup or container,
    /// per-domain totals, idle share, the meter's cost.
    Report(ReportArgs),
    /// Say what this machine offers (BPF, counters, RAPL) and what is missing, with the fix.
    Doctor {
        /// Where /sys is found (for containers that mount the host's elsewhere).
        #[arg(long = "sysfs-root", alias = "root", default_value = "/")]
        root: PathBuf,
    },
    /// Attach an empty sched_switch program until interrupted (overhead benchmark floor).
    #[command(hide = true)]
    BenchNoop {
        /// Attach one that only reads the clock instead (the floor of per-slice timing).
        #[arg(long)]
        clock: bool,
    },
    /// Time SmartWatts' fitting and attribution on synthetic intervals (xtask bench smartwatts).
    #[command(hide = true)]
    BenchSmartwatts {
        /// Tasks per interval.
        #[arg(long, default_value_t = 1000)]
        tasks: usize,
        /// Frequency layers, visited in turn.
        #[arg(long, default_value_t = 20)]
        layers: usize,
        /// Intervals timed.
        #[arg(long, default_value_t = 2000)]
        intervals: usize,
    },
}

#[derive(Debug, Args)]
pub struct SensorArgs {
    /// Sampling interval (e.g. 500ms, 1s, 2m).
    #[arg(long, default_value = "1s", value_parser = parse_interval, env = "POWERAPI_INTERVAL")]
    pub interval: Duration,
    /// Counters to read at each switch: comma-separated names (cycles, instructions, ref-cycles,
    /// llc-misses, cache-misses, branch-misses, cpu-clock, page-faults, major-faults,
    /// cpu-migrations, raw:0xCONFIG) or `none`.
    /// Default: cycles,instructions when the CPU has a PMU, else time-only mode.
    #[arg(long, value_delimiter = ',', env = "POWERAPI_COUNTERS")]
    pub counters: Option<Vec<String>>,
    /// Most threads tracked at once; beyond it slices are counted as lost (never silently).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(64..=4_194_304), env = "POWERAPI_MAX_TASKS")]
    pub max_tasks: u32,
    /// Exit ring buffer size in KiB (a power of two ≥ 4). Tests shrink it to exercise the
    /// overflow path.
    #[arg(long, default_value_t = 4096, hide = true, value_parser = parse_ring_kib)]
    pub exit_buffer_kib: u32,
    /// How the switch path finds a thread's slot: task-storage where the kernel has BTF, else
    /// hash. Hidden: the overhead benchmark compares the two.
    #[arg(long, value_enum, default_value_t = SlotLookup::Auto, hide = true)]
    pub slot_lookup: SlotLookup,
    /// Whether the switch path first looks in its CPU's cache of recently switched-out threads.
    /// Hidden: the overhead benchmark measures what the cache saves.
    #[arg(long, hide = true, default_value_t = true, action = clap::ArgAction::Set)]
    pub recent_cache: bool,
    /// Where the switch path takes each switch's time: the run queue's clock where the kernel's
    /// BTF shows the way, else the clock helper. Hidden: tests and the benchmark compare them.
    #[arg(long, value_enum, default_value_t = SwitchClock::Auto, hide = true)]
    pub switch_clock: SwitchClock,
    /// Where /sys is found (for containers that mount the host's elsewhere).
    #[arg(
        long = "sysfs-root",
        alias = "root",
        default_value = "/",
        env = "POWERAPI_SYSFS_ROOT"
    )]
    pub root: PathBuf,
    /// Energy source: auto (perf PMU, else powercap, else MSR, else the model — said loudly),
    /// perf, powercap, powercap-dir:PATH (a powercap-shaped tree a host writes for its guest),
    /// msr, model (ESTIMATED from CPU utilisation), or none (CPU time only).
    #[arg(long, default_value = "auto", value_parser = parse_source, env = "POWERAPI_ENERGY_SOURCE")]
    pub energy_source: SourceSpec,
    #[command(flatten)]
    pub attribution: FormulaArgs,
    /// smartwatts: write the fitted model to FILE at every fit (JSON), for --load-model on
    /// machines without RAPL.
    #[arg(long, value_name = "FILE", env = "POWERAPI_SAVE_MODEL")]
    pub save_model: Option<PathBuf>,
    /// With --energy-source model: estimate energy with a model saved by --save-model on a
    /// machine that has RAPL, instead of the linear default (still labelled estimated).
    #[arg(long, value_name = "FILE", env = "POWERAPI_LOAD_MODEL")]
    pub load_model: Option<PathBuf>,
    /// The model's power at 100 % CPU, in watts (default 10 W per CPU).
    #[arg(long, value_parser = parse_watts, env = "POWERAPI_MAX_WATTS")]
    pub max_watts: Option<f64>,
    /// How long a measured energy source may stay unreadable before powerapi stops; until then
    /// its intervals are reported unmeasured and recording goes on.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration, env = "POWERAPI_ENERGY_TIMEOUT")]
    pub energy_timeout: Duration,
}

/// How energy is split among tasks: shared by `record`, `top`, `serve`, `run` and `replay`.
#[derive(Debug, Args)]
pub struct FormulaArgs {
    /// What active energy is shared by: cycles when counted, else on-CPU time.
    #[arg(long, value_enum, default_value_t = Metric::Auto, env = "POWERAPI_METRIC")]
    pub metric: Metric,
    /// Whether idle energy stays a separate row (none) or is shared by CPU time or equally.
    #[arg(long, value_enum, default_value_t = IdlePolicy::None, env = "POWERAPI_IDLE_POLICY")]
    pub idle_policy: IdlePolicy,
    /// How each interval's energy is split among tasks: proportional (by cycles, else on-CPU
    /// time) or smartwatts (a power model per CPU frequency layer, fitted online against the
    /// measured energy; proportional until a layer is fitted, which records say).
    #[arg(long, value_enum, default_value_t = FormulaKind::Proportional, env = "POWERAPI_FORMULA")]
    pub formula: FormulaKind,
    /// smartwatts: width of a frequency layer, in MHz.
    #[arg(long, value_name = "MHZ", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000), env = "POWERAPI_FREQ_STEP")]
    pub freq_step: u32,
    /// smartwatts: re-fit a layer when its median error over 10 intervals exceeds this many
    /// watts.
    #[arg(long, value_name = "WATTS", default_value = "2", value_parser = parse_watts, env = "POWERAPI_MAX_ERROR")]
    pub max_error: f64,
    /// smartwatts: intervals of history kept per layer (a layer is fitted from 10).
    #[arg(long, value_name = "N", default_value_t = 60, value_parser = clap::value_parser!(u32).range(10..=100_000), env = "POWERAPI_MODEL_HISTORY")]
    pub model_history: u32,
    /// Idle power of the package domain(s) in watts (default: estimated online). For the model,
    /// its P_idle (default 2 W per CPU).
    #[arg(long, value_parser = parse_watts, env = "POWERAPI_IDLE_WATTS")]
    pub idle_watts: Option<f64>,
}

impl FormulaArgs {
    /// The attribution's configuration and, with `--formula smartwatts`, the model's.
    pub fn config(&self) -> Result<(AttributionConfig, Option<SmartWattsConfig>)> {
        let smartwatts = SmartWattsConfig {
            freq_step_mhz: self.freq_step,
            max_error_w: self.max_error,
            history: self.model_history as usize,
            fallback: self.metric,
            ..SmartWattsConfig::default()
        };
        let smartwatts = match self.formula {
            FormulaKind::Smartwatts => Some(smartwatts),
            FormulaKind::Proportional => {
                let defaults = SmartWattsConfig::default();
                if smartwatts.freq_step_mhz != defaults.freq_step_mhz
                    || smartwatts.max_error_w != defaults.max_error_w
                    || smartwatts.history != defaults.history
                {
                    bail!(
                        "--freq-step, --max-error and --model-history are the smartwatts formula's: add --formula smartwatts or drop them"
                    );
                }
                None
            }
        };
        let attribution = AttributionConfig {
            metric: self.metric,
            idle_policy: self.idle_policy,
            idle_watts: self.idle_watts,
        };
        Ok((attribution, smartwatts))
    }
}

fn parse_ring_kib(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(k) if k >= 4 && k.is_power_of_two() && k <= 1 << 20 => Ok(k),
        _ => Err(format!(
            "{text:?} is not a power of two between 4 and 1048576"
        )),
    }
}

fn parse_source(text: &str) -> Result<SourceSpec, String> {
    text.parse()
}

fn parse_watts(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(w) if w.is_finite() && w >= 0.0 => Ok(w),
        _ => Err(format!("{text:?} is not a power in watts (a number ≥ 0)")),
    }
}

/// What to do when the output file already holds data (default: refuse, so nothing is lost).
#[derive(Debug, Args)]
pub struct ExistingArgs {
    /// Add to an existing output file, after its last complete line.
    #[arg(long, conflicts_with = "force")]
    pub append: bool,
    /// Overwrite an existing output file (once measuring has started).
    #[arg(long)]
    pub force: bool,
}

impl ExistingArgs {
    pub fn existing(&self) -> Existing {
        match (self.append, self.force) {
            (true, _) => Existing::Append,
            (_, true) => Existing::Overwrite,
            _ => Existing::Refuse,
        }
    }
}

/// Which tasks `record` and `top` report (`run` follows CMD and has none). Filters of different
/// kinds combine with AND; repeated filters of one kind with OR.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only report these processes (tgid); repeatable.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Only report processes with this exact command name (as in /proc/PID/comm); repeatable.
    #[arg(long = "comm")]
    pub comms: Vec<String>,
    /// Only report tasks in this cgroup: a path like /system.slice (or its /sys/fs/cgroup/…
    /// form), or a numeric id; repeatable.
    #[arg(long = "cgroup")]
    pub cgroups: Vec<String>,
}

impl FilterArgs {
    /// The filter, with what could never match fixed or said once on stderr.
    pub fn filter(&self) -> Filter {
        let mut filter = Filter {
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            cgroups: self.cgroups.clone(),
        };
        let mount = crate::cgroup::read_cgroup2_mount(std::path::Path::new("/")).ok();
        let warnings = filter.normalize(
            mount.as_deref(),
            |path| {
                mount
                    .as_ref()
                    .is_some_and(|m| m.join(path.trim_start_matches('/')).is_dir())
            },
            |pid| std::path::Path::new(&format!("/proc/{pid}")).exists(),
        );
        for warning in warnings {
            eprintln!("powerapi: {warning}");
        }
        filter
    }
}

/// The outputs of `record` and `serve` besides `-o`: more sinks, what to do with existing files,
/// and rotation.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Another output, repeatable: jsonl:FILE, csv:FILE (- for stdout),
    /// influxdb:http://HOST:PORT/DATABASE (InfluxDB 1.x) or tcp:HOST:PORT (JSON lines to a
    /// collector). Each gets every interval; one that fails is said once and retried, and the
    /// others go on.
    #[arg(long = "sink", value_name = "KIND:TARGET", env = "POWERAPI_SINK")]
    pub sinks: Vec<SinkSpec>,
    #[command(flatten)]
    pub existing: ExistingArgs,
    /// Rotate file outputs once they hold this much (e.g. 100M, 1G), at an interval boundary.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "POWERAPI_ROTATE_SIZE")]
    pub rotate_size: Option<u64>,
    /// Rotate file outputs after this long (e.g. 1h, 1d), at an interval boundary.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, env = "POWERAPI_ROTATE_EVERY")]
    pub rotate_every: Option<Duration>,
    /// Gzip rotated files (on a thread of their own); needs a rotation.
    #[arg(long)]
    pub compress: bool,
    /// Most data each network sink (influxdb, tcp) holds while its server is away (e.g. 64M,
    /// the default); beyond it the oldest intervals are dropped and counted in the machine
    /// record's meter.dropped_records.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "POWERAPI_SINK_BUFFER")]
    pub sink_buffer: Option<u64>,
    /// Keep only the N most recent rotated files of each output; needs a rotation.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), env = "POWERAPI_KEEP")]
    pub keep: Option<u32>,
}

impl OutputArgs {
    /// The outputs, with `first` (`-o`) ahead of the `--sink`s. Checked here rather than by
    /// clap, because a rotation may come from the config file while `--keep` comes from the
    /// command line.
    pub fn outputs(&self, first: Option<PathBuf>) -> Result<Outputs> {
        if (self.compress || self.keep.is_some())
            && self.rotate_size.is_none()
            && self.rotate_every.is_none()
        {
            bail!(
                "--compress and --keep apply to rotated files: add --rotate-size or --rotate-every (or drop them)"
            );
        }
        let rotation = Rotation {
            max_bytes: self.rotate_size,
            every: self.rotate_every,
            compress: self.compress,
            keep: self.keep.map(|k| k as usize),
        };
        let mut outputs = Outputs::new(first, &self.sinks, self.existing.existing(), rotation);
        if let Some(bytes) = self.sink_buffer {
            outputs.max_queued_bytes = bytes;
        }
        Ok(outputs)
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub sensor: SensorArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Stop after this long (default: until SIGINT/SIGTERM/SIGHUP).
    #[arg(long, value_parser = parse_positive_duration, env = "POWERAPI_DURATION")]
    pub duration: Option<Duration>,
    /// Output file (JSON lines), or - for stdout (the default when no --sink is given). An
    /// existing non-empty file is refused unless --append or --force says what to do with it.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub outputs: OutputArgs,
    /// One record per process (default), per thread, or per cgroup.
    #[arg(long, value_enum, default_value_t = Granularity::Process, env = "POWERAPI_GRANULARITY")]
    pub granularity: Granularity,
    /// Add each process's command line (read from /proc once per process) to its records.
    #[arg(long)]
    pub cmdline: bool,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub sensor: SensorArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Also write the JSON-lines trace (as `record` does) while watching.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    #[command(flatten)]
    pub existing: ExistingArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub sensor: SensorArgs,
    /// Address to listen on. Binding beyond loopback (0.0.0.0:9185) exposes what runs on this
    /// machine to the network: a deliberate choice. Default 127.0.0.1:9185. Also written as
    /// --sink prometheus:ADDR.
    #[arg(long, env = "POWERAPI_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Processes exported as their own series (by energy); the rest are summed as pid="other".
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000), env = "POWERAPI_TOP")]
    pub top: u32,
    /// The kubelet's pod log directory (its entries name pods: `<namespace>_<name>_<uid>`).
    #[arg(long, default_value = "/var/log/pods", hide = true)]
    pub pods_dir: PathBuf,
    /// Docker's container state directory (for container names).
    #[arg(long, default_value = "/var/lib/docker/containers", hide = true)]
    pub docker_dir: PathBuf,
    /// Records to write beside the metrics (as `record` does), e.g. to keep a trace.
    #[command(flatten)]
    pub outputs: OutputArgs,
}

impl ServeArgs {
    /// Where to listen: `--sink prometheus:ADDR` is `--listen ADDR` written as a sink, so a
    /// pipeline can be one list of sinks.
    pub fn endpoint(&self) -> Result<std::net::SocketAddr> {
        let mut endpoints = self.outputs.sinks.iter().filter_map(|s| match s {
            SinkSpec::Prometheus(addr) => Some(*addr),
            _ => None,
        });
        let default = std::net::SocketAddr::from(([127, 0, 0, 1], 9185));
        match (endpoints.next(), endpoints.next(), self.listen) {
            (None, _, listen) => Ok(listen.unwrap_or(default)),
            (Some(_), Some(_), _) => {
                bail!("serve has one Prometheus endpoint: give one prometheus: sink")
            }
            (Some(addr), None, Some(listen)) if addr != listen => {
                bail!("--listen {listen} and --sink prometheus:{addr} disagree: give one")
            }
            (Some(addr), None, _) => Ok(addr),
        }
    }
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A trace written by `powerapi record` (JSON lines), or - for stdin.
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
    /// Where the replayed trace goes (JSON lines), or - for stdout (the default).
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    pub output: PathBuf,
    #[command(flatten)]
    pub existing: ExistingArgs,
    #[command(flatten)]
    pub attribution: FormulaArgs,
}

/// Reads a trace's records (a path or `-`), with how many lines were not records.
fn read_trace(path: &std::path::Path) -> Result<(Vec<crate::report::Record>, u64)> {
    let read = |input: Box<dyn std::io::BufRead>| summary::read_records(input);
    if path == std::path::Path::new("-") {
        read(Box::new(std::io::stdin().lock()))
    } else {
        let file = std::fs::File::open(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the trace {}: {e}; give a file written by `powerapi record`",
                path.display()
            )
        })?;
        read(Box::new(std::io::BufReader::new(file)))
    }
    .map_err(|e| anyhow::anyhow!("reading the trace {} failed: {e}", path.display()))
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A trace written by `powerapi record` (JSON lines), or - for stdin.
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
    /// What targets are.
    #[arg(long, value_enum, default_value_t = By::Process)]
    pub by: By,
    /// Targets listed; the rest are summed as one.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub top: u32,
    /// table, json, csv or markdown.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Table)]
    pub format: SummaryFormat,
    /// Write the report to FILE (overwritten) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also draw power over time, stacked for the top targets plus idle and other, to FILE.svg
    /// or FILE.png.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub sensor: SensorArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the report to FILE (overwritten), or - for stdout; default stderr, as `perf stat`
    /// does, so that CMD's own output on stdout stays clean.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Run CMD N times and report mean ± standard deviation.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
    /// Measure the machine's idle power this long before CMD starts, so that CMD is charged only
    /// the energy above it (0 skips it; not done with --idle-watts or the model).
    #[arg(long, default_value = "2s", value_parser = parse_duration_or_zero)]
    pub baseline: Duration,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 0, 500ms, 2s)"))
}

/// `100M`, `1G`, `512K`, `4096`: binary units (a K is 1,024 bytes).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, ""), |i| t.split_at(i));
    let shift = match unit.trim_end_matches(['B', 'b', 'i']) {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(format!("{text:?}: write a size such as 512K, 100M or 1G")),
    };
    digits
        .parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?}: write a size such as 512K, 100M or 1G"))
}

pub(crate) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 500ms, 1s, 2m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

pub(crate) fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_positive_duration(text)?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err("must be between 10ms and 1h".into());
    }
    Ok(d)
}

impl SensorArgs {
    pub fn sensor_config(&self) -> Result<SensorConfig> {
        let (counters, counters_required) = match &self.counters {
            None => (default_counters(), false),
            Some(names) if names.iter().any(|n| n == "none") => {
                if names.len() > 1 {
                    bail!(
                        "--counters none means time-only and cannot be combined with counters ({}); drop one",
                        names.join(",")
                    );
                }
                (Vec::new(), false)
            }
            Some(names) => {
                let specs = names
                    .iter()
                    .map(|n| n.parse::<CounterSpec>())
                    .collect::<Result<Vec<_>, _>>()?;
                for (i, spec) in specs.iter().enumerate() {
                    if specs[..i].iter().any(|s| s.name == spec.name) {
                        bail!(
                            "counter {} is listed twice in --counters; list each once",
                            spec.name
                        );
                    }
                }
                (specs, true)
            }
        };
        if counters.len() > powerapi_common::MAX_COUNTERS {
            bail!(
                "at most {} counters at once (got {})",
                powerapi_common::MAX_COUNTERS,
                counters.len()
            );
        }
        Ok(SensorConfig {
            counters,
            counters_required,
            max_tasks: self.max_tasks,
            exit_buffer_bytes: self.exit_buffer_kib * 1024,
            root: self.root.clone(),
            slot_lookup: self.slot_lookup,
            recent_cache: self.recent_cache,
            switch_clock: self.switch_clock,
        })
    }

    pub fn collector_config(&self) -> Result<CollectorConfig> {
        let idle_watts = self.attribution.idle_watts;
        if let (Some(idle), Some(max)) = (idle_watts, self.max_watts)
            && max < idle
        {
            bail!("--max-watts ({max}) is below --idle-watts ({idle})");
        }
        let (attribution, smartwatts) = self.attribution.config()?;
        if let Some(path) = &self.save_model {
            if smartwatts.is_none() {
                bail!(
                    "--save-model saves the smartwatts formula's model: add --formula smartwatts"
                );
            }
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => std::path::Path::new("."),
            };
            if !parent.is_dir() || path.is_dir() {
                bail!(
                    "cannot save the model to {}: {} is not a directory; choose a writable path with --save-model",
                    path.display(),
                    parent.display()
                );
            }
        }
        if self.load_model.is_some() && self.energy_source != SourceSpec::Model {
            bail!(
                "--load-model estimates energy with a fitted model: add --energy-source model (a measured source needs no model)"
            );
        }
        Ok(CollectorConfig {
            save_model: self.save_model.clone(),
            load_model: self.load_model.clone(),
            smartwatts,
            sensor: self.sensor_config()?,
            energy: self.energy_source.clone(),
            model: EnergyOptions {
                idle_watts,
                max_watts: self.max_watts,
                timeout: self.energy_timeout,
            },
            attribution,
            state_dir: Some(crate::idle::state_dir()),
        })
    }
}

/// True when `id` was given neither on the command line nor in the environment: the config file
/// may set it (precedence: command line > environment > file > default).
fn open_to_file(m: &ArgMatches, id: &str) -> bool {
    !matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Sets `$target` to the file's `$value` where `$id` is open to the file.
macro_rules! from_file {
    ($m:expr, $id:literal, $target:expr, $value:expr) => {
        if let Some(v) = $value
            && open_to_file($m, $id)
        {
            $target = v;
        }
    };
}

impl Cli {
    /// Parses the command line and the POWERAPI_* environment (clap prints usage and exits on a
    /// bad one), then lays the `--config` file under them.
    pub fn load() -> Result<Self> {
        let matches = Self::command().get_matches();
        let mut cli = Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        if let Some(path) = &cli.config {
            let file = config::load(path)?;
            cli.apply(&file, &matches);
        }
        Ok(cli)
    }

    /// Fills every option the command line and environment left open from `file`.
    pub fn apply(&mut self, file: &MeterConfig, matches: &ArgMatches) {
        let Some((_, m)) = matches.subcommand() else {
            return;
        };
        match &mut self.command {
            Command::Record(a) => {
                a.sensor.apply(file, m);
                a.filter.apply(file, m);
                a.outputs.apply(file, m);
                let r = &file.record;
                from_file!(m, "output", a.output, r.output.clone().map(Some));
                from_file!(m, "duration", a.duration, r.duration.map(Some));
                from_file!(m, "granularity", a.granularity, r.granularity);
                from_file!(m, "cmdline", a.cmdline, r.cmdline);
            }
            Command::Top(a) => {
                a.sensor.apply(file, m);
                a.filter.apply(file, m);
                a.existing.apply(file, m);
                from_file!(m, "record", a.record, file.top.record.clone().map(Some));
            }
            Command::Serve(a) => {
                a.sensor.apply(file, m);
                a.outputs.apply(file, m);
                from_file!(m, "listen", a.listen, file.serve.listen.map(Some));
                from_file!(m, "top", a.top, file.serve.top);
            }
            Command::Run(a) => a.sensor.apply(file, m),
            Command::Doctor { root } => {
                from_file!(m, "root", *root, file.sensor.sysfs_root.clone());
            }
            Command::Replay(a) => a.attribution.apply(file, m),
            Command::Report(_) | Command::BenchNoop { .. } | Command::BenchSmartwatts { .. } => {}
        }
    }
}

impl SensorArgs {
    fn apply(&mut self, f: &MeterConfig, m: &ArgMatches) {
        from_file!(m, "interval", self.interval, f.interval);
        let s = &f.sensor;
        from_file!(m, "counters", self.counters, s.counters.clone().map(Some));
        from_file!(m, "max_tasks", self.max_tasks, s.max_tasks);
        from_file!(m, "root", self.root, s.sysfs_root.clone());
        let e = &f.energy;
        from_file!(m, "energy_source", self.energy_source, e.source.clone());
        from_file!(m, "energy_timeout", self.energy_timeout, e.timeout);
        from_file!(m, "max_watts", self.max_watts, e.max_watts.map(Some));
        from_file!(
            m,
            "load_model",
            self.load_model,
            e.load_model.clone().map(Some)
        );
        let save = f.formula.save_model.clone().map(Some);
        from_file!(m, "save_model", self.save_model, save);
        self.attribution.apply(f, m);
    }
}

impl FormulaArgs {
    fn apply(&mut self, f: &MeterConfig, m: &ArgMatches) {
        from_file!(
            m,
            "idle_watts",
            self.idle_watts,
            f.energy.idle_watts.map(Some)
        );
        from_file!(m, "metric", self.metric, f.formula.metric);
        from_file!(m, "idle_policy", self.idle_policy, f.formula.idle_policy);
        from_file!(m, "formula", self.formula, f.formula.name);
        from_file!(m, "freq_step", self.freq_step, f.formula.freq_step);
        from_file!(m, "max_error", self.max_error, f.formula.max_error);
        from_file!(m, "model_history", self.model_history, f.formula.history);
    }
}

impl FilterArgs {
    fn apply(&mut self, f: &MeterConfig, m: &ArgMatches) {
        from_file!(m, "pids", self.pids, f.filter.pids.clone());
        from_file!(m, "comms", self.comms, f.filter.comms.clone());
        from_file!(m, "cgroups", self.cgroups, f.filter.cgroups.clone());
    }
}

impl ExistingArgs {
    fn apply(&mut self, f: &MeterConfig, m: &ArgMatches) {
        if open_to_file(m, "append")
            && open_to_file(m, "force")
            && let Some(existing) = f.outputs.existing
        {
            self.append = existing == Existing::Append;
            self.force = existing == Existing::Overwrite;
        }
    }
}

impl OutputArgs {
    fn apply(&mut self, f: &MeterConfig, m: &ArgMatches) {
        from_file!(m, "sinks", self.sinks, f.sinks.clone());
        self.existing.apply(f, m);
        let o = &f.outputs;
        from_file!(m, "rotate_size", self.rotate_size, o.rotate_size.map(Some));
        from_file!(
            m,
            "rotate_every",
            self.rotate_every,
            o.rotate_every.map(Some)
        );
        from_file!(m, "compress", self.compress, o.compress);
        from_file!(m, "keep", self.keep, o.keep.map(Some));
        from_file!(m, "sink_buffer", self.sink_buffer, o.sink_buffer.map(Some));
    }
}

/// A channel that receives once per SIGINT/SIGTERM/SIGHUP, so every loop can finish its
/// interval (SIGHUP: the ssh session that started us dropped; the trace must still end whole).
pub fn stop_signal() -> Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Writes `run`'s report where asked. CMD has run by now: a failed write is said, the report goes
/// to stderr instead, and powerapi still exits with CMD's code.
fn write_report(output: Option<&OutputSpec>, text: &str) {
    let written = match output {
        Some(o) if o.is_stdout() => std::io::stdout().write_all(text.as_bytes()),
        Some(o) => std::fs::write(&o.path, text),
        None => std::io::stderr().write_all(text.as_bytes()),
    };
    if let (Err(e), Some(o)) = (written, output) {
        eprintln!(
            "powerapi: error: cannot write the report to {}: {e}; here it is",
            o.path.display()
        );
        eprint!("{text}");
    }
}

/// Runs a parsed command line; returns the process exit code.
pub fn execute(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Record(args) => {
            let config = RecordConfig {
                interval: args.sensor.interval,
                cmdline: args.cmdline,
                duration: args.duration,
                granularity: args.granularity,
                filter: args.filter.filter(),
                collector: args.sensor.collector_config()?,
            };
            if let Some(SinkSpec::Prometheus(addr)) = args
                .outputs
                .sinks
                .iter()
                .find(|s| matches!(s, SinkSpec::Prometheus(_)))
            {
                bail!(
                    "record has no Prometheus endpoint: run `powerapi serve --sink prometheus:{addr}` with the same other --sink outputs (serve writes them too)"
                );
            }
            // Without --sink, stdout unless -o says otherwise.
            let first = args
                .output
                .clone()
                .or_else(|| args.outputs.sinks.is_empty().then(|| "-".into()));
            let outputs = args.outputs.outputs(first)?;
            outputs.check()?;
            let stop = stop_signal()?;
            let open = |stop: &std::sync::mpsc::Receiver<()>| outputs.open(stop);
            record::record(&config, open, &stop)?;
            Ok(0)
        }
        Command::Top(args) => {
            let config = tui::TopConfig {
                collector: args.sensor.collector_config()?,
                interval: args.sensor.interval,
                filter: args.filter.filter(),
                record: args.record.clone().map(|path| OutputSpec {
                    path,
                    existing: args.existing.existing(),
                    flag: "--record",
                    format: Format::JsonLines,
                }),
            };
            let stop = stop_signal()?;
            tui::run_top(&config, &stop)?;
            Ok(0)
        }
        Command::Run(args) => {
            let config = run::RunConfig {
                collector: args.sensor.collector_config()?,
                interval: args.sensor.interval,
                repeat: args.repeat,
                baseline: args.baseline,
                command: args.command.clone(),
            };
            let output = args.output.clone().map(|path| OutputSpec {
                path,
                existing: Existing::Overwrite,
                flag: "-o",
                format: Format::JsonLines,
            });
            // A bad path must fail before CMD runs; the file is written only once CMD has.
            if let Some(output) = &output {
                output.check()?;
            }
            let stop = stop_signal()?;
            let report = match run::run(&config, &stop) {
                Ok(report) => report,
                Err(e) => match e.shell_exit_code() {
                    Some(code) => {
                        eprintln!("powerapi: error: {e}");
                        return Ok(code);
                    }
                    None => return Err(e.into()),
                },
            };
            let text = if args.json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                run::render(&report)
            };
            write_report(output.as_ref(), &text);
            // A series stopped by Ctrl-C exits as a shell's interrupted command does, unless
            // CMD's own status already says something went wrong.
            Ok(if report.interrupted && report.exit_code == 0 {
                128 + libc::SIGINT
            } else {
                report.exit_code
            })
        }
        Command::Serve(args) => {
            let config = crate::serve::ServeConfig {
                collector: args.sensor.collector_config()?,
                interval: args.sensor.interval,
                listen: args.endpoint()?,
                top: args.top as usize,
                pods_dir: args.pods_dir.clone(),
                docker_dir: args.docker_dir.clone(),
                outputs: args.outputs.outputs(None)?,
            };
            config.outputs.check()?;
            let stop = stop_signal()?;
            crate::serve::serve(&config, stop)?;
            Ok(0)
        }
        Command::Replay(args) => {
            let (attribution, smartwatts) = args.attribution.config()?;
            let output = OutputSpec {
                path: args.output.clone(),
                existing: args.existing.existing(),
                flag: "-o",
                format: Format::JsonLines,
            };
            output.check()?;
            let (records, skipped) = read_trace(&args.trace)?;
            if skipped > 0 {
                eprintln!(
                    "powerapi: {skipped} line(s) of {} were not records and are left out",
                    args.trace.display()
                );
            }
            let replayed = crate::replay::replay(&records, attribution, smartwatts)?;
            let (_keep, stop) = mpsc::channel();
            let mut sink = output.open(&stop)?;
            crate::sink::Sink::write_interval(&mut sink, &replayed)?;
            Ok(0)
        }
        Command::Report(args) => {
            let (records, skipped) = read_trace(&args.trace)?;
            let summary = summary::summarize(&records, skipped, args.by, args.top as usize)?;
            if let Some(chart) = &args.chart {
                crate::chart::draw(chart, &summary, &summary::timeline(&records, &summary))?;
            }
            let text = summary::render(&summary, args.format);
            match &args.output {
                Some(path) => std::fs::write(path, text).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot write {}: {e}; choose a writable path with -o",
                        path.display()
                    )
                })?,
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
            Ok(0)
        }
        Command::Doctor { root } => {
            let checks = doctor::run_checks(&root);
            for check in &checks {
                println!("{check}");
            }
            println!("{}", doctor::verdict(&checks));
            Ok(if doctor::recording_impossible(&checks) {
                1
            } else {
                0
            })
        }
        Command::BenchSmartwatts {
            tasks,
            layers,
            intervals,
        } => {
            let times = crate::smartwatts_bench::run(tasks, layers, intervals);
            // The first interval of each layer per step (where fits happen) against the rest.
            let mut micros: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e6).collect();
            let max = micros.iter().copied().fold(0.0, f64::max);
            micros.sort_by(f64::total_cmp);
            let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
            println!(
                "smartwatts: {tasks} tasks, {layers} layers, {intervals} intervals: median {:.0} µs, p99 {:.0} µs, max {:.0} µs per interval",
                at(0.5),
                at(0.99),
                max
            );
            Ok(0)
        }
        Command::BenchNoop { clock } => {
            let _attached = sensor::attach_noop(std::path::Path::new("/"), clock)?;
            let stop = stop_signal()?;
            println!("attached");
            let _ = stop.recv();
            Ok(0)
        }
    }
}

#[cfg(test)]
mod help_snapshot;

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Cli::try_parse_from(["powerapi", "record", "--interval", "0s"]).is_err());
        assert!(Cli::try_parse_from(["powerapi", "record", "--interval", "1ms"]).is_err());
        assert!(Cli::try_parse_from(["powerapi", "record", "--interval", "soon"]).is_err());
        assert!(Cli::try_parse_from(["powerapi", "record", "--duration", "0s"]).is_err());
        assert!(Cli::try_parse_from(["powerapi", "record", "--max-tasks", "1"]).is_err());
        let cli = Cli::try_parse_from(["powerapi", "record", "--counters", "cycles,bogus"])
            .expect("parses");
        let Command::Record(args) = cli.command else {
            panic!("record")
        };
        let err = args.sensor.sensor_config().expect_err("bogus counter");
        assert!(
            err.to_string().contains("unknown counter \"bogus\""),
            "{err}"
        );
    }

    /// Parses `argv` and lays `file` under it, as `Cli::load` does.
    fn with_file(argv: &[&str], file: &str) -> Cli {
        let matches = Cli::command()
            .try_get_matches_from(argv)
            .expect("valid command line");
        let mut cli = Cli::from_arg_matches(&matches).expect("parsed");
        cli.apply(&config::parse(file).expect("valid file"), &matches);
        cli
    }

    const FULL: &str = r#"{
        "interval": "2s",
        "sensor": {"counters": ["cpu-clock"], "max_tasks": 1024, "sysfs_root": "/host"},
        "energy": {"source": "model", "timeout": "1m", "idle_watts": 3, "max_watts": 30},
        "formula": {"name": "proportional", "metric": "cpu-time", "idle_policy": "equal"},
        "filter": {"pids": [1], "comms": ["nginx"], "cgroups": ["/system.slice"]},
        "sinks": ["csv:/tmp/p.csv"],
        "outputs": {"existing": "append", "rotate_size": "1M", "compress": true, "keep": 3, "sink_buffer": "2M"},
        "record": {"output": "/tmp/t.jsonl", "duration": "1h", "granularity": "cgroup", "cmdline": true},
        "serve": {"listen": "0.0.0.0:9999", "top": 7},
        "top": {"record": "/tmp/top.jsonl"}
    }"#;

    #[test]
    fn the_file_fills_what_the_command_line_left_open() {
        let cli = with_file(
            &["powerapi", "record", "--interval", "500ms", "--force"],
            FULL,
        );
        let Command::Record(a) = cli.command else {
            panic!("record");
        };
        // Given on the command line: kept. --force also keeps the file's `existing` out.
        assert_eq!(a.sensor.interval, Duration::from_millis(500));
        assert!(a.outputs.existing.existing() == Existing::Overwrite);
        // Left open: from the file.
        assert_eq!(a.sensor.counters, Some(vec!["cpu-clock".to_string()]));
        assert_eq!(a.sensor.max_tasks, 1024);
        assert_eq!(a.sensor.root, PathBuf::from("/host"));
        assert_eq!(a.sensor.energy_source, SourceSpec::Model);
        assert_eq!(a.sensor.energy_timeout, Duration::from_secs(60));
        assert_eq!(
            (a.sensor.attribution.idle_watts, a.sensor.max_watts),
            (Some(3.0), Some(30.0))
        );
        assert_eq!(a.sensor.attribution.metric, Metric::CpuTime);
        assert_eq!(a.sensor.attribution.idle_policy, IdlePolicy::Equal);
        assert_eq!(
            (a.filter.pids, a.filter.comms),
            (vec![1], vec!["nginx".to_string()])
        );
        assert_eq!(a.output, Some(PathBuf::from("/tmp/t.jsonl")));
        assert_eq!(a.duration, Some(Duration::from_secs(3600)));
        assert_eq!((a.granularity, a.cmdline), (Granularity::Cgroup, true));
        let outputs = a
            .outputs
            .outputs(a.output.clone())
            .expect("rotation from the file");
        assert_eq!(
            (outputs.files.len(), outputs.max_queued_bytes),
            (2, 2 << 20)
        );
        assert_eq!(outputs.rotation.max_bytes, Some(1 << 20));
        assert!(outputs.rotation.compress && outputs.rotation.keep == Some(3));

        // --keep on the command line, the rotation it needs in the file: accepted.
        let cli = with_file(
            &["powerapi", "serve", "--keep", "9", "--top", "3"],
            r#"{"outputs": {"rotate_every": "1h"}, "serve": {"listen": "0.0.0.0:9999", "top": 7}}"#,
        );
        let Command::Serve(a) = cli.command else {
            panic!("serve");
        };
        assert_eq!(
            (a.top, a.endpoint().map(|e| e.port()).ok()),
            (3, Some(9999))
        );
        // The endpoint written as a sink, or refused when it contradicts --listen.
        let serve = |argv: &[&str]| match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Serve(a)) => a
                .endpoint()
                .map(|e| e.to_string())
                .map_err(|e| e.to_string()),
            other => panic!("{other:?}"),
        };
        assert_eq!(serve(&["powerapi", "serve"]), Ok("127.0.0.1:9185".into()));
        assert_eq!(
            serve(&["powerapi", "serve", "--sink", "prometheus:0.0.0.0:9100"]),
            Ok("0.0.0.0:9100".into())
        );
        let e = serve(&[
            "powerapi",
            "serve",
            "--listen",
            "127.0.0.1:1",
            "--sink",
            "prometheus:0.0.0.0:9100",
        ]);
        assert!(e.is_err_and(|e| e.contains("disagree")));
        let outputs = a.outputs.outputs(None).expect("rotation from the file");
        assert_eq!(outputs.rotation.keep, Some(9));
    }

    #[test]
    fn every_command_takes_the_whole_file() {
        // Also proves every id the file sets exists (clap panics on an unknown one).
        let cmds: [&[&str]; 5] = [
            &["powerapi", "record"],
            &["powerapi", "top"],
            &["powerapi", "serve"],
            &["powerapi", "run", "--", "true"],
            &["powerapi", "doctor"],
        ];
        for argv in cmds {
            let cli = with_file(argv, FULL);
            match cli.command {
                Command::Top(a) => {
                    assert_eq!(a.record, Some(PathBuf::from("/tmp/top.jsonl")));
                    assert_eq!(a.existing.existing(), Existing::Append);
                }
                Command::Run(a) => assert_eq!(a.sensor.interval, Duration::from_secs(2)),
                Command::Doctor { root } => assert_eq!(root, PathBuf::from("/host")),
                _ => {}
            }
        }
    }

    #[test]
    fn the_example_configs_are_valid_for_their_commands() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("examples/configs") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            let file = config::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // Each says which command it is for.
            let description = file.description.clone().unwrap_or_default();
            let command = ["record", "serve", "top"]
                .into_iter()
                .find(|c| description.contains(&format!(".json {c}")))
                .unwrap_or_else(|| panic!("{}: no command in its description", path.display()));
            let cli = with_file(&["powerapi", command], &text);
            match cli.command {
                Command::Record(a) => {
                    a.sensor.collector_config().expect("a valid pipeline");
                    a.outputs.outputs(a.output.clone()).expect("valid outputs");
                }
                Command::Serve(a) => {
                    a.sensor.collector_config().expect("a valid pipeline");
                    a.outputs.outputs(None).expect("valid outputs");
                }
                Command::Top(a) => {
                    a.sensor.collector_config().expect("a valid pipeline");
                }
                _ => unreachable!(),
            }
            seen += 1;
        }
        assert_eq!(seen, 5, "laptop, server, VM, production tracing, InfluxDB");
    }

    #[test]
    fn model_files_need_their_formula_and_source() {
        let config = |argv: &[&str]| match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Record(a)) => a
                .sensor
                .collector_config()
                .map(|_| ())
                .map_err(|e| e.to_string()),
            other => panic!("{other:?}"),
        };
        let e = config(&["powerapi", "record", "--save-model", "/tmp/m.json"])
            .expect_err("proportional");
        assert!(e.contains("add --formula smartwatts"), "{e}");
        let e = config(&[
            "powerapi",
            "record",
            "--formula",
            "smartwatts",
            "--save-model",
            "/nonexistent/m.json",
        ])
        .expect_err("no such directory");
        assert!(e.contains("/nonexistent is not a directory"), "{e}");
        assert!(
            config(&[
                "powerapi",
                "record",
                "--formula",
                "smartwatts",
                "--save-model",
                "/tmp/m.json"
            ])
            .is_ok()
        );
        let e = config(&["powerapi", "record", "--load-model", "/tmp/m.json"])
            .expect_err("auto source");
        assert!(e.contains("add --energy-source model"), "{e}");
    }

    #[test]
    fn sizes_and_rotation_flags() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        for bad in ["", "0", "M", "1.5G", "10X", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        // --compress and --keep mean nothing without a rotation.
        let outputs = |argv: &[&str]| match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Record(args)) => args.outputs.outputs(None).map(|_| ()),
            other => panic!("{other:?}"),
        };
        assert!(outputs(&["powerapi", "record", "--compress"]).is_err());
        assert!(outputs(&["powerapi", "record", "--keep", "3"]).is_err());
        assert!(
            outputs(&[
                "powerapi",
                "record",
                "--rotate-every",
                "1h",
                "--compress",
                "--keep",
                "3"
            ])
            .is_ok()
        );
        assert!(
            Cli::try_parse_from(["powerapi", "record", "--rotate-size", "1M", "--keep", "0"])
                .is_err()
        );
    }

    #[test]
    fn run_takes_cmd_with_or_without_the_separator() {
        for argv in [
            &["powerapi", "run", "sh", "-c", "ls -l"][..],
            &["powerapi", "run", "--", "sh", "-c", "ls -l"],
        ] {
            let cli = Cli::try_parse_from(argv).expect("parses");
            let Command::Run(args) = cli.command else {
                panic!("run")
            };
            assert_eq!(args.command, ["sh", "-c", "ls -l"]);
        }
        // An option run lacks is an error, not a command named `--pid`.
        assert!(Cli::try_parse_from(["powerapi", "run", "--pid", "1", "--", "true"]).is_err());
    }

    #[test]
    fn contradictory_counters_are_refused() {
        for (list, wanted) in [
            (
                "none,cpu-clock",
                "--counters none means time-only and cannot be combined with counters (none,cpu-clock); drop one",
            ),
            (
                "cycles,cpu-clock,cycles",
                "counter cycles is listed twice in --counters; list each once",
            ),
        ] {
            let cli =
                Cli::try_parse_from(["powerapi", "record", "--counters", list]).expect("parses");
            let Command::Record(args) = cli.command else {
                panic!("record")
            };
            let err = args.sensor.sensor_config().expect_err(list);
            assert_eq!(err.to_string(), wanted);
        }
    }

    #[test]
    fn counters_none_means_time_only() {
        let cli =
            Cli::try_parse_from(["powerapi", "record", "--counters", "none"]).expect("parses");
        let Command::Record(args) = cli.command else {
            panic!("record")
        };
        assert!(
            args.sensor
                .sensor_config()
                .expect("config")
                .counters
                .is_empty()
        );
    }
}
