//! Rules for a close that happened because the server process ended: how
//! it ended explains the close better than anything about the connection,
//! so these come first (what else was found stays as a secondary finding).
use super::{Facts, closer_name};
use crate::model::Side;
use crate::model::{Frame, Killer, ProcessEnd, is_crash_signal, signal_name};

type Found = Option<(String, Option<String>)>;

/// "its 101" for a server (it wrote it), "the 101" for a client (it read it).
fn the_101(f: &Facts) -> &'static str {
    match f.side {
        Side::Server => "its 101",
        Side::Client => "the 101",
    }
}

/// Who a clean close before exiting helps: a server's clients reconnect at
/// once; a client's server frees the connection at once.
fn close_frames_help(f: &Facts) -> &'static str {
    match f.side {
        Side::Server => {
            "send close frames (1001 going away) before exiting so clients reconnect at once"
        }
        Side::Client => {
            "send a close frame (1000 or 1001) before exiting so the server frees the connection at once"
        }
    }
}

fn signal_text(signal: u32, core_dumped: bool) -> String {
    let core = if core_dumped { " (core dumped)" } else { "" };
    format!("{}{core}", signal_name(signal))
}

fn signaled(f: &Facts) -> Option<(u32, bool, Option<&Killer>)> {
    match &f.ending {
        Some(ProcessEnd::Signaled {
            signal,
            core_dumped,
            killer,
        }) => Some((*signal, *core_dumped, killer.as_ref())),
        _ => None,
    }
}

/// The frame to name as where a crash happened: the innermost named frame
/// outside the C library and the dynamic loader (abort(), raise() and a
/// fault in memcpy or strlen are where the program's own code called
/// them), else the innermost named frame.
pub fn crash_site(stack: &[Frame]) -> Option<&Frame> {
    let runtime = |f: &Frame| {
        f.module.as_deref().is_some_and(|m| {
            let file = m.rsplit_once('/').map_or(m, |(_, f)| f);
            ["libc.so", "libc-", "ld-linux", "ld-musl", "libpthread"]
                .iter()
                .any(|p| file.starts_with(p))
        })
    };
    let named = || stack.iter().filter(|f| f.function.is_some());
    named().find(|f| !runtime(f)).or_else(|| named().next())
}

/// ` in handle_message (crash.c:10)`, or ` in handle_message`.
fn site_text(f: &Frame) -> String {
    let function = f.function.as_deref().unwrap_or_default();
    match (&f.file, f.line) {
        (Some(file), Some(line)) => format!(" in {function} ({file}:{line})"),
        (Some(file), None) => format!(" in {function} ({file})"),
        _ => format!(" in {function}"),
    }
}

/// SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE ...: the program crashed.
pub fn process_crashed(f: &Facts) -> Found {
    let (signal, core, killer) = signaled(f)?;
    if !is_crash_signal(signal) {
        return None;
    }
    let from = match killer {
        Some(Killer::Process { pid, comm }) => format!(" sent by {comm} (pid {pid})"),
        Some(Killer::Itself) => " raised by itself (abort(), a failed assertion or raise())".into(),
        _ => String::new(),
    };
    let site = f
        .crash
        .as_ref()
        .filter(|c| c.signal == signal)
        .and_then(|c| crash_site(&c.stack));
    let message = format!(
        "{} crashed with {}{from}{} {:.1} ms after {}; the kernel closed its connections when the process died",
        closer_name(f),
        signal_text(signal, core),
        site.map(site_text).unwrap_or_default(),
        f.ms_after_upgrade,
        the_101(f)
    );
    let fix = if let Some(site) = site {
        format!(
            "debug the crash{}: the crash stack in this report shows how it got there (as `bt` on a core would)",
            site_text(site)
        )
    } else if core {
        "debug the crash: the core dump (`coredumpctl` or the `core_pattern` path) shows where it faulted".into()
    } else {
        "debug the crash: enable core dumps (`ulimit -c unlimited`, systemd `LimitCORE=infinity`) or run it under gdb to see where it faulted; its log at this time may show the cause".into()
    };
    Some((message, Some(fix)))
}

/// SIGKILL, SIGTERM, SIGINT ...: someone (or the OOM killer) stopped it.
pub fn process_killed(f: &Facts) -> Found {
    let (signal, core, killer) = signaled(f)?;
    if is_crash_signal(signal) {
        return None;
    }
    let sig = signal_text(signal, core);
    let (by, fix) = match killer {
        Some(Killer::OomKiller) => (
            format!(" by the OOM killer ({sig})"),
            "the process ran out of memory: raise its memory limit (cgroup `memory.max`, container limit) or find what grew".to_string(),
        ),
        Some(Killer::Process { pid, comm }) => (
            format!(" by {sig} from {comm} (pid {pid})"),
            format!("find why {comm} (pid {pid}) stopped it (a supervisor, deploy or health check); handle SIGTERM: {}", close_frames_help(f)),
        ),
        Some(Killer::Itself) => (
            format!(" by {sig} it sent itself"),
            "the program signalled itself: its log at this time says why".to_string(),
        ),
        Some(Killer::Kernel) => (
            format!(" by {sig} from the kernel"),
            "the kernel sent the signal (e.g. a parent's death signal or a resource limit): check the service's logs and limits at this time".to_string(),
        ),
        None => (
            format!(" by {sig} (sender not seen)"),
            format!("find what stopped it (a supervisor, deploy, `kill`); handle SIGTERM: {}", close_frames_help(f)),
        ),
    };
    let message = format!(
        "{} was killed{by} {:.1} ms after {}; the kernel closed its connections when the process died",
        closer_name(f),
        f.ms_after_upgrade,
        the_101(f)
    );
    Some((message, Some(fix)))
}

/// exit() with the connection still open: a restart, deploy or an error
/// path that exits.
pub fn process_exited(f: &Facts) -> Found {
    let Some(ProcessEnd::Exited {
        status,
        after_signal,
    }) = &f.ending
    else {
        return None;
    };
    let after = match after_signal {
        Some((sig, Some(Killer::Process { pid, comm }))) => {
            format!(" after {} from {comm} (pid {pid})", signal_name(*sig))
        }
        Some((sig, _)) => format!(" after {}", signal_name(*sig)),
        None => String::new(),
    };
    let message = format!(
        "{} exited (status {status}){after} {:.1} ms after {} without closing the connection; the kernel closed it at exit",
        closer_name(f),
        f.ms_after_upgrade,
        the_101(f)
    );
    let fix = if *status == 0 || after_signal.is_some() {
        format!(
            "a restart or deploy ended the process: {}",
            close_frames_help(f)
        )
    } else {
        format!(
            "the process exited with an error status: its log at this time says why; {}",
            close_frames_help(f)
        )
    };
    Some((message, Some(fix)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{diagnose, tests::facts};
    use crate::model::ClosedBy;
    use crate::protocol::http::parse_request_head;
    use crate::redact::Redactor;

    fn ended(end: ProcessEnd) -> Facts {
        Facts {
            ending: Some(end),
            ..facts()
        }
    }

    #[test]
    fn a_segfault_is_a_crash_named_by_its_signal() {
        let d = diagnose(&ended(ProcessEnd::Signaled {
            signal: 11,
            core_dumped: false,
            killer: Some(Killer::Kernel),
        }));
        assert_eq!(d.code, "process_crashed");
        assert!(
            d.message.contains("php (pid 4242) crashed with SIGSEGV"),
            "{}",
            d.message
        );
        assert!(d.fix.as_deref().unwrap_or("").contains("core dumps"));
        let d = diagnose(&ended(ProcessEnd::Signaled {
            signal: 6,
            core_dumped: true,
            killer: None,
        }));
        assert!(d.message.contains("SIGABRT (core dumped)"), "{}", d.message);
        let d = diagnose(&ended(ProcessEnd::Signaled {
            signal: 6,
            core_dumped: false,
            killer: Some(Killer::Itself),
        }));
        assert!(
            d.message.contains("SIGABRT raised by itself"),
            "{}",
            d.message
        );
        assert!(d.fix.as_deref().unwrap_or("").contains("core dump"));
    }

    /// Issue 26, item 5: the crashing thread's stack names where it
    /// crashed: the program's own frame, past the C library's.
    #[test]
    fn a_crash_with_its_stack_names_where_it_crashed() {
        let frame = |function: &str, module: &str, file: Option<&str>, line: Option<u32>| Frame {
            function: Some(function.into()),
            module: Some(module.into()),
            file: file.map(str::to_string),
            line,
            ..Frame::default()
        };
        let abort = vec![
            Frame::unknown(crate::model::FrameKind::Native, 0x10, None),
            frame("raise", "/usr/lib/x86_64-linux-gnu/libc.so.6", None, None),
            frame("abort", "/usr/lib/x86_64-linux-gnu/libc.so.6", None, None),
            frame("check_frame", "/srv/ws/server", Some("server.c"), Some(41)),
            frame("main", "/srv/ws/server", Some("server.c"), Some(90)),
        ];
        assert_eq!(
            crash_site(&abort).and_then(|f| f.function.as_deref()),
            Some("check_frame")
        );
        let only_libc = &abort[..3];
        assert_eq!(
            crash_site(only_libc).and_then(|f| f.function.as_deref()),
            Some("raise")
        );
        assert_eq!(crash_site(&abort[..1]), None);
        let d = diagnose(&Facts {
            crash: Some(crate::model::Crash {
                tid: 4243,
                signal: 6,
                stack: abort.clone(),
            }),
            ..ended(ProcessEnd::Signaled {
                signal: 6,
                core_dumped: false,
                killer: Some(Killer::Itself),
            })
        });
        assert!(
            d.message.contains("raised by itself (abort(), a failed assertion or raise()) in check_frame (server.c:41) "),
            "{}",
            d.message
        );
        assert!(
            d.fix
                .as_deref()
                .unwrap_or("")
                .starts_with("debug the crash in check_frame (server.c:41): the crash stack"),
            "{:?}",
            d.fix
        );
        // A crash stack of another signal is not this death's.
        let d = diagnose(&Facts {
            crash: Some(crate::model::Crash {
                tid: 4243,
                signal: 11,
                stack: abort,
            }),
            ..ended(ProcessEnd::Signaled {
                signal: 6,
                core_dumped: false,
                killer: None,
            })
        });
        assert!(!d.message.contains("check_frame"), "{}", d.message);
    }

    #[test]
    fn a_kill_names_the_sender_or_the_oom_killer() {
        let d = diagnose(&ended(ProcessEnd::Signaled {
            signal: 9,
            core_dumped: false,
            killer: Some(Killer::Process {
                pid: 99,
                comm: "systemd".into(),
            }),
        }));
        assert_eq!(d.code, "process_killed");
        assert!(
            d.message
                .contains("killed by SIGKILL from systemd (pid 99)"),
            "{}",
            d.message
        );
        let d = diagnose(&ended(ProcessEnd::Signaled {
            signal: 9,
            core_dumped: false,
            killer: Some(Killer::OomKiller),
        }));
        assert!(d.message.contains("by the OOM killer"), "{}", d.message);
        assert!(d.fix.as_deref().unwrap_or("").contains("memory"));
        let d = diagnose(&ended(ProcessEnd::Signaled {
            signal: 15,
            core_dumped: false,
            killer: None,
        }));
        assert!(
            d.message.contains("SIGTERM (sender not seen)"),
            "{}",
            d.message
        );
    }

    #[test]
    fn an_exit_without_close_says_the_status() {
        let d = diagnose(&ended(ProcessEnd::Exited {
            status: 3,
            after_signal: None,
        }));
        assert_eq!(d.code, "process_exited");
        assert!(d.message.contains("exited (status 3)"), "{}", d.message);
        let d = diagnose(&ended(ProcessEnd::Exited {
            status: 0,
            after_signal: Some((
                15,
                Some(Killer::Process {
                    pid: 1,
                    comm: "systemd".into(),
                }),
            )),
        }));
        assert!(
            d.message
                .contains("exited (status 0) after SIGTERM from systemd (pid 1)"),
            "{}",
            d.message
        );
    }

    #[test]
    fn the_process_ending_wins_and_the_rest_stays_as_a_secondary_finding() {
        let f = Facts {
            request: parse_request_head(
                b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                &Redactor::default(),
            ),
            ..ended(ProcessEnd::Exited {
                status: 0,
                after_signal: None,
            })
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "process_exited");
        assert_eq!(d.also.len(), 1, "{d:?}");
        assert_eq!(d.also[0].code, "http10_upgrade");
        // Without a process ending, no secondary finding.
        let d = diagnose(&Facts { ending: None, ..f });
        assert_eq!(d.code, "http10_upgrade");
        assert!(d.also.is_empty());
    }

    #[test]
    fn a_peer_close_is_not_about_the_local_process() {
        // The closer ended only after the peer had closed: the ending is
        // still what closed this end, and it is said first.
        let f = Facts {
            closed_by: ClosedBy::Peer,
            ..ended(ProcessEnd::Exited {
                status: 0,
                after_signal: None,
            })
        };
        assert_eq!(diagnose(&f).code, "process_exited");
    }

    /// A client process that ended: the same codes, with "the 101" it read
    /// and a fix that helps its server, not "clients".
    #[test]
    fn a_client_process_ending_is_said_for_the_client() {
        let client = |end| Facts {
            side: crate::model::Side::Client,
            request: None,
            closer: Some((5150, "python3".into())),
            ..ended(end)
        };
        let d = diagnose(&client(ProcessEnd::Exited {
            status: 0,
            after_signal: None,
        }));
        assert_eq!(d.code, "process_exited");
        assert!(
            d.message.contains("ms after the 101 without closing"),
            "{}",
            d.message
        );
        let fix = d.fix.expect("fix");
        assert!(
            fix.contains("so the server frees the connection") && !fix.contains("clients"),
            "{fix}"
        );
        let d = diagnose(&client(ProcessEnd::Signaled {
            signal: 15,
            core_dumped: false,
            killer: None,
        }));
        assert_eq!(d.code, "process_killed");
        assert!(d.message.contains("ms after the 101;"), "{}", d.message);
        assert!(
            d.fix
                .expect("fix")
                .contains("so the server frees the connection")
        );
        // The same ending on a server keeps the server's words.
        let d = diagnose(&Facts {
            side: crate::model::Side::Server,
            ..client(ProcessEnd::Exited {
                status: 0,
                after_signal: None,
            })
        });
        assert!(d.message.contains("after its 101"), "{}", d.message);
        assert!(d.fix.expect("fix").contains("so clients reconnect at once"));
    }
}
