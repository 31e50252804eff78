//! A powercap-shaped tree whose counter a thread advances from a known model of the machine's
//! power (idle W + active W × the busy share of its CPUs, from /proc/stat), and issue 19's
//! reference workload, whose true energy under that model each part's cgroup tells.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use super::*;

/// The model most tests inject: idle and active (all CPUs busy) package power.
pub const IDLE_W: f64 = 10.0;
/// See [`IDLE_W`].
pub const ACTIVE_W: f64 = 20.0;
/// Small on purpose: the counter wraps every couple of seconds during the test.
pub const RANGE_UJ: u64 = 30_000_000;

/// (idle seconds summed over CPUs, number of CPUs) from /proc/stat. With NOHZ the kernel keeps
/// idle time exactly (shown in 10 ms units), unlike user/system time, which is sampled by ticks:
/// the injected model uses busy = elapsed × CPUs − idle, so its error does not grow with time.
pub fn proc_stat_idle() -> (f64, f64) {
    let text = fs::read_to_string("/proc/stat").expect("/proc/stat");
    let fields: Vec<f64> = text
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let cpus = text
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count() as f64;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ((fields[3] + fields[4]) / hz, cpus)
}

/// Writes `intel-rapl:0` (package-0) under a new directory and keeps advancing its `energy_uj`
/// by (idle W + active W × busy fraction) × dt until dropped.
pub struct Injector {
    pub dir: PathBuf,
    stop: Arc<AtomicBool>,
    pub wraps: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Injector {
    /// [`IDLE_W`] + [`ACTIVE_W`] × busy.
    pub fn start(name: &str) -> Self {
        Self::start_in(temp_path(name))
    }

    /// `idle_w` + `active_w` × busy, in a counter that wraps at 1 kJ: a reading advanced
    /// by more than the range between two reads is taken for less (at 38 W, 30 J wrapped twice
    /// in some 1 s intervals, which then read 6 W).
    pub fn start_model(name: &str, idle_w: f64, active_w: f64) -> Self {
        Self::start_model_in(temp_path(name), idle_w, active_w, 1_000_000_000)
    }

    /// Writes the zone under `dir` (a `/sys/class/powercap`-shaped directory).
    pub fn start_in(dir: PathBuf) -> Self {
        Self::start_model_in(dir, IDLE_W, ACTIVE_W, RANGE_UJ)
    }

    fn start_model_in(dir: PathBuf, idle_w: f64, active_w: f64, range_uj: u64) -> Self {
        let zone = dir.join("intel-rapl:0");
        fs::create_dir_all(&zone).expect("mkdir zone");
        fs::write(zone.join("name"), "package-0\n").expect("name");
        fs::write(zone.join("max_energy_range_uj"), format!("{range_uj}\n")).expect("range");
        fs::write(zone.join("energy_uj"), "0\n").expect("energy");
        let stop = Arc::new(AtomicBool::new(false));
        let wraps = Arc::new(AtomicU64::new(0));
        let (stop2, wraps2) = (stop.clone(), wraps.clone());
        let thread = std::thread::spawn(move || {
            // Real-time, so that the counter advances on time when other jobs load every CPU: a
            // write held back by a busy run queue moved energy from one interval to the next,
            // to other processes (a part charged 123 % while compilers ran beside it).
            let param = libc::sched_param { sched_priority: 10 };
            // SAFETY: a valid sched_param; pid 0 is this thread. Failure leaves it as it was.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
            let (idle0, cpus) = proc_stat_idle();
            let t0 = Instant::now();
            let mut energy_uj = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                // Every 5 ms: a reading is at most 5 ms × 30 W = 0.15 J stale (20 ms made a
                // 1 s baseline ±0.4 W off).
                std::thread::sleep(Duration::from_millis(5));
                let (idle, _) = proc_stat_idle();
                let elapsed = t0.elapsed().as_secs_f64();
                // E(t) = P_idle × t + P_active × busy CPU-seconds / CPUs, kept monotonic.
                let busy_cpu_s = (elapsed * cpus - (idle - idle0)).max(0.0);
                let total = ((idle_w * elapsed + active_w * busy_cpu_s / cpus) * 1e6) as u64;
                let before = energy_uj % range_uj;
                energy_uj = energy_uj.max(total);
                let value = energy_uj % range_uj;
                if value < before {
                    wraps2.fetch_add(1, Ordering::Relaxed);
                }
                // Write-and-rename so a reader never sees a half-written number.
                let tmp = zone.join("energy_uj.tmp");
                fs::write(&tmp, format!("{value}\n")).expect("write energy");
                fs::rename(&tmp, zone.join("energy_uj")).expect("rename energy");
            }
        });
        Self {
            dir,
            stop,
            wraps,
            thread: Some(thread),
        }
    }
}

impl Injector {
    /// `record` at 500 ms intervals, time-only, reading this injector's tree, plus `extra`.
    pub fn record(&self, name: &str, extra: &[&str]) -> Recording {
        let source = format!("powercap-dir:{}", self.dir.display());
        let mut args = vec![
            "--interval",
            "500ms",
            "--counters",
            "none",
            "--energy-source",
        ];
        args.push(&source);
        args.extend_from_slice(extra);
        Recording::start(name, &args)
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Issue 19's reference machine: 7 W idle, 31 W more with every CPU busy.
pub const REFERENCE_MODEL: (f64, f64) = (7.0, 31.0);
/// How far from its true energy a part of the reference workload may be charged: the issue's
/// target. Measured on the 2-vCPU test VM over 18 runs of record and top (quiet, with a burner
/// on one CPU, with other jobs compiling or testing): 97.0–100.8 %, 98.8–100.8 % in the quiet
/// ones; the 10th percentile gave 93.7–96.3 % here, 91–93 % in the issue.
pub const REFERENCE_TOLERANCE: f64 = 0.03;
/// How far from 7 W the intercept may be while the workload runs. Measured: 7.06–7.26 W on a
/// quiet machine, up to 7.54 W while another engineer's tests ran beside it (the sensor books
/// interrupt time on an idle CPU to the idle task, /proc/stat as busy, so the injected line sits
/// ~1 % of busy or more above the sensor's); extrapolated 6.97–7.6 W. The 10th percentile (7.8–
/// 8.6 W) is refused by its `idle_method` whatever its value.
pub const REFERENCE_IDLE_TOLERANCE_W: f64 = 0.75;

/// A machine at least this busy in every interval has shown no power below its load.
const SATURATED: f64 = 0.9;

/// The cgroup v2 hierarchy: its own mount beside v1 controllers, or the unified one.
pub fn cgroup2_root() -> &'static Path {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
        .expect("a cgroup v2 hierarchy is mounted")
}

/// CPU time the kernel charged the cgroup at `dir` (`cpu.stat` `usage_usec`), in ns.
pub fn cpu_stat_usage_ns(dir: &Path) -> u64 {
    fs::read_to_string(dir.join("cpu.stat"))
        .expect("cpu.stat")
        .lines()
        .find_map(|l| {
            l.strip_prefix("usage_usec ")
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .expect("usage_usec")
        * 1000
}

/// One part of the reference workload, run in a cgroup of its own.
pub struct Part {
    pub name: &'static str,
    /// The cgroup's inode: the `cgroup.id` of the part's process records.
    pub cgroup_id: u64,
    /// What the kernel charged the cgroup (`cpu.stat`), in ns: the part's truth.
    pub cpu_ns: u64,
}

/// Issue 19's reference workload, one part after the other, each in a new cgroup: a 3 s shell
/// loop spawning `date` (~2,400 processes on the test VM), then 280 short processes (5 ms of
/// CPU each).
pub fn reference_workload(tag: &str) -> Vec<Part> {
    let parts = [
        (
            "date loop",
            "end=$(($(date +%s%N) + 3000000000)); \
             while [ \"$(date +%s%N)\" -lt \"$end\" ]; do date > /dev/null; done"
                .to_string(),
        ),
        (
            "process storm",
            format!("exec {LOAD} storm 280 5 > /dev/null"),
        ),
    ];
    parts
        .into_iter()
        .enumerate()
        .map(|(i, (name, body))| {
            let dir =
                cgroup2_root().join(format!("powerapi-test-{}-{tag}-{i}", std::process::id()));
            fs::create_dir_all(&dir).expect("mkdir cgroup");
            let cgroup_id =
                std::os::unix::fs::MetadataExt::ino(&fs::metadata(&dir).expect("cgroup"));
            // The shell moves itself in before it starts any child, so all the part's time is
            // charged there.
            let script = format!("echo $$ > {}/cgroup.procs && {body}", dir.display());
            let status = Command::new("sh")
                .args(["-c", &script])
                .status()
                .expect("sh runs");
            let cpu_ns = cpu_stat_usage_ns(&dir);
            let _ = fs::remove_dir(&dir);
            assert!(status.success(), "{name}: {status}");
            Part {
                name,
                cgroup_id,
                cpu_ns,
            }
        })
        .collect()
}

/// Σ package joules of the process records in `part`'s cgroup, and the seqs of their intervals.
fn charged(records: &[Value], part: &Part) -> (f64, Vec<u64>) {
    let mine: Vec<&Value> = of_type(records, "process")
        .filter(|r| r["cgroup"]["id"] == part.cgroup_id)
        .collect();
    let joules = mine
        .iter()
        .map(|r| f64_of(&r["energy"]["joules"]["package"]))
        .sum();
    let seqs = mine.iter().map(|r| u64_of(&r["interval"]["seq"])).collect();
    (joules, seqs)
}

/// Every part was charged its true energy under the injected model — `active_w` × its
/// CPU-seconds / CPUs, nothing of idle — within `tolerance` (a share); and in the intervals it
/// ran, the idle power was this run's own fit: its intercept within `idle_tolerance_w` of
/// `idle_w`, or (no quiet interval) an extrapolation.
pub fn assert_reference_workload_charged(
    what: &str,
    records: &[Value],
    parts: &[Part],
    (idle_w, active_w): (f64, f64),
    tolerance: f64,
    idle_tolerance_w: f64,
) {
    let cpus = proc_stat_idle().1;
    for m in of_type(records, "machine") {
        let d = &m["energy"]["domains"][0];
        eprintln!(
            "{what}: interval {}: busy {:.3}, {:.3} W, idle {} W ({}, {})",
            m["interval"]["seq"],
            f64_of(&m["busy_ns"]) / f64_of(&m["capacity_ns"]).max(1.0),
            f64_of(&d["power_w"]),
            d["idle_w"],
            d["idle_source"],
            d["idle_method"]
        );
    }
    let mut failures = Vec::new();
    for part in parts {
        let (joules, seqs) = charged(records, part);
        let truth = active_w * part.cpu_ns as f64 / 1e9 / cpus;
        let ratio = joules / truth;
        let processes = of_type(records, "process")
            .filter(|r| r["cgroup"]["id"] == part.cgroup_id)
            .filter_map(|r| r["pid"].as_u64())
            .collect::<std::collections::HashSet<_>>()
            .len();
        let idle: Vec<(f64, String, String)> = of_type(records, "machine")
            .filter(|m| seqs.contains(&u64_of(&m["interval"]["seq"])))
            .flat_map(|m| {
                m["energy"]["domains"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|d| {
                (
                    f64_of(&d["idle_w"]),
                    d["idle_source"].to_string(),
                    d["idle_method"].to_string(),
                )
            })
            .collect();
        eprintln!(
            "{what}: {}: {joules:.3} J charged, {truth:.3} J true ({:.1} %), {processes} processes, {:.3} s CPU; idle {:?}",
            part.name,
            ratio * 100.0,
            part.cpu_ns as f64 / 1e9,
            idle.iter()
                .map(|(w, s, m)| format!("{w:.3} W {s} {m}"))
                .collect::<Vec<_>>()
        );
        if (ratio - 1.0).abs() > tolerance {
            failures.push(format!(
                "{}: {:.1} % of its true energy",
                part.name,
                ratio * 100.0
            ));
        }
        for (w, source, method) in &idle {
            // Extrapolated when other jobs keep every interval over 20 % busy: read far from
            // its data, so noise moves it more (measured 7.1–7.6 W), and the record says it is
            // weak; then only the parts' energy, above, holds it to account.
            let off = match method.as_str() {
                "\"intercept\"" => (w - idle_w).abs() > idle_tolerance_w,
                "\"extrapolated\"" => false,
                _ => true,
            };
            if source != "\"online\"" || off {
                failures.push(format!(
                    "{}: idle {w:.3} W ({source}, {method}) for a true {idle_w} W",
                    part.name
                ));
            }
        }
    }
    // With every interval saturated by other jobs, no run can tell idle from busy power: said
    // as the cause rather than hidden behind a wider tolerance.
    let least_busy = of_type(records, "machine")
        .filter(|m| m["interval"]["partial"] != true)
        .map(|m| f64_of(&m["busy_ns"]) / f64_of(&m["capacity_ns"]).max(1.0))
        .fold(f64::INFINITY, f64::min);
    let cause = if least_busy >= SATURATED {
        format!(
            "every interval was at least {:.0} % busy: other jobs saturated the machine, so no idle power could be learned; rerun with spare CPU before suspecting the code",
            least_busy * 100.0
        )
    } else if least_busy > powerapi::idle_estimate::LOW_ACTIVITY {
        format!(
            "no interval was quiet (the least busy was {:.0} %): other jobs kept the machine busy, so idle could only be extrapolated, which the record marks weak; rerun with spare CPU before suspecting the code",
            least_busy * 100.0
        )
    } else {
        format!(
            "the least busy interval was {:.0} % busy",
            least_busy * 100.0
        )
    };
    assert!(failures.is_empty(), "{what}: {failures:#?}; {cause}");
}
