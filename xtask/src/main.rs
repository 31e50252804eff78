//! `cargo xtask`: set-up, build, run, test and benchmark powerapi.
//!
//! `setup` installs, idempotently, what a fresh Debian machine lacks to build the kernel
//! programs (nightly rust-src, LLVM 22, bpf-linker); every other command runs it first.

mod bench;
mod mutants;
mod setup;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the BPF toolchain (rust-src for nightly, llvm-22-dev, bpf-linker) if missing.
    Setup,
    /// Set up and build powerapi in release mode.
    Build,
    /// Set up, build (release) and run powerapi with these arguments (with sudo when not root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and run the whole test suite (unit + end-to-end). Extra args go to `cargo test`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Mutation testing of the pure modules (installs cargo-mutants if missing). Unit tests only.
    Mutants {
        /// Source files to mutate (default: the pure modules listed in TESTING.md).
        #[arg(long = "file")]
        files: Vec<String>,
        /// Extra arguments for cargo-mutants (after `--`), e.g. `-- --jobs 2`.
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// Benchmarks; results are ratios against baselines measured in the same invocation.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// Keep N threads waking up periodically until killed (load generator for `bench drain`).
    #[command(hide = true)]
    SpawnThreads { count: usize },
    /// Keep N processes waking up periodically until killed (load generator for `bench top`).
    #[command(hide = true)]
    SpawnProcesses { count: usize },
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

fn build_release() -> Result<std::path::PathBuf> {
    // The kernel programs are built inside powerapi-user's build script (nightly, build-std,
    // bpf-linker): minutes the first time, with no progress of their own to show.
    eprintln!(
        "xtask: building powerapi and its kernel programs (the first build takes a few minutes)"
    );
    run_checked(cargo().current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "powerapi-user",
    ]))?;
    Ok(workspace_root().join("target/release/powerapi"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the suite and ends with one line of passed, failed and skipped tests. A skip is a test
/// that could not check what it is for (no BPF, a kernel that forbids hotplug): as root, where
/// everything should run, it fails the run, so a skip can never read as a pass.
fn run_tests(root: &std::path::Path, args: &[String]) -> Result<ExitCode> {
    use std::io::{BufRead, BufReader};
    let skip_log = std::env::temp_dir().join(format!("powerapi-skips-{}", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args([
            "test",
            "--workspace",
            "--exclude",
            "powerapi-ebpf",
            "--no-fail-fast",
        ])
        .args(args)
        .env("POWERAPI_SKIP_LOG", &skip_log)
        .stdout(std::process::Stdio::piped());
    if is_root() && std::env::var_os("POWERAPI_REQUIRE_BPF").is_none() {
        cmd.env("POWERAPI_REQUIRE_BPF", "1");
    }
    let mut child = cmd.spawn().context("cannot run cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split(['.', ';']) {
                    let mut words = part.split_whitespace();
                    match (
                        words.next().and_then(|n| n.parse::<u64>().ok()),
                        words.next(),
                    ) {
                        (Some(n), Some("passed")) => passed += n,
                        (Some(n), Some("failed")) => failed += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait().context("cargo test")?;
    let skips: Vec<String> = std::fs::read_to_string(&skip_log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    let _ = std::fs::remove_file(&skip_log);
    // A skipping test returns early and is counted as passed by the harness.
    let passed = passed.saturating_sub(skips.len() as u64);
    println!(
        "xtask test: {passed} passed, {failed} failed, {} skipped{}",
        skips.len(),
        if skips.is_empty() {
            String::new()
        } else {
            format!(" ({})", skips.join("; "))
        }
    );
    if !skips.is_empty() && is_root() {
        println!("xtask test: running as root, so every test must run: a skip is a failure");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::setup()?,
        Cmd::Build => {
            setup::setup()?;
            build_release()?;
        }
        Cmd::Run { args } => {
            setup::setup()?;
            let binary = build_release()?;
            let mut cmd = if is_root() {
                Command::new(&binary)
            } else {
                let mut sudo = Command::new("sudo");
                sudo.arg(&binary);
                sudo
            };
            let status = cmd
                .args(&args)
                .status()
                .with_context(|| format!("cannot start {}", binary.display()))?;
            return Ok(ExitCode::from(status.code().unwrap_or(1) as u8));
        }
        Cmd::Test { args } => {
            setup::setup()?;
            let root = workspace_root();
            // The end-to-end tests run the real binary; build it first so they need not.
            run_checked(cargo().current_dir(&root).args([
                "build",
                "-p",
                "powerapi-user",
                "--bin",
                "powerapi",
            ]))?;
            return run_tests(&root, &args);
        }
        Cmd::Bench { which } => {
            setup::setup()?;
            let binary = build_release()?;
            bench::run(which, &binary)?;
        }
        Cmd::Mutants { files, extra } => mutants::run(&files, &extra)?,
        Cmd::SpawnThreads { count } => bench::spawn_threads(count),
        Cmd::SpawnProcesses { count } => bench::spawn_processes(count),
    }
    Ok(ExitCode::SUCCESS)
}
