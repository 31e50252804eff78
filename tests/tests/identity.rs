//! Task identities end to end: slots are never leaked (socket hops, exec from a thread), and each
//! figure lands under the process, thread, name and cgroup it belongs to (cgroup moves, renames,
//! leader exiting first, pid reuse), and CPU hotplug keeps the books balanced.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::Value;

fn losses(records: &[Value], field: &str) -> u64 {
    of_type(records, "machine")
        .map(|m| u64_of(&m["losses"][field]))
        .sum()
}

/// Starts a time-only recording without energy at `interval`, with `extra` flags.
fn record_time_only(name: &str, interval: &str, extra: &[&str]) -> Recording {
    let mut args = vec![
        "--interval",
        interval,
        "--counters",
        "none",
        "--energy-source",
        "none",
    ];
    args.extend_from_slice(extra);
    Recording::start(name, &args)
}

/// The last line of a load generator's stdout that is a JSON object.
fn json_line(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {text}"));
    serde_json::from_str(line).expect("load generator JSON")
}

#[test]
fn threads_hopping_sockets_own_one_slot_each() {
    let Some(_lock) = bpf_test("threads_hopping_sockets_own_one_slot_each") else {
        return;
    };
    let root = two_package_root("two-package");
    // 150 processes that each run on both sockets, through a 64-slot table: a slot leaked per
    // socket hop would fill it after ~64 of them and lose every later slice.
    let recording = record_time_only(
        "hop",
        "500ms",
        &[
            "--max-tasks",
            "64",
            "--sysfs-root",
            root.to_str().expect("utf-8 path"),
        ],
    );
    let out = Command::new(LOAD)
        .args(["hop", "150", "2"])
        .output()
        .expect("hop runs");
    assert!(out.status.success());
    let records = recording.stop();
    let _ = fs::remove_dir_all(&root);
    let truth = json_line(&out.stdout);
    let pids: HashSet<u64> = truth["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .map(u64_of)
        .collect();
    assert_eq!(losses(&records, "lost_slices"), 0, "no slot may leak");
    let children: Vec<&Value> = of_type(&records, "process")
        .filter(|r| pids.contains(&u64_of(&r["pid"])))
        .collect();
    let exited: HashSet<u64> = children
        .iter()
        .filter(|r| r["exited"] == true)
        .map(|r| u64_of(&r["pid"]))
        .collect();
    assert_eq!(
        exited.len(),
        pids.len(),
        "every process is reported with its exit"
    );
    let measured: u64 = children.iter().map(|r| u64_of(&r["on_cpu_ns"])).sum();
    let truth_ns = u64_of(&truth["children_cpu_ns"]);
    let ratio = measured as f64 / truth_ns as f64;
    // Measured here: 1.000–1.004 (rusage is tick-free, so this is the slice accounting alone).
    assert!(
        (0.99..=1.02).contains(&ratio),
        "children's CPU time {measured} ns vs RUSAGE_CHILDREN {truth_ns} ns ({:.2}%)",
        ratio * 100.0
    );
    assert_conservation(&records);
}

#[test]
fn exec_from_a_thread_frees_its_slot() {
    let Some(_lock) = bpf_test("exec_from_a_thread_frees_its_slot") else {
        return;
    };
    let recording = record_time_only("exec-thread", "500ms", &["--max-tasks", "64"]);
    // 100 execs from a non-leader thread: one leaked slot each would overflow 64 slots.
    let out = Command::new(LOAD)
        .args(["exec-thread", "100"])
        .stderr(Stdio::inherit())
        .output()
        .expect("exec-thread runs");
    assert!(out.status.success());
    let records = recording.stop();
    let truth = json_line(&out.stdout);
    let pids: HashSet<u64> = truth["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .map(u64_of)
        .collect();
    assert_eq!(losses(&records, "lost_slices"), 0, "no slot may leak");
    let exited: HashSet<u64> = of_type(&records, "process")
        .filter(|r| r["exited"] == true && pids.contains(&u64_of(&r["pid"])))
        .map(|r| u64_of(&r["pid"]))
        .collect();
    assert_eq!(
        exited.len(),
        pids.len(),
        "every process is reported with its exit"
    );
    // After exec each process is the burner, and is named so.
    assert!(
        of_type(&records, "process")
            .filter(|r| pids.contains(&u64_of(&r["pid"])) && r["exited"] == true)
            .all(|r| r["comm"] == "powerapi-load"),
        "exec'd processes keep their name"
    );
    // Each process appears once per interval (the exec'ing thread and the old leader are one
    // process).
    let mut per_interval: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    for r in of_type(&records, "process").filter(|r| pids.contains(&u64_of(&r["pid"]))) {
        *per_interval
            .entry((u64_of(&r["interval"]["seq"]), u64_of(&r["pid"])))
            .or_default() += 1;
    }
    let split: Vec<&Value> = of_type(&records, "process")
        .filter(|r| {
            per_interval
                .get(&(u64_of(&r["interval"]["seq"]), u64_of(&r["pid"])))
                .is_some_and(|&n| n > 1)
        })
        .collect();
    assert!(split.is_empty(), "a process split in two: {split:#?}");
}

fn cgroup2_root() -> &'static Path {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
        .expect("a cgroup v2 hierarchy is mounted")
}

#[test]
fn a_process_moved_to_another_cgroup_is_followed() {
    let Some(_lock) = bpf_test("a_process_moved_to_another_cgroup_is_followed") else {
        return;
    };
    let dir = cgroup2_root().join(format!("powerapi-test-move-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("mkdir cgroup");
    let id = fs::metadata(&dir).expect("cgroup dir").ino();
    // At most what the pulse (1 ms in 20) runs in one 250 ms interval, with margin.
    let one_interval_ns = 20_000_000u64;
    let recording = record_time_only("move", "250ms", &["--granularity", "cgroup"]);
    // Started (and exec'd) outside the cgroup, moved into it halfway. It runs 1 ms in 20, so it
    // is rarely on a CPU when the sensor flushes: before this was fixed its time stayed in the
    // old cgroup for the whole run.
    let mut burner = Command::new(LOAD)
        .args(["pulse", "2.5"])
        .stdout(Stdio::null())
        .spawn()
        .expect("pulse starts");
    std::thread::sleep(Duration::from_millis(800));
    fs::write(dir.join("cgroup.procs"), burner.id().to_string()).expect("move the pulse");
    assert!(burner.wait().expect("pulse ends").success());
    let truth = injected::cpu_stat_usage_ns(&dir);
    let records = recording.stop();
    let _ = fs::remove_dir(&dir);

    let measured: u64 = of_type(&records, "cgroup")
        .filter(|r| r["cgroup"]["id"] == id)
        .map(|r| u64_of(&r["on_cpu_ns"]))
        .sum();
    // The interval of the move is charged to the cgroup the task ended it in, so the recorded
    // figure may exceed cpu.stat by up to one interval of the pulse, never fall short of it by
    // more than the slice accounting error (measured ≤ 0.1%).
    assert!(
        truth > 50_000_000,
        "the pulse ran in the cgroup ({truth} ns)"
    );
    assert!(
        measured as f64 >= truth as f64 * 0.995 && measured <= truth + one_interval_ns,
        "moved cgroup: recorded {measured} ns vs cpu.stat {truth} ns"
    );
}

#[test]
fn a_renamed_thread_is_reported_under_its_new_name() {
    let Some(_lock) = bpf_test("a_renamed_thread_is_reported_under_its_new_name") else {
        return;
    };
    let recording = record_time_only("rename", "300ms", &["--granularity", "thread"]);
    let mut child = Command::new(LOAD)
        .args(["rename", "pa-renamed", "1.2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("rename runs");
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().expect("stdout"), &mut stdout)
        .expect("rename's output");
    let truth = wait_measured(child);
    let records = recording.stop();
    let tid = u64_of(&json_line(&stdout)["tid"]);
    let rows: Vec<&Value> = of_type(&records, "thread")
        .filter(|r| u64_of(&r["tid"]) == tid)
        .collect();
    let total: u64 = rows.iter().map(|r| u64_of(&r["on_cpu_ns"])).sum();
    let renamed: u64 = rows
        .iter()
        .filter(|r| r["comm"] == "pa-renamed")
        .map(|r| u64_of(&r["on_cpu_ns"]))
        .sum();
    // Against the process's rusage (the worker's time, and the main thread's few µs), not a
    // fixed 1 s: it spins 1.2 s of wall time, less of a CPU on a busy machine (0.26 s was seen).
    // 1 % + 5 ms as in record.rs: the time around its exit that rusage leaves out.
    assert!(
        truth > 100_000_000 && total.abs_diff(truth) <= truth / 100 + 5_000_000,
        "the worker ran {total} ns, its rusage says {truth} ns"
    );
    // Only the slices before the rename (microseconds) may carry the old name.
    assert!(
        renamed as f64 >= total as f64 * 0.99,
        "{renamed} of {total} ns under the new name"
    );
}

#[test]
fn a_process_whose_main_thread_exits_first_runs_until_its_last_thread_ends() {
    let Some(_lock) = bpf_test("a_process_whose_main_thread_exits_first") else {
        return;
    };
    let recording = record_time_only("leader-exits", "250ms", &[]);
    let (pid, truth_ns) = run_measured(Command::new(LOAD).args(["leader-exits", "1.2"]));
    let records = recording.stop();
    let rows: Vec<&Value> = of_type(&records, "process")
        .filter(|r| r["pid"] == pid)
        .collect();
    assert!(rows.len() >= 4, "seen in {} intervals", rows.len());
    let (last, before) = rows.split_last().expect("rows");
    assert!(
        before.iter().all(|r| r["exited"] == false),
        "reported exited while its worker still ran"
    );
    assert_eq!(last["exited"], true, "its end is reported");
    assert!(rows.iter().all(|r| r["comm"] == "powerapi-load"));
    let measured: u64 = rows.iter().map(|r| u64_of(&r["on_cpu_ns"])).sum();
    let error = (measured as f64 - truth_ns as f64).abs() / truth_ns as f64;
    assert!(error <= 0.01, "{measured} ns vs rusage {truth_ns} ns");
}

#[test]
fn two_processes_that_reuse_a_pid_in_one_interval_are_two_records() {
    let Some(_lock) = bpf_test("two_processes_that_reuse_a_pid_in_one_interval") else {
        return;
    };
    let recording = record_time_only("reuse", "3s", &[]);
    let out = Command::new(LOAD)
        .args(["reuse", "60"])
        .stderr(Stdio::inherit())
        .output()
        .expect("reuse runs");
    assert!(out.status.success(), "clone3 with set_tid needs root");
    let records = recording.stop();
    let truth = json_line(&out.stdout);
    let pid = u64_of(&truth["pid"]);
    assert_eq!(u64_of(&truth["second_pid"]), pid);
    let rows: Vec<&Value> = of_type(&records, "process")
        .filter(|r| u64_of(&r["pid"]) == pid)
        .collect();
    let seqs: HashSet<u64> = rows.iter().map(|r| u64_of(&r["interval"]["seq"])).collect();
    assert_eq!(
        seqs.len(),
        1,
        "both processes ran within one 3 s interval (started right after the first record)"
    );
    let mut got: Vec<u64> = rows.iter().map(|r| u64_of(&r["on_cpu_ns"])).collect();
    got.sort();
    assert_eq!(got.len(), 2, "two records, not one merged: {rows:?}");
    assert!(rows.iter().all(|r| r["exited"] == true));
    let want = [u64_of(&truth["first_ns"]), u64_of(&truth["second_ns"])];
    for (measured, truth) in got.iter().zip(want) {
        // Measured here over eight runs: 0.01–0.14 ms apart. One clean CI run (quiet machine,
        // no steal) gave +3.5 ms on the 120 ms child: time on the CPU around its exit that
        // rusage, taken when the parent reaps it, does not include (noted in issue 7). 5 ms
        // still tells the two incarnations apart (60 ms against 120 ms) and catches a merge.
        assert!(
            measured.abs_diff(truth) <= 5_000_000,
            "{measured} ns vs rusage {truth} ns"
        );
    }
}

/// Puts CPU 1 back online however the test ends.
struct Online(PathBuf);

impl Drop for Online {
    fn drop(&mut self) {
        let _ = fs::write(&self.0, "1");
    }
}

/// CPU 1's online switch, put back on however the test ends; `None` (the skip said) where the
/// kernel does not let us write it.
fn cpu1_control(test: &str) -> Option<Online> {
    let control = PathBuf::from("/sys/devices/system/cpu/cpu1/online");
    if fs::write(&control, "1").is_err() {
        skip(test, &format!("{} is not writable here", control.display()));
        return None;
    }
    Some(Online(control))
}

#[test]
fn cpus_going_offline_and_online_keep_the_books_balanced() {
    let Some(_lock) = bpf_test("cpus_going_offline_and_online") else {
        return;
    };
    let Some(online) = cpu1_control("cpus_going_offline_and_online") else {
        return;
    };
    let control = online.0.clone();
    let recording = record_time_only("hotplug", "250ms", &[]);
    let mut burner = Command::new(LOAD)
        .args(["burn", "3"])
        .stdout(Stdio::null())
        .spawn()
        .expect("burner starts");
    std::thread::sleep(Duration::from_millis(700));
    fs::write(&control, "0").expect("offline CPU 1");
    std::thread::sleep(Duration::from_millis(1000));
    fs::write(&control, "1").expect("online CPU 1");
    std::thread::sleep(Duration::from_millis(1000));
    let _ = burner.wait();
    let records = recording.stop();

    let machines: Vec<&Value> = of_type(&records, "machine").collect();
    assert!(
        machines.iter().any(|m| m["cpus"] == 1),
        "an interval with CPU 1 offline"
    );
    assert!(
        machines
            .iter()
            .filter(|m| m["cpus_changed"] == true)
            .count()
            >= 2
    );
    assert_eq!(machines.last().map(|m| m["cpus"].clone()), Some(2.into()));
    // Every interval balances, those with a change and those after one too: capacity counts
    // each CPU while it was there (measured: 0 ns apart in every interval of 40 with 6
    // offline/online cycles), within the drains at the interval's two ends (assert_conservation
    // says why).
    assert_conservation(&records);
    // And where a CPU changed, capacity lies between what the fewer and the more CPUs give over
    // the interval (a slice left open while a CPU was offline once made it exceed both).
    let (mut cpus_before, mut drain_before) = (2, 0);
    for m in &machines {
        let cpus = u64_of(&m["cpus"]);
        let drain = u64_of(&m["meter"]["drain_us"]) * 1000;
        if m["cpus_changed"] == true && m["interval"]["partial"] == false {
            let duration = u64_of(&m["interval"]["duration_ns"]);
            let capacity = u64_of(&m["capacity_ns"]);
            // Each CPU's flush delays, as in assert_conservation.
            let slack = 2 * (drain_before + drain + 2_000);
            assert!(
                capacity + slack >= duration * cpus.min(cpus_before)
                    && capacity <= duration * cpus.max(cpus_before) + slack,
                "interval {}: capacity {capacity} ns outside {}..{} CPUs × {duration} ns",
                m["interval"]["seq"],
                cpus.min(cpus_before),
                cpus.max(cpus_before)
            );
        }
        (cpus_before, drain_before) = (cpus, drain);
    }
}

/// The model sizes itself by the CPUs online: started with CPU 1 offline, it must follow CPU 1
/// coming back (it was left sized for one CPU: 10 W for two busy CPUs where the documented
/// model gives 2 × 2 W + 2 × 8 W = 20 W).
#[test]
fn the_model_follows_a_cpu_coming_online() {
    let Some(_lock) = bpf_test("the_model_follows_a_cpu_coming_online") else {
        return;
    };
    let Some(online) = cpu1_control("the_model_follows_a_cpu_coming_online") else {
        return;
    };
    let control = online.0.clone();
    fs::write(&control, "0").expect("offline CPU 1");
    let recording = Recording::start(
        "hotplug-model",
        &[
            "--interval",
            "250ms",
            "--counters",
            "none",
            "--energy-source",
            "model",
        ],
    );
    fs::write(&control, "1").expect("online CPU 1");
    // A reading must see the CPU back before the burners start.
    std::thread::sleep(Duration::from_millis(600));
    let burners = [Killed::burner(&["1.5", "0"]), Killed::burner(&["1.5", "1"])];
    std::thread::sleep(Duration::from_millis(1600));
    drop(burners);
    let records = recording.stop();

    let machines: Vec<&Value> = of_type(&records, "machine").collect();
    assert!(
        machines.first().is_some_and(|m| m["cpus"] == 1),
        "the recording started with one CPU"
    );
    let after: Vec<&Value> = machines
        .iter()
        .skip_while(|m| m["cpus"] == 1)
        .filter(|m| m["cpus"] == 2 && m["cpus_changed"] == false)
        .filter(|m| m["interval"]["partial"] == false)
        .copied()
        .collect();
    assert!(
        after.len() >= 4,
        "intervals with CPU 1 back: {}",
        after.len()
    );
    let mut busiest: f64 = 0.0;
    for m in &after {
        let duration = u64_of(&m["interval"]["duration_ns"]) as f64;
        let busy = (u64_of(&m["busy_ns"]) as f64 / (2.0 * duration)).min(1.0);
        busiest = busiest.max(busy);
        let power: f64 = m["energy"]["domains"]
            .as_array()
            .expect("energy domains")
            .iter()
            .filter(|d| d["domain"] == "package")
            .map(|d| f64_of(&d["power_w"]))
            .sum();
        // P = 2 W × 2 CPUs + 8 W × 2 CPUs × busy. The model reads the tasks' on-CPU time,
        // the record's busy_ns is the same sum: measured equal; 1 % leaves room for rounding.
        let want = 4.0 + 16.0 * busy;
        assert!(
            (power - want).abs() <= 0.01 * want,
            "interval {}: {power:.2} W with 2 CPUs {:.0} % busy, the model gives {want:.2} W",
            m["interval"]["seq"],
            busy * 100.0
        );
    }
    assert!(
        busiest > 0.75,
        "both burners ran in some interval: busiest {busiest:.2}"
    );
}

/// The kernel switches a CPU's counter events off for good when the CPU goes offline, and reads
/// of them then succeed with a frozen value: counts on that CPU silently stopped (a burner
/// pinned there showed 3% of its time in cpu-clock). The sensor now installs new events when a
/// CPU comes back, and a slice read from a frozen or replaced event is missing (counted in
/// `counter_read_errors`), never charged to whoever runs next.
#[test]
fn counters_follow_a_cpu_back_online() {
    let Some(_lock) = bpf_test("counters_follow_a_cpu_back_online") else {
        return;
    };
    let Some(online) = cpu1_control("counters_follow_a_cpu_back_online") else {
        return;
    };
    let control = online.0.clone();
    let recording = Recording::start(
        "hotplug-counters",
        &[
            "--interval",
            "250ms",
            "--counters",
            "cpu-clock",
            "--energy-source",
            "none",
        ],
    );
    let mut before = Command::new(LOAD)
        .args(["burn", "0.6", "1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("burner starts");
    std::thread::sleep(Duration::from_millis(300));
    fs::write(&control, "0").expect("offline CPU 1");
    let _ = before.wait();
    std::thread::sleep(Duration::from_millis(400));
    fs::write(&control, "1").expect("online CPU 1");
    // A reading must see the CPU back before the burner starts there.
    std::thread::sleep(Duration::from_millis(600));
    let burner = Command::new(LOAD)
        .args(["burn", "1", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("pinned burner starts");
    let pid = burner.id();
    let truth = wait_measured(burner);
    let records = recording.stop();

    let rows: Vec<&Value> = of_type(&records, "process")
        .filter(|r| r["pid"] == pid)
        .collect();
    let on_cpu: u64 = rows.iter().map(|r| u64_of(&r["on_cpu_ns"])).sum();
    let counted: u64 = rows
        .iter()
        .map(|r| r["counters"]["cpu-clock"].as_u64().unwrap_or(0))
        .sum();
    // Against its rusage, not a fixed 0.9 s: it burns 1 s of wall time, less of a CPU on a busy
    // machine (0.17 s was seen). 1 % + 5 ms as in record.rs.
    assert!(
        truth > 100_000_000 && on_cpu.abs_diff(truth) <= truth / 100 + 5_000_000,
        "the burner on CPU 1 ran {on_cpu} ns, its rusage says {truth} ns"
    );
    // cpu-clock counts the CPU's time, so over a task's slices it equals its on-CPU time;
    // measured 0.01–0.02% apart on steady intervals.
    let error = (counted as f64 - on_cpu as f64).abs() / on_cpu as f64;
    assert!(
        error <= 0.005,
        "burner on CPU 1 after its return: cpu-clock {counted} vs on-CPU {on_cpu} ns ({:.2}%)",
        error * 100.0
    );
    let machines: Vec<&Value> = of_type(&records, "machine").collect();
    let errors: u64 = machines
        .iter()
        .map(|m| u64_of(&m["losses"]["counter_read_errors"]))
        .sum();
    assert!(
        errors > 0,
        "slices read from the switched-off events are counted as missing"
    );
    for m in &machines {
        let busy = u64_of(&m["busy_ns"]);
        let counted = m["counter_totals"]["cpu-clock"].as_u64().unwrap_or(0);
        // Never more than the time (measured ≤ 1.0002 ×): an old event's reading subtracted
        // from a new one's would show as far more.
        assert!(
            counted as f64 <= busy as f64 * 1.005 + 1e5,
            "interval {}: cpu-clock {counted} for {busy} ns busy",
            m["interval"]["seq"]
        );
    }
}

/// A thread that execs takes its leader's pid and hands its own tid back; its slot lives on
/// under the leader's pid. The `tp_btf` switch path caches slots by pid, and a burner that
/// reused that tid on the same CPU was charged into the exec'd process's slot: 1,372 ms of
/// burner reported as 50 ms, while the exec'd sleeper (8 ms) got 1,330 ms and was reported
/// exited while alive. Every switch path is checked: the run queue's clock (pid-keyed cache,
/// the default), the clock helper (cache keyed by `task_struct`) and hash lookups.
#[test]
fn a_reused_tid_never_takes_an_execd_threads_time() {
    let Some(_lock) = bpf_test("a_reused_tid_never_takes_an_execd_threads_time") else {
        return;
    };
    for path in [
        &[][..],
        &["--switch-clock", "ktime"],
        &["--slot-lookup", "hash"],
    ] {
        let recording = record_time_only("exec-reuse", "250ms", path);
        let out = Command::new(LOAD)
            .args(["exec-reuse", "1"])
            .output()
            .expect("exec-reuse runs");
        assert!(
            out.status.success(),
            "exec-reuse: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Its exit reaches a reading.
        std::thread::sleep(Duration::from_millis(600));
        let records = recording.stop();
        let truth = json_line(&out.stdout);
        for who in ["sleeper", "burner"] {
            let pid = u64_of(&truth[who]);
            let rows: Vec<&Value> = of_type(&records, "process")
                .filter(|r| r["pid"] == pid)
                .collect();
            let measured: u64 = rows.iter().map(|r| u64_of(&r["on_cpu_ns"])).sum();
            let rusage = u64_of(&truth[&format!("{who}_ns")]);
            // Measured within 0.1 ms on every path; 5 ms as in the pid-reuse test (time around
            // an exit that rusage, taken at the reaping, leaves out). The bug moved ~1 s.
            assert!(
                measured.abs_diff(rusage) <= 5_000_000,
                "{path:?}: {who} {pid}: {measured} ns measured vs rusage {rusage} ns"
            );
            let exits: Vec<&&Value> = rows.iter().filter(|r| r["exited"] == true).collect();
            assert_eq!(
                exits.len(),
                1,
                "{path:?}: {who} {pid} reported exited once: {rows:?}"
            );
            assert_eq!(
                rows.last().map(|r| &r["exited"]),
                Some(&Value::Bool(true)),
                "{path:?}: {who} {pid}: its exit is its last record, not one while it lived"
            );
        }
    }
}

/// A CPU that goes offline and comes back within one interval: its open slice then spanned
/// the absence, and was charged whole to whatever ran first on its return (capacity 2,605 ms
/// in a 1,004 ms interval on 2 CPUs). Capacity is what the CPUs booked, so each interval's
/// capacity is at most the time each CPU was online in it, read from the test's own clock.
#[test]
fn time_a_cpu_spent_offline_is_no_ones() {
    let Some(_lock) = bpf_test("time_a_cpu_spent_offline_is_no_ones") else {
        return;
    };
    let Some(online) = cpu1_control("time_a_cpu_spent_offline_is_no_ones") else {
        return;
    };
    let control = online.0.clone();
    let recording = record_time_only("offline-spell", "1s", &[]);
    let mut offline = Vec::new();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(350));
        // Offline from when the write returns to when the write back starts: the CPU is away
        // at least that long.
        fs::write(&control, "0").expect("offline CPU 1");
        let from = monotonic_ns();
        std::thread::sleep(Duration::from_millis(300));
        let to = monotonic_ns();
        fs::write(&control, "1").expect("online CPU 1");
        offline.push((from, to));
    }
    std::thread::sleep(Duration::from_millis(1200));
    let records = recording.stop();
    assert_conservation(&records);
    let mut checked = 0;
    for m in of_type(&records, "machine") {
        let (start, end) = (
            u64_of(&m["interval"]["start_ns"]),
            u64_of(&m["interval"]["end_ns"]),
        );
        let away: u64 = offline
            .iter()
            .map(|&(from, to)| to.min(end).saturating_sub(from.max(start)))
            .sum();
        let capacity = u64_of(&m["capacity_ns"]);
        // Each CPU books from its flush to its next one, microseconds from the interval's ends
        // (2 ms covers a drain stalled by a hotplug).
        let online_ns = 2 * (end - start) - away;
        assert!(
            capacity <= online_ns + 2_000_000,
            "interval {}: capacity {capacity} ns, but the CPUs were online {online_ns} ns ({away} ns away)",
            m["interval"]["seq"]
        );
        checked += u64::from(away > 0);
    }
    assert!(checked >= 3, "intervals with an offline spell: {checked}");
}

/// A drain that real-time tasks preempt midway: each CPU's capacity mark was read before the
/// slots, so slices booked while the drain ran counted in one interval's busy time and the next
/// one's capacity (34 of 100 intervals off by 3.9–8.5 ms, busy above capacity). With drain
/// epochs every slice counts in exactly one interval for both, so the books balance to the
/// nanosecond in every interval however the drain is delayed, and the pulsing tasks' own time
/// still matches their rusage.
#[test]
fn a_preempted_drain_keeps_exact_books() {
    let Some(_lock) = bpf_test("a_preempted_drain_keeps_exact_books") else {
        return;
    };
    let recording = record_time_only("preempted-drain", "100ms", &[]);
    let out = Command::new(LOAD)
        .args(["rt-pulse", "4", "0", "1"])
        .output()
        .expect("rt-pulse runs");
    assert!(
        out.status.success(),
        "rt-pulse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    let records = recording.stop();
    let machines: Vec<&Value> = of_type(&records, "machine").collect();
    assert!(machines.len() >= 30, "{} intervals", machines.len());
    assert_conservation(&records);
    for m in &machines {
        assert!(
            u64_of(&m["busy_ns"]) <= u64_of(&m["capacity_ns"]),
            "interval {}: busy above capacity",
            m["interval"]["seq"]
        );
    }
}
