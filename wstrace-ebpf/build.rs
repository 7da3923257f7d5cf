/// Rebuild the eBPF object when bpf-linker changes (it is an undeclared tool
/// dependency; see aya-template).
fn main() {
    if let Ok(bpf_linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
    // aya-build passes `--cfg bpf_target_arch="..."` (the daemon's target
    // architecture): ustack.rs reads the saved user registers per arch.
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\", \"arm\", \"loongarch64\", \"mips\", \"mips64\", \"powerpc64\", \"riscv64\", \"s390x\"))"
    );
}
