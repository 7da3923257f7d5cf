//! The floor for the kernel-matrix cost benchmark: near-empty programs
//! (wstrace-ebpf probes/floor.rs) on exactly the hooks the fentry or kprobe
//! set attaches, so "× the floor" compares like with like. The tracer uses one of them
//! only to ask whether fentry attaches at all (`fentry_can_attach`).
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit, KProbe},
};

use super::{EBPF_OBJECT, ProbeChoice, program::program, retprobe::RetProbe};

/// Attached floor programs; dropping it detaches them.
pub struct Floor {
    _ebpf: Ebpf,
    _retprobe: Option<RetProbe>,
}

pub fn attach(choice: ProbeChoice, root: &Path) -> Result<Floor> {
    let mut ebpf = Ebpf::load(EBPF_OBJECT).context("loading the eBPF object")?;
    let mut retprobe = None;
    match choice {
        ProbeChoice::Fentry => {
            let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
            for (prog, func) in [
                ("floor_fe_send", "tcp_sendmsg"),
                ("floor_fe_close", "tcp_close"),
                ("floor_fe_recv", "tcp_recvmsg"),
            ] {
                let p: &mut FEntry = program(&mut ebpf, prog)?;
                p.load(func, &btf)
                    .with_context(|| format!("loading {prog}"))?;
                p.attach().with_context(|| format!("attaching {prog}"))?;
            }
            let p: &mut FExit = program(&mut ebpf, "floor_fx_recv")?;
            p.load("tcp_recvmsg", &btf)
                .context("loading floor_fx_recv")?;
            p.attach().context("attaching floor_fx_recv")?;
        }
        ProbeChoice::Kprobe => {
            for (prog, func) in [
                ("floor_kp_send", "tcp_sendmsg"),
                ("floor_kp_close", "tcp_close"),
                ("floor_kp_recv", "tcp_recvmsg"),
            ] {
                let p: &mut KProbe = program(&mut ebpf, prog)?;
                p.load().with_context(|| format!("loading {prog}"))?;
                p.attach(func, 0)
                    .with_context(|| format!("attaching {prog}"))?;
            }
            // Made as the kprobe set makes its own (attach_recvmsg_return),
            // so the floor pays what wstrace's return probe pays.
            let p: &mut KProbe = program(&mut ebpf, "floor_kr_recv")?;
            p.load().context("loading floor_kr_recv")?;
            retprobe = Some(RetProbe::attach(root, "tcp_recvmsg", p)?);
        }
        other => bail!("no floor for --probe {other:?}: use fentry or kprobe"),
    }
    Ok(Floor {
        _ebpf: ebpf,
        _retprobe: retprobe,
    })
}
