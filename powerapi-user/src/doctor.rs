//! `powerapi doctor`: what this machine offers for measuring power, one line per item, with the fix.

use std::{fmt, fs, path::Path};

use crate::{
    cgroup::read_cgroup2_mount,
    energy::{EnergyOptions, EnergySource, Source, SourceSpec},
    privilege,
    sensor::{self, Sensor, SensorConfig, SlotLookup, counters},
    topology::read_cpus,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Missing but powerapi degrades (visibly) without it.
    Warn,
    /// Recording is impossible until fixed.
    Fail,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "[{tag}] {:<18} {}", self.name, self.detail)
    }
}

pub use crate::sensor::parse_kernel_version;

/// True when any check makes recording impossible.
pub fn recording_impossible(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

fn list_dir(path: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs every check; `/sys` is read under `root` (normally `/`), this process's own `/proc`
/// under `/`.
pub fn run_checks(root: &Path) -> Vec<Check> {
    let proc_root = Path::new("/");
    let mut checks = Vec::new();
    let release =
        fs::read_to_string(proc_root.join("proc/sys/kernel/osrelease")).unwrap_or_default();
    let release = release.trim();
    checks.push(match parse_kernel_version(release) {
        Some(v) if v >= (sensor::MIN_KERNEL_MAJOR, sensor::MIN_KERNEL_MINOR) => {
            Check::new("kernel", Status::Ok, format!("Linux {release}"))
        }
        Some(_) => Check::new(
            "kernel",
            Status::Fail,
            format!(
                "Linux {release}: powerapi needs ≥ {}.{} (sched_switch's prev_state argument); upgrade the kernel",
                sensor::MIN_KERNEL_MAJOR,
                sensor::MIN_KERNEL_MINOR
            ),
        ),
        None => Check::new(
            "kernel",
            Status::Warn,
            "cannot read the kernel version from /proc/sys/kernel/osrelease",
        ),
    });

    let privileged = privilege::can_trace(proc_root);
    checks.push(if privileged {
        Check::new("privileges", Status::Ok, "CAP_BPF + CAP_PERFMON (or root)")
    } else {
        Check::new("privileges", Status::Fail, privilege::PRIVILEGE_HINT)
    });

    // The kernel's own BTF decides the switch path, wherever the host's /sys is mounted.
    checks.push(if SlotLookup::Auto.resolve() == SlotLookup::TaskStorage {
        Check::new(
            "btf",
            Status::Ok,
            "/sys/kernel/btf/vmlinux present: the switch path finds each thread in its CPU's cache of recent threads, else in the thread's task storage",
        )
    } else {
        Check::new(
            "btf",
            Status::Warn,
            "no kernel BTF (CONFIG_DEBUG_INFO_BTF): a thread missing from its CPU's cache of recent threads is found by hashing its key instead of through task storage, which costs more per such switch; measurements are the same",
        )
    });

    if privileged {
        let config = SensorConfig {
            counters: Vec::new(),
            root: root.to_path_buf(),
            ..Default::default()
        };
        checks.push(match Sensor::start(&config).and_then(|mut s| s.read().map(|r| (s, r))) {
            Ok((sensor, reading)) => Check::new(
                "bpf sensor",
                Status::Ok,
                format!(
                    "sched_switch ({}), sched_process_exec, task_rename, cgroup_attach_task, cpuhp_enter attached, per-CPU flush works, {} tasks read from mmap'd slots",
                    match sensor.switch_path() {
                        sensor::SwitchPath::RqClock => "tp_btf, timed by the run queue's clock: no helper call per switch",
                        sensor::SwitchPath::Ktime => "raw tracepoint, timed by bpf_ktime_get_ns: the kernel's BTF does not show the way to the run queue's clock",
                    },
                    reading.live.len(),
                ),
            ),
            Err(e) => Check::new("bpf sensor", Status::Fail, e.to_string()),
        });
        checks.push(counters_check());
    }

    checks.extend(cgroup_checks(proc_root));
    checks.push(energy_check(root));
    let zones = list_dir(&root.join("sys/class/powercap"), "intel-rapl");
    checks.push(if zones.is_empty() {
        Check::new("rapl powercap", Status::Warn, "no /sys/class/powercap/intel-rapl* zones (VMs and Docker's default mask hide them): the host must expose powercap, or use a model estimate")
    } else {
        let readable = fs::read_to_string(root.join("sys/class/powercap").join(&zones[0]).join("energy_uj")).is_ok();
        Check::new(
            "rapl powercap",
            if readable { Status::Ok } else { Status::Warn },
            format!(
                "{} zones ({}){}",
                zones.len(),
                zones.join(", "),
                if readable { "" } else { "; energy_uj is root-only since Linux 5.10: run as root" }
            ),
        )
    });

    let power_events = list_dir(
        &root.join("sys/bus/event_source/devices/power/events"),
        "energy-",
    );
    let power_events: Vec<_> = power_events
        .into_iter()
        .filter(|e| !e.contains('.'))
        .collect();
    checks.push(if power_events.is_empty() {
        Check::new(
            "rapl perf pmu",
            Status::Warn,
            "no perf `power` PMU under /sys/bus/event_source/devices/power (no RAPL, or a VM)",
        )
    } else {
        Check::new("rapl perf pmu", Status::Ok, power_events.join(", "))
    });

    checks.push(if proc_root.join("dev/cpu/0/msr").exists() {
        Check::new("rapl msr", Status::Ok, "/dev/cpu/0/msr present")
    } else if proc_root.join("sys/module/msr").exists() {
        Check::new(
            "rapl msr",
            Status::Warn,
            "msr module loaded but /dev/cpu/0/msr missing (no MSR access in this VM/container)",
        )
    } else {
        Check::new(
            "rapl msr",
            Status::Warn,
            "/dev/cpu/*/msr absent: `modprobe msr` as root if this CPU has RAPL MSRs",
        )
    });

    if let Ok(paranoid) = fs::read_to_string(proc_root.join("proc/sys/kernel/perf_event_paranoid"))
    {
        checks.push(Check::new(
            "perf paranoid",
            Status::Ok,
            format!(
                "perf_event_paranoid = {} (root and CAP_PERFMON are not limited by it)",
                paranoid.trim()
            ),
        ));
    }
    checks
}

/// One line for the counters: which open, and why the others do not (each cause said once).
fn counters_check() -> Check {
    let mut available = Vec::new();
    let mut missing: Vec<(String, Vec<&str>)> = Vec::new();
    for name in [
        "cycles",
        "instructions",
        "ref-cycles",
        "llc-misses",
        "cpu-clock",
    ] {
        let Ok(spec) = name.parse::<counters::CounterSpec>() else {
            continue;
        };
        match counters::open_on_cpu(&spec, 0) {
            Ok(_) => available.push(name),
            Err(counters::CounterError::Unsupported { source, .. }) => {
                group(&mut missing, format!("not supported here ({source})"), name)
            }
            Err(counters::CounterError::Denied { source, .. }) => group(
                &mut missing,
                format!("denied ({source}); run as root or with CAP_PERFMON"),
                name,
            ),
        }
    }
    counters_verdict(&available, &missing)
}

fn group<'a>(groups: &mut Vec<(String, Vec<&'a str>)>, cause: String, name: &'a str) {
    match groups.iter_mut().find(|(c, _)| *c == cause) {
        Some((_, names)) => names.push(name),
        None => groups.push((cause, vec![name])),
    }
}

/// Pure: the counters line from what opened and what did not, grouped by cause.
fn counters_verdict(available: &[&str], missing: &[(String, Vec<&str>)]) -> Check {
    if missing.is_empty() {
        return Check::new(
            "counters",
            Status::Ok,
            format!("{} available", available.join(", ")),
        );
    }
    let mut detail: Vec<String> = missing
        .iter()
        .map(|(cause, names)| format!("{}: {cause}", names.join(", ")))
        .collect();
    if !available.is_empty() {
        detail.push(format!("available: {}", available.join(", ")));
    }
    let hardware_missing = missing
        .iter()
        .any(|(_, names)| names.iter().any(|n| *n == "cycles" || *n == "instructions"));
    if hardware_missing {
        detail.push(
            "without cycles and instructions powerapi runs in time-only mode and says so in every record (VMs often have no PMU)".into(),
        );
    }
    Check::new("counters", Status::Warn, detail.join("; "))
}

/// cgroup v2: mounted, used (a hybrid host may keep every process in its root), and writable
/// by `run`, which follows CMD through a cgroup of its own.
fn cgroup_checks(proc_root: &Path) -> Vec<Check> {
    let mount = match read_cgroup2_mount(proc_root) {
        Ok(mount) => mount,
        Err(e) => {
            return vec![Check::new(
                "cgroup v2",
                Status::Warn,
                format!(
                    "{e}; records will carry cgroup ids without paths, and `powerapi run` cannot work"
                ),
            )];
        }
    };
    let own = fs::read_to_string(proc_root.join("proc/self/cgroup")).unwrap_or_default();
    let unused = own.lines().any(|l| l.trim_end() == "0::/");
    let mut checks = vec![if unused {
        Check::new(
            "cgroup v2",
            Status::Warn,
            format!(
                "mounted at {} but unused: processes sit in its root (a hybrid host with controllers on v1), so cgroup and container records all read /",
                mount.display()
            ),
        )
    } else {
        Check::new(
            "cgroup v2",
            Status::Ok,
            format!("mounted at {}", mount.display()),
        )
    }];
    let probe = mount.join(format!("powerapi-doctor-{}", std::process::id()));
    checks.push(match fs::create_dir(&probe) {
        Ok(()) => {
            let _ = fs::remove_dir(&probe);
            Check::new("run cgroup", Status::Ok, format!("`powerapi run` can create its cgroup under {}", mount.display()))
        }
        Err(e) => Check::new(
            "run cgroup",
            Status::Warn,
            format!(
                "cannot create a cgroup under {} ({e}): `powerapi run` will fail; run it as root (file capabilities such as setcap do not grant cgroup writes)",
                mount.display()
            ),
        ),
    });
    checks
}

/// Which energy source `auto` picks here, as `record` would open it.
fn energy_check(root: &Path) -> Check {
    let cpus = match read_cpus(root) {
        Ok(cpus) => cpus,
        Err(e) => return Check::new("energy source", Status::Warn, e.to_string()),
    };
    let options = EnergyOptions {
        idle_watts: None,
        max_watts: None,
        timeout: std::time::Duration::from_secs(1),
    };
    match EnergySource::open(&SourceSpec::Auto, root, &cpus, &options) {
        Ok((Some(source), _)) if !source.estimated() => Check::new(
            "energy source",
            Status::Ok,
            format!("auto picks {} (measured)", source.name()),
        ),
        Ok((_, note)) => Check::new(
            "energy source",
            Status::Warn,
            note.unwrap_or_else(|| "auto falls back to the model: energy is ESTIMATED".into()),
        ),
        Err(e) => Check::new("energy source", Status::Warn, format!("auto fails: {e}")),
    }
}

/// The one-line verdict `doctor` ends with.
pub fn verdict(checks: &[Check]) -> String {
    if let Some(fail) = checks.iter().find(|c| c.status == Status::Fail) {
        return format!(
            "verdict: powerapi cannot measure here: {} — {}",
            fail.name, fail.detail
        );
    }
    let warned = |name: &str| {
        checks
            .iter()
            .any(|c| c.name == name && c.status == Status::Warn)
    };
    let mut limits = Vec::new();
    if warned("counters") {
        limits.push("time-only unless the counters you name exist");
    }
    if warned("energy source") {
        limits.push("energy is ESTIMATED (no RAPL)");
    }
    if warned("run cgroup") {
        limits.push("`run` cannot create its cgroup");
    }
    if limits.is_empty() {
        "verdict: ready — record, top and run measure with counters and RAPL".into()
    } else {
        format!("verdict: ready, with limits: {}", limits.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(parse_kernel_version("x"), None);
    }

    #[test]
    fn rendering_and_verdict() {
        let ok = Check::new("kernel", Status::Ok, "Linux 6.18");
        assert_eq!(ok.to_string(), "[ok  ] kernel             Linux 6.18");
        let fail = Check::new("privileges", Status::Fail, "run with sudo");
        assert!(recording_impossible(&[ok.clone(), fail.clone()]));
        assert!(!recording_impossible(std::slice::from_ref(&ok)));
        assert_eq!(
            verdict(&[ok.clone(), fail]),
            "verdict: powerapi cannot measure here: privileges — run with sudo"
        );
        let model = Check::new("energy source", Status::Warn, "no RAPL");
        assert_eq!(
            verdict(&[ok.clone(), model]),
            "verdict: ready, with limits: energy is ESTIMATED (no RAPL)"
        );
        assert_eq!(
            verdict(&[ok]),
            "verdict: ready — record, top and run measure with counters and RAPL"
        );
    }

    #[test]
    fn counter_causes_are_said_once() {
        let missing = vec![(
            "not supported here (No such file or directory (os error 2))".to_string(),
            vec!["cycles", "instructions"],
        )];
        let check = counters_verdict(&["cpu-clock"], &missing);
        assert_eq!(check.status, Status::Warn);
        assert_eq!(
            check.detail,
            "cycles, instructions: not supported here (No such file or directory (os error 2)); available: cpu-clock; without cycles and instructions powerapi runs in time-only mode and says so in every record (VMs often have no PMU)"
        );
        assert_eq!(counters_verdict(&["cycles"], &[]).status, Status::Ok);
    }
}
