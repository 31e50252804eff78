//! powerapi as a library: a pipeline assembled from a user's own energy source, formula and sink
//! must measure with the real sensor and keep the books, and `examples/custom_meter.rs` must run.

mod common;

use std::{
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use powerapi::{
    energy::{Domain, DomainKey, EnergyError, EnergySample, Source},
    formula::{Formula, Split},
    pipeline::Pipeline,
    record::Granularity,
    report::Record,
    sink::{Sink, SinkError},
};

/// A wattmeter that always reads `watts` on socket 0's package.
struct Fixed {
    watts: f64,
}

impl Source for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }

    fn estimated(&self) -> bool {
        false
    }

    fn sample(&mut self, duration_ns: u64, _: &[(u32, u64)]) -> Result<EnergySample, EnergyError> {
        let key = DomainKey {
            domain: Domain::Package,
            socket: 0,
        };
        Ok(EnergySample {
            source: "fixed".into(),
            domains: vec![(key, self.watts * duration_ns as f64 / 1e9)],
            ..Default::default()
        })
    }
}

/// Every thread that ran gets the same share.
struct EqualShare;

impl Formula for EqualShare {
    fn name(&self) -> &str {
        "equal-share"
    }

    fn weights(&mut self, split: &Split<'_>, out: &mut [f64]) -> String {
        for (w, t) in out.iter_mut().zip(split.tasks) {
            *w = if t.on_cpu_ns > 0 { 1.0 } else { 0.0 };
        }
        "tasks-that-ran".into()
    }
}

/// Keeps every interval.
#[derive(Clone, Default)]
struct Keep(Arc<Mutex<Vec<Vec<Record>>>>);

impl Sink for Keep {
    fn write_interval(&mut self, records: &[Record]) -> Result<(), SinkError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(records.to_vec());
        Ok(())
    }
}

#[test]
fn a_pipeline_of_a_users_source_formula_and_sink_keeps_the_books() {
    let Some(_lock) = bpf_test("a_pipeline_of_a_users_source_formula_and_sink_keeps_the_books")
    else {
        return;
    };
    let burner = Killed::burner(&["3"]);
    let keep = Keep::default();
    let (_keep_running, stop) = std::sync::mpsc::channel();
    let mut meter = Pipeline::builder()
        .interval(Duration::from_millis(500))
        .duration(Duration::from_millis(1500))
        .granularity(Granularity::Thread)
        .sensor(powerapi::sensor::SensorConfig {
            counters: Vec::new(),
            ..Default::default()
        })
        .source(Fixed { watts: 20.0 })
        .formula(EqualShare)
        .sink("keep", keep.clone())
        .start()
        .expect("the pipeline starts");
    assert_eq!(meter.run(&stop).expect("runs"), 3);
    drop(meter);
    let pid = burner.0.id();
    let intervals = keep.0.lock().expect("lock").clone();
    assert_eq!(intervals.len(), 3);
    for records in &intervals {
        let Some(Record::Machine(machine)) = records.first() else {
            panic!("an interval starts with its machine record");
        };
        let energy = machine
            .energy
            .as_ref()
            .expect("energy from the user's source");
        assert_eq!((energy.source.as_str(), energy.estimated), ("fixed", false));
        let domain = &energy.domains[0];
        let seconds = machine.interval.duration_ns as f64 / 1e9;
        // The source's own figure, to rounding.
        assert!(
            (domain.measured_j - 20.0 * seconds).abs() < 1e-9,
            "{domain:?}"
        );
        assert_eq!(domain.metric, "tasks-that-ran");
        let shares: Vec<(u32, f64)> = records
            .iter()
            .filter_map(|r| match r {
                Record::Thread(t) if t.on_cpu_ns > 0 => {
                    Some((t.pid, t.energy.as_ref()?.joules[&Domain::Package]))
                }
                _ => None,
            })
            .collect();
        assert!(shares.iter().any(|(p, _)| *p == pid), "the burner ran");
        // Equal shares, though the burner ran ~100x longer than anything else: the user's
        // formula, not on-CPU time, split the energy.
        let first = shares[0].1;
        for (p, joules) in &shares {
            assert!(
                (joules - first).abs() <= 1e-9 * first,
                "pid {p}: {joules} vs {first}"
            );
        }
        let total: f64 = shares.iter().map(|(_, j)| j).sum();
        assert!(
            (total + domain.idle_j + domain.unattributed_j - domain.measured_j).abs() < 1e-9,
            "{total} + {domain:?}"
        );
    }
}

#[test]
fn the_custom_meter_example_runs() {
    let Some(_lock) = bpf_test("the_custom_meter_example_runs") else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "run",
            "-q",
            "-p",
            "powerapi-user",
            "--example",
            "custom_meter",
            "--",
            "2",
        ])
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("interval 1: ") && lines[1].starts_with("interval 2: "));
    assert_eq!(lines[2], "2 intervals");
}

/// Every public item is documented (`#![deny(missing_docs)]` in the library) and rustdoc finds
/// nothing to warn about: no broken or private links.
#[test]
fn the_library_docs_build_without_warnings() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["doc", "-q", "-p", "powerapi-user", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings")
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}
