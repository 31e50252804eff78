//! Bad input gets one clear line and a non-zero exit, never a panic or a hang.

mod common;

use std::process::Command;

use common::*;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(powerapi())
        .args(args)
        .output()
        .expect("powerapi runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flag_values_are_rejected() {
    for args in [
        &["record", "--interval", "soon"][..],
        &["record", "--interval", "0s"],
        &["record", "--duration", "-3s"],
        &["record", "--granularity", "socket"],
        &["record", "--bogus"],
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
}

#[test]
fn unknown_counter_is_one_line() {
    let (code, stderr) = run(&[
        "record",
        "--counters",
        "cycles,warp-drive",
        "--duration",
        "1s",
        "-o",
        "/dev/null",
    ]);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("unknown counter \"warp-drive\""),
        "{stderr}"
    );
}

#[test]
fn unwritable_output_is_one_line() {
    let (code, stderr) = run(&[
        "record",
        "--duration",
        "1s",
        "-o",
        "/nonexistent-dir/trace.jsonl",
    ]);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("/nonexistent-dir/trace.jsonl") && stderr.contains("writable"),
        "{stderr}"
    );
}

#[test]
fn unprivileged_run_says_how_to_fix() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let (code, stderr) = run(&["record", "--duration", "1s", "-o", "/dev/null"]);
        assert_eq!(code, 1);
        assert!(stderr.contains("sudo"), "{stderr}");
        return;
    }
    // As root, drop to nobody with no capabilities.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(powerapi())
        .args(["record", "--duration", "1s", "-o", "/dev/null"])
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("sudo"),
        "{stderr}"
    );
}

#[test]
fn doctor_lists_every_access_path() {
    let out = Command::new(powerapi())
        .arg("doctor")
        .output()
        .expect("doctor runs");
    let text = String::from_utf8_lossy(&out.stdout);
    for item in [
        "kernel",
        "privileges",
        "cgroup v2",
        "rapl powercap",
        "rapl perf pmu",
        "rapl msr",
    ] {
        assert!(
            text.lines().any(|l| l.contains(item)),
            "doctor misses {item}:\n{text}"
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            text.contains("counter cycles") && text.contains("bpf sensor"),
            "{text}"
        );
    }
}
