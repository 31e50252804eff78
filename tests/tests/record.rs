//! `powerapi record` end to end, as root with BPF, against ground truth from the kernel.

mod common;

use std::{fs, os::unix::fs::MetadataExt, path::Path, process::Command};

use common::*;

#[test]
fn busy_loop_time_matches_rusage_and_shows_in_every_interval() {
    let Some(_lock) = bpf_test("busy_loop_time_matches_rusage") else {
        return;
    };
    let recording = Recording::start("accuracy", &["--interval", "500ms", "--counters", "none"]);
    let child = Command::new(LOAD)
        .args(["burn", "3", "1"])
        .spawn()
        .expect("burner");
    let pid = child.id();
    let sampler = std::thread::spawn(move || schedstat_samples(pid));
    let truth_ns = wait_measured(child);
    let mut samples = sampler.join().expect("schedstat sampler");
    // Reaped: its whole time, later than any interval it ran in (the sampler, delayed on a busy
    // machine, may have missed its last milliseconds).
    samples.push((monotonic_ns(), truth_ns));
    let records = recording.stop();

    let measured = on_cpu_of(&records, pid);
    let error = (measured as f64 - truth_ns as f64).abs() / truth_ns as f64;
    assert!(
        error <= 0.02,
        "recorded {measured} ns vs rusage {truth_ns} ns ({:.2}%)",
        error * 100.0
    );

    // Never switched out (alone on CPU 1), it must still appear in every interval it spans.
    let intervals: Vec<_> = of_type(&records, "process")
        .filter(|r| r["pid"] == pid)
        .collect();
    assert!(
        intervals.len() >= 5,
        "burner seen in only {} intervals",
        intervals.len()
    );
    let seqs: Vec<u64> = intervals
        .iter()
        .map(|r| u64_of(&r["interval"]["seq"]))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gaps in the intervals of a running loop: {seqs:?}"
    );
    // Each interval's time against what the kernel itself counted for the burner over that
    // interval (its schedstat, sampled every 5 ms): a loop alone on its CPU is never switched
    // out, and without the flush its time would land in the interval it exits in. Not a share of
    // the interval: a busy machine gives CPU 1 to others too (24 % of an interval was seen under
    // `stress-ng --cpu 2`), and the kernel's count says how much.
    let inner = &intervals[1..intervals.len() - 1];
    for r in inner {
        let (start, end) = (
            u64_of(&r["interval"]["start_ns"]),
            u64_of(&r["interval"]["end_ns"]),
        );
        let (lo, hi) = schedstat_between(&samples, start, end).unwrap_or_else(|| {
            panic!(
                "no schedstat samples around interval {}",
                r["interval"]["seq"]
            )
        });
        let on_cpu = u64_of(&r["on_cpu_ns"]);
        // 2 ms: the flush on each CPU lies within the drain, after the interval's end instant
        // (assert_conservation says how far: ~0.4 ms drains). 10 ms: schedstat shows a running
        // task's time as of its last tick or switch, up to a tick late (4 ms here, HZ=250;
        // 10 ms at HZ=100); measured 3.5 ms outside the samples' bracket without it.
        let slack = 12_000_000;
        assert!(
            on_cpu + slack >= lo && on_cpu <= hi + slack,
            "interval {}: busy loop recorded {on_cpu} ns, the kernel counted {lo}..{hi} ns",
            r["interval"]["seq"]
        );
    }
    assert_eq!(
        intervals.last().map(|r| r["exited"].clone()),
        Some(serde_json::json!(true))
    );
    assert!(
        records.iter().all(|r| r["mode"] == "time-only"),
        "--counters none must say time-only"
    );
    assert_conservation(&records);
}

/// (CLOCK_MONOTONIC ns, the task's `sum_exec_runtime` ns from `/proc/PID/schedstat`) every
/// 5 ms until the task is gone.
fn schedstat_samples(pid: u32) -> Vec<(u64, u64)> {
    let mut samples = Vec::new();
    loop {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/schedstat")) else {
            return samples;
        };
        let now = monotonic_ns();
        match text.split_whitespace().next().and_then(|v| v.parse().ok()) {
            // A reaped task's file may read empty before it vanishes.
            Some(ran) => samples.push((now, ran)),
            None => return samples,
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The least and most CPU time the sampled task can have had between `start` and `end`
/// (CLOCK_MONOTONIC ns), from the samples bracketing each instant.
fn schedstat_between(samples: &[(u64, u64)], start: u64, end: u64) -> Option<(u64, u64)> {
    let before = |t: u64| samples.iter().rev().find(|(at, _)| *at <= t).map(|s| s.1);
    let after = |t: u64| samples.iter().find(|(at, _)| *at >= t).map(|s| s.1);
    let lo = before(end)?.saturating_sub(after(start)?);
    let hi = after(end)?.saturating_sub(before(start)?);
    Some((lo, hi))
}

/// Records while `powerapi-load storm COUNT MS` runs; checks that every child is reported as
/// exited and that their summed CPU time is 99–105 % of RUSAGE_CHILDREN. Returns the records.
fn storm_is_fully_counted(
    name: &str,
    args: &[&str],
    count: usize,
    ms: &str,
) -> Vec<serde_json::Value> {
    let mut all_args = vec!["--interval", "500ms", "--counters", "none"];
    all_args.extend_from_slice(args);
    let recording = Recording::start(name, &all_args);
    let out = Command::new(LOAD)
        .args(["storm", &count.to_string(), ms])
        .output()
        .expect("storm runs");
    assert!(out.status.success());
    let records = recording.stop();
    let truth: serde_json::Value = serde_json::from_slice(&out.stdout).expect("storm JSON");
    let pids: std::collections::HashSet<u64> = truth["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .map(u64_of)
        .collect();
    assert_eq!(pids.len(), count);
    let truth_ns = u64_of(&truth["children_cpu_ns"]);
    let children: Vec<&serde_json::Value> = of_type(&records, "process")
        .filter(|r| pids.contains(&u64_of(&r["pid"])))
        .collect();
    let measured: u64 = children.iter().map(|r| u64_of(&r["on_cpu_ns"])).sum();
    let exited: std::collections::HashSet<u64> = children
        .iter()
        .filter(|r| r["exited"] == true)
        .map(|r| u64_of(&r["pid"]))
        .collect();
    assert_eq!(
        exited.len(),
        count,
        "every short-lived process is reported, with its exit"
    );
    let ratio = measured as f64 / truth_ns as f64;
    assert!(
        ratio >= 0.99,
        "only {:.2}% of the children's CPU time recorded ({measured} of {truth_ns} ns)",
        ratio * 100.0
    );
    assert!(
        ratio <= 1.05,
        "children's CPU time counted more than once: {:.2}%",
        ratio * 100.0
    );
    assert_conservation(&records);
    records
}

#[test]
fn short_lived_processes_are_not_lost() {
    let Some(_lock) = bpf_test("short_lived_processes_are_not_lost") else {
        return;
    };
    storm_is_fully_counted("storm", &[], 500, "5");
}

/// The default switch path (where the kernel's BTF allows: a `tp_btf` program timed by the run
/// queue's clock) finds threads in its CPU's cache of recent threads; the other builds must
/// count the same: timed by the clock helper with the cache (kernels without BTF), without the
/// cache (task storage), and with neither (the hash).
#[test]
fn every_switch_path_counts_short_lived_processes() {
    let Some(_lock) = bpf_test("every_switch_path_counts_short_lived_processes") else {
        return;
    };
    let mut paths = vec![
        ("storm-ktime", &["--switch-clock", "ktime"][..]),
        ("storm-storage", &["--recent-cache", "false"][..]),
        (
            "storm-hash",
            &["--recent-cache", "false", "--slot-lookup", "hash"][..],
        ),
        (
            "storm-ktime-hash",
            &["--switch-clock", "ktime", "--slot-lookup", "hash"][..],
        ),
    ];
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        // Named explicitly: an error if the run queue's clock cannot be reached.
        paths.push(("storm-rq", &["--switch-clock", "rq"][..]));
    } else {
        eprintln!("no kernel BTF: the run queue's clock path is not tested");
    }
    for (name, args) in paths {
        storm_is_fully_counted(name, args, 200, "5");
    }
}

/// ~10,000 wakeups a second, 20 µs of work each. The kernel charges a woken thread from its
/// wakeup (the run queue's clock at the enqueue, which the switch then reuses), so the run queue's
/// clock gives the figure `getrusage` gives: measured +2.0 % here (the interrupt time around the
/// wakeups, which rusage leaves out), bound 5 %. Timed by the clock helper at the switch instead,
/// the same thread measured −24 % to −28 % on this VM: the idle exit after each wakeup (~7 µs)
/// went to the idle task, which is why the helper is only the fallback for kernels without BTF.
#[test]
fn a_thread_that_wakes_often_is_charged_what_the_kernel_charges() {
    let Some(_lock) = bpf_test("a_thread_that_wakes_often_is_charged_what_the_kernel_charges")
    else {
        return;
    };
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        eprintln!("skipped: no kernel BTF, so the switch path uses the clock helper");
        return;
    }
    let recording = Recording::start("wakes", &["--interval", "500ms", "--counters", "none"]);
    let (pid, truth_ns) = run_measured(Command::new(LOAD).args(["wake", "3"]));
    let records = recording.stop();
    let measured = on_cpu_of(&records, pid);
    let error = (measured as f64 - truth_ns as f64) / truth_ns as f64;
    assert!(
        error.abs() <= 0.05,
        "recorded {measured} ns vs rusage {truth_ns} ns ({:+.2}%)",
        error * 100.0
    );
    assert_conservation(&records);
}

#[test]
fn software_counter_path_matches_on_cpu_time() {
    let Some(_lock) = bpf_test("software_counter_path_matches_on_cpu_time") else {
        return;
    };
    let recording = Recording::start(
        "counters",
        &["--interval", "500ms", "--counters", "cpu-clock"],
    );
    let (pid, truth) = run_measured(Command::new(LOAD).args(["burn", "1.5"]));
    let records = recording.stop();
    assert!(records.iter().all(|r| r["mode"] == "counters"));
    // The burner, against its own rusage: its on-CPU time and its cpu-clock count. Only the
    // burner: other tasks (this test's own threads, whatever else runs) are fast wakers, whose
    // on-CPU time runs from their wakeup under the run queue's clock while the counter is read at
    // the switch (README, `--metric`): 15 % apart for a test thread under `stress-ng --cpu 2`.
    let rows: Vec<_> = of_type(&records, "process")
        .filter(|r| r["pid"] == pid)
        .collect();
    let on_cpu: u64 = rows.iter().map(|r| u64_of(&r["on_cpu_ns"])).sum();
    let clock: u64 = rows
        .iter()
        .map(|r| u64_of(&r["counters"]["cpu-clock"]))
        .sum();
    // It burns 1.5 s of wall time: all of a CPU when quiet, less when others compete for it.
    assert!(
        truth > 300_000_000,
        "the burner ran {truth} ns: too little to compare"
    );
    // Measured: cpu-clock vs on-CPU 0.38–0.44 % quiet, 0.14–0.61 % under `stress-ng --cpu 2`
    // (bound 1 %, as before); on-CPU vs rusage 0.02–0.29 % quiet, 0.03–0.12 % under load
    // (bound 1 %, three times the worst).
    for (what, value, bound) in [("cpu-clock", clock, 0.01), ("rusage", truth, 0.01)] {
        let error = (value as f64 - on_cpu as f64).abs() / on_cpu as f64;
        eprintln!("burner: on-CPU vs {what}: {:.3}%", error * 100.0);
        assert!(
            error <= bound,
            "burner {pid}: on-CPU {on_cpu} ns vs {what} {value} ns ({:.2}%)",
            error * 100.0
        );
    }
    for m in of_type(&records, "machine") {
        assert_eq!(m["counters"], serde_json::json!(["cpu-clock"]));
        assert!(m["counter_totals"]["cpu-clock"].is_u64());
    }
}

#[test]
fn cgroup_usage_matches_cpu_stat() {
    let Some(_lock) = bpf_test("cgroup_usage_matches_cpu_stat") else {
        return;
    };
    let Some(root) = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
    else {
        panic!("no cgroup v2 hierarchy mounted");
    };
    let name = format!("powerapi-test-{}", std::process::id());
    let dir = root.join(&name);
    fs::create_dir_all(&dir).expect("mkdir cgroup");
    let id = fs::metadata(&dir).expect("cgroup dir").ino();
    let recording = Recording::start(
        "cgroup",
        &[
            "--interval",
            "500ms",
            "--counters",
            "none",
            "--granularity",
            "cgroup",
            "--cgroup",
            &format!("/{name}"),
        ],
    );
    // The child moves itself into the cgroup before burning, so all its time is charged there.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {LOAD} burn 1.5",
        dir.display()
    );
    let (_pid, _) = run_measured(Command::new("sh").args(["-c", &script]));
    let usage_us: u64 = fs::read_to_string(dir.join("cpu.stat"))
        .expect("cpu.stat")
        .lines()
        .find_map(|l| {
            l.strip_prefix("usage_usec ")
                .and_then(|v| v.trim().parse().ok())
        })
        .expect("usage_usec");
    let records = recording.stop();
    let _ = fs::remove_dir(&dir);

    let rows: Vec<_> = of_type(&records, "cgroup").collect();
    assert!(!rows.is_empty(), "no cgroup record");
    assert!(
        rows.iter()
            .all(|r| r["cgroup"]["id"] == id && r["cgroup"]["path"] == format!("/{name}")),
        "filter and path"
    );
    let measured: u64 = rows.iter().map(|r| u64_of(&r["on_cpu_ns"])).sum();
    let truth = usage_us * 1000;
    let error = (measured as f64 - truth as f64).abs() / truth as f64;
    assert!(
        error <= 0.02,
        "cgroup recorded {measured} ns vs cpu.stat {truth} ns ({:.2}%)",
        error * 100.0
    );
}

#[test]
fn threads_are_reported_separately() {
    let Some(_lock) = bpf_test("threads_are_reported_separately") else {
        return;
    };
    let recording = Recording::start(
        "threads",
        &[
            "--interval",
            "500ms",
            "--counters",
            "none",
            "--granularity",
            "thread",
        ],
    );
    let (pid, truth_ns) = run_measured(Command::new(LOAD).args(["threads", "2", "1"]));
    let records = recording.stop();
    let threads: Vec<_> = of_type(&records, "thread")
        .filter(|r| r["pid"] == pid)
        .collect();
    let tids: std::collections::HashSet<u64> = threads.iter().map(|r| u64_of(&r["tid"])).collect();
    assert_eq!(tids.len(), 3, "main thread + 2 workers");
    let measured: u64 = threads.iter().map(|r| u64_of(&r["on_cpu_ns"])).sum();
    let error = (measured as f64 - truth_ns as f64).abs() / truth_ns as f64;
    assert!(error <= 0.02, "threads {measured} vs rusage {truth_ns}");
    assert_eq!(of_type(&records, "process").count(), 0);
}

/// SIGTERM (a service manager) and SIGHUP (an ssh session dropping) both end the recording with
/// the cut-short interval written; SIGHUP used to kill it with that interval lost.
#[test]
fn sigterm_and_sighup_write_the_partial_interval() {
    let Some(_lock) = bpf_test("sigterm_and_sighup_write_the_partial_interval") else {
        return;
    };
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        let recording = Recording::start("sigterm", &["--interval", "300ms", "--counters", "none"]);
        std::thread::sleep(std::time::Duration::from_millis(450));
        let records = recording.stop_with(signal);
        let last = of_type(&records, "machine")
            .last()
            .expect("machine records");
        assert_eq!(
            last["interval"]["partial"], true,
            "signal {signal}: the cut-short interval is written and marked"
        );
        assert!(
            of_type(&records, "machine")
                .filter(|m| m["interval"]["partial"] == false)
                .count()
                >= 1
        );
        assert!(records.iter().all(|r| r["schema"] == 3));
    }
}

#[test]
fn pid_and_comm_filters() {
    let Some(_lock) = bpf_test("pid_and_comm_filters") else {
        return;
    };
    let recording = Recording::start(
        "filter",
        &[
            "--interval",
            "500ms",
            "--counters",
            "none",
            "--comm",
            "powerapi-load",
        ],
    );
    let (pid, truth) = run_measured(Command::new(LOAD).args(["burn", "0.6"]));
    let records = recording.stop();
    let processes: Vec<_> = of_type(&records, "process").collect();
    assert!(!processes.is_empty());
    assert!(processes.iter().all(|r| r["comm"] == "powerapi-load"));
    // The burner passes the filter whole, against its own rusage. Measured: 0.02–0.94 % (up to
    // 5.6 ms) quiet, 0.01–0.19 % under `stress-ng --cpu 2`: bounded as for --pid below.
    let measured = on_cpu_of(&records, pid);
    eprintln!(
        "--comm: recorded vs rusage: {:.3}%",
        (measured as f64 - truth as f64).abs() / truth as f64 * 100.0
    );
    assert!(
        measured.abs_diff(truth) <= rusage_bound(truth),
        "--comm: the burner recorded {measured} ns vs rusage {truth} ns"
    );
    // The machine record is not filtered: it counts every process that ran, powerapi itself
    // (which drains every interval) among them, and its busy time covers the filtered ones'.
    // (Not `idle_ns > 0`: with both CPUs busy beside the test, an interval has no idle time.)
    for m in of_type(&records, "machine") {
        let seq = &m["interval"]["seq"];
        let rows: Vec<_> = processes
            .iter()
            .filter(|r| r["interval"]["seq"] == *seq)
            .collect();
        let filtered_ns: u64 = rows.iter().map(|r| u64_of(&r["on_cpu_ns"])).sum();
        assert!(
            u64_of(&m["processes"]) > rows.len() as u64,
            "interval {seq}: the machine record counts {} processes, the filtered records {}",
            m["processes"],
            rows.len()
        );
        assert!(
            u64_of(&m["busy_ns"]) >= filtered_ns,
            "interval {seq}: machine busy {} ns < the filtered processes' {filtered_ns} ns",
            m["busy_ns"]
        );
    }
    assert_conservation(&records);
}

/// Filters that used to match nothing, silently: a command name longer than the kernel keeps,
/// a cgroup given as its /sys/fs/cgroup path. Both now match, with a warning for the first.
#[test]
fn long_comm_and_sysfs_cgroup_filters_match() {
    let Some(_lock) = bpf_test("long_comm_and_sysfs_cgroup_filters_match") else {
        return;
    };
    let dir = temp_path("long-comm");
    fs::create_dir_all(&dir).expect("mkdir");
    let long = dir.join("powerapi-load-long-name");
    fs::copy(LOAD, &long).expect("copy the load generator");
    // Our own cgroup, in its /sys/fs/cgroup/... form.
    let own = fs::read_to_string("/proc/self/cgroup").expect("cgroup");
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    let mount = if Path::new("/sys/fs/cgroup/unified").is_dir() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    };
    let sysfs = format!("{mount}{}", path.trim_end_matches('/'));
    let output = temp_path("long-comm.jsonl");
    let _ = fs::remove_file(&output);
    let mut child = Command::new(powerapi())
        .args(["record", "--interval", "300ms", "--counters", "none"])
        .args([
            "--comm",
            "powerapi-load-long-name",
            "--cgroup",
            &sysfs,
            "-o",
        ])
        .arg(&output)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("powerapi record");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fs::read_to_string(&output).map_or(0, |t| t.len()) == 0 {
        assert!(std::time::Instant::now() < deadline, "no first interval");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (pid, _) = run_measured(Command::new(&long).args(["burn", "0.5"]));
    std::thread::sleep(std::time::Duration::from_millis(400));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    let _ = fs::remove_dir_all(&dir);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "--comm powerapi-load-long-name: the kernel keeps only the first 15 bytes of a command name; matching \"powerapi-load-l\""
        ),
        "{stderr}"
    );
    let records = read_records(&output);
    let _ = fs::remove_file(&output);
    assert!(
        of_type(&records, "process").any(|r| r["pid"] == pid && r["comm"] == "powerapi-load-l"),
        "{stderr}"
    );
}

/// How far a short burner's recorded time may be from its rusage: 1 % plus 5 ms. The 5 ms is
/// its time on the CPU around its exit, which rusage, taken when the parent reaps it, leaves out
/// (up to 5.7 ms measured, quiet or loaded; noted in issue 7); 1 % is about three times the
/// worst relative error left on a 1 s burner.
fn rusage_bound(truth_ns: u64) -> u64 {
    truth_ns / 100 + 5_000_000
}

/// `--pid` reports that process only (the machine record stays whole).
#[test]
fn pid_filter_reports_only_that_process() {
    let Some(_lock) = bpf_test("pid_filter_reports_only_that_process") else {
        return;
    };
    // The burner waits for a line on stdin, so it burns only once the recording runs (a busy
    // machine can make starting the recording take longer than a burner that starts at once
    // runs), and execs from sh so its pid, given to --pid, is the one that burns.
    let mut child = Command::new("sh")
        .args(["-c", &format!("read go && exec {LOAD} burn 1.2")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("burner");
    let pid = child.id();
    let mut go = child.stdin.take().expect("the burner's stdin");
    let recording = Recording::start(
        "pid-filter",
        &[
            "--interval",
            "300ms",
            "--counters",
            "none",
            "--pid",
            &pid.to_string(),
        ],
    );
    use std::io::Write as _;
    writeln!(go, "go").expect("start the burner");
    drop(go);
    let truth = wait_measured(child);
    std::thread::sleep(std::time::Duration::from_millis(350));
    let records = recording.stop();
    let processes: Vec<_> = of_type(&records, "process").collect();
    assert!(!processes.is_empty());
    assert!(processes.iter().all(|r| r["pid"] == pid), "{processes:?}");
    assert!(of_type(&records, "machine").all(|m| u64_of(&m["processes"]) >= 1));
    // All of the process's time is there, against its own rusage (which counts what it ran
    // whatever else the machine does). Measured: 0.11–0.20 % quiet, 0.23–0.48 % (5.7 ms) under
    // `stress-ng --cpu 2`.
    let measured = on_cpu_of(&records, pid);
    eprintln!(
        "--pid: recorded vs rusage: {:.3}%",
        (measured as f64 - truth as f64).abs() / truth as f64 * 100.0
    );
    assert!(
        measured.abs_diff(truth) <= rusage_bound(truth),
        "--pid {pid}: recorded {measured} ns vs rusage {truth} ns"
    );
}

#[test]
fn exits_beyond_the_ring_buffer_are_still_counted_once() {
    let Some(_lock) = bpf_test("exits_beyond_the_ring_buffer") else {
        return;
    };
    // A 4 KiB ring holds about 20 exits: most of these 300 overflow into their slots.
    let records = storm_is_fully_counted("overflow", &["--exit-buffer-kib", "4"], 300, "2");
    let overflow: u64 = of_type(&records, "machine")
        .map(|m| u64_of(&m["losses"]["exit_overflow"]))
        .sum();
    assert!(overflow > 0, "the test must overflow the ring buffer");
    let lost: u64 = of_type(&records, "machine")
        .map(|m| u64_of(&m["losses"]["lost_slices"]))
        .sum();
    assert_eq!(lost, 0);
}

#[test]
fn a_full_task_table_is_reported_not_silent() {
    let Some(_lock) = bpf_test("a_full_task_table_is_reported_not_silent") else {
        return;
    };
    let recording = Recording::start(
        "full",
        &[
            "--interval",
            "500ms",
            "--counters",
            "none",
            "--max-tasks",
            "64",
        ],
    );
    let out = Command::new(LOAD)
        .args(["threads", "100", "0.5"])
        .output()
        .expect("threads run");
    assert!(out.status.success());
    let records = recording.stop();
    let lost_slices: u64 = of_type(&records, "machine")
        .map(|m| u64_of(&m["losses"]["lost_slices"]))
        .sum();
    let lost_ns: u64 = of_type(&records, "machine")
        .map(|m| u64_of(&m["losses"]["lost_ns"]))
        .sum();
    assert!(
        lost_slices > 0 && lost_ns > 0,
        "a full table must show up in losses"
    );
    // What was measured plus what was lost still covers the machine, over the run (per interval,
    // a drain preempted by 100 spinning threads may move a few ms across a boundary).
    let full: Vec<_> = of_type(&records, "machine")
        .filter(|m| m["interval"]["partial"] == false)
        .collect();
    let accounted: u64 = full
        .iter()
        .map(|m| u64_of(&m["busy_ns"]) + u64_of(&m["idle_ns"]) + u64_of(&m["losses"]["lost_ns"]))
        .sum();
    let capacity: u64 = full.iter().map(|m| u64_of(&m["capacity_ns"])).sum();
    let error = (accounted as f64 - capacity as f64).abs() / capacity as f64;
    assert!(
        error <= 0.01,
        "busy + idle + lost = {accounted} ns vs capacity {capacity} ns ({:.2}%)",
        error * 100.0
    );
}

/// Records say who a process is: its owner (from the kernel, so a process that lived 5 ms has
/// one too), parent, command line (`--cmdline`), the machine's name, and a numeric time.
#[test]
fn records_carry_owner_parent_cmdline_host_and_unix_time() {
    let Some(_lock) = bpf_test("records_carry_owner_parent_cmdline_host_and_unix_time") else {
        return;
    };
    let recording = Recording::start(
        "identity-fields",
        &["--interval", "200ms", "--counters", "none", "--cmdline"],
    );
    let as_nobody = |seconds: &str| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            LOAD,
            "burn",
            seconds,
        ]);
        run_measured(&mut cmd).0
    };
    let long = as_nobody("0.5");
    let short = as_nobody("0.005");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let records = recording.stop();
    let of_pid = |pid: u32| -> Vec<&serde_json::Value> {
        of_type(&records, "process")
            .filter(|r| r["pid"] == pid)
            .collect()
    };
    for pid in [long, short] {
        let mine = of_pid(pid);
        assert!(!mine.is_empty(), "pid {pid} reported");
        assert!(
            mine.iter()
                .all(|r| r["uid"] == 65534 && r["user"] == "nobody"),
            "{mine:?}"
        );
    }
    let first = of_pid(long)[0];
    assert_eq!(first["ppid"], std::process::id(), "{first}");
    assert!(
        first["cmdline"]
            .as_str()
            .is_some_and(|c| c.ends_with("powerapi-load burn 0.5")),
        "{first}"
    );
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let mut previous = 0;
    for m in of_type(&records, "machine") {
        assert_eq!(m["hostname"], hostname.trim());
        let t = u64_of(&m["interval"]["time_unix_ns"]);
        assert!(
            t > previous && t <= now_ns && now_ns - t < 60_000_000_000,
            "{m}"
        );
        previous = t;
    }
}

/// `--duration` ends the recording on time with its last interval cut short and marked, and
/// intervals tile time: each starts where the previous ended (seq 1, 2, 3 …).
#[test]
fn duration_ends_with_a_partial_interval_and_intervals_are_contiguous() {
    let Some(_lock) = bpf_test("duration_ends_with_a_partial_interval") else {
        return;
    };
    // How late this machine wakes a sleeper meanwhile: the partial interval is the remainder of
    // the duration, 100 ms, give or take how late the intervals' two ends were.
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let probe = std::thread::spawn(move || {
        // At the collector's priority (nice −10, collect.rs), so it is woken as the collector is.
        // SAFETY: gettid and setpriority have no memory-safety preconditions; on Linux,
        // PRIO_PROCESS with a thread id changes only this thread.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10);
        }
        let mut latest = std::time::Duration::ZERO;
        loop {
            let asked = std::time::Duration::from_millis(5);
            let before = std::time::Instant::now();
            if stopped.recv_timeout(asked).is_ok() {
                return latest;
            }
            latest = latest.max(before.elapsed().saturating_sub(asked));
        }
    });
    let started = std::time::Instant::now();
    let out = Command::new(powerapi())
        .args(["record", "--counters", "none", "--interval", "200ms"])
        .args(["--duration", "0.5s"])
        .output()
        .expect("powerapi record");
    let elapsed = started.elapsed();
    let _ = stop.send(());
    let wake_latency_ms = probe.join().expect("latency probe").as_secs_f64() * 1e3;
    assert!(out.status.success());
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let machines: Vec<&serde_json::Value> = of_type(&records, "machine").collect();
    let partial: Vec<bool> = machines
        .iter()
        .map(|m| m["interval"]["partial"] == true)
        .collect();
    assert_eq!(partial, [false, false, true], "200 + 200 + 100 ms");
    for (i, pair) in machines.windows(2).enumerate() {
        assert_eq!(u64_of(&pair[1]["interval"]["seq"]), i as u64 + 2);
        assert_eq!(
            pair[1]["interval"]["start_ns"], pair[0]["interval"]["end_ns"],
            "contiguous"
        );
    }
    let last_ms = u64_of(&machines[2]["interval"]["duration_ns"]) as f64 / 1e6;
    // Measured here: 100.1–100.4 ms quiet; the sleep's wake-up jitter is the error. Under
    // `stress-ng --cpu 2` 92–104 ms, and 48 and 118 ms now and then (an end woken ~50 ms late):
    // hence the latest wake-up the probe saw meanwhile, at each end, on top (measured at nice
    // −10 under that load: 7–27 ms, so the bound stays under 70 ms, well short of a whole
    // 200 ms interval; without stress-ng, 3–4 ms on this shared VM).
    let bound = 15.0 + 2.0 * wake_latency_ms;
    assert!(
        (last_ms - 100.0).abs() < bound,
        "last interval {last_ms} ms, not 100 ± {bound:.1} ms (wake-ups up to {wake_latency_ms:.1} ms late meanwhile)"
    );
    assert!(elapsed < std::time::Duration::from_secs(5), "{elapsed:?}");
}

/// comm follows exec: a shell that execs the load generator is reported under its new name.
#[test]
fn comm_follows_exec() {
    let Some(_lock) = bpf_test("comm_follows_exec") else {
        return;
    };
    let recording = Recording::start("exec-comm", &["--interval", "200ms", "--counters", "none"]);
    let (pid, _) = run_measured(Command::new("sh").args(["-c", &format!("exec {LOAD} burn 0.4")]));
    std::thread::sleep(std::time::Duration::from_millis(250));
    let records = recording.stop();
    let mine: Vec<&serde_json::Value> = of_type(&records, "process")
        .filter(|r| r["pid"] == pid)
        .collect();
    let busiest = mine
        .iter()
        .max_by_key(|r| u64_of(&r["on_cpu_ns"]))
        .expect("the exec'd process is reported");
    assert_eq!(busiest["comm"], "powerapi-load", "{mine:?}");
}

/// A counter named on the command line that this CPU lacks stops `record` with one line (on a
/// machine with a PMU, `cycles` exists: then the check is that it is counted, not refused).
#[test]
fn a_named_counter_the_cpu_lacks_stops_record() {
    let Some(_lock) = bpf_test("a_named_counter_the_cpu_lacks_stops_record") else {
        return;
    };
    let out = Command::new(powerapi())
        .args(["record", "--counters", "cycles", "--duration", "0.3s"])
        .output()
        .expect("powerapi record");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let pmu = std::path::Path::new("/sys/bus/event_source/devices/cpu/events/cpu-cycles").exists()
        || std::path::Path::new("/sys/bus/event_source/devices/cpu_core").exists();
    if pmu {
        assert!(out.status.success(), "{stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"cycles\""));
    } else {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("counter cycles is not available on CPU")
                && stderr.contains("use --counters none"),
            "{stderr}"
        );
    }
}

/// Without RAPL, `auto` falls back to the model and says so on stderr, and every figure is
/// marked estimated.
#[test]
fn the_auto_fallback_is_said_and_marked() {
    let Some(_lock) = bpf_test("the_auto_fallback_is_said_and_marked") else {
        return;
    };
    let rapl = std::path::Path::new("/sys/class/powercap/intel-rapl:0").exists()
        || std::path::Path::new("/sys/bus/event_source/devices/power").exists();
    if rapl {
        skip(
            "the_auto_fallback_is_said_and_marked",
            "this machine has RAPL: auto does not fall back",
        );
        return;
    }
    let out = Command::new(powerapi())
        .args([
            "record",
            "--counters",
            "none",
            "--duration",
            "0.3s",
            "--interval",
            "100ms",
        ])
        .output()
        .expect("powerapi record");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no usable RAPL energy source")
            && stderr.contains("energy is ESTIMATED from CPU utilisation (--energy-source model)"),
        "{stderr}"
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("JSON");
        assert_eq!(r["energy"]["estimated"], true, "{line}");
    }
}
