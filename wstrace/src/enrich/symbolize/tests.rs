//! Pure tests: frames from resolved symbols, tracer-frame dropping, the
//! trusted-path rule, `/proc` stat parsing. The live-system ones are in
//! `live_tests`.

use super::frames::*;
use super::kernel::*;
use super::user::*;
use super::worker::*;
use super::*;
use crate::model::{FrameKind, Unresolved};
pub(super) fn loc(file: &str, line: Option<u32>) -> Option<SourceLoc> {
    Some(SourceLoc {
        file: file.into(),
        line,
    })
}

pub(super) fn frame(name: &str, offset: u64) -> ResolvedFrame {
    ResolvedFrame {
        name: name.into(),
        offset,
        loc: None,
        inlined: Vec::new(),
        module: None,
    }
}

// ---- frames from resolved symbols ----

pub(super) fn kf(function: &str, offset: u64, addr: u64) -> Frame {
    Frame {
        function: Some(function.into()),
        offset: Some(offset),
        kind: FrameKind::Kernel,
        address: Some(addr),
        ..Frame::default()
    }
}

#[test]
fn kernel_frames_keep_name_offset_and_address() {
    assert_eq!(
        kernel_frame(0xffffffff81000000, Some(&frame("tcp_close", 0))),
        kf("tcp_close", 0, 0xffffffff81000000)
    );
    assert_eq!(
        kernel_frame(1, Some(&frame("__x64_sys_close", 0xabcde))),
        kf("__x64_sys_close", 0xabcde, 1)
    );
    let mut f = frame("tcp_close", 0x10);
    f.loc = loc("net/ipv4/tcp.c", Some(3000));
    let k = kernel_frame(1, Some(&f));
    assert_eq!(
        (k.file.as_deref(), k.line),
        (Some("net/ipv4/tcp.c"), Some(3000))
    );
}

#[test]
fn kernel_unknown_empty_name_or_huge_offset() {
    let unknown = |a| Frame::unknown(FrameKind::Kernel, a, None);
    assert_eq!(
        kernel_frame(0xffffffff81234567, None),
        unknown(0xffffffff81234567)
    );
    assert_eq!(
        kernel_frame(0xffffffffc0001234, Some(&frame("", 4))),
        unknown(0xffffffffc0001234)
    );
    assert_eq!(
        kernel_frame(
            0xffffffffc0001234,
            Some(&frame("last_sym", MAX_KERNEL_SYM_OFFSET))
        ),
        unknown(0xffffffffc0001234)
    );
    assert_eq!(
        kernel_frame(1, Some(&frame("big", MAX_KERNEL_SYM_OFFSET - 1))),
        kf("big", MAX_KERNEL_SYM_OFFSET - 1, 1)
    );
}

#[test]
fn user_frame_with_module_and_line() {
    let mut f = frame("close", 0x1f);
    f.loc = loc("/src/server/src/main.rs", Some(123));
    let [u] = user_frames(7, Some(&f), Some("/srv/app"), FrameKind::Native)
        .try_into()
        .expect("one frame");
    assert_eq!(
        u,
        Frame {
            function: Some("close".into()),
            offset: Some(0x1f),
            module: Some("/srv/app".into()),
            file: Some("/src/server/src/main.rs".into()),
            line: Some(123),
            inlined: false,
            kind: FrameKind::Native,
            language: None,
            address: Some(7),
            unresolved: None,
        }
    );
    // A line without a file says nothing.
    f.loc = loc("", Some(7));
    let u = &user_frames(1, Some(&f), None, FrameKind::Native)[0];
    assert_eq!((&u.file, u.line, &u.module), (&None, None, &None));
}

#[test]
fn user_unknown_frames() {
    assert_eq!(
        user_frames(
            0x7f1234567890,
            None,
            Some("/usr/lib/libfoo.so (deleted)"),
            FrameKind::Native
        ),
        [Frame::unknown(
            FrameKind::Native,
            0x7f1234567890,
            Some("/usr/lib/libfoo.so (deleted)")
        )]
    );
    assert_eq!(
        user_frames(0x55, Some(&frame("", 3)), Some("[heap]"), FrameKind::Native),
        [Frame::unknown(FrameKind::Native, 0x55, Some("[heap]"))]
    );
    let t = format_unanswered(&[0x55], &[], NoAnswer::TimedOut);
    assert_eq!(t[0].unresolved, Some(Unresolved::TimedOut));
    assert_eq!((t[0].function.as_deref(), t[0].address), (None, Some(0x55)));
}

#[test]
fn inlined_frames_come_first_innermost_first() {
    // blazesym: sym.loc = where `outer` calls `mid`, inlined = [mid, inner]
    // (outermost first), inner's loc = the address itself.
    let f = ResolvedFrame {
        name: "app::outer".into(),
        offset: 0x40,
        loc: loc("src/lib.rs", Some(10)),
        inlined: vec![
            InlinedFrame {
                name: "app::mid".into(),
                loc: loc("src/lib.rs", Some(20)),
            },
            InlinedFrame {
                name: "app::inner".into(),
                loc: loc("src/inner.rs", Some(30)),
            },
        ],
        module: None,
    };
    let frames = user_frames(0x1000, Some(&f), Some("/srv/app"), FrameKind::Native);
    let summary: Vec<_> = frames
        .iter()
        .map(|f| {
            (
                f.function.as_deref().unwrap_or(""),
                f.offset,
                f.inlined,
                f.line,
                f.address,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("app::inner", None, true, Some(30), Some(0x1000)),
            ("app::mid", None, true, Some(20), Some(0x1000)),
            ("app::outer", Some(0x40), false, Some(10), Some(0x1000)),
        ]
    );
    assert!(
        frames
            .iter()
            .all(|f| f.module.as_deref() == Some("/srv/app"))
    );
}

#[test]
fn names_with_parentheses_and_spaces_stay_whole() {
    let f = ResolvedFrame {
        name: "ws::conn::finish(int, bool) [clone .cold]".into(),
        offset: 0x13,
        loc: loc("/tmp/cold close.cpp", Some(22)),
        inlined: vec![InlinedFrame {
            name: "operator() at (x)".into(),
            loc: loc("/usr/include/c++/12/bits/invoke.h", Some(61)),
        }],
        module: None,
    };
    let frames = user_frames(
        0x1000,
        Some(&f),
        Some("/tmp/cold/cold close"),
        FrameKind::Native,
    );
    assert_eq!(frames[0].function.as_deref(), Some("operator() at (x)"));
    assert_eq!(
        frames[1].function.as_deref(),
        Some("ws::conn::finish(int, bool) [clone .cold]")
    );
    assert_eq!(frames[1].file.as_deref(), Some("/tmp/cold close.cpp"));
    assert_eq!(frames[1].module.as_deref(), Some("/tmp/cold/cold close"));
}

pub(super) fn name(f: &Frame) -> &str {
    f.function.as_deref().unwrap_or("[unknown]")
}

pub(super) fn names(frames: &[Frame]) -> Vec<&str> {
    frames.iter().map(name).collect()
}

/// `function+0xoffset` of a frame (`[unknown]+0x0` for an unknown one):
/// what the live tests below look for.
pub(super) fn at(f: &Frame) -> String {
    format!("{}+{:#x}", name(f), f.offset.unwrap_or(0))
}

pub(super) fn unknowns(addrs: &[u64]) -> Vec<Frame> {
    addrs
        .iter()
        .map(|&a| Frame::unknown(FrameKind::Native, a, None))
        .collect()
}

#[test]
fn tracer_frames_at_the_top_of_kernel_stacks_are_dropped() {
    let k = |name: &str| kf(name, 0x10, 1);
    let unknown = Frame::unknown(FrameKind::Kernel, 0xffffffffc0001234, None);
    // Tracepoint (tp_btf / raw tracepoint), as this host's stacks start.
    let mut tp = vec![
        k("bpf_prog_6deef7357e7b4530_inet_sock_set_state_closer"),
        k("bpf_trace_run3"),
        k("__bpf_trace_inet_sock_set_state"),
        k("__traceiter_inet_sock_set_state"),
        k("inet_sk_state_store"),
        k("__tcp_close"),
        k("tcp_close"),
    ];
    drop_tracer_frames(&mut tp);
    assert_eq!(
        names(&tp),
        ["inet_sk_state_store", "__tcp_close", "tcp_close"]
    );
    // Tracepoint through perf: perf_trace_* and trace_call_bpf.
    let mut perf = vec![
        k("bpf_prog_1_x"),
        k("trace_call_bpf"),
        k("perf_trace_run_bpf_submit"),
        k("perf_trace_inet_sock_set_state"),
        k("inet_sk_state_store"),
    ];
    drop_tracer_frames(&mut perf);
    assert_eq!(names(&perf), ["inet_sk_state_store"]);
    // fentry: the program and its trampoline (unnamed on old kernels).
    let mut fentry = vec![
        k("bpf_prog_2_tcp_close"),
        unknown.clone(),
        k("bpf_trampoline_6442"),
        k("tcp_close"),
    ];
    drop_tracer_frames(&mut fentry);
    assert_eq!(names(&fentry), ["tcp_close"]);
    // kprobe on ftrace.
    let mut kprobe = vec![
        k("bpf_prog_3_x"),
        k("trace_call_bpf"),
        k("kprobe_perf_func"),
        k("kprobe_ftrace_handler"),
        k("tcp_close"),
        k("inet_release"),
    ];
    drop_tracer_frames(&mut kprobe);
    assert_eq!(names(&kprobe), ["tcp_close", "inet_release"]);
    // Only at the top: the same names further down stay, and an unknown
    // frame after the last tracer frame may be the kernel's.
    let mut deep = vec![
        k("bpf_prog_4_x"),
        unknown.clone(),
        k("tcp_close"),
        k("bpf_trace_run1"),
    ];
    drop_tracer_frames(&mut deep);
    assert_eq!(names(&deep), ["[unknown]", "tcp_close", "bpf_trace_run1"]);
    let mut plain = vec![unknown.clone(), k("tcp_close")];
    drop_tracer_frames(&mut plain);
    assert_eq!(plain.len(), 2);
    // Nothing but tracer frames: kept, rather than an empty stack.
    let mut only = vec![k("bpf_prog_5_x"), k("bpf_trace_run2")];
    drop_tracer_frames(&mut only);
    assert_eq!(only.len(), 2);
    let mut empty: Vec<Frame> = Vec::new();
    drop_tracer_frames(&mut empty);
    assert!(empty.is_empty());
}

#[test]
fn split_functions_take_the_symbols_offset_and_name() {
    // Return address 0x13 into `finish.cold`, which DWARF files under
    // `finish`, starting at the hot part far away.
    let mut cold = frame("ws::conn::finish(int, bool)", 0x190130);
    prefer_symtab(
        &mut cold,
        ("ws::conn::finish(int, bool) [clone .cold]".into(), 0x13),
    );
    assert_eq!(
        (cold.name.as_str(), cold.offset),
        ("ws::conn::finish(int, bool) [clone .cold]", 0x13)
    );
    // The hot part of a function whose DWARF entry starts at its cold part.
    let mut hot = frame("main", 0x1358);
    prefer_symtab(&mut hot, ("main".into(), 0x1d8));
    assert_eq!((hot.name.as_str(), hot.offset), ("main", 0x1d8));
    // Unqualified DWARF name, same place: the symbol's qualified name.
    let mut invoke = frame("_M_invoke", 0x11);
    let full = "std::_Function_handler<void (int, bool), main::{lambda(int, bool)#1}>::_M_invoke(std::_Any_data const&, int&&, bool&&)";
    prefer_symtab(&mut invoke, (full.into(), 0x11));
    assert_eq!(invoke.name, full);
    let mut c = frame("f", 0x8);
    prefer_symtab(&mut c, ("ns::sub::f(void*)".into(), 0x8));
    assert_eq!(c.name, "ns::sub::f(void*)");
    // Another function altogether, or an alias: the debug info stands.
    let mut alias = frame("__GI___close", 0x10);
    prefer_symtab(&mut alias, ("close".into(), 0x10));
    assert_eq!(alias.name, "__GI___close");
    let mut far = frame("wstrace::demo::handle", 0x3e9);
    prefer_symtab(&mut far, ("some_other_fn".into(), 0x5000));
    assert_eq!(
        (far.name.as_str(), far.offset),
        ("wstrace::demo::handle", 0x3e9)
    );
    let mut notq = frame("finish", 0x8);
    prefer_symtab(&mut notq, ("refinish(int)".into(), 0x8));
    assert_eq!(notq.name, "finish");
}

#[test]
fn demangled_names_pass_through_verbatim() {
    for name in [
        "<tokio::net::tcp::stream::TcpStream as tokio::io::AsyncWrite>::poll_shutdown",
        "std::vector<int, std::allocator<int> >::push_back(int const&)",
    ] {
        let f = &user_frames(
            1,
            Some(&frame(name, 0x12)),
            Some("/srv/app"),
            FrameKind::Native,
        )[0];
        assert_eq!(f.function.as_deref(), Some(name));
    }
}

#[test]
fn lookup_addresses_step_back_except_innermost() {
    assert_eq!(lookup_addrs(&[]), Vec::<u64>::new());
    assert_eq!(lookup_addrs(&[0x1000]), [0x1000]);
    assert_eq!(
        lookup_addrs(&[0x1000, 0x2000, 0x3001]),
        [0x1000, 0x1fff, 0x3000]
    );
    assert_eq!(lookup_addrs(&[0, 0]), [0, 0]);
}

#[test]
fn paths_only_root_can_write_are_trusted() {
    use std::os::unix::fs::PermissionsExt as _;
    let m = |path: &str| Mapping {
        start: 0x1000,
        end: 0x2000,
        exec: true,
        offset: 0,
        dev: "08:01".into(),
        inode: 1,
        path: Some(path.into()),
    };
    assert!(trusted_paths(&[m("/usr/bin/python3.11"), m("[vdso]")]));
    assert!(trusted_paths(&[m(
        "/usr/lib/x86_64-linux-gnu/libc.so.6 (deleted)"
    )]));
    // /tmp itself is writable by all: a binary right in it is not.
    assert!(!trusted_paths(&[m("/tmp/nginx")]));
    let d = std::env::temp_dir().join(format!("wstrace-trust-{}", std::process::id()));
    std::fs::create_dir_all(d.join("sub")).expect("dir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = d.join("sub/app").display().to_string();
    // Root's directory under sticky /tmp: trusted (when run as root).
    let root = rustix::process::geteuid().as_raw() == 0;
    assert_eq!(trusted_paths(&[m(&bin)]), root);
    std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    assert!(!trusted_paths(&[m(&bin)]));
    std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    assert!(!trusted_paths(&[m(&bin)]), "a writable ancestor");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn task_stat_fields() {
    assert_eq!(
        parse_task_stat("42 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 100 23 0 0"),
        Some(('S', 123))
    );
    assert_eq!(parse_task_stat("42 (x) R 1"), None);
    assert_eq!(parse_task_stat("garbage"), None);
    let own = std::fs::read_to_string("/proc/thread-self/stat").expect("own stat");
    assert_eq!(parse_task_stat(&own).map(|(s, _)| s), Some('R'));
}
