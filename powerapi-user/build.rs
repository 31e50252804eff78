use std::{
    env, fs,
    io::{BufRead, BufReader, Write},
    os::fd::{FromRawFd, RawFd},
    path::PathBuf,
};

/// Builds the kernel programs with aya-build (nightly + bpf-linker). With `AYA_BUILD_SKIP=1`
/// (for `cargo check`/clippy on a machine without the BPF toolchain) an empty object is left in
/// its place, and loading it fails with a message that says how to build for real.
fn main() -> anyhow::Result<()> {
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = PathBuf::from(env::var("OUT_DIR")?);
        fs::write(out.join("powerapi"), [])?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let package = aya_build::Package {
        name: "powerapi-ebpf",
        root_dir: "../powerapi-ebpf",
        ..Default::default()
    };
    // aya-build echoes every line of the inner cargo's stderr ("Compiling core …", dozens of
    // them) as a build-script warning, which reads on a first build as if something were wrong.
    // It has no option to stop that, so its output is caught here and only the directives and
    // the real diagnostics are passed on.
    let (lines, result) =
        capture_stdout(|| aya_build::build_ebpf([package], aya_build::Toolchain::default()))?;
    let mut out = std::io::stdout().lock();
    for line in lines.iter().filter(|l| keep(l)) {
        writeln!(out, "{line}")?;
    }
    result
}

/// True for what cargo should still see: directives other than warnings, and warnings that are
/// compiler diagnostics rather than the inner cargo's progress lines.
fn keep(line: &str) -> bool {
    let Some(text) = line.strip_prefix("cargo:warning=") else {
        return true;
    };
    const PROGRESS: [&str; 12] = [
        "Compiling",
        "Finished",
        "Checking",
        "Building",
        "Fresh",
        "Running",
        "Blocking",
        "Updating",
        "Downloading",
        "Downloaded",
        "Locking",
        "Adding",
    ];
    let first = text.split_whitespace().next().unwrap_or("");
    !text.trim().is_empty() && !PROGRESS.contains(&first)
}

/// Runs `f` with this process's stdout (fd 1) going into a pipe, and returns the lines written.
fn capture_stdout<T>(f: impl FnOnce() -> T) -> anyhow::Result<(Vec<String>, T)> {
    let mut fds: [RawFd; 2] = [0; 2];
    // SAFETY: plain fd syscalls on descriptors this function owns; fd 1 is restored before
    // returning.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            anyhow::bail!("pipe: {}", std::io::Error::last_os_error());
        }
        let saved = libc::dup(1);
        std::io::stdout().flush()?;
        libc::dup2(fds[1], 1);
        libc::close(fds[1]);
        let reader = std::fs::File::from_raw_fd(fds[0]);
        let collector = std::thread::spawn(move || {
            BufReader::new(reader)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        let result = f();
        std::io::stdout().flush()?;
        libc::dup2(saved, 1);
        libc::close(saved);
        let lines = collector
            .join()
            .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;
        Ok((lines, result))
    }
}
