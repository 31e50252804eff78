//! `cargo xtask bench overhead|drain`: what the meter costs, as ratios against baselines measured
//! in the same invocation (never wall-clock thresholds).

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::{is_root, run_checked};

#[derive(Subcommand, Clone, Copy)]
pub enum Which {
    /// Added cost per context switch: none vs empty program vs powerapi (default, hash lookup,
    /// 1 and 4 counters) vs a bpftrace script; prints the inside-BPF and wall ratios.
    Overhead {
        /// Ping-pong round trips per measurement.
        #[arg(long, default_value_t = 200_000)]
        round_trips: u32,
        /// Measurements per configuration (the median is reported).
        #[arg(long, default_value_t = 7)]
        repeats: usize,
    },
    /// Drain time and peak RSS of `powerapi record` with many live threads.
    Drain {
        #[arg(long, default_value_t = 10_000)]
        threads: usize,
    },
    /// CPU cost of `powerapi top` (in a pseudo-terminal) over `powerapi record`, with many processes.
    Top {
        #[arg(long, default_value_t = 1_000)]
        processes: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Scrape latency of `powerapi serve --top 100` and its CPU cost over `record`, with many
    /// processes and one scrape every 15 s.
    Serve {
        #[arg(long, default_value_t = 1_000)]
        processes: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 200)]
        scrapes: usize,
    },
    /// CPU cost of three sinks at once (rotated gzip JSON lines, InfluxDB, CSV) over
    /// `record -o /dev/null`, with many processes.
    Sinks {
        #[arg(long, default_value_t = 1_000)]
        processes: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Time per interval of the smartwatts formula's fitting and attribution (synthetic
    /// intervals: no BPF involved).
    Smartwatts {
        #[arg(long, default_value_t = 1_000)]
        tasks: usize,
        #[arg(long, default_value_t = 20)]
        layers: usize,
        #[arg(long, default_value_t = 2_000)]
        intervals: usize,
    },
}

pub fn run(which: Which, binary: &Path) -> Result<()> {
    if let Which::Smartwatts {
        tasks,
        layers,
        intervals,
    } = which
    {
        return run_checked(Command::new(binary).args([
            "bench-smartwatts",
            "--tasks",
            &tasks.to_string(),
            "--layers",
            &layers.to_string(),
            "--intervals",
            &intervals.to_string(),
        ]));
    }
    if !is_root() {
        bail!("benchmarks attach BPF programs: run `cargo xtask bench` as root");
    }
    match which {
        Which::Overhead {
            round_trips,
            repeats,
        } => overhead(binary, round_trips, repeats),
        Which::Drain { threads } => drain(binary, threads),
        Which::Top { processes, seconds } => top(binary, processes, seconds),
        Which::Serve {
            processes,
            seconds,
            scrapes,
        } => serve(binary, processes, seconds, scrapes),
        Which::Sinks { processes, seconds } => sinks(binary, processes, seconds),
        Which::Smartwatts { .. } => Ok(()),
    }
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Two threads on one CPU bouncing a byte through two pipes (what `perf bench sched pipe` does):
/// every round trip is two context switches. Returns ns per switch.
fn ping_pong(round_trips: u32) -> Result<f64> {
    let (mut a_read, mut a_write) = std::io::pipe()?;
    let (mut b_read, mut b_write) = std::io::pipe()?;
    use std::io::Write;
    let partner = std::thread::spawn(move || -> std::io::Result<()> {
        pin(0);
        let mut byte = [0u8; 1];
        for _ in 0..round_trips {
            a_read.read_exact(&mut byte)?;
            b_write.write_all(&byte)?;
        }
        Ok(())
    });
    pin(0);
    let mut byte = [1u8; 1];
    let began = Instant::now();
    for _ in 0..round_trips {
        a_write.write_all(&byte)?;
        b_read.read_exact(&mut byte)?;
    }
    let elapsed = began.elapsed();
    partner
        .join()
        .map_err(|_| anyhow::anyhow!("ping-pong partner panicked"))??;
    Ok(elapsed.as_nanos() as f64 / (2.0 * f64::from(round_trips)))
}

/// Starts a tracer and waits until its stdout/stderr shows `ready` (or the file it writes is non-empty).
fn start_tracer(mut cmd: Command, ready: &str) -> Result<Child> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) if line.contains(ready) => {
                // Keep draining so the tracer never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines.by_ref() {});
                return Ok(child);
            }
            Some(Ok(_)) => continue,
            _ => break,
        }
    }
    let _ = child.kill();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    bail!("{cmd:?} did not become ready: {}", err.trim())
}

fn stop(mut child: Child) {
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// What a user would otherwise write: per-task on-CPU time from the sched_switch tracepoint
/// (bpftrace 0.17, Debian 12's, has no raw tracepoints).
const BPFTRACE_SCRIPT: &str = "tracepoint:sched:sched_switch { if (@start[cpu]) { @oncpu[pid, tid] = sum(nsecs - @start[cpu]); } @start[cpu] = nsecs; } interval:s:1 { print(\"tick\"); }";

fn ensure_bpftrace() -> Result<()> {
    if Command::new("bpftrace").arg("--version").output().is_err() {
        println!("xtask bench: apt-get install -y bpftrace");
        run_checked(
            Command::new("apt-get")
                .args(["install", "-y", "bpftrace"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    // Classic tracepoints need tracefs, which a fresh machine does not mount (powerapi does not need it).
    if !Path::new("/sys/kernel/tracing/events").exists() {
        println!("xtask bench: mount -t tracefs nodev /sys/kernel/tracing");
        run_checked(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))?;
    }
    Ok(())
}

/// Cumulative (run time, run count) of every loaded BPF program, by id.
fn program_stats() -> std::collections::HashMap<u32, (u64, u64)> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), (p.run_time().as_nanos() as u64, p.run_count())))
        .collect()
}

/// ns per switch spent inside the programs that ran on (nearly) every switch of the ping-pong:
/// the kernel's own accounting (`kernel.bpf_stats_enabled`), immune to VM noise but blind to
/// the dispatch cost around a program.
fn program_ns_per_switch(
    before: &std::collections::HashMap<u32, (u64, u64)>,
    after: &std::collections::HashMap<u32, (u64, u64)>,
    switches: u64,
) -> f64 {
    let time: u64 = after
        .iter()
        .filter_map(|(id, (t, c))| {
            let (t0, c0) = before.get(id).copied().unwrap_or((0, 0));
            (c.saturating_sub(c0) >= switches / 2).then(|| t.saturating_sub(t0))
        })
        .sum();
    time as f64 / switches as f64
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Restores `kernel.bpf_stats_enabled` as it was, however the benchmark ends.
struct StatsGuard(String);

impl StatsGuard {
    fn save() -> Self {
        let old = fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
        Self(old.trim().to_string())
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.0);
    }
}

fn set_bpf_stats(on: bool) -> Result<()> {
    fs::write(BPF_STATS, if on { "1" } else { "0" })
        .context("cannot write kernel.bpf_stats_enabled")
}

fn overhead(binary: &Path, round_trips: u32, repeats: usize) -> Result<()> {
    ensure_bpftrace()?;
    let _stats = StatsGuard::save();
    // "powerapi" is the default (time-only, timed by the run queue's clock through `tp_btf`,
    // the CPU's cache of recent threads, then task storage); the others isolate one choice
    // each: a program that only reads the clock helper, the default's raw-tracepoint build
    // timed by that helper on every switch, the path without the cache (task storage, clock
    // helper), the hash lookup without either, and the cost of counter reads (the software events stand in for hardware
    // counters, which this VM lacks; a read costs the same helper call either way).
    let configs = [
        "none",
        "empty program",
        "clock read",
        "powerapi",
        "clock helper",
        "no cache",
        "hash lookup",
        "1 counter",
        "4 counters",
        "bpftrace",
    ];
    let record = |extra: &[&str]| -> Result<Child> {
        let mut cmd = Command::new(binary);
        cmd.args(["record", "--interval", "1s", "-o", "-"])
            .args(extra);
        start_tracer(cmd, "\"machine\"")
    };
    let mut samples = vec![Vec::new(); configs.len()];
    let mut prog_ns = vec![Vec::new(); configs.len()];
    set_bpf_stats(false)?;
    let _ = ping_pong(round_trips / 10)?; // warm-up
    // Configurations are interleaved round by round so that drift in the VM hits all alike.
    for round in 0..repeats {
        for (i, name) in configs.iter().enumerate() {
            let tracer = match *name {
                "empty program" | "clock read" => {
                    let mut cmd = Command::new(binary);
                    cmd.arg("bench-noop");
                    if *name == "clock read" {
                        cmd.arg("--clock");
                    }
                    Some(start_tracer(cmd, "attached")?)
                }
                "powerapi" => Some(record(&["--counters", "none"])?),
                "clock helper" => Some(record(&["--counters", "none", "--switch-clock", "ktime"])?),
                "no cache" => Some(record(&["--counters", "none", "--recent-cache", "false"])?),
                "hash lookup" => Some(record(&[
                    "--counters",
                    "none",
                    "--recent-cache",
                    "false",
                    "--slot-lookup",
                    "hash",
                ])?),
                "1 counter" => Some(record(&["--counters", "cpu-clock"])?),
                "4 counters" => Some(record(&[
                    "--counters",
                    "cpu-clock,page-faults,major-faults,cpu-migrations",
                ])?),
                "bpftrace" => {
                    let mut cmd = Command::new("bpftrace");
                    cmd.args(["-e", BPFTRACE_SCRIPT]);
                    Some(start_tracer(cmd, "Attaching")?)
                }
                _ => None,
            };
            // Wall time with the kernel's program statistics off, as in production (they add
            // two clock reads around every program run); then the same with them on, for the
            // time spent inside the programs.
            let ns = ping_pong(round_trips);
            set_bpf_stats(true)?;
            let before = program_stats();
            let counted = ping_pong(round_trips);
            let after = program_stats();
            set_bpf_stats(false)?;
            if let Some(child) = tracer {
                stop(child);
            }
            let (ns, _) = (ns?, counted?);
            let in_prog = program_ns_per_switch(&before, &after, 2 * u64::from(round_trips));
            samples[i].push(ns);
            prog_ns[i].push(in_prog);
            eprintln!(
                "round {}/{repeats}: {name:<14} {ns:8.1} ns/switch ({in_prog:6.1} ns inside BPF programs)",
                round + 1
            );
        }
    }
    let best: Vec<f64> = samples
        .iter()
        .map(|s| s.iter().copied().fold(f64::INFINITY, f64::min))
        .collect();
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let in_prog: Vec<f64> = prog_ns.iter_mut().map(|s| median(s)).collect();
    println!(
        "\nping-pong pinned to CPU 0, {round_trips} round trips × {repeats} rounds (interleaved), ns per context switch"
    );
    println!("(wall: bpf_stats off; inside BPF: a second run with kernel.bpf_stats_enabled=1):");
    println!(
        "  {:<14} {:>9} {:>12} {:>9} {:>22}",
        "config", "best", "added(best)", "median", "inside BPF (median)"
    );
    for (i, name) in configs.iter().enumerate() {
        println!(
            "  {name:<14} {:9.1} {:12.1} {:9.1} {:22.1}",
            best[i],
            best[i] - best[0],
            medians[i],
            in_prog[i]
        );
    }
    let index = |name: &str| configs.iter().position(|c| *c == name).unwrap_or(0);
    let (empty, clock, powerapi, bpftrace) = (
        index("empty program"),
        index("clock read"),
        index("powerapi"),
        index("bpftrace"),
    );
    let added = |i: usize| (best[i] - best[0]).max(1.0);
    println!(
        "powerapi inside BPF / empty program inside BPF = {:.2}  (target ≤ 2)",
        in_prog[powerapi] / in_prog[empty].max(1.0)
    );
    println!(
        "powerapi inside BPF / clock read inside BPF    = {:.2}  (below 1: no clock helper call per switch)",
        in_prog[powerapi] / in_prog[clock].max(1.0)
    );
    println!(
        "powerapi added / bpftrace added                = {:.3} (target ≤ 0.12)",
        added(powerapi) / added(bpftrace)
    );
    println!(
        "powerapi added / empty program added           = {:.2}  (target ≤ 2.5)",
        added(powerapi) / added(empty)
    );
    println!(
        "empty program added / bpftrace added           = {:.3} (what attaching anything costs)",
        added(empty) / added(bpftrace)
    );
    for name in [
        "clock read",
        "clock helper",
        "no cache",
        "hash lookup",
        "1 counter",
        "4 counters",
    ] {
        let i = index(name);
        println!(
            "{name:<12} inside BPF: {:+.1} ns per switch against powerapi's default",
            in_prog[i] - in_prog[powerapi]
        );
    }
    Ok(())
}

/// Keeps `count` threads alive, each waking once a second so all of them run in every interval.
pub fn spawn_threads(count: usize) {
    let mut handles = Vec::with_capacity(count);
    for _ in 0..count {
        let spawned = std::thread::Builder::new().stack_size(64 * 1024).spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("spawned {} threads, then: {e}", handles.len());
                break;
            }
        }
    }
    println!("spawned {}", handles.len());
    loop {
        std::thread::park();
    }
}

fn drain(binary: &Path, threads: usize) -> Result<()> {
    let xtask = std::env::current_exe()?;
    let mut load_cmd = Command::new(&xtask);
    load_cmd.args(["spawn-threads", &threads.to_string()]);
    let load = start_tracer(load_cmd, "spawned")?;
    let out: PathBuf =
        std::env::temp_dir().join(format!("powerapi-drain-{}.jsonl", std::process::id()));
    let status = Command::new(binary)
        .args(["record", "--interval", "1s", "--duration", "8s", "-o"])
        .arg(&out)
        .status()?;
    stop(load);
    if !status.success() {
        bail!("powerapi record failed: {status}");
    }
    let text = fs::read_to_string(&out)?;
    let _ = fs::remove_file(&out);
    let mut drains = Vec::new();
    let (mut peak_rss, mut cpu, mut max_threads) = (0u64, Vec::new(), 0u64);
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line)?;
        if record["type"] != "machine" || record["interval"]["partial"] == true {
            continue;
        }
        drains.push(record["meter"]["drain_us"].as_f64().unwrap_or(0.0) / 1000.0);
        cpu.push(record["meter"]["cpu_ns"].as_f64().unwrap_or(0.0) / 1e6);
        peak_rss = peak_rss.max(record["meter"]["peak_rss_kib"].as_u64().unwrap_or(0));
        max_threads = max_threads.max(record["threads"].as_u64().unwrap_or(0));
    }
    if drains.is_empty() {
        bail!("no complete interval recorded");
    }
    let worst = drains.iter().copied().fold(0.0, f64::max);
    println!("threads live: {threads}, threads per interval (max): {max_threads}");
    println!(
        "drain per interval: median {:.2} ms, worst {:.2} ms (target ≤ 10 ms)",
        median(&mut drains),
        worst
    );
    println!(
        "meter CPU per 1 s interval: median {:.1} ms",
        median(&mut cpu)
    );
    println!(
        "peak RSS: {:.1} MiB (target ≤ 50 MiB)",
        peak_rss as f64 / 1024.0
    );
    Ok(())
}

/// Keeps `count` processes alive, each waking once a second (so all appear in every interval).
pub fn spawn_processes(count: usize) {
    let mut children = Vec::with_capacity(count);
    for _ in 0..count {
        // SAFETY: called before this process starts any thread; the child only sleeps and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                // SAFETY: getppid has no preconditions; exit when the parent is gone.
                if unsafe { libc::getppid() } == 1 {
                    // SAFETY: leave without running the parent's handlers.
                    unsafe { libc::_exit(0) };
                }
            }
        }
        if pid > 0 {
            children.push(pid);
        }
    }
    println!("spawned {}", children.len());
    loop {
        std::thread::park();
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("bad /proc/pid/stat")?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// Runs `cmd` for `seconds` after a warm-up and returns the CPU it used meanwhile.
fn measure_cpu(mut cmd: Command, seconds: u64) -> Result<f64> {
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    std::thread::sleep(Duration::from_secs(3));
    let start = cpu_seconds(child.id())?;
    std::thread::sleep(Duration::from_secs(seconds));
    let end = cpu_seconds(child.id())?;
    stop(child);
    Ok(end - start)
}

/// Starts `processes` sleeping processes and measures `record`'s CPU among them: the baseline
/// `top` and `serve` are compared with. Returns the load (to stop) and that CPU time.
fn processes_and_record_cpu(binary: &Path, processes: usize, seconds: u64) -> Result<(Child, f64)> {
    let xtask = std::env::current_exe()?;
    let mut load_cmd = Command::new(&xtask);
    load_cmd.args(["spawn-processes", &processes.to_string()]);
    let load = start_tracer(load_cmd, "spawned")?;
    let mut record = Command::new(binary);
    record
        .args(["record", "--interval", "1s", "-o", "/dev/null"])
        .stderr(Stdio::null());
    let record_cpu = measure_cpu(record, seconds)?;
    Ok((load, record_cpu))
}

fn top(binary: &Path, processes: usize, seconds: u64) -> Result<()> {
    let (load, record_cpu) = processes_and_record_cpu(binary, processes, seconds)?;

    // top needs a terminal: a pseudo-terminal whose output a thread drains.
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 50,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: valid out pointers.
    if unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    } != 0
    {
        bail!("openpty failed: {}", std::io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: openpty returned two descriptors we now own.
    let (mut master, slave) = unsafe {
        (
            fs::File::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while matches!(master.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut top = Command::new(binary);
    top.args(["top", "--interval", "1s"])
        .env("TERM", "xterm-256color")
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    let top_cpu = measure_cpu(top, seconds)?;
    stop(load);

    let percent = |cpu: f64| cpu / seconds as f64 * 100.0;
    println!("{processes} processes, 1 s refresh, {seconds} s measured (after 3 s warm-up):");
    println!(
        "  powerapi record (sensor, drain, attribution): {:.2}% of one CPU",
        percent(record_cpu)
    );
    println!(
        "  powerapi top (the same + UI):                 {:.2}% of one CPU",
        percent(top_cpu)
    );
    println!(
        "top's cost on top of the sensor: {:.2}% of one CPU (target ≤ 2%)",
        percent(top_cpu - record_cpu)
    );
    Ok(())
}

/// One GET /metrics on loopback: the time to the last byte.
fn scrape(port: u16) -> Result<Duration> {
    use std::io::Write;
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.1 200") {
        bail!(
            "scrape failed: {}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
    }
    Ok(started.elapsed())
}

fn serve(binary: &Path, processes: usize, seconds: u64, scrapes: usize) -> Result<()> {
    let (load, record_cpu) = processes_and_record_cpu(binary, processes, seconds)?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(binary)
        .args(["serve", "--interval", "1s", "--top", "100"])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape(port).is_err() {
        if Instant::now() > deadline {
            stop(child);
            bail!("powerapi serve never answered");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // CPU at one scrape per 15 s, as Prometheus's default.
    let start = cpu_seconds(child.id())?;
    let measured = Instant::now();
    let mut next_scrape = Instant::now();
    while measured.elapsed() < Duration::from_secs(seconds) {
        if Instant::now() >= next_scrape {
            scrape(port)?;
            next_scrape += Duration::from_secs(15);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let serve_cpu = cpu_seconds(child.id())? - start;
    // Then latency: back-to-back scrapes.
    let mut latencies: Vec<f64> = (0..scrapes)
        .map(|_| scrape(port).map(|d| d.as_secs_f64() * 1e3))
        .collect::<Result<_>>()?;
    stop(child);
    stop(load);
    latencies.sort_by(f64::total_cmp);
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let percent = |cpu: f64| cpu / seconds as f64 * 100.0;
    println!("{processes} processes, --top 100, 1 s interval, {seconds} s measured:");
    println!("  powerapi record: {:.2}% of one CPU", percent(record_cpu));
    println!(
        "  powerapi serve (one scrape per 15 s): {:.2}% of one CPU",
        percent(serve_cpu)
    );
    println!(
        "serve's cost over record: {:.2}% of one CPU (target ≤ 0.5%)",
        percent(serve_cpu - record_cpu)
    );
    println!(
        "scrape latency over {scrapes} scrapes: p50 {:.2} ms, p99 {:.2} ms (target p99 ≤ 5 ms)",
        p(0.5),
        p(0.99)
    );
    Ok(())
}

/// Starts Debian's `influxd` on a free port with everything under `dir`, with database
/// `powerapi`; returns it and its HTTP port.
fn start_influxd(dir: &Path) -> Result<(Child, u16)> {
    let free = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (port, rpc) = (free()?, free()?);
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let d = dir.display();
    fs::write(
        dir.join("influxdb.conf"),
        format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n[meta]\n  dir = \"{d}/meta\"\n[data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n[http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n[monitor]\n  store-enabled = false\n"
        ),
    )?;
    let child = Command::new("/usr/bin/influxd")
        .arg("-config")
        .arg(dir.join("influxdb.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context(
            "cannot start /usr/bin/influxd: run `cargo xtask setup` (installs Debian's influxdb)",
        )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        use std::io::Write;
        let body = "q=CREATE+DATABASE+powerapi";
        let created = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            write!(
                s,
                "POST /query HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply.starts_with("HTTP/1.1 200"))
        });
        if matches!(created, Ok(true)) {
            return Ok((child, port));
        }
        if Instant::now() > deadline {
            stop(child);
            bail!("influxd did not answer on port {port}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sinks(binary: &Path, processes: usize, seconds: u64) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("powerapi-bench-sinks-{}", std::process::id()));
    let (influxd, port) = start_influxd(&dir.join("influxdb"))?;
    let (load, record_cpu) = processes_and_record_cpu(binary, processes, seconds)?;
    let mut three = Command::new(binary);
    three
        .args(["record", "--interval", "1s", "--force", "-o"])
        .arg(dir.join("trace.jsonl"))
        .args(["--rotate-size", "1M", "--compress", "--keep", "5", "--sink"])
        .arg(format!("influxdb:http://127.0.0.1:{port}/powerapi"))
        .arg("--sink")
        .arg(format!("csv:{}", dir.join("power.csv").display()))
        .stderr(Stdio::null());
    let three_cpu = measure_cpu(three, seconds)?;
    stop(load);
    stop(influxd);
    let rotated = fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".gz"))
        .count();
    let _ = fs::remove_dir_all(&dir);
    let percent = |cpu: f64| cpu / seconds as f64 * 100.0;
    println!("{processes} processes, 1 s interval, {seconds} s measured (after 3 s warm-up):");
    println!(
        "  powerapi record -o /dev/null: {:.2}% of one CPU",
        percent(record_cpu)
    );
    println!(
        "  powerapi record, JSON lines and CSV rotated at 1 MiB and gzipped ({rotated} files kept, --keep 5 each) + InfluxDB: {:.2}% of one CPU",
        percent(three_cpu)
    );
    println!(
        "the three sinks' cost: {:.2}% of one CPU (target ≤ 1%)",
        percent(three_cpu - record_cpu)
    );
    Ok(())
}
