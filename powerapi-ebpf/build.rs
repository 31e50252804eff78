use which::which;

fn main() {
    // Rebuild the object when bpf-linker changes (a new LLVM can change codegen), as aya's
    // template does.
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
    // The seqcount writer needs fetching atomics (BPF_FETCH, Linux ≥ 5.12), which are fully
    // ordered on every JIT; LLVM emits them only with alu32. aya-build sets the rustflags
    // itself (and rustc already passes `--cpu generic`), so the feature goes to the linker, which
    // does the codegen.
    println!("cargo:rustc-link-arg=--cpu-features=+alu32");
}
