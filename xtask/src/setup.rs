//! Idempotent installation of the BPF toolchain. Each step checks first, so a machine that has
//! everything is done in well under a second.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::{cargo, is_root, run_checked};

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn setup() -> Result<()> {
    // 1. nightly with rust-src (aya-build runs `cargo +nightly build -Z build-std=core`).
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .ok_or_else(|| anyhow::anyhow!("rustup not found: install it from https://rustup.rs"))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("xtask setup: installing the nightly toolchain");
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        println!("xtask setup: rustup component add rust-src --toolchain nightly");
        run_checked(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // 2. LLVM 22 development libraries, which bpf-linker links against.
    let has_llvm = Path::new(LLVM_PREFIX).join("lib/libLLVM.so").exists()
        || output(Command::new("dpkg").args(["-s", "llvm-22-dev"]))
            .is_some_and(|s| s.contains("Status: install ok installed"));
    if !has_llvm {
        if !Path::new("/usr/bin/apt-get").exists() {
            bail!(
                "llvm-22-dev is missing and this is not a Debian-like system: install LLVM 22 and set LLVM_PREFIX, then rerun"
            );
        }
        if !is_root() {
            bail!(
                "llvm-22-dev is missing: run `sudo apt-get update && sudo apt-get install -y llvm-22-dev`, or rerun as root"
            );
        }
        println!("xtask setup: apt-get update && apt-get install -y llvm-22-dev");
        run_checked(Command::new("apt-get").arg("update"))?;
        run_checked(
            Command::new("apt-get")
                .args(["install", "-y", "llvm-22-dev"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }

    // 3. bpf-linker built against that LLVM.
    if !bpf_linker_uses_llvm22() {
        println!(
            "xtask setup: LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --locked --no-default-features --features llvm-22"
        );
        run_checked(
            cargo()
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                    "--force",
                ])
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )?;
    }

    // 4. The servers the end-to-end tests talk to (Prometheus for `serve`, InfluxDB for
    //    `--sink influxdb:`), the font of `report --chart`, and `stress-ng` (to check that the
    //    end-to-end tests hold on a busy machine: TESTING.md), from Debian.
    install_test_servers()?;
    Ok(())
}

/// Debian packages of the servers the tests run for real. Only where apt-get exists and we are
/// root; elsewhere those tests say why they skip.
fn install_test_servers() -> Result<()> {
    let missing: Vec<&str> = [
        ("prometheus", "/usr/bin/prometheus"),
        ("influxdb", "/usr/bin/influxd"),
        // The font `report --chart` writes its labels with.
        (
            "fonts-dejavu-core",
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        ),
        // Loads both CPUs while the end-to-end tests run (`stress-ng --cpu 2`).
        ("stress-ng", "/usr/bin/stress-ng"),
    ]
    .into_iter()
    .filter(|(_, bin)| !Path::new(bin).exists())
    .map(|(package, _)| package)
    .collect();
    if missing.is_empty() || !Path::new("/usr/bin/apt-get").exists() || !is_root() {
        return Ok(());
    }
    println!("xtask setup: apt-get install -y {}", missing.join(" "));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        run_checked(Command::new("apt-get").arg("update"))?;
        if !install() {
            bail!("apt-get install {} failed", missing.join(" "));
        }
    }
    Ok(())
}

fn bpf_linker_uses_llvm22() -> bool {
    let Some(path) = output(Command::new("sh").args(["-c", "command -v bpf-linker"])) else {
        return false;
    };
    output(Command::new("ldd").arg(path.trim())).is_some_and(|libs| libs.contains("libLLVM.so.22"))
}
