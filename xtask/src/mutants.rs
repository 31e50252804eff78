//! `cargo xtask mutants`: mutation testing of the pure modules with cargo-mutants, over the unit
//! tests only (kernel build skipped: the modules under test need no BPF). Not part of `.ci/run`:
//! on 2 cores it takes tens of minutes.

use std::process::Command;

use anyhow::Result;

use crate::{cargo, run_checked, workspace_root};

/// The modules whose logic is pure and unit-tested: every mutant should be caught there.
pub const PURE: [&str; 16] = [
    "powerapi-user/src/delta.rs",
    "powerapi-user/src/aggregate.rs",
    "powerapi-user/src/attribution.rs",
    "powerapi-user/src/idle_estimate.rs",
    "powerapi-user/src/energy/mod.rs",
    "powerapi-user/src/energy/powercap.rs",
    "powerapi-user/src/report.rs",
    "powerapi-user/src/run.rs",
    "powerapi-user/src/tui/state.rs",
    "powerapi-user/src/sink.rs",
    "powerapi-user/src/export.rs",
    "powerapi-user/src/table.rs",
    "powerapi-user/src/sinks.rs",
    "powerapi-user/src/rotate.rs",
    "powerapi-user/src/influxdb.rs",
    "powerapi-user/src/sensor/kernel_layout.rs",
];

fn installed() -> bool {
    Command::new("cargo")
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs cargo-mutants when missing, then runs it on `files` (default: [`PURE`]).
pub fn run(files: &[String], extra: &[String]) -> Result<()> {
    if !installed() {
        println!("xtask mutants: cargo install cargo-mutants --locked");
        run_checked(cargo().args(["install", "cargo-mutants", "--locked"]))?;
    }
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .env("AYA_BUILD_SKIP", "1")
        .args(["mutants", "--package", "powerapi-user", "--no-shuffle"]);
    let chosen: Vec<String> = if files.is_empty() {
        PURE.iter().map(|f| f.to_string()).collect()
    } else {
        files.to_vec()
    };
    for file in &chosen {
        cmd.args(["--file", file]);
    }
    cmd.args(extra).args(["--", "--lib"]);
    run_checked(&mut cmd)
}
