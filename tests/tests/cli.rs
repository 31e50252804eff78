//! Bad input gets one clear line and a non-zero exit, never a panic or a hang.

mod common;

use std::process::Command;

use common::*;

#[test]
fn bad_flag_values_are_rejected() {
    for args in [
        &["record", "--interval", "soon"][..],
        &["record", "--interval", "0s"],
        &["record", "--duration", "-3s"],
        &["record", "--granularity", "socket"],
        &["record", "--bogus"],
    ] {
        let (code, stderr) = powerapi_stderr(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
}

#[test]
fn unknown_counter_is_one_line() {
    let (code, stderr) = powerapi_stderr(&[
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
    let (code, stderr) = powerapi_stderr(&[
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
        let (code, stderr) = powerapi_stderr(&["record", "--duration", "1s", "-o", "/dev/null"]);
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
fn doctor_lists_every_access_path_and_ends_with_a_verdict() {
    let out = Command::new(powerapi())
        .arg("doctor")
        .output()
        .expect("doctor runs");
    let text = String::from_utf8_lossy(&out.stdout);
    for item in [
        "kernel",
        "privileges",
        "cgroup v2",
        "energy source",
        "rapl powercap",
        "rapl perf pmu",
        "rapl msr",
    ] {
        assert!(
            text.lines().any(|l| l.contains(item)),
            "doctor misses {item}:\n{text}"
        );
    }
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("verdict: "), "{text}");
    assert_eq!(
        last.starts_with("verdict: powerapi cannot measure here"),
        !out.status.success(),
        "{text}"
    );
    // Each cause once: no two lines share their detail text.
    let details: Vec<&str> = text.lines().filter_map(|l| l.get(26..)).collect();
    for (i, d) in details.iter().enumerate() {
        assert!(!details[..i].contains(d), "said twice: {d}");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            text.contains("counters") && text.contains("bpf sensor") && text.contains("run cgroup"),
            "{text}"
        );
        // This machine's energy source as auto would pick it.
        assert!(
            text.lines().any(|l| l.contains("energy source")
                && (l.contains("auto picks") || l.contains("ESTIMATED"))),
            "{text}"
        );
    }
}

/// Options that used to be ignored or silently degraded are refused with the fix.
#[test]
fn contradictory_options_are_refused_not_silently_degraded() {
    let Some(_lock) = bpf_test("contradictory_options_are_refused_not_silently_degraded") else {
        return;
    };
    for (args, wanted) in [
        (
            &["--counters", "cpu-clock", "--metric", "cycles"][..],
            "powerapi: error: --metric cycles needs the cycles counter, which this run does not read (--counters reads cpu-clock); add it to --counters or use --metric cpu-time",
        ),
        (
            &[
                "--counters",
                "none",
                "--energy-source",
                "model",
                "--max-watts",
                "1",
            ],
            "energy source: --max-watts 1 W is below the model's idle power",
        ),
        (
            &["--counters", "none,cpu-clock"],
            "powerapi: error: --counters none means time-only and cannot be combined with counters (none,cpu-clock); drop one",
        ),
    ] {
        let mut argv = vec!["record", "--duration", "1s", "-o", "/dev/null"];
        argv.extend_from_slice(args);
        let (code, stderr) = powerapi_stderr(&argv);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
    }
}

/// Asked to rotate stdout, or to write to InfluxDB over https, `record` says so before
/// measuring (no privilege needed to see it).
#[test]
fn outputs_that_cannot_work_are_refused_before_measuring() {
    let (code, stderr) = powerapi_stderr(&["record", "--rotate-size", "1M"]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "powerapi: error: stdout is not a regular file, so it cannot be rotated; drop --rotate-size/--rotate-every or write to a file\n"
    );
    let (code, stderr) = powerapi_stderr(&["record", "--sink", "influxdb:https://db:8086/power"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("https is not supported"), "{stderr}");
    let (code, stderr) = powerapi_stderr(&["record", "--compress"]);
    assert_eq!(code, 2, "--compress without a rotation: {stderr}");
}
