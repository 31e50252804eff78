//! Command-line definitions and the glue that assembles a pipeline from them.

use std::{io::Write, path::PathBuf, sync::mpsc, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::{
    attribution::{AttributionConfig, IdlePolicy, Metric},
    collect::CollectorConfig,
    doctor,
    energy::{ModelConfig, SourceSpec},
    record::{self, Filter, Granularity, RecordConfig},
    run,
    sensor::{self, CounterSpec, SensorConfig, default_counters},
    sink::JsonLinesSink,
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
    /// llc-misses, cache-misses, branch-misses, cpu-clock, raw:0xCONFIG) or `none`.
    /// Default: cycles,instructions when the CPU has a PMU, else time-only mode.
    #[arg(long, value_delimiter = ',')]
    pub counters: Option<Vec<String>>,
    /// Only report these processes (tgid); repeatable.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Only report processes with this exact command name; repeatable.
    #[arg(long = "comm")]
    pub comms: Vec<String>,
    /// Only report tasks in this cgroup (path prefix like /system.slice, or numeric id); repeatable.
    #[arg(long = "cgroup")]
    pub cgroups: Vec<String>,
    /// Most threads tracked at once; beyond it slices are counted as lost (never silently).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(64..=4_194_304))]
    pub max_tasks: u32,
    /// Exit ring buffer size in KiB (a power of two ≥ 4). Tests shrink it to exercise the
    /// overflow path.
    #[arg(long, default_value_t = 4096, hide = true, value_parser = parse_ring_kib)]
    pub exit_buffer_kib: u32,
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

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub sensor: SensorArgs,
    /// Stop after this long (default: until SIGINT/SIGTERM).
    #[arg(long, value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,
    /// Output file, or - for stdout.
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
    /// One record per process (default), per thread, or per cgroup.
    #[arg(long, value_enum, default_value_t = Granularity::Process)]
    pub granularity: Granularity,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub sensor: SensorArgs,
    /// Also write the JSON-lines trace (as `record` does) while watching.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub sensor: SensorArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the report to FILE instead of stdout.
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
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 0, 500ms, 2s)"))
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
            Some(names) if names.iter().any(|n| n == "none") => (Vec::new(), false),
            Some(names) => (
                names
                    .iter()
                    .map(|n| n.parse::<CounterSpec>())
                    .collect::<Result<Vec<_>, _>>()?,
                true,
            ),
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
            model: ModelConfig {
                idle_watts: self.idle_watts,
                max_watts: self.max_watts,
            },
            attribution: AttributionConfig {
                metric: self.metric,
                idle_policy: self.idle_policy,
                idle_watts: self.idle_watts,
            },
            state_dir: Some(crate::idle::state_dir()),
        })
    }

    pub fn filter(&self) -> Filter {
        Filter {
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            cgroups: self.cgroups.clone(),
        }
    }
}

/// A channel that receives once per SIGINT/SIGTERM, so every loop can finish its interval.
pub fn stop_signal() -> Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("cannot install signal handlers")?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Runs a parsed command line; returns the process exit code.
pub fn execute(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Record(args) => {
            let config = RecordConfig {
                interval: args.sensor.interval,
                duration: args.duration,
                granularity: args.granularity,
                filter: args.sensor.filter(),
                collector: args.sensor.collector_config()?,
            };
            let mut sink = JsonLinesSink::create(&args.output)?;
            let stop = stop_signal()?;
            record::record(&config, &mut sink, &stop)?;
            Ok(0)
        }
        Command::Top(args) => {
            let config = tui::TopConfig {
                collector: args.sensor.collector_config()?,
                interval: args.sensor.interval,
                filter: args.sensor.filter(),
                record: args.record.clone(),
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
            // Open the output first: a bad path must fail before CMD runs.
            let mut out: Box<dyn Write> = match &args.output {
                Some(path) => Box::new(std::fs::File::create(path).with_context(|| {
                    format!(
                        "cannot write {}; choose a writable path with -o",
                        path.display()
                    )
                })?),
                None => Box::new(std::io::stdout()),
            };
            let stop = stop_signal()?;
            let report = run::run(&config, &stop)?;
            let text = if args.json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                run::render(&report)
            };
            out.write_all(text.as_bytes())
                .context("writing the report")?;
            Ok(report.exit_code)
        }
        Command::Doctor { root } => {
            let checks = doctor::run_checks(&root);
            for check in &checks {
                println!("{check}");
            }
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
