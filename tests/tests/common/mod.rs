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

/// Held for the whole of a BPF test: serialises the tests, and when one fails, says whether the
/// hypervisor stole enough CPU time meanwhile to explain it — tolerances are not widened for
/// noise; a noisy machine is named as the cause instead.
pub struct BpfGuard {
    _lock: MutexGuard<'static, ()>,
    name: String,
    start: (u64, u64),
}

impl Drop for BpfGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let (steal, total) = steal_and_total();
        let (steal, total) = (steal - self.start.0, total.saturating_sub(self.start.1));
        let share = steal as f64 / total.max(1) as f64;
        if share > NOISY_STEAL {
            eprintln!(
                "{}: machine too noisy: {:.1} % of CPU time was stolen by the hypervisor during the test; rerun it on a quieter machine before suspecting the code",
                self.name,
                share * 100.0
            );
        } else {
            eprintln!(
                "{}: the machine was quiet ({:.2} % steal): the failure is not noise",
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

/// Every complete interval: busy + idle + lost = capacity within 0.5%, and capacity itself
/// is where the clock puts it.
///
/// Accounted vs capacity (both from the kernel's bookings, but capacity from each CPU's flush
/// and offline instants, busy/idle from the task slots): measured here 0 ns when tasks do not die
/// during the drain; up to 0.2% in the 300-exit storm with the ring full, where a task dying
/// between the flush and the slot scan has its last slice (after the boundary) counted in the
/// interval being read. The old 1% hid a 0.9% inflated capacity. Where the drains at the
/// interval's two ends are wide (a hotplug stalls them), their width bounds it instead (below).
///
/// Capacity vs the clock, so capacity cannot drift with the bookings: where no CPU changed it
/// is `cpus × duration` up to each CPU's flush delay, which lies inside the drain of each end
/// of the interval (`meter.drain_us`); measured: microseconds, up to 8.5 ms on the interval a
/// CPU came back in (hotplug test).
pub fn assert_conservation(records: &[Value]) {
    let mut checked = 0;
    let mut previous_drain_ns: Option<u64> = None;
    for m in of_type(records, "machine") {
        let drain_ns = u64_of(&m["meter"]["drain_us"]) * 1000;
        let before = previous_drain_ns.replace(drain_ns);
        if m["interval"]["partial"] == true {
            continue;
        }
        let seq = &m["interval"]["seq"];
        let accounted =
            u64_of(&m["busy_ns"]) + u64_of(&m["idle_ns"]) + u64_of(&m["losses"]["lost_ns"]);
        let capacity = u64_of(&m["capacity_ns"]);
        let error = (accounted as f64 - capacity as f64).abs() / capacity as f64;
        // Capacity runs from mark to mark, read right after each flush; the slots are read
        // after the marks. A slice booked between the two reads lands in this interval's busy
        // time but the next interval's capacity, so each end of an interval may be off by up to
        // one drain on each CPU (a slice booked there began at the flush at the earliest). Small
        // in steady state (~0.4 ms drains), large while a CPU goes offline or online:
        // stop_machine and the hotplug lock stall the drain (measured: 25 ms drains, 3.3 ms
        // over in the interval of the change, 6.6 ms under in the one after it). One CPU more
        // than `cpus`: a CPU that came or went books too.
        let cpus = u64_of(&m["cpus"]) + 1;
        let drain_bound =
            (cpus * (before.unwrap_or(drain_ns) + drain_ns + 2_000)) as f64 / capacity as f64;
        assert!(
            error <= drain_bound.max(0.005),
            "interval {seq}: busy+idle+lost {accounted} vs capacity {capacity} ({:.4}%), drains {before:?} and {drain_ns} ns, cpus_changed {}",
            error * 100.0,
            m["cpus_changed"]
        );
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
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; the child has not been reaped (we never call wait on `child`).
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid as i32, "wait4");
    std::mem::forget(child);
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    (pid, ns(usage.ru_utime) + ns(usage.ru_stime))
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
