//! Command-line definitions and the glue that assembles a pipeline from them.

use std::{io::Write, path::PathBuf, sync::mpsc, time::Duration};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::{
    attribution::{AttributionConfig, IdlePolicy, Metric},
    collect::CollectorConfig,
    doctor,
    energy::{EnergyOptions, SourceSpec},
    record::{self, Filter, Granularity, RecordConfig},
    rotate::Rotation,
    run,
    sensor::{self, CounterSpec, SensorConfig, SlotLookup, default_counters},
    sink::{Existing, Format, OutputSpec},
    sinks::{Outputs, SinkSpec},
    tui,
};

#[derive(Debug, Parser)]
#[command(
    name = "powerapi",
    version,
    about = "eBPF software power meter: CPU time, counters and (soon) watts per process"
)]
pub struct Cli {
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
    /// Say what this machine offers (BPF, counters, RAPL) and what is missing, with the fix.
    Doctor {
        /// Where /sys is found (for containers that mount the host's elsewhere).
        #[arg(long = "sysfs-root", alias = "root", default_value = "/")]
        root: PathBuf,
    },
    /// Attach an empty sched_switch program until interrupted (overhead benchmark floor).
    #[command(hide = true)]
    BenchNoop,
}

#[derive(Debug, Args)]
pub struct SensorArgs {
    /// Sampling interval (e.g. 500ms, 1s, 2m).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Counters to read at each switch: comma-separated names (cycles, instructions, ref-cycles,
    /// llc-misses, cache-misses, branch-misses, cpu-clock, page-faults, major-faults,
    /// cpu-migrations, raw:0xCONFIG) or `none`.
    /// Default: cycles,instructions when the CPU has a PMU, else time-only mode.
    #[arg(long, value_delimiter = ',')]
    pub counters: Option<Vec<String>>,
    /// Most threads tracked at once; beyond it slices are counted as lost (never silently).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(64..=4_194_304))]
    pub max_tasks: u32,
    /// Exit ring buffer size in KiB (a power of two ≥ 4). Tests shrink it to exercise the
    /// overflow path.
    #[arg(long, default_value_t = 4096, hide = true, value_parser = parse_ring_kib)]
    pub exit_buffer_kib: u32,
    /// How the switch path finds a thread's slot: task-storage where the kernel has BTF, else
    /// hash. Hidden: the overhead benchmark compares the two.
    #[arg(long, value_enum, default_value_t = SlotLookup::Auto, hide = true)]
    pub slot_lookup: SlotLookup,
    /// Where /sys is found (for containers that mount the host's elsewhere).
    #[arg(long = "sysfs-root", alias = "root", default_value = "/")]
    pub root: PathBuf,
    /// Energy source: auto (perf PMU, else powercap, else MSR, else the model — said loudly),
    /// perf, powercap, powercap-dir:PATH (a powercap-shaped tree a host writes for its guest),
    /// msr, model (ESTIMATED from CPU utilisation), or none (CPU time only).
    #[arg(long, default_value = "auto", value_parser = parse_source)]
    pub energy_source: SourceSpec,
    /// What active energy is shared by: cycles when counted, else on-CPU time.
    #[arg(long, value_enum, default_value_t = Metric::Auto)]
    pub metric: Metric,
    /// Whether idle energy stays a separate row (none) or is shared by CPU time or equally.
    #[arg(long, value_enum, default_value_t = IdlePolicy::None)]
    pub idle_policy: IdlePolicy,
    /// Idle power of the package domain(s) in watts (default: estimated online). For the model,
    /// its P_idle (default 2 W per CPU).
    #[arg(long, value_parser = parse_watts)]
    pub idle_watts: Option<f64>,
    /// The model's power at 100 % CPU, in watts (default 10 W per CPU).
    #[arg(long, value_parser = parse_watts)]
    pub max_watts: Option<f64>,
    /// How long a measured energy source may stay unreadable before powerapi stops; until then
    /// its intervals are reported unmeasured and recording goes on.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub energy_timeout: Duration,
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
#[command(group = clap::ArgGroup::new("rotating").args(["rotate_size", "rotate_every"]).multiple(true))]
pub struct OutputArgs {
    /// Another output, repeatable: jsonl:FILE, csv:FILE (- for stdout),
    /// influxdb:http://HOST:PORT/DATABASE (InfluxDB 1.x) or tcp:HOST:PORT (JSON lines to a
    /// collector). Each gets every interval; one that fails is said once and retried, and the
    /// others go on.
    #[arg(long = "sink", value_name = "KIND:TARGET")]
    pub sinks: Vec<SinkSpec>,
    #[command(flatten)]
    pub existing: ExistingArgs,
    /// Rotate file outputs once they hold this much (e.g. 100M, 1G), at an interval boundary.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub rotate_size: Option<u64>,
    /// Rotate file outputs after this long (e.g. 1h, 1d), at an interval boundary.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub rotate_every: Option<Duration>,
    /// Gzip rotated files (on a thread of their own).
    #[arg(long, requires = "rotating")]
    pub compress: bool,
    /// Most data each network sink (influxdb, tcp) holds while its server is away (e.g. 64M,
    /// the default); beyond it the oldest intervals are dropped and counted in the machine
    /// record's meter.dropped_records.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub sink_buffer: Option<u64>,
    /// Keep only the N most recent rotated files of each output.
    #[arg(long, value_name = "N", requires = "rotating", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: Option<u32>,
}

impl OutputArgs {
    /// The outputs, with `first` (`-o`) ahead of the `--sink`s.
    pub fn outputs(&self, first: Option<PathBuf>) -> Outputs {
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
        outputs
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub sensor: SensorArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Stop after this long (default: until SIGINT/SIGTERM/SIGHUP).
    #[arg(long, value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,
    /// Output file (JSON lines), or - for stdout (the default when no --sink is given). An
    /// existing non-empty file is refused unless --append or --force says what to do with it.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub outputs: OutputArgs,
    /// One record per process (default), per thread, or per cgroup.
    #[arg(long, value_enum, default_value_t = Granularity::Process)]
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
    /// machine to the network: a deliberate choice.
    #[arg(long, default_value = "127.0.0.1:9185")]
    pub listen: std::net::SocketAddr,
    /// Processes exported as their own series (by energy); the rest are summed as pid="other".
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
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
fn parse_size(text: &str) -> Result<u64, String> {
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

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 500ms, 1s, 2m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn parse_interval(text: &str) -> Result<Duration, String> {
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
        })
    }

    pub fn collector_config(&self) -> Result<CollectorConfig> {
        if let (Some(idle), Some(max)) = (self.idle_watts, self.max_watts)
            && max < idle
        {
            bail!("--max-watts ({max}) is below --idle-watts ({idle})");
        }
        Ok(CollectorConfig {
            sensor: self.sensor_config()?,
            energy: self.energy_source.clone(),
            model: EnergyOptions {
                idle_watts: self.idle_watts,
                max_watts: self.max_watts,
                timeout: self.energy_timeout,
            },
            attribution: AttributionConfig {
                metric: self.metric,
                idle_policy: self.idle_policy,
                idle_watts: self.idle_watts,
            },
            state_dir: Some(crate::idle::state_dir()),
        })
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
            // Without --sink, stdout unless -o says otherwise.
            let first = args
                .output
                .clone()
                .or_else(|| args.outputs.sinks.is_empty().then(|| "-".into()));
            let outputs = args.outputs.outputs(first);
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
                listen: args.listen,
                top: args.top as usize,
                pods_dir: args.pods_dir.clone(),
                docker_dir: args.docker_dir.clone(),
                outputs: args.outputs.outputs(None),
            };
            config.outputs.check()?;
            let stop = stop_signal()?;
            crate::serve::serve(&config, stop)?;
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
        Command::BenchNoop => {
            let _attached = sensor::attach_noop(std::path::Path::new("/"))?;
            let stop = stop_signal()?;
            println!("attached");
            let _ = stop.recv();
            Ok(0)
        }
    }
}

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
        assert!(Cli::try_parse_from(["powerapi", "record", "--compress"]).is_err());
        assert!(Cli::try_parse_from(["powerapi", "record", "--keep", "3"]).is_err());
        assert!(
            Cli::try_parse_from([
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
