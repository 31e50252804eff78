//! `powerapi run` as `perf stat` users expect: exit codes as a shell gives them, Ctrl-C that
//! stops a series cleanly, a report that is never lost, and a cgroup that is always removed.

mod common;

use std::{
    fs,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;

fn run(args: &[&str]) -> Output {
    Command::new(powerapi())
        .args(["run", "--energy-source", "none", "--interval", "100ms"])
        .args(args)
        .output()
        .expect("powerapi run")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn filters_are_for_record_and_top_only() {
    for flag in ["--pid=1", "--comm=sh", "--cgroup=/"] {
        let out = run(&[flag, "--", "true"]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert!(stderr_of(&out).contains("unexpected argument"), "{flag}");
    }
}

#[test]
fn a_command_killed_by_a_signal_is_reported_so_and_exits_as_a_shell_would() {
    let Some(_lock) = bpf_test("a_command_killed_by_a_signal_is_reported_so") else {
        return;
    };
    let out = run(&["--json", "--", "sh", "-c", "kill -KILL $$"]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(128 + 9), "{stderr}");
    let report = json_report(&stderr);
    assert_eq!(report["signal"], "SIGKILL");
    assert_eq!(report["exit_code"], 137);
    assert_eq!(report["schema"], 3);
    assert_eq!(report["mode"], "time-only");
    let out = run(&["--", "sh", "-c", "kill -SEGV $$"]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(128 + 11), "{stderr}");
    assert!(stderr.contains("command killed by SIGSEGV"), "{stderr}");
    // Shown as typed: one argument with spaces is quoted.
    assert!(
        stderr.contains("powerapi run sh -c 'kill -SEGV $$'"),
        "{stderr}"
    );
}

#[test]
fn an_unwritable_report_still_shows_and_keeps_the_exit_code() {
    let Some(_lock) = bpf_test("an_unwritable_report_still_shows_and_keeps_the_exit_code") else {
        return;
    };
    let out = run(&["-o", "/dev/full", "--", "sh", "-c", "exit 3"]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(
            "powerapi: error: cannot write the report to /dev/full: No space left on device (os error 28); here it is"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("cpu time"), "the report follows: {stderr}");
}

/// Starts `powerapi run` with `args`, waits `after`, sends SIGINT to powerapi (not CMD).
fn interrupt(args: &[&str], after: &[Duration]) -> (Output, Duration) {
    let child = Command::new(powerapi())
        .args(["run", "--energy-source", "none", "--interval", "100ms"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("powerapi run");
    let pid = child.id() as i32;
    let started = Instant::now();
    for wait in after {
        std::thread::sleep(*wait);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
    let out = child.wait_with_output().expect("wait");
    (out, started.elapsed())
}

#[test]
fn ctrl_c_during_a_series_reports_only_the_complete_runs() {
    let Some(_lock) = bpf_test("ctrl_c_during_a_series_reports_only_the_complete_runs") else {
        return;
    };
    // Each run marks its start in a file and sleeps 0.8 s; the interrupt lands 0.2 s into the
    // second, whenever that starts (not at a fixed time: a busy machine delays the first).
    let marker = temp_path("series-marker");
    let _ = fs::remove_file(&marker);
    let script = format!("echo run >> {}; sleep 0.8", marker.display());
    let child = Command::new(powerapi())
        .args(["run", "--energy-source", "none", "--interval", "100ms"])
        .args(["--json", "--repeat", "3", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("powerapi run");
    wait_until("the second run", Duration::from_secs(30), || {
        let runs = fs::read_to_string(&marker).map_or(0, |t| t.lines().count());
        (runs >= 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("wait");
    let _ = fs::remove_file(&marker);
    let stderr = stderr_of(&out);
    let report = json_report(&stderr);
    assert_eq!(report["runs"].as_array().map(Vec::len), Some(1), "{stderr}");
    assert_eq!(report["interrupted"], true);
    assert!(report["runs"][0].get("interrupted").is_none(), "{stderr}");
    let duration = report["duration_s"]["mean"].as_f64().expect("duration");
    assert!(duration > 0.75, "only the complete run: {duration}");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
}

#[test]
fn a_second_interrupt_kills_a_command_that_ignores_sigterm() {
    let Some(_lock) = bpf_test("a_second_interrupt_kills_a_command_that_ignores_sigterm") else {
        return;
    };
    let (out, took) = interrupt(
        &["--", "sh", "-c", "trap '' TERM; sleep 30; sleep 30"],
        &[Duration::from_millis(800), Duration::from_millis(800)],
    );
    let stderr = stderr_of(&out);
    assert!(took < Duration::from_secs(10), "{stderr}");
    assert!(stderr.contains("interrupt again to kill it"), "{stderr}");
    assert!(stderr.contains("command killed by SIGKILL"), "{stderr}");
    assert!(stderr.contains(" — interrupted"), "{stderr}");
    assert_eq!(out.status.code(), Some(137), "{stderr}");
}

#[test]
fn a_daemon_left_behind_does_not_keep_the_cgroup() {
    let Some(_lock) = bpf_test("a_daemon_left_behind_does_not_keep_the_cgroup") else {
        return;
    };
    let out = run(&["--", "sh", "-c", "sleep 20 & echo $!"]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let daemon: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the daemon's pid on stdout");
    let said = stderr.contains(&format!("left 1 process(es) running (pid {daemon})"));
    let cgroup = fs::read_to_string(format!("/proc/{daemon}/cgroup")).unwrap_or_default();
    // SAFETY: signalling the test's own grandchild.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    assert!(said, "{stderr}");
    assert!(
        !cgroup.contains("powerapi-run-"),
        "the daemon was moved out of the run cgroup: {cgroup}"
    );
    assert!(!stderr.contains("cannot remove"), "{stderr}");
}

/// `--repeat` exits with the first failing run's code.
#[test]
fn repeat_exits_with_the_first_failure() {
    let Some(_lock) = bpf_test("repeat_exits_with_the_first_failure") else {
        return;
    };
    // Fails on the second run only (the marker file exists from the first).
    let marker = temp_path("repeat-marker");
    let _ = fs::remove_file(&marker);
    let script = format!(
        "if [ -e {m} ]; then exit 5; else touch {m}; fi",
        m = marker.display()
    );
    let out = run(&[
        "--baseline",
        "0",
        "--repeat",
        "3",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let _ = fs::remove_file(&marker);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("(3 runs)") && stderr.contains("command exited with 5"),
        "{stderr}"
    );
}
