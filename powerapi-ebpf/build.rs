use which::which;

/// Rebuild the object when bpf-linker changes (a new LLVM can change codegen), as aya's template does.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
