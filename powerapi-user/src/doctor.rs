//! `powerapi doctor`: what this machine offers for measuring power, one line per item, with the fix.

use std::{fmt, fs, path::Path};

use crate::{
    cgroup::read_cgroup2_mount,
    privilege,
    sensor::{self, Sensor, SensorConfig, counters},
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

    checks.push(if root.join("sys/kernel/btf/vmlinux").exists() {
        Check::new("btf", Status::Ok, "/sys/kernel/btf/vmlinux present")
    } else {
        Check::new("btf", Status::Warn, "no kernel BTF: not needed by the sensor, but other BPF tools may want CONFIG_DEBUG_INFO_BTF=y")
    });

    if privileged {
        let config = SensorConfig {
            counters: Vec::new(),
            root: root.to_path_buf(),
            ..Default::default()
        };
        checks.push(match Sensor::start(&config).and_then(|mut s| s.read().map(|r| (s, r))) {
            Ok((_sensor, reading)) => Check::new(
                "bpf sensor",
                Status::Ok,
                format!(
                    "raw tracepoints sched_switch, sched_process_exec, task_rename, cgroup_attach_task attached, per-CPU flush works, {} tasks read from mmap'd slots",
                    reading.live.len(),
                ),
            ),
            Err(e) => Check::new("bpf sensor", Status::Fail, e.to_string()),
        });
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
            checks.push(match counters::open_on_cpu(&spec, 0) {
                Ok(_) => Check::new(counter_check_name(name), Status::Ok, "available"),
                Err(e) => Check::new(
                    counter_check_name(name),
                    Status::Warn,
                    format!("{e}; without it powerapi runs in time-only mode and says so in every record"),
                ),
            });
        }
    }

    checks.push(match read_cgroup2_mount(proc_root) {
        Ok(mount) => Check::new(
            "cgroup v2",
            Status::Ok,
            format!("mounted at {}", mount.display()),
        ),
        Err(e) => Check::new(
            "cgroup v2",
            Status::Warn,
            format!("{e}; records will carry cgroup ids without paths"),
        ),
    });

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

fn counter_check_name(name: &str) -> &'static str {
    match name {
        "cycles" => "counter cycles",
        "instructions" => "counter instr.",
        "ref-cycles" => "counter ref-cycles",
        "llc-misses" => "counter llc-misses",
        _ => "counter cpu-clock",
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
        assert!(recording_impossible(&[ok.clone(), fail]));
        assert!(!recording_impossible(&[ok]));
    }
}
