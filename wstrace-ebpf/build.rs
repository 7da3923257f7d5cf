/// Rebuild the eBPF object when bpf-linker changes (it is an undeclared tool
/// dependency; see aya-template).
fn main() {
    if let Ok(bpf_linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
