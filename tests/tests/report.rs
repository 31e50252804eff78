//! `powerapi report` on a real recorded trace: its figures must equal sums the test computes
//! from the trace itself.

mod common;

use std::{collections::BTreeMap, fs, process::Command};

use common::*;
use serde_json::Value;

#[test]
fn report_figures_equal_the_traces_own_sums() {
    let Some(_lock) = bpf_test("report_figures_equal_the_traces_own_sums") else {
        return;
    };
    let trace = temp_path("report.jsonl");
    let _ = fs::remove_file(&trace);
    let burner = Killed::burner(&["4"]);
    let t = trace.display().to_string();
    powerapi_ok([
        "record",
        "--interval",
        "500ms",
        "--duration",
        "2500ms",
        "--counters",
        "none",
        "--energy-source",
        "model",
        "-o",
        &t,
    ]);
    drop(burner);
    // A cut last line, as a crash would leave: counted, not fatal.
    fs::write(
        &trace,
        fs::read_to_string(&trace).expect("trace") + "{\"type\":\"process\",\"pid\"",
    )
    .expect("append");

    let report = Command::new(powerapi())
        .arg("report")
        .arg(&trace)
        .args(["--by", "command", "--top", "3", "--format", "json"])
        .output()
        .expect("report");
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let summary: Value = serde_json::from_slice(&report.stdout).expect("JSON");

    // The test's own sums, from the trace's lines.
    let text = fs::read_to_string(&trace).expect("trace");
    let records: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let machines: Vec<&Value> = of_type(&records, "machine").collect();
    let seconds: f64 = machines
        .iter()
        .map(|m| u64_of(&m["interval"]["duration_ns"]) as f64 / 1e9)
        .sum();
    let measured: f64 = machines
        .iter()
        .flat_map(|m| {
            m["energy"]["domains"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|d| f64_of(&d["measured_j"]))
        .sum();
    let idle: f64 = machines
        .iter()
        .flat_map(|m| {
            m["energy"]["domains"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|d| f64_of(&d["idle_j"]))
        .sum();
    let mut by_command: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for p in of_type(&records, "process") {
        let entry = by_command
            .entry(p["comm"].as_str().unwrap_or("").to_string())
            .or_default();
        entry.0 += f64_of(&p["energy"]["joules"]["package"]);
        entry.1 += u64_of(&p["on_cpu_ns"]);
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);

    assert_eq!(u64_of(&summary["intervals"]), machines.len() as u64);
    assert!(close(f64_of(&summary["seconds"]), seconds));
    assert_eq!(summary["skipped_lines"], 1);
    assert_eq!(summary["estimated"], true);
    let package = &summary["domains"][0];
    assert_eq!(package["domain"], "package");
    assert!(close(f64_of(&package["measured_j"]), measured));
    assert!(close(f64_of(&package["average_w"]), measured / seconds));
    assert!(close(f64_of(&summary["idle_share"]), idle / measured));
    // The top target is the command that drew the most in the trace: the burner on a quiet
    // machine, but a compile running beside the test can outdraw it.
    let top = &summary["targets"][0];
    let (most, &(joules, cpu_ns)) = by_command
        .iter()
        .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
        .expect("processes in the trace");
    assert_eq!(
        top["name"],
        most.as_str(),
        "the command that drew the most: {summary}"
    );
    assert!(close(f64_of(&top["joules"]), joules));
    assert!(close(f64_of(&top["cpu_s"]), cpu_ns as f64 / 1e9));
    assert!(
        by_command.contains_key("powerapi-load"),
        "the burner is in the trace"
    );
    // Three targets and the rest: together every process's energy.
    let listed: f64 = summary["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .chain(summary["other"].as_object().map(|_| &summary["other"]))
        .map(|t| f64_of(&t["joules"]))
        .sum();
    let all: f64 = by_command.values().map(|(j, _)| j).sum();
    assert!(close(listed, all), "{listed} vs {all}");
    assert_eq!(summary["targets"].as_array().map(Vec::len), Some(3));

    // Charts of the same trace: one stacked series per target, plus idle and other.
    let (svg, png) = (temp_path("report.svg"), temp_path("report.png"));
    for chart in [&svg, &png] {
        let chart = chart.display().to_string();
        powerapi_ok([
            "report", &t, "--by", "command", "--top", "3", "--chart", &chart,
        ]);
    }
    let text = fs::read_to_string(&svg).expect("svg");
    assert!(
        text.starts_with(r#"<svg width="1200" height="600""#),
        "{}",
        &text[..80]
    );
    assert!(text.trim_end().ends_with("</svg>"));
    assert_eq!(
        text.matches("<polygon").count(),
        5,
        "idle, 3 targets, other"
    );
    // The top target's series is labelled (the burner's when the machine is quiet).
    for label in [
        "idle",
        "other",
        most.as_str(),
        "time since start (s)",
        "power, package (W)",
    ] {
        assert!(
            text.contains(&format!("\n{label}\n")),
            "no {label:?} in the SVG"
        );
    }
    let bytes = fs::read(&png).expect("png");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let dimension =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    assert_eq!((dimension(16), dimension(20)), (1200, 600));
    let (code, stderr) = powerapi_stderr(&[
        "report",
        &trace.display().to_string(),
        "--chart",
        "/tmp/chart.gif",
    ]);
    assert_eq!((code, stderr.lines().count()), (1, 1), "{stderr}");
    assert!(stderr.contains("written as .svg or .png"), "{stderr}");
    for f in [&trace, &svg, &png] {
        let _ = fs::remove_file(f);
    }
}

#[test]
fn report_errors_are_one_line() {
    let (code, stderr) = powerapi_stderr(&["report", "/nonexistent/trace.jsonl"]);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot read the trace /nonexistent/trace.jsonl"),
        "{stderr}"
    );
    let empty = temp_path("empty-trace.jsonl");
    fs::write(&empty, "not json\n").expect("write");
    let (code, stderr) = powerapi_stderr(&["report", &empty.display().to_string()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no complete interval (1 line(s) were not records)"),
        "{stderr}"
    );
    let _ = fs::remove_file(&empty);
}

/// Every energy figure of two traces, side by side: (where, recorded, replayed).
fn energy_figures(recorded: &[Value], replayed: &[Value]) -> Vec<(String, f64, f64)> {
    assert_eq!(
        recorded.len(),
        replayed.len(),
        "one record out per record in"
    );
    let mut out = Vec::new();
    for (a, b) in recorded.iter().zip(replayed) {
        assert_eq!(a["type"], b["type"]);
        let at = format!("{} {}", a["type"], a["interval"]["seq"]);
        match a["type"].as_str() {
            Some("machine") => {
                let (da, db) = (&a["energy"]["domains"], &b["energy"]["domains"]);
                for (x, y) in da
                    .as_array()
                    .into_iter()
                    .flatten()
                    .zip(db.as_array().into_iter().flatten())
                {
                    for k in [
                        "measured_j",
                        "attributed_j",
                        "idle_j",
                        "unattributed_j",
                        "idle_w",
                    ] {
                        out.push((format!("{at} {k}"), f64_of(&x[k]), f64_of(&y[k])));
                    }
                    assert_eq!(x["idle_source"], y["idle_source"], "{at}");
                    assert_eq!(x["metric"], y["metric"], "{at}");
                }
            }
            Some("process") | Some("thread") => {
                for (d, j) in a["energy"]["joules"].as_object().into_iter().flatten() {
                    out.push((
                        format!("{at} pid {} {d}", a["pid"]),
                        f64_of(j),
                        f64_of(&b["energy"]["joules"][d]),
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn replay_with_the_recorded_options_reproduces_a_filtered_trace() {
    let Some(_lock) = bpf_test("replay_with_the_recorded_options_reproduces_a_filtered_trace")
    else {
        return;
    };
    let trace = temp_path("replay.jsonl");
    let _ = fs::remove_file(&trace);
    let burner = Killed::burner(&["4"]);
    let pid = burner.0.id().to_string();
    // Only the burner is recorded: the replay must still share as the live run did, with the
    // rest of the machine's busy time in the picture.
    let t = trace.display().to_string();
    powerapi_ok([
        "record",
        "--interval",
        "500ms",
        "--duration",
        "2500ms",
        "--pid",
        &pid,
        "--counters",
        "none",
        "--energy-source",
        "model",
        "--idle-policy",
        "cpu-time",
        "-o",
        &t,
    ]);
    drop(burner);
    let recorded = read_records(&trace);
    let figures = energy_figures(
        &recorded,
        &replay_records(&trace, &["--idle-policy", "cpu-time"]),
    );
    assert!(figures.len() > 20, "{} figures", figures.len());
    for (at, a, b) in &figures {
        // Sums in another order: equal to a few ulps.
        assert!(
            (a - b).abs() <= 1e-9 * a.abs().max(1.0),
            "{at}: recorded {a}, replayed {b}"
        );
    }
    // Another option changes the figures: the burner keeps no idle share with the default.
    let other = energy_figures(&recorded, &replay_records(&trace, &[]));
    let differ = other
        .iter()
        .filter(|(_, a, b)| (a - b).abs() > 1e-6)
        .count();
    assert!(
        differ > 0,
        "--idle-policy none must change the burner's figures"
    );
    let (code, stderr) =
        powerapi_stderr(&["replay", &trace.display().to_string(), "--freq-step", "50"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("add --formula smartwatts"), "{stderr}");
    let _ = fs::remove_file(&trace);
}

/// Two sockets (a fake topology under --sysfs-root, the model's energy per socket): every
/// record carries its usage per socket, and replay shares each socket's energy again from it.
#[test]
fn replay_reproduces_a_two_socket_trace() {
    let Some(_lock) = bpf_test("replay_reproduces_a_two_socket_trace") else {
        return;
    };
    let root = two_package_root("replay-two-sockets");
    let trace = temp_path("replay-two-sockets.jsonl");
    let _ = fs::remove_file(&trace);
    let burner = Killed::burner(&["4", "2"]);
    let (r, t) = (root.display().to_string(), trace.display().to_string());
    powerapi_ok([
        "record",
        "--interval",
        "500ms",
        "--duration",
        "2500ms",
        "--granularity",
        "thread",
        "--counters",
        "cpu-clock",
        "--energy-source",
        "model",
        "--sysfs-root",
        &r,
        "-o",
        &t,
    ]);
    drop(burner);
    let _ = fs::remove_dir_all(&root);
    let recorded = read_records(&trace);
    let machine = of_type(&recorded, "machine")
        .nth(1)
        .expect("a second interval");
    let sockets: Vec<u64> = machine["sockets"]
        .as_array()
        .expect("per-socket totals")
        .iter()
        .map(|s| u64_of(&s["socket"]))
        .collect();
    assert_eq!(sockets, [0, 1]);
    assert!(
        of_type(&recorded, "thread")
            .any(|t| t["sockets"].as_array().is_some_and(|s| !s.is_empty())),
        "threads carry their usage per socket"
    );
    let replayed = replay_records(&trace, &[]);
    let figures = energy_figures(&recorded, &replayed);
    assert!(figures.iter().any(|(at, _, _)| at.contains("thread")));
    for (at, a, b) in &figures {
        assert!(
            (a - b).abs() <= 1e-9 * a.abs().max(1.0),
            "{at}: recorded {a}, replayed {b}"
        );
    }
    let _ = fs::remove_file(&trace);
}
