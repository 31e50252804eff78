use std::{env, fs, path::PathBuf};

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
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
