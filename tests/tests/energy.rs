//! Energy end to end: a powercap-shaped tree whose counter this test advances from a known model
//! (with wraparound), the labelled model estimate, and `powerapi run`.

mod common;

use std::{
    fs,
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use common::{injected::*, *};
use serde_json::Value;

/// Every domain of every interval: attributed + idle + unattributed = measured.
fn assert_energy_conserved(records: &[Value]) {
    for m in of_type(records, "machine") {
        for d in m["energy"]["domains"].as_array().expect("domains") {
            let measured = f64_of(&d["measured_j"]);
            let sum =
                f64_of(&d["attributed_j"]) + f64_of(&d["idle_j"]) + f64_of(&d["unattributed_j"]);
            assert!(
                (sum - measured).abs() <= 1e-9 * measured.max(1.0),
                "not conserved: {d}"
            );
            assert!(
                measured >= 0.0 && f64_of(&d["attributed_j"]) >= 0.0 && f64_of(&d["idle_j"]) >= 0.0
            );
        }
    }
}

/// The burner `pid` (`cpu_ns` of CPU time by its own account) was charged its injected share,
/// ACTIVE_W × its CPU-seconds / CPUs, within 5 %.
fn assert_charged_its_share(records: &[Value], name: &str, pid: u32, cpu_ns: u64, cpus: f64) {
    let attributed: f64 = of_type(records, "process")
        .filter(|r| r["pid"] == pid)
        .map(|r| f64_of(&r["energy"]["joules"]["package"]))
        .sum();
    let expected = ACTIVE_W * (cpu_ns as f64 / 1e9) / cpus;
    let error = (attributed - expected).abs() / expected;
    eprintln!(
        "{name}: {attributed:.3} J attributed, {expected:.3} J injected ({:+.2}%)",
        (attributed / expected - 1.0) * 100.0
    );
    assert!(
        error <= 0.05,
        "{name} got {attributed:.2} J, the injected model says {expected:.2} J ({:.1}%)",
        error * 100.0
    );
}

fn burner_cpu_ns(stdout: &[u8]) -> u64 {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("cpu_ns=")?.parse::<u64>().ok())
        .sum()
}

#[test]
fn powercap_dir_attribution_matches_injected_model() {
    let Some(_lock) = bpf_test("powercap_dir_attribution_matches_injected_model") else {
        return;
    };
    let injector = Injector::start("powercap");
    let recording = injector.record("energy", &["--idle-watts", "10"]);
    let wraps_before = injector.wraps.load(Ordering::Relaxed);
    let (pid, cpu_ns) = run_measured(
        Command::new(LOAD)
            .args(["burn", "3", "1"])
            .stdout(std::process::Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(300));
    let records = recording.stop();
    let wraps = injector.wraps.load(Ordering::Relaxed) - wraps_before;
    assert!(wraps >= 1, "the test must cross a wraparound (saw {wraps})");

    let cpus = u64_of(&of_type(&records, "machine").next().expect("machine")["cpus"]) as f64;
    for m in of_type(&records, "machine") {
        let e = &m["energy"];
        assert_eq!(
            (e["source"].as_str(), e["estimated"].as_bool()),
            (Some("powercap-dir"), Some(false))
        );
        let seconds = u64_of(&m["interval"]["duration_ns"]) as f64 / 1e9;
        for d in e["domains"].as_array().expect("domains") {
            // No negative or giant value across the wraps: at most the model's full power.
            let watts = f64_of(&d["measured_j"]) / seconds.max(1e-3);
            assert!(
                watts < (IDLE_W + ACTIVE_W) * 1.5,
                "implausible {watts} W in {d}"
            );
            assert_eq!(d["idle_source"], "flag");
        }
    }
    assert_energy_conserved(&records);

    eprintln!("{wraps} wraps");
    assert_charged_its_share(&records, "burner", pid, cpu_ns, cpus);
}

#[test]
fn model_estimates_are_labelled_and_follow_load() {
    let Some(_lock) = bpf_test("model_estimates_are_labelled_and_follow_load") else {
        return;
    };
    let recording = Recording::start(
        "model",
        &[
            "--interval",
            "500ms",
            "--counters",
            "none",
            "--energy-source",
            "model",
            "--idle-watts",
            "4",
            "--max-watts",
            "20",
        ],
    );
    std::thread::sleep(Duration::from_millis(600));
    let (pid, truth_ns) = run_measured(
        Command::new(LOAD)
            .args(["burn", "1.5", "1"])
            .stdout(std::process::Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(600));
    let records = recording.stop();
    let mut powers = Vec::new();
    for m in of_type(&records, "machine") {
        let e = &m["energy"];
        assert_eq!(
            (e["source"].as_str(), e["estimated"].as_bool()),
            (Some("model"), Some(true))
        );
        let d = &e["domains"][0];
        let busy = u64_of(&m["busy_ns"]) as f64 / u64_of(&m["capacity_ns"]) as f64;
        let power = f64_of(&d["power_w"]);
        assert!(
            (power - (4.0 + 16.0 * busy)).abs() < 0.05,
            "model: {power} W at {busy} busy"
        );
        assert_eq!(d["idle_source"], "model");
        if m["interval"]["partial"] == false {
            powers.push(power);
        }
    }
    for r in of_type(&records, "process") {
        assert_eq!(
            r["energy"]["estimated"], true,
            "every estimated figure is labelled"
        );
    }
    // The burner's load shows in what it is charged: the model's active power, (20 − 4) W over
    // 2 CPUs, split by on-CPU time, is 8 J per CPU-second it ran, whatever else runs (its rusage
    // says how long). Not "the machine's power moved by 5 W": a busy machine is at 20 W
    // throughout. 1 % + 5 ms of CPU time: rusage against the sensor (record.rs).
    let burner_j: f64 = of_type(&records, "process")
        .filter(|r| r["pid"] == pid)
        .map(|r| f64_of(&r["energy"]["joules"]["package"]))
        .sum();
    let want_j = 8.0 * truth_ns as f64 / 1e9;
    let bound_j = 8.0 * (truth_ns as f64 / 1e9 / 100.0 + 0.005);
    assert!(
        (burner_j - want_j).abs() <= bound_j,
        "the burner was charged {burner_j:.3} J for {:.3} CPU-s: the model says {want_j:.3} J ({powers:?} W)",
        truth_ns as f64 / 1e9
    );
    assert_energy_conserved(&records);
}

fn run_powerapi(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(powerapi())
        .arg("run")
        .args(args)
        .output()
        .expect("powerapi run");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `powerapi run` on a short command with no idle figure known beforehand: before the baseline
/// existed the command was charged the machine's idle power too (measured: +100% here).
#[test]
fn run_charges_the_command_only_above_the_idle_baseline() {
    let Some(_lock) = bpf_test("run_charges_the_command_only_above_the_idle_baseline") else {
        return;
    };
    let state = temp_path("run-state");
    let _ = fs::remove_dir_all(&state);
    let injector = Injector::start("run-baseline");
    let source = format!("powercap-dir:{}", injector.dir.display());
    let report_path = temp_path("run-baseline.json");
    let out = Command::new(powerapi())
        .env("POWERAPI_STATE_DIR", &state)
        .args(["run", "--json", "--counters", "none", "--interval", "250ms"])
        .args(["--energy-source", &source, "--baseline", "2s", "-o"])
        .arg(&report_path)
        .args(["--", LOAD, "burn", "3"])
        .output()
        .expect("powerapi run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&fs::read_to_string(&report_path).expect("report"))
        .expect("JSON report");
    let _ = fs::remove_file(&report_path);
    let (_, cpus) = proc_stat_idle();
    // The injector charges ACTIVE_W per busy CPU share; the burner's share is its own CPU time.
    let cpu_s = burner_cpu_ns(&out.stdout) as f64 / 1e9;
    let truth = ACTIVE_W * cpu_s / cpus;
    let active = f64_of(&report["joules"]["package"]["mean"]);
    // Measured here: −0.9% to −0.1% over three runs; without the
    // baseline the burner was charged idle power too (+100%), with an uncorrected baseline −5.5%.
    eprintln!("run baseline: active {active:.3} J vs injected {truth:.3} J");
    assert!(
        (active - truth).abs() <= truth * 0.05,
        "active energy {active:.2} J vs injected {truth:.2} J for the burner"
    );
    assert_eq!(report["idle_source"], "baseline measured before CMD");
    let duration = f64_of(&report["duration_s"]["mean"]);
    let idle = f64_of(&report["idle_joules"]["package"]["mean"]);
    // Measured here: within 1% (the baseline's background load is fitted out, see
    // `run::background_corrected`).
    assert!(
        (idle - IDLE_W * duration).abs() <= IDLE_W * duration * 0.05,
        "idle {idle:.2} J over {duration:.2} s vs {IDLE_W} W"
    );
    let total = f64_of(&report["total_joules"]["package"]["mean"]);
    assert!((total - (active + idle)).abs() < 1e-9);

    // The quiet baseline was saved: the next command starts from it in its first interval.
    let saved = fs::read_to_string(state.join("idle.json")).expect("idle estimate saved");
    assert!(saved.contains(&source), "{saved}");
    let recording = Command::new(powerapi())
        .env("POWERAPI_STATE_DIR", &state)
        .args([
            "record",
            "--counters",
            "none",
            "--interval",
            "300ms",
            "--duration",
            "0.6s",
        ])
        .args(["--energy-source", &source])
        .output()
        .expect("powerapi record");
    assert!(recording.status.success());
    let records: Vec<Value> = String::from_utf8_lossy(&recording.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let first = of_type(&records, "machine")
        .next()
        .expect("a machine record");
    let domain = &first["energy"]["domains"][0];
    assert_eq!(domain["idle_source"], "persisted", "{domain}");
    let idle_w = f64_of(&domain["idle_w"]);
    eprintln!("saved idle: {idle_w:.3} W vs injected {IDLE_W} W");
    assert!(
        (idle_w - IDLE_W).abs() <= IDLE_W * 0.05,
        "saved idle {idle_w} W"
    );
    let _ = fs::remove_dir_all(&state);
}

#[test]
fn run_follows_descendants_and_passes_the_exit_code() {
    let Some(_lock) = bpf_test("run_follows_descendants_and_passes_the_exit_code") else {
        return;
    };
    let report_path = temp_path("run.json");
    let script = format!("{LOAD} burn 0.6 & {LOAD} burn 0.6 & {LOAD} burn 0.3; wait; exit 7");
    let (code, stdout, stderr) = run_powerapi(&[
        "--json",
        "--energy-source",
        "model",
        "-o",
        report_path.to_str().expect("utf-8"),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code, 7, "CMD's exit code: {stderr}");
    let truth = burner_cpu_ns(&stdout) as f64 / 1e9;
    let report: Value = serde_json::from_str(&fs::read_to_string(&report_path).expect("report"))
        .expect("JSON report");
    let _ = fs::remove_file(&report_path);
    assert_eq!(report["exit_code"], 7);
    assert_eq!(report["estimated"], true);
    let cpu = f64_of(&report["cpu_time_s"]["mean"]);
    assert!(
        (cpu - truth).abs() <= truth * 0.05 + 0.02,
        "descendants' CPU {cpu} s vs their own clocks {truth} s"
    );
    assert!(f64_of(&report["joules"]["package"]["mean"]) > 0.0);
    let share = f64_of(&report["share"]["package"]);
    assert!(share > 0.0 && share <= 1.0);
}

#[test]
fn run_repeats_and_prints_a_text_report() {
    let Some(_lock) = bpf_test("run_repeats_and_prints_a_text_report") else {
        return;
    };
    let (code, stdout, stderr) = run_powerapi(&[
        "--repeat",
        "3",
        "--energy-source",
        "model",
        "--",
        LOAD,
        "burn",
        "0.2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    // The report goes to stderr, as perf stat's does: stdout is CMD's alone.
    assert!(
        String::from_utf8_lossy(&stdout)
            .lines()
            .all(|l| l.starts_with("cpu_ns=")),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
    assert!(
        stderr.contains("(3 runs)") && stderr.contains("energy package") && stderr.contains("±"),
        "{stderr}"
    );
    assert!(
        stderr.contains("energy ESTIMATED by the linear model"),
        "{stderr}"
    );
}

#[test]
fn run_reports_a_missing_command_in_one_line() {
    let Some(_lock) = bpf_test("run_reports_a_missing_command_in_one_line") else {
        return;
    };
    // A shell's codes: 127 not found, 126 found but not executable.
    let (code, _, stderr) = run_powerapi(&["--energy-source", "none", "--", "/nonexistent/cmd"]);
    assert_eq!(code, 127, "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(
            "powerapi: error: cannot run /nonexistent/cmd: No such file or directory (os error 2); check its name, PATH and permissions"
        ),
        "{stderr}"
    );
    let script = temp_path("not-executable.sh");
    fs::write(&script, "#!/bin/sh\n").expect("write");
    let (code, _, stderr) = run_powerapi(&[
        "--energy-source",
        "none",
        "--",
        script.to_str().expect("utf-8"),
    ]);
    let _ = fs::remove_file(&script);
    assert_eq!(code, 126, "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn sysfs_root_lets_auto_find_a_powercap_tree() {
    let Some(_lock) = bpf_test("sysfs_root_lets_auto_find_a_powercap_tree") else {
        return;
    };
    // A /sys of our own: the host's devices (CPU topology) and a powercap tree this test drives.
    let root = temp_path("sysfs-root");
    fs::create_dir_all(root.join("sys/class")).expect("mkdir");
    std::os::unix::fs::symlink("/sys/devices", root.join("sys/devices")).expect("symlink");
    let injector = Injector::start_in(root.join("sys/class/powercap"));
    let (code, stdout, stderr) = run_powerapi(&[
        "--json",
        "--sysfs-root",
        root.to_str().expect("utf-8"),
        "--idle-watts",
        "10",
        "--",
        LOAD,
        "burn",
        "1.5",
        "1",
    ]);
    drop(injector);
    let _ = fs::remove_dir_all(&root);
    assert_eq!(code, 0, "{stderr}");
    // `run --json -- CMD | jq` works: stdout is CMD's, the report is on stderr.
    assert!(
        String::from_utf8_lossy(&stdout).starts_with("cpu_ns="),
        "{stderr}"
    );
    let report = json_report(&stderr);
    assert_eq!(
        report["source"], "powercap",
        "auto must pick the powercap tree under --sysfs-root"
    );
    assert_eq!(report["estimated"], false);
    assert!(!stderr.contains("ESTIMATED"), "{stderr}");
    let cpu_s = f64_of(&report["cpu_time_s"]["mean"]);
    let joules = f64_of(&report["joules"]["package"]["mean"]);
    let expected = ACTIVE_W * cpu_s / proc_stat_idle().1;
    assert!(
        (joules - expected).abs() <= expected * 0.1,
        "{joules:.2} J for {cpu_s:.2} CPU-s; the injected model says {expected:.2} J"
    );
}

/// A host that resets its guest's counter, leaves `energy_uj` empty while rewriting it in place,
/// and has no `max_energy_range_uj`: before, the reset read as 1.8 × 10¹³ J and the empty read
/// ended the recording. Now those intervals are unmeasured (listed, counted), the rest measured.
#[test]
fn lying_energy_input_is_unmeasured_and_recording_goes_on() {
    let Some(_lock) = bpf_test("lying_energy_input_is_unmeasured_and_recording_goes_on") else {
        return;
    };
    let dir = temp_path("lying-powercap");
    let zone = dir.join("intel-rapl:0");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&zone).expect("mkdir zone");
    fs::write(zone.join("name"), "package-0\n").expect("name");
    let energy = zone.join("energy_uj");
    fs::write(&energy, "0\n").expect("energy");
    let source = format!("powercap-dir:{}", dir.display());
    let recording = Recording::start(
        "lying",
        &[
            "--counters",
            "none",
            "--interval",
            "200ms",
            "--energy-source",
            &source,
        ],
    );
    // 10 W, written every 20 ms, in phases: honest, reset, honest, empty, honest.
    let write_for = |from_uj: u64, seconds: f64| -> u64 {
        let t0 = Instant::now();
        let mut uj = from_uj;
        while t0.elapsed().as_secs_f64() < seconds {
            uj = from_uj + (t0.elapsed().as_secs_f64() * 10.0 * 1e6) as u64;
            fs::write(&energy, format!("{uj}\n")).expect("write energy");
            std::thread::sleep(Duration::from_millis(20));
        }
        uj
    };
    let uj = write_for(0, 0.8);
    let _ = uj;
    let uj = write_for(1_000, 0.8); // counter reset to ~0
    fs::write(&energy, "").expect("empty energy_uj");
    std::thread::sleep(Duration::from_millis(700));
    write_for(uj, 0.8);
    let records = recording.stop();

    let machines: Vec<&Value> = of_type(&records, "machine").collect();
    let reasons: Vec<String> = machines
        .iter()
        .flat_map(|m| {
            m["energy"]["unmeasured"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|u| u["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(reasons.iter().any(|r| r == "implausible"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "unreadable"), "{reasons:?}");
    let last = machines.last().expect("machine records");
    assert!(
        u64_of(&last["energy"]["implausible_readings"]) >= 1,
        "{last}"
    );
    assert!(
        u64_of(&last["energy"]["unreadable_readings"]) >= 1,
        "{last}"
    );
    // Every figure that is there is plausible: 10 W injected; 3 × covers a 20 ms write lag in a
    // 200 ms interval (measured here: within ±15 %).
    let mut measured = 0;
    for m in &machines {
        let seconds = u64_of(&m["interval"]["duration_ns"]) as f64 / 1e9;
        for d in m["energy"]["domains"].as_array().expect("domains") {
            let watts = f64_of(&d["measured_j"]) / seconds;
            assert!(watts < 30.0, "{watts} W in {m}");
            measured += 1;
        }
    }
    assert!(
        measured >= 5,
        "intervals after each bad phase are measured again"
    );
    assert_energy_conserved(&records);
    let _ = fs::remove_dir_all(&dir);
}

/// Two processes with very different CPU shares (a busy loop and a 5 % pulse) each get the
/// energy the injected model caused for them: giving everything to the biggest task, or
/// splitting equally, fails here.
#[test]
fn two_burners_get_energy_in_proportion_to_their_cpu() {
    let Some(_lock) = bpf_test("two_burners_get_energy_in_proportion_to_their_cpu") else {
        return;
    };
    let injector = Injector::start("two-burners");
    let recording = injector.record("two-burners", &["--idle-watts", "10"]);
    let pulse = std::thread::spawn(|| {
        run_measured(
            Command::new(LOAD)
                .args(["pulse", "2"])
                .stdout(std::process::Stdio::null()),
        )
    });
    let (busy_pid, busy_ns) = run_measured(
        Command::new(LOAD)
            .args(["burn", "2", "1"])
            .stdout(std::process::Stdio::null()),
    );
    let (pulse_pid, pulse_ns) = pulse.join().expect("pulse");
    std::thread::sleep(Duration::from_millis(300));
    let records = recording.stop();
    drop(injector);
    let cpus = proc_stat_idle().1;
    let joules_of = |pid: u32| -> f64 {
        of_type(&records, "process")
            .filter(|r| r["pid"] == pid)
            .map(|r| f64_of(&r["energy"]["joules"]["package"]))
            .sum()
    };
    for (name, pid, ns) in [("busy", busy_pid, busy_ns), ("pulse", pulse_pid, pulse_ns)] {
        let got = joules_of(pid);
        let truth = ACTIVE_W * (ns as f64 / 1e9) / cpus;
        eprintln!(
            "{name}: {got:.3} J vs injected {truth:.3} J ({:+.1}%)",
            (got / truth - 1.0) * 100.0
        );
        // Measured here over three runs: busy +0.2 to +0.6 %, pulse −0.3 to −0.5 %; 3 % is
        // five times the worst. Everything to the busiest task would give the pulse 0 J.
        assert!(
            (got - truth).abs() <= truth * 0.03,
            "{name} got {got:.3} J, the injected model says {truth:.3} J"
        );
    }
    assert_energy_conserved(&records);
}

/// `--idle-policy cpu-time` hands the idle energy to the tasks that ran (the machine record's
/// idle part is then 0 and the burner's share grows by its CPU share of idle), and
/// `--metric cpu-time` is said in the record.
#[test]
fn idle_policy_and_metric_end_to_end() {
    let Some(_lock) = bpf_test("idle_policy_and_metric_end_to_end") else {
        return;
    };
    let injector = Injector::start("idle-policy");
    let recording = injector.record(
        "idle-policy",
        &[
            "--idle-watts",
            "10",
            "--idle-policy",
            "cpu-time",
            "--metric",
            "cpu-time",
        ],
    );
    let (pid, cpu_ns) = run_measured(
        Command::new(LOAD)
            .args(["burn", "1.5", "1"])
            .stdout(std::process::Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(300));
    let records = recording.stop();
    drop(injector);
    assert_energy_conserved(&records);
    for m in of_type(&records, "machine") {
        for d in m["energy"]["domains"].as_array().expect("domains") {
            assert_eq!(d["metric"], "cpu-time", "{d}");
            if u64_of(&m["busy_ns"]) > 0 {
                assert_eq!(f64_of(&d["idle_j"]), 0.0, "idle handed to tasks: {d}");
            }
        }
        assert_eq!(m["energy"]["idle_policy"], "cpu-time");
    }
    // The burner's joules = the active energy the injector charged for its CPU time, plus its
    // CPU-time share of each interval's idle energy (10 W × the interval, split by on-CPU time
    // among the tasks that ran, from the records' own times).
    let got: f64 = of_type(&records, "process")
        .filter(|r| r["pid"] == pid)
        .map(|r| f64_of(&r["energy"]["joules"]["package"]))
        .sum();
    let idle_share: f64 = of_type(&records, "machine")
        .map(|m| {
            let seq = &m["interval"]["seq"];
            let burner_ns: u64 = of_type(&records, "process")
                .filter(|r| r["pid"] == pid && &r["interval"]["seq"] == seq)
                .map(|r| u64_of(&r["on_cpu_ns"]))
                .sum();
            let busy = u64_of(&m["busy_ns"]).max(1) as f64;
            IDLE_W * u64_of(&m["interval"]["duration_ns"]) as f64 / 1e9 * burner_ns as f64 / busy
        })
        .sum();
    let active = ACTIVE_W * (cpu_ns as f64 / 1e9) / proc_stat_idle().1;
    let expected = active + idle_share;
    eprintln!(
        "idle policy: {got:.3} J vs {expected:.3} J ({active:.3} active + {idle_share:.3} idle)"
    );
    // Measured here: within 1 % (the active part's error, as in the other injector tests).
    assert!(
        (got - expected).abs() <= expected * 0.03,
        "{got:.3} J, expected {expected:.3} J ({active:.3} active + {idle_share:.3} idle)"
    );
}

/// SmartWatts end to end, time-only: a powercap tree whose power is 10 W + 20 W × busy
/// fraction (2 CPUs: 10 W per busy CPU) must be learnt from the sensor's own CPU time, and each
/// burner charged its injected share.
#[test]
fn smartwatts_learns_the_injected_model_and_charges_each_burner_its_share() {
    let Some(_lock) =
        bpf_test("smartwatts_learns_the_injected_model_and_charges_each_burner_its_share")
    else {
        return;
    };
    let injector = Injector::start("smartwatts");
    // --idle-watts would override the model's intercept: not given.
    let saved = temp_path("smartwatts-model.json");
    let _ = fs::remove_file(&saved);
    let saved_arg = saved.display().to_string();
    let recording = injector.record(
        "smartwatts",
        &["--formula", "smartwatts", "--save-model", &saved_arg],
    );
    // Varied load, so that idle and per-CPU power can be told apart: quiet, one burner, two.
    std::thread::sleep(Duration::from_millis(2000));
    let one = std::thread::spawn(|| {
        run_measured(
            Command::new(LOAD)
                .args(["burn", "6", "1"])
                .stdout(std::process::Stdio::null()),
        )
    });
    std::thread::sleep(Duration::from_millis(3000));
    let two = run_measured(
        Command::new(LOAD)
            .args(["burn", "3", "1"])
            .stdout(std::process::Stdio::null()),
    );
    let one = one.join().expect("first burner");
    std::thread::sleep(Duration::from_millis(1000));
    let records = recording.stop();
    assert_energy_conserved(&records);

    let cpus = u64_of(&of_type(&records, "machine").next().expect("machine")["cpus"]) as f64;
    let models: Vec<&Value> = of_type(&records, "model").collect();
    let first = models
        .first()
        .expect("a model record once 10 intervals were seen");
    assert_eq!(
        (first["domain"].as_str(), first["reason"].as_str()),
        (Some("package"), Some("first"))
    );
    let intercept = f64_of(&first["model"]["intercept_w"]);
    let per_cpu = f64_of(&first["model"]["weights"]["cpu-seconds"]);
    eprintln!(
        "fitted: {intercept:.2} W idle, {per_cpu:.2} W per busy CPU; {} model records",
        models.len()
    );
    // The injector's busy time (/proc/stat) and the sensor's differ by the meter's own
    // work and rounding: 10 % on each coefficient.
    assert!(
        (intercept - IDLE_W).abs() <= 0.1 * IDLE_W,
        "intercept {intercept} W"
    );
    let injected_per_cpu = ACTIVE_W / cpus;
    assert!(
        (per_cpu - injected_per_cpu).abs() <= 0.1 * injected_per_cpu,
        "{per_cpu} W per CPU"
    );
    // Intervals after the fit say so; the idle power is the model's intercept.
    let fitted: Vec<Value> = of_type(&records, "machine")
        .flat_map(|m| {
            m["energy"]["domains"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|d| d["formula"]["fitted"] == true)
        .collect();
    assert!(fitted.len() >= 4, "{} fitted intervals", fitted.len());
    assert!(
        fitted
            .iter()
            .all(|d| d["idle_source"] == "formula" && d["metric"] == "smartwatts")
    );

    // Replayed offline with the same options, the trace's figures come back, model and all.
    let trace = temp_path("smartwatts-replay.jsonl");
    let lines: String = records.iter().map(|r| format!("{r}\n")).collect();
    fs::write(&trace, lines).expect("trace");
    let replayed = replay_records(&trace, &["--formula", "smartwatts"]);
    let _ = fs::remove_file(&trace);

    // The saved model, loaded where there is no RAPL: energy estimated by b + w·x from this
    // run's own CPU time, labelled so, with the model's training error.
    let model: Value =
        serde_json::from_str(&fs::read_to_string(&saved).expect("saved model")).expect("JSON");
    assert_eq!(model["features"], serde_json::json!(["cpu-seconds"]));
    let layer = &model["layers"][0];
    let (b, w) = (
        f64_of(&layer["model"]["intercept_w"]),
        f64_of(&layer["model"]["weights"]["cpu-seconds"]),
    );
    assert!(
        (b - intercept).abs() < 1e-9 && (w - per_cpu).abs() < 1e-9,
        "{model}"
    );
    let estimated = Recording::start(
        "loaded-model",
        &[
            "--interval",
            "500ms",
            "--counters",
            "none",
            "--energy-source",
            "model",
            "--load-model",
            &saved_arg,
        ],
    );
    run_measured(
        Command::new(LOAD)
            .args(["burn", "1", "1"])
            .stdout(std::process::Stdio::null()),
    );
    let loaded = estimated.stop();
    let _ = fs::remove_file(&saved);
    assert_energy_conserved(&loaded);
    for m in of_type(&loaded, "machine") {
        let e = &m["energy"];
        assert_eq!(
            (e["source"].as_str(), e["estimated"].as_bool()),
            (Some("smartwatts-model"), Some(true))
        );
        assert!(f64_of(&e["estimate_error_w"]) >= 0.0, "{e}");
        let seconds = u64_of(&m["interval"]["duration_ns"]) as f64 / 1e9;
        let busy_s = u64_of(&m["busy_ns"]) as f64 / 1e9;
        let want = (b + w * busy_s / seconds) * seconds;
        let got = f64_of(&e["domains"][0]["measured_j"]);
        assert!(
            (got - want).abs() <= 1e-9 * want,
            "{got} J vs b + w·x = {want} J"
        );
        assert_eq!(e["domains"][0]["idle_source"], "model");
    }
    assert_eq!(replayed.len(), records.len());
    for (a, b) in records.iter().zip(&replayed) {
        assert_eq!(a["type"], b["type"]);
        let pairs: Vec<(f64, f64)> = match a["type"].as_str() {
            Some("model") => vec![
                (
                    f64_of(&a["model"]["intercept_w"]),
                    f64_of(&b["model"]["intercept_w"]),
                ),
                (
                    f64_of(&a["model"]["weights"]["cpu-seconds"]),
                    f64_of(&b["model"]["weights"]["cpu-seconds"]),
                ),
            ],
            Some("process") => vec![(
                f64_of(&a["energy"]["joules"]["package"]),
                f64_of(&b["energy"]["joules"]["package"]),
            )],
            Some("machine") => vec![(
                f64_of(&a["energy"]["domains"][0]["idle_j"]),
                f64_of(&b["energy"]["domains"][0]["idle_j"]),
            )],
            _ => vec![],
        };
        for (x, y) in pairs {
            assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{a} vs {b}");
        }
    }

    for (name, (pid, cpu_ns)) in [("one", one), ("two", two)] {
        assert_charged_its_share(&records, &format!("burner {name}"), pid, cpu_ns, cpus);
    }
}

/// Issue 19's reference workload on a machine of 7 W + 31 W × busy, recorded with default flags
/// (only the injected tree named): each part is charged its true energy, and idle is what the
/// machine draws at zero busy, learned in this run (`POWERAPI_STATE_DIR` is empty). The test
/// VM's background keeps every quiet interval 1–6 % busy, so the 10th percentile of quiet
/// intervals read 7.9–8.2 W here and charged the parts 91–93 %. The truth is the kernel's CPU
/// time of each part's cgroup, so another job loading the CPUs meanwhile changes nothing.
#[test]
fn record_charges_the_reference_workload_its_energy_with_idle_at_zero_busy() {
    let Some(_lock) =
        bpf_test("record_charges_the_reference_workload_its_energy_with_idle_at_zero_busy")
    else {
        return;
    };
    let injector = Injector::start_model("reference", REFERENCE_MODEL.0, REFERENCE_MODEL.1);
    let state = temp_path("reference-state");
    let _ = fs::remove_dir_all(&state);
    let source = format!("powercap-dir:{}", injector.dir.display());
    let recording = Recording::start_env(
        "reference",
        &["--energy-source", &source],
        &[("POWERAPI_STATE_DIR", &state)],
    );
    // A few quiet intervals first, as a machine has before a workload.
    std::thread::sleep(Duration::from_secs(2));
    let parts = reference_workload("record");
    // The last part's interval closes.
    std::thread::sleep(Duration::from_millis(1500));
    let records = recording.stop();
    let _ = fs::remove_dir_all(&state);
    assert_energy_conserved(&records);
    assert_reference_workload_charged(
        "record",
        &records,
        &parts,
        REFERENCE_MODEL,
        REFERENCE_TOLERANCE,
        REFERENCE_IDLE_TOLERANCE_W,
    );
}
