//! Shared helpers: find the binaries, decide whether BPF tests can run, drive a recording.
#![allow(dead_code)]

use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod injected;

pub const LOAD: &str = env!("CARGO_BIN_EXE_powerapi-load");

/// The powerapi binary under test: `POWERAPI_BIN`, else the workspace's debug build (built
/// once here if `cargo xtask test` has not already).
pub fn powerapi() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("POWERAPI_BIN") {
            return PathBuf::from(bin);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["build", "-q", "-p", "powerapi-user", "--bin", "powerapi"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building powerapi failed");
        root.join("target/debug/powerapi")
    })
}

/// Serialises tests that measure CPU time: two burners on a 2-CPU VM would skew each other.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn bpf_unavailable_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return Some("not running as root".into());
            }
            let out = Command::new(powerapi())
                .arg("doctor")
                .output()
                .expect("powerapi doctor runs");
            if !out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                let fail = text
                    .lines()
                    .filter(|l| l.contains("FAIL"))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Some(format!("powerapi doctor: {fail}"));
            }
            None
        })
        .clone()
}

/// CPU time stolen by the hypervisor and all CPU time, in clock ticks, from `/proc/stat`.
fn steal_and_total() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    (fields.get(7).copied().unwrap_or(0), fields.iter().sum())
}

/// Above this share of stolen CPU time, a failed accuracy bound is the machine's doing.
const NOISY_STEAL: f64 = 0.02;

/// Above this many runnable tasks outside the test on average (a compile, a `stress-ng` beside
/// it), a failed bound may be the machine's doing: with 2 CPUs, half a CPU's worth of other work
/// already delays the test's tasks and its meter. Quiet here: 0.0–0.1.
const BUSY_RUNNABLE: f64 = 0.5;

/// The tasks of this process and of its descendants: what the test itself runs.
fn test_tasks() -> Vec<String> {
    let me = std::process::id();
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The command name may hold spaces and parentheses: fields follow the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut tree = vec![me];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree.iter()
        .flat_map(|pid| {
            fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|t| t.path().join("stat").display().to_string())
        })
        .collect()
}

/// Runnable tasks outside the test right now: `procs_running` (every runnable task, this
/// sampler included) less the test's own runnable tasks.
fn runnable_outside() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let running: f64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("procs_running "))?
        .trim()
        .parse()
        .ok()?;
    let own = test_tasks()
        .iter()
        .filter(|path| {
            fs::read_to_string(path).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('R'))
            })
        })
        .count();
    // The sampler counts itself among the test's tasks.
    Some((running - own as f64).max(0.0))
}

/// Samples [`runnable_outside`] every 100 ms until dropped, for the noise verdict of a failed
/// test; a test that passes never reads it.
struct LoadSampler {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<(f64, u32)>>,
}

impl LoadSampler {
    fn start() -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let (mut sum, mut samples) = (0.0, 0u32);
            // Ends when the sender is dropped.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_millis(100))
            {
                if let Some(n) = runnable_outside() {
                    sum += n;
                    samples += 1;
                }
            }
            (sum, samples)
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Mean runnable tasks outside the test since the start (`None`: no sample).
    fn finish(&mut self) -> Option<(f64, u32)> {
        drop(self.stop.take());
        let (sum, samples) = self.thread.take()?.join().ok()?;
        (samples > 0).then(|| (sum / f64::from(samples), samples))
    }
}

impl Drop for LoadSampler {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Held for the whole of a BPF test: serialises the tests, and when one fails, says whether the
/// hypervisor stole CPU time or other work kept CPUs busy meanwhile enough to explain it —
/// tolerances are not widened for noise; a noisy machine is named as the cause instead.
pub struct BpfGuard {
    _lock: MutexGuard<'static, ()>,
    name: String,
    start: (u64, u64),
    load: LoadSampler,
}

impl Drop for BpfGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let (steal, total) = steal_and_total();
        let (steal, total) = (steal - self.start.0, total.saturating_sub(self.start.1));
        let share = steal as f64 / total.max(1) as f64;
        let outside = self.load.finish();
        if share > NOISY_STEAL {
            eprintln!(
                "{}: machine too noisy: {:.1} % of CPU time was stolen by the hypervisor during the test; rerun it on a quieter machine before suspecting the code",
                self.name,
                share * 100.0
            );
        } else if let Some((runnable, _)) = outside.filter(|(r, _)| *r > BUSY_RUNNABLE) {
            eprintln!(
                "{}: the machine was busy: {runnable:.1} runnable tasks outside the test on average; rerun it on a quieter machine before suspecting the code (a test should hold under load: if it keeps failing only then, its ground truth is not load-proof)",
                self.name,
            );
        } else {
            let runnable = outside.map_or("not sampled".to_string(), |(r, _)| {
                format!("{r:.2} runnable tasks outside the test")
            });
            eprintln!(
                "{}: the machine was quiet ({:.2} % steal, {runnable}): the failure is not noise",
                self.name,
                share * 100.0
            );
        }
    }
}

/// `Some(guard)` when BPF tests can run; otherwise prints why and returns `None` — unless
/// `POWERAPI_REQUIRE_BPF=1`, which turns the skip into a failure (CI sets it).
pub fn bpf_test(name: &str) -> Option<BpfGuard> {
    match bpf_unavailable_reason() {
        None => Some(BpfGuard {
            _lock: exclusive(),
            name: name.to_string(),
            start: steal_and_total(),
            load: LoadSampler::start(),
        }),
        Some(reason) if std::env::var("POWERAPI_REQUIRE_BPF").as_deref() == Ok("1") => {
            panic!("{name}: BPF required (POWERAPI_REQUIRE_BPF=1) but unavailable: {reason}")
        }
        Some(reason) => {
            skip(name, &format!("BPF unavailable: {reason}"));
            None
        }
    }
}

/// Says why a test does not run, on stderr and in `POWERAPI_SKIP_LOG` (where `cargo xtask test`
/// counts skips: the harness itself would report the test as passed).
pub fn skip(name: &str, reason: &str) {
    eprintln!("skipping {name}: {reason}");
    if let Some(log) = std::env::var_os("POWERAPI_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(file, "{name}: {reason}");
        }
    }
}

pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("powerapi-test-{}-{name}", std::process::id()))
}

/// A running `powerapi record`.
pub struct Recording {
    child: Child,
    pub output: PathBuf,
}

impl Recording {
    /// Starts recording and returns once the first interval is written (the sensor is attached).
    pub fn start(name: &str, args: &[&str]) -> Self {
        Self::start_env(name, args, &[])
    }

    /// As [`Recording::start`], with these environment variables set for powerapi.
    pub fn start_env(name: &str, args: &[&str], env: &[(&str, &Path)]) -> Self {
        let output = temp_path(&format!("{name}.jsonl"));
        let _ = fs::remove_file(&output);
        let child = Command::new(powerapi())
            .arg("record")
            .args(args)
            .envs(env.iter().copied())
            .arg("-o")
            .arg(&output)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("powerapi record starts");
        let mut recording = Self { child, output };
        let deadline = Instant::now() + Duration::from_secs(30);
        while fs::read_to_string(&recording.output)
            .map(|t| t.lines().count())
            .unwrap_or(0)
            == 0
        {
            if let Ok(Some(status)) = recording.child.try_wait() {
                panic!("powerapi record exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "powerapi record wrote nothing in 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        recording
    }

    /// Sends `signal`, waits (bounded) for a clean exit, and returns every record.
    pub fn stop_with(mut self, signal: i32) -> Vec<Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("powerapi record did not exit within 15 s of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "powerapi record exited with {status}");
        read_records(&self.output)
    }

    pub fn stop(self) -> Vec<Value> {
        self.stop_with(libc::SIGINT)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.output);
    }
}

/// Parses a JSON-lines file, insisting that it ends with a complete line.
pub fn read_records(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).expect("output file");
    assert!(
        text.ends_with('\n'),
        "output does not end with a complete line"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

pub fn of_type<'a>(records: &'a [Value], kind: &str) -> impl Iterator<Item = &'a Value> {
    records.iter().filter(move |r| r["type"] == kind)
}

pub fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

pub fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// Σ on-CPU ns of the process records of `pid`.
pub fn on_cpu_of(records: &[Value], pid: u32) -> u64 {
    of_type(records, "process")
        .filter(|r| r["pid"] == pid)
        .map(|r| u64_of(&r["on_cpu_ns"]))
        .sum()
}

/// Every interval: busy + idle + lost = capacity exactly, and capacity is where the clock puts
/// it.
///
/// Accounted vs capacity: both are the kernel's bookings of one drain epoch, busy and idle from
/// the task slots, capacity from what each CPU booked, so they agree to the nanosecond however
/// long the drain takes or whoever preempts it (before drain epochs: up to 0.2 % apart in an
/// exit storm, 3.9–8.5 ms with a real-time task preempting the drain).
///
/// Capacity vs the clock, so capacity cannot drift with the bookings: where no CPU changed it
/// is `cpus × duration` up to each CPU's flush delay, which lies inside the drain of each end
/// of the interval (`meter.drain_us`); measured: microseconds.
pub fn assert_conservation(records: &[Value]) {
    let mut checked = 0;
    let mut previous_drain_ns: Option<u64> = None;
    for m in of_type(records, "machine") {
        let drain_ns = u64_of(&m["meter"]["drain_us"]) * 1000;
        let before = previous_drain_ns.replace(drain_ns);
        let seq = &m["interval"]["seq"];
        let busy = u64_of(&m["busy_ns"]);
        let accounted = busy + u64_of(&m["idle_ns"]) + u64_of(&m["losses"]["lost_ns"]);
        let capacity = u64_of(&m["capacity_ns"]);
        assert_eq!(
            accounted, capacity,
            "interval {seq}: busy+idle+lost vs capacity (busy {busy} ns)"
        );
        if m["interval"]["partial"] == true {
            continue;
        }
        if let (Some(before), false) = (before, m["cpus_changed"] == true) {
            let cpus = u64_of(&m["cpus"]);
            let clock = u64_of(&m["interval"]["duration_ns"]) * cpus;
            // +1 µs per CPU: drain_us is rounded down.
            let skew = cpus * (before + drain_ns + 2_000);
            assert!(
                capacity.abs_diff(clock) <= skew,
                "interval {seq}: capacity {capacity} ns vs {cpus} CPUs × duration = {clock} ns, \
                 more apart than the flush delays allow ({skew} ns)"
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "no complete interval to check");
}

/// Runs a child to completion and returns (pid, utime+stime ns) from wait4's rusage.
pub fn run_measured(cmd: &mut Command) -> (u32, u64) {
    let child = cmd.spawn().expect("child starts");
    let pid = child.id();
    (pid, wait_measured(child))
}

/// Waits for a child started by the test and returns its utime+stime ns from wait4's rusage.
pub fn wait_measured(child: Child) -> u64 {
    let pid = child.id();
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; the child has not been reaped (we never call wait on `child`).
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid as i32, "wait4");
    std::mem::forget(child);
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// A free loopback port (bound then released: good enough for a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// GET over plain HTTP/1.1: (status, body). A hand-written client keeps the test crate free of
/// an HTTP stack; it only ever talks to servers this test started.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    // Chunked bodies (Prometheus) keep their chunk sizes; the JSON parse below skips them.
    Some((status, body))
}

/// `run --json`'s report: the JSON object that follows powerapi's notes on stderr.
pub fn json_report(stderr: &str) -> Value {
    let start = if stderr.starts_with('{') {
        0
    } else {
        stderr.find("\n{").expect("a JSON report on stderr") + 1
    };
    serde_json::from_str(&stderr[start..]).expect("JSON report")
}

/// Runs powerapi with `args`: its exit code and stderr.
pub fn powerapi_stderr(args: &[&str]) -> (i32, String) {
    let out = Command::new(powerapi())
        .args(args)
        .output()
        .expect("powerapi runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` every 200 ms until it gives a value; fails the test after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A server or load the test started, killed however the test ends.
pub struct Killed(pub Child);

impl Killed {
    /// `powerapi-load burn ARGS…` in the background (output discarded), killed when dropped.
    pub fn burner(args: &[&str]) -> Self {
        Self(
            Command::new(LOAD)
                .arg("burn")
                .args(args)
                .stdout(Stdio::null())
                .spawn()
                .expect("burner"),
        )
    }
}

/// Runs powerapi with `args` and insists it succeeds (its stderr in the failure).
pub fn powerapi_ok<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> std::process::Output {
    let out = Command::new(powerapi())
        .args(args)
        .output()
        .expect("powerapi runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `powerapi replay TRACE ARGS…`: its records (stdout), or a failure with its stderr.
pub fn replay_records(trace: &Path, args: &[&str]) -> Vec<Value> {
    let trace = trace.display().to_string();
    let out = powerapi_ok(["replay", trace.as_str()].iter().chain(args));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a record"))
        .collect()
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server binary from its Debian package, installed with apt-get when missing and we are root
/// (as `cargo xtask setup` does); `None` where that cannot be done.
pub fn debian_binary(package: &str, bin: &'static str) -> Option<&'static str> {
    if !Path::new(bin).exists() && Path::new("/usr/bin/apt-get").exists() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let _ = Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", package])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status();
        }
    }
    Path::new(bin).exists().then_some(bin)
}

/// Percent-encodes a query string value (RFC 3986 unreserved characters kept).
pub fn url_encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A CSV file's rows, each as column name → cell.
pub fn read_csv(path: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).expect("CSV");
    let header = reader.headers().expect("header").clone();
    reader
        .records()
        .map(|row| {
            let row = row.expect("row");
            header
                .iter()
                .zip(row.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// A `/sys` tree where CPU 0 is on package 0 and CPU 1 on package 1.
pub fn two_package_root(name: &str) -> PathBuf {
    let root = temp_path(name);
    let cpu = root.join("sys/devices/system/cpu");
    for (id, package) in [(0, 0), (1, 1)] {
        let topology = cpu.join(format!("cpu{id}/topology"));
        fs::create_dir_all(&topology).expect("fake topology");
        fs::write(topology.join("physical_package_id"), format!("{package}\n")).expect("write");
    }
    fs::write(cpu.join("online"), "0-1\n").expect("write");
    root
}

/// CLOCK_MONOTONIC in ns, the clock of the records' `start_ns` and `end_ns`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
