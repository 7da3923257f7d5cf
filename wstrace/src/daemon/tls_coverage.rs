//! TLS coverage: the uprobes on the OpenSSL-compatible libraries and Go
//! programs of the servers a listener scan finds, who opens them (the
//! uprobe helper, or the daemon before its privilege drop), and the words
//! that say for each server what is covered and what is not.
use crate::{
    attach::Attached,
    attach::tls::{ProbedFile, TlsProbes},
    attach::uprobe::{self as uprobe_open, UprobePmu},
    enrich::{self, ListenerScan},
    hardening::uprobe::{self as uprobe_helper, Helper},
    output::escape,
};

/// Who opens uprobe perf events (CAP_SYS_ADMIN): the helper process for
/// the whole run, or, without one, the daemon itself until the privilege
/// drop (then servers found later are only named).
pub(super) struct UprobeOpener {
    pmu: Option<UprobePmu>,
    helper: Option<Helper>,
    /// Why there is no helper, said once when the first server is covered
    /// (or found too late).
    no_helper: Option<String>,
}

impl UprobeOpener {
    pub(super) fn start() -> Self {
        let (pmu, helper) = match UprobePmu::read() {
            Ok(pmu) => (
                Some(pmu),
                Helper::start(move |r: &uprobe_helper::Request| uprobe_open::open_checked(&pmu, r)),
            ),
            Err(e) => (None, Err(e)),
        };
        match helper {
            Ok(h) => Self {
                pmu,
                helper: Some(h),
                no_helper: None,
            },
            Err(e) => Self {
                pmu,
                helper: None,
                no_helper: Some(e),
            },
        }
    }

    fn open(
        &self,
        req: &uprobe_helper::Request,
        before_drop: bool,
    ) -> Result<std::os::fd::OwnedFd, uprobe_helper::OpenError> {
        match (&self.helper, &self.pmu) {
            (Some(h), _) => h.open(req),
            (None, Some(pmu)) if before_drop => uprobe_open::open_checked(pmu, req),
            _ => Err(uprobe_helper::OpenError::Helper(
                "no uprobe helper, and the daemon dropped CAP_SYS_ADMIN".into(),
            )),
        }
    }
}

/// The TLS uprobes per process, and what the survey of servers read.
pub(super) struct TlsState {
    probes: TlsProbes,
    elf_cache: enrich::tls::ElfCache,
    opener: UprobeOpener,
}

impl TlsState {
    pub(super) fn new(opener: UprobeOpener) -> Self {
        if let Some(why) = &opener.no_helper {
            eprintln!(
                "wstrace: warning: tls: no uprobe helper ({}): TLS servers that start after wstrace will not be covered",
                escape::text(why)
            );
        }
        Self {
            probes: TlsProbes::default(),
            elf_cache: enrich::tls::ElfCache::default(),
            opener,
        }
    }
}

/// Puts TLS uprobes on the servers a listener scan found (and takes them
/// off those that exited), saying for each what is covered.
///
/// Opening a uprobe perf event needs CAP_SYS_ADMIN (measured on 6.18:
/// CAP_PERFMON alone gets EACCES), which the daemon does not keep after
/// start-up (`startup`): the uprobe helper opens them for it. Without a
/// helper, a server found later is surveyed and named, not covered.
pub(super) fn cover_tls(
    tls: Option<&mut TlsState>,
    attached: &mut Attached,
    scan: &ListenerScan,
    startup: bool,
) {
    let Some(tls) = tls else {
        return;
    };
    for &pid in &scan.exited {
        tls.probes.forget(pid);
        forget_go_layout(attached, pid);
    }
    let can_open = startup || tls.opener.helper.is_some();
    for (pid, comm) in &scan.new {
        if tls.probes.covers(*pid) {
            continue;
        }
        let who = format!("pid {pid} ({})", escape::text(comm));
        // Symbols only where they will be used: a server that gets no
        // uprobes is named from its maps alone.
        let Some(survey) = enrich::tls::survey(*pid, can_open, &mut tls.elf_cache) else {
            continue; // exited already
        };
        let mut covered = Vec::new();
        if !can_open {
            if !survey.targets.is_empty() {
                eprintln!(
                    "wstrace: warning: tls: {who} started after wstrace: its TLS library ({}) gets no uprobes (no uprobe helper, and attaching them needs CAP_SYS_ADMIN, dropped after start-up), so its wss:// connections are not seen: restart wstrace with CAP_SYS_ADMIN to cover it (README: The uprobe helper)",
                    survey
                        .targets
                        .iter()
                        .map(|t| escape::text(&t.file.path).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            continue;
        }
        for t in &survey.targets {
            let functions: Vec<(&'static str, u64)> =
                t.functions.iter().map(|(&f, &o)| (f, o)).collect();
            let Some(dev) = uprobe_helper::parse_maps_dev(&t.file.dev) else {
                eprintln!(
                    "wstrace: warning: tls: {who}: {}: unexpected device {}",
                    escape::text(&t.file.path),
                    escape::text(&t.file.dev)
                );
                continue;
            };
            let file = ProbedFile {
                map_files: &t.file.map_files,
                dev,
                inode: t.file.inode,
            };
            let opener = &tls.opener;
            match tls
                .probes
                .attach(&mut attached.ebpf, *pid, &file, &functions, &mut |req| {
                    opener.open(req, startup)
                }) {
                Ok(_) => covered.push(format!(
                    "{} in {}",
                    t.functions.keys().copied().collect::<Vec<_>>().join(", "),
                    escape::text(&t.file.path)
                )),
                Err(e) => eprintln!(
                    "wstrace: warning: tls: {who}: {}: {}",
                    escape::text(&t.file.path),
                    escape::text(&e.to_string())
                ),
            }
        }
        let go = survey
            .go
            .as_ref()
            .map(|(file, go)| cover_go(tls, attached, *pid, file, go, startup));
        for (path, why) in &survey.unreadable {
            eprintln!(
                "wstrace: warning: tls: {who}: {} was not read: {}",
                escape::text(path),
                escape::text(why)
            );
        }
        let uncovered = if survey.uncovered.is_empty() {
            String::new()
        } else {
            format!("; not covered: {}", survey.uncovered.join(", "))
        };
        let late = if startup {
            ""
        } else {
            " (started after wstrace)"
        };
        if let Some(go) = &go {
            eprintln!("wstrace: tls: {who}{late}: {go}");
        }
        if covered.is_empty() && go.is_some() {
            if !uncovered.is_empty() {
                eprintln!("wstrace: tls: {who}{late}{uncovered}");
            }
        } else if covered.is_empty() {
            eprintln!(
                "wstrace: tls: {who}{late}: no OpenSSL-compatible TLS library (libssl, or linked in with symbols): only plaintext is seen{uncovered}"
            );
        } else {
            eprintln!(
                "wstrace: tls: {who}: OpenSSL covered: uprobes on {}{uncovered}",
                covered.join("; ")
            );
        }
    }
}

/// Puts the Go crypto/tls uprobes on Go program `pid` (its executable
/// `file`), and says what it is built with and whether it is covered.
fn cover_go(
    tls: &mut TlsState,
    attached: &mut Attached,
    pid: u32,
    file: &enrich::tls::MappedFile,
    go: &enrich::gotls::GoTls,
    startup: bool,
) -> String {
    let built = format!(
        "Go {} ({})",
        go.version
            .as_deref()
            .map_or_else(|| "of unknown version".into(), escape::text),
        go.arch.map_or("unknown architecture", |a| a.name())
    );
    let f = match &go.functions {
        Ok(f) => f,
        Err(why) => {
            return format!(
                "{built} crypto/tls not covered: {}: only plaintext is seen",
                escape::text(why)
            );
        }
    };
    let Some(dev) = uprobe_helper::parse_maps_dev(&file.dev) else {
        return format!(
            "{built} crypto/tls not covered: unexpected device {}",
            escape::text(&file.dev)
        );
    };
    let probed = ProbedFile {
        map_files: &file.map_files,
        dev,
        inode: file.inode,
    };
    // The walk's offsets first: a Read RET that fires finds them.
    let itab = enrich::gotls::itab_address(&f.walk, file.base);
    let layout = wstrace_common::GoTlsLayout {
        conn: f.walk.offsets.conn,
        tcpconn_fd: f.walk.offsets.tcpconn_fd,
        netfd_sysfd: f.walk.offsets.netfd_sysfd,
        tcpconn_itab: itab.unwrap_or(0),
    };
    if let Err(e) = set_go_layout(attached, pid, layout) {
        return format!("{built} crypto/tls not covered: {}", escape::text(&e));
    }
    let checked = match (itab, f.walk.tcpconn_itab) {
        (Some(_), _) => "the *net.TCPConn itab checked",
        (None, Some(_)) => {
            "the *net.TCPConn itab not placed in the process: conns walked unchecked"
        }
        (None, None) => {
            "no symbol table: conns walked as *net.TCPConn unchecked (the fd must be a traced socket)"
        }
    };
    let hooks = crate::attach::gotls::hooks(f.write, f.read, &f.read_returns);
    let opener = &tls.opener;
    match tls
        .probes
        .attach_hooks(&mut attached.ebpf, pid, &probed, &hooks, &mut |req| {
            opener.open(req, startup)
        }) {
        Ok(_) => format!(
            "{built} crypto/tls covered: uprobes on (*Conn).Write, (*Conn).Read and its {} RET instructions in {}; {}, {checked}",
            f.read_returns.len(),
            escape::text(&file.path),
            escape::text(&f.walk.from.to_string()),
        ),
        Err(e) => format!(
            "{built} crypto/tls not covered: {}: {}",
            escape::text(&file.path),
            escape::text(&e.to_string())
        ),
    }
}

/// The kernel's `GO_TLS_LAYOUTS` (wstrace-ebpf probes/gotls.rs).
fn go_layouts(
    attached: &mut Attached,
) -> Result<aya::maps::HashMap<&mut aya::maps::MapData, u32, wstrace_common::GoTlsLayout>, String> {
    let map = attached
        .ebpf
        .map_mut("GO_TLS_LAYOUTS")
        .ok_or("the eBPF object has no GO_TLS_LAYOUTS map (a build mismatch)")?;
    aya::maps::HashMap::try_from(map).map_err(|e| format!("GO_TLS_LAYOUTS: {e}"))
}

/// Tells the kernel how Go process `pid` walks its `*tls.Conn`s.
fn set_go_layout(
    attached: &mut Attached,
    pid: u32,
    layout: wstrace_common::GoTlsLayout,
) -> Result<(), String> {
    go_layouts(attached)?
        .insert(pid, layout, 0)
        .map_err(|e| format!("GO_TLS_LAYOUTS: {e}"))
}

/// Drops an exited process's entry (pids are reused; the map is LRU if
/// this is missed).
fn forget_go_layout(attached: &mut Attached, pid: u32) {
    if let Ok(mut m) = go_layouts(attached) {
        let _ = m.remove(&pid);
    }
}
