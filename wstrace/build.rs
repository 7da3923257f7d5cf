//! Builds the eBPF object (`wstrace-ebpf`) with the nightly toolchain and
//! bpf-linker, so a plain `cargo build` yields a binary with the kernel
//! programs embedded. `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "wstrace-ebpf")
        .ok_or_else(|| anyhow!("wstrace-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?
        .to_string();
    if which_bpf_linker().is_none() {
        println!(
            "cargo:warning=bpf-linker not found on PATH: run `cargo xtask setup` first (installs nightly rust-src and bpf-linker)"
        );
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "wstrace-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    // AYA_BUILD_SKIP=1 (clippy-only runs) builds no object: embed an empty
    // one so the crate still compiles; the binary then says how to rebuild.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("wstrace");
    if !out.exists() {
        std::fs::write(&out, b"")?;
    }
    Ok(())
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
