//! What a scenario expects of wstrace's JSON reports, as pure functions over
//! parsed reports (unit-tested below without a kernel).
use serde_json::Value;

/// The report one traced connection must produce.
#[derive(Clone, Debug)]
pub struct Expect {
    pub closed_by: &'static str,
    pub how: &'static str,
    /// The server process that must be named as the closer (local closes).
    pub closer_pid: Option<u32>,
    /// Lower bound on `ms_after_upgrade` (the client held the socket open).
    pub min_ms: Option<f64>,
    /// `local` must start with this (e.g. `[::1]:` for IPv6 loopback).
    pub local_prefix: Option<&'static str>,
    /// The client process, which must be named as the peer by the kernel
    /// (every scenario's client is on this host). Filled in at start.
    pub peer_pid: Option<u32>,
    /// The server ended with the connection open: how, as the report must say.
    pub ending: Option<Ending>,
    /// The kernel closed the socket itself: `kernel_reason` and
    /// `diagnosis.code`; no process (nor its stacks) may be named.
    pub kernel: Option<(&'static str, &'static str)>,
    /// `diagnosis.code`, and the code of the first close frame (None: none
    /// may be seen).
    pub diagnosis: Option<(&'static str, Option<u64>)>,
}

/// How the server process ended, and what the report must say about it.
#[derive(Clone, Debug)]
pub struct Ending {
    /// The server's pid (filled in at start): the closer, at its exit.
    pub pid: u32,
    /// `diagnosis.code`.
    pub code: &'static str,
    /// `process_end.signal`, or None for an exit.
    pub signal: Option<&'static str>,
    pub exit_status: Option<u64>,
    /// `process_end.sent_by.pid` (filled in at start: the checker), or None.
    pub sent_by: Option<u32>,
}

/// The comm of the scenario client (the checker itself).
pub const CLIENT_NAME: &str = "ws-scenario";

/// The comm and executable name of the scenario servers.
pub const SERVER_NAME: &str = "ws-scenario";
pub const PROBE_SETS: [&str; 3] = ["fentry", "kprobe", "tracepoint"];

fn str_key<'a>(r: &'a Value, key: &str) -> Option<&'a str> {
    r.get(key).and_then(Value::as_str)
}

pub use wstrace_scenarios::harness::report::{is_client_of, local_port};

/// Checks the reports seen on one traced port against `expect` (None: there
/// must be none). `probe` is the set asked for (`auto` accepts any real set).
/// Ok carries a short detail for the PASS line.
pub fn evaluate(
    reports: &[&Value],
    expect: Option<&Expect>,
    probe: &str,
) -> Result<String, String> {
    let Some(e) = expect else {
        return match reports {
            [] => Ok("no report".into()),
            [r, ..] => Err(format!(
                "expected no report, got {}: {}",
                reports.len(),
                summary(r)
            )),
        };
    };
    let r = match reports {
        [r] => *r,
        [] => return Err("expected one report, got none".into()),
        _ => {
            let all: Vec<String> = reports.iter().map(|r| summary(r)).collect();
            return Err(format!(
                "expected one report, got {}: {}",
                reports.len(),
                all.join(" / ")
            ));
        }
    };
    check_report(r, e, probe).map(|()| summary(r))
}

fn check_report(r: &Value, e: &Expect, probe: &str) -> Result<(), String> {
    let got = |k: &str| str_key(r, k).unwrap_or("<missing>").to_string();
    if got("closed_by") != e.closed_by {
        return Err(format!(
            "closed_by: want {}, got {} ({})",
            e.closed_by,
            got("closed_by"),
            summary(r)
        ));
    }
    if got("how") != e.how {
        return Err(format!(
            "how: want {}, got {} ({})",
            e.how,
            got("how"),
            summary(r)
        ));
    }
    let report_probe = got("probe");
    let probe_ok = if probe == "auto" {
        PROBE_SETS.contains(&report_probe.as_str())
    } else {
        report_probe == probe
    };
    if !probe_ok {
        return Err(format!("probe: want {probe}, got {report_probe}"));
    }
    if let Some(prefix) = e.local_prefix
        && !got("local").starts_with(prefix)
    {
        return Err(format!("local: want {prefix}..., got {}", got("local")));
    }
    let ms = r
        .get("ms_after_upgrade")
        .and_then(Value::as_f64)
        .ok_or("ms_after_upgrade missing")?;
    if !(0.0..5000.0).contains(&ms) && e.min_ms.is_none() {
        return Err(format!("ms_after_upgrade {ms} outside 0..5000"));
    }
    if let Some(min) = e.min_ms
        && ms < min
    {
        return Err(format!("ms_after_upgrade: want >= {min}, got {ms}"));
    }
    if let Some(pid) = e.closer_pid {
        check_closer(r, pid)?;
    }
    if let Some(pid) = e.peer_pid {
        check_peer(r, pid)?;
    }
    if let Some(end) = &e.ending {
        check_ending(r, end)?;
    }
    if let Some((reason, code)) = e.kernel {
        check_kernel_close(r, reason, code)?;
    }
    if let Some((code, close)) = e.diagnosis {
        check_diagnosis(r, code, close)?;
    }
    Ok(())
}

/// The diagnosis, and the first close frame's code: the frames after the
/// upgrade were seen (pings, a close split across writes).
fn check_diagnosis(r: &Value, code: &str, close: Option<u64>) -> Result<(), String> {
    let got = (
        r.pointer("/diagnosis/code").and_then(Value::as_str),
        r.pointer("/frames/0/code").and_then(Value::as_u64),
    );
    if got == (Some(code), close) {
        Ok(())
    } else {
        Err(format!(
            "diagnosis: want {code} with close frame {close:?}, got {got:?}: {} heartbeat {}",
            r.get("diagnosis").unwrap_or(&Value::Null),
            r.get("heartbeat").unwrap_or(&Value::Null)
        ))
    }
}

/// Nobody here closed it: no pid, no stacks (a bystander's, in softirq),
/// and the kernel's reason.
fn check_kernel_close(r: &Value, reason: &str, code: &str) -> Result<(), String> {
    let empty = |k: &str| {
        r.get(k)
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty())
    };
    let got = (
        str_key(r, "kernel_reason"),
        r.pointer("/diagnosis/code").and_then(Value::as_str),
        r.get("pid").is_none_or(Value::is_null),
        empty("kernel_stack") && empty("user_stack"),
    );
    if got == (Some(reason), Some(code), true, true) {
        Ok(())
    } else {
        Err(format!(
            "kernel close: want reason {reason}, diagnosis {code}, no pid and no stacks; got {got:?} ({})",
            summary(r)
        ))
    }
}

/// The closer is the server, at its exit, and the report says how it ended
/// (and who killed it) ahead of anything else.
fn check_ending(r: &Value, e: &Ending) -> Result<(), String> {
    let pe = r.get("process_end").unwrap_or(&Value::Null);
    let got = (
        r.get("pid").and_then(Value::as_u64),
        r.get("closed_at_exit").and_then(Value::as_bool),
        r.pointer("/diagnosis/code").and_then(Value::as_str),
        pe.get("signal").and_then(Value::as_str),
        pe.get("exit_status").and_then(Value::as_u64),
        pe.pointer("/sent_by/pid").and_then(Value::as_u64),
    );
    let want = (
        Some(u64::from(e.pid)),
        Some(true),
        Some(e.code),
        e.signal,
        e.exit_status,
        e.sent_by.map(u64::from),
    );
    if got != want {
        return Err(format!(
            "process end: want (pid, at exit, code, signal, status, sent by) {want:?}, got {got:?}: {} {}",
            r.get("diagnosis").unwrap_or(&Value::Null),
            pe
        ));
    }
    // A crash keeps the crashing thread's stack, taken at the signal: it
    // reaches the server's own named code.
    let own_code = |f: &Value| {
        f.get("function").is_some_and(Value::is_string)
            && str_key(f, "module").is_some_and(|m| m.rsplit('/').next() == Some(SERVER_NAME))
    };
    if e.code == "process_crashed"
        && !pe
            .get("crash_stack")
            .and_then(Value::as_array)
            .is_some_and(|st| st.iter().any(own_code))
    {
        return Err(format!(
            "process end: want a crash_stack reaching {SERVER_NAME}'s own functions, got {pe}"
        ));
    }
    Ok(())
}

/// The client is named as the peer, from the kernel's record of who wrote
/// the request (not the userspace lookup, which races the client's close).
fn check_peer(r: &Value, pid: u32) -> Result<(), String> {
    let peer = r.get("peer").unwrap_or(&Value::Null);
    let ok = peer.get("pid").and_then(Value::as_u64) == Some(u64::from(pid))
        && peer.get("comm").and_then(Value::as_str) == Some(CLIENT_NAME)
        && peer.get("source").and_then(Value::as_str) == Some("kernel");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "peer: want pid {pid} ({CLIENT_NAME}) named by the kernel, got {peer} ({})",
            summary(r)
        ))
    }
}

/// The closer is the server process, named completely, with the close's
/// call path in both stacks.
fn check_closer(r: &Value, pid: u32) -> Result<(), String> {
    let num = |k: &str| r.get(k).and_then(Value::as_u64);
    if num("pid") != Some(u64::from(pid)) {
        return Err(format!(
            "pid: want {pid} (the server), got {:?} ({})",
            num("pid"),
            summary(r)
        ));
    }
    // Single-threaded server: the closing thread is the main thread.
    if num("tid") != Some(u64::from(pid)) {
        return Err(format!("tid: want {pid}, got {:?}", num("tid")));
    }
    if str_key(r, "comm") != Some(SERVER_NAME) {
        return Err(format!(
            "comm: want {SERVER_NAME}, got {:?}",
            str_key(r, "comm")
        ));
    }
    if !str_key(r, "exe").is_some_and(|e| e.ends_with(SERVER_NAME)) {
        return Err(format!(
            "exe: want .../{SERVER_NAME}, got {:?}",
            str_key(r, "exe")
        ));
    }
    // Frames are objects; an unknown one has a null function.
    let frames = |k: &str| -> Vec<String> {
        r.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|f| f["function"].as_str().unwrap_or("[unknown]").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let kernel = frames("kernel_stack");
    if kernel.is_empty() {
        return Err("kernel_stack is empty".into());
    }
    // Every probe set: the stack starts where the kernel's own code was,
    // not at the tracer's program, trampoline or tracepoint/kprobe glue.
    if kernel
        .first()
        .is_some_and(|f| wstrace_common::is_tracer_function(f))
    {
        return Err(format!(
            "kernel_stack starts with the tracer's own frames: {kernel:?}"
        ));
    }
    let user = frames("user_stack");
    if !user
        .iter()
        .any(|f| f.to_ascii_lowercase().contains("close"))
    {
        return Err(format!("user_stack has no close frame: {user:?}"));
    }
    // The server is a Rust release build (no frame pointers): only the
    // dwarf unwind (the default) reaches its main.
    if str_key(r, "user_stack_unwind") != Some("dwarf")
        || !user.iter().any(|f| f.starts_with("ws_scenario::main"))
    {
        return Err(format!(
            "user_stack: want a dwarf unwind down to ws_scenario::main, got {:?} {user:?}",
            str_key(r, "user_stack_unwind")
        ));
    }
    Ok(())
}

/// "local fin pid 123 (comm) 0.4 ms [probe]" for PASS lines and errors.
pub fn summary(r: &Value) -> String {
    let s = |k: &str| str_key(r, k).unwrap_or("?").to_string();
    let pid = r
        .get("pid")
        .and_then(Value::as_u64)
        .map(|p| p.to_string())
        .unwrap_or("-".into());
    let ms = r
        .get("ms_after_upgrade")
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN);
    format!(
        "{} {} {} pid {pid} ({}) {ms:.1} ms [{}]",
        s("local"),
        s("closed_by"),
        s("how"),
        s("comm"),
        s("probe")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A frame object as wstrace writes it.
    fn frame(function: &str, module: Option<&str>) -> Value {
        json!({
            "function": function, "offset": 16, "module": module, "file": null, "line": null,
            "inlined": false, "kind": if module.is_some() { "native" } else { "kernel" },
            "language": null, "address": "0xffffffff81000010", "unresolved": null
        })
    }

    fn report(pid: u32) -> Value {
        json!({
            "local": "127.0.0.1:4000", "remote": "127.0.0.1:5000",
            "closed_by": "local", "how": "fin", "pid": pid, "tid": pid,
            "comm": "ws-scenario", "exe": "/bin/ws-scenario", "ms_after_upgrade": 0.4,
            "kernel_stack": [frame("tcp_close", None)],
            "user_stack": [
                frame("__close", Some("/lib/libc.so.6")),
                frame("ws_scenario::main", Some("/bin/ws-scenario")),
            ],
            "user_stack_unwind": "dwarf",
            "probe": "tracepoint",
            "peer": {"pid": 9, "tid": 9, "comm": "ws-scenario", "source": "kernel"}
        })
    }

    fn named(pid: u32) -> Expect {
        Expect {
            closed_by: "local",
            how: "fin",
            closer_pid: Some(pid),
            min_ms: None,
            local_prefix: None,
            peer_pid: Some(9),
            ending: None,
            kernel: None,
            diagnosis: None,
        }
    }

    #[test]
    fn frames_must_give_the_diagnosis_and_the_close_code() {
        let mut r = report(7);
        r["diagnosis"] = json!({"code": "server_close_frame"});
        r["frames"] = json!([{"direction": "sent", "code": 4001}]);
        let mut e = named(7);
        e.diagnosis = Some(("server_close_frame", Some(4001)));
        assert!(evaluate(&[&r], Some(&e), "tracepoint").is_ok());
        // The split close missed: no frame, another diagnosis.
        r["frames"] = json!([]);
        r["diagnosis"] = json!({"code": "unknown"});
        let err = evaluate(&[&r], Some(&e), "tracepoint").unwrap_err();
        assert!(err.contains("diagnosis: want server_close_frame"), "{err}");
        // A heartbeat timeout has no close frame to see.
        r["diagnosis"] = json!({"code": "heartbeat_timeout"});
        e.diagnosis = Some(("heartbeat_timeout", None));
        assert!(evaluate(&[&r], Some(&e), "tracepoint").is_ok());
    }

    #[test]
    fn a_kernel_close_names_no_process() {
        let mut r = report(7);
        r["closed_by"] = json!("kernel");
        r["how"] = json!("abort");
        r["pid"] = Value::Null;
        r["kernel_stack"] = json!([]);
        r["user_stack"] = json!([]);
        r["kernel_reason"] = json!("tcp_timeout");
        r["diagnosis"] = json!({"code": "tcp_timeout"});
        let mut e = named(7);
        e.closer_pid = None;
        e.closed_by = "kernel";
        e.how = "abort";
        e.kernel = Some(("tcp_timeout", "tcp_timeout"));
        assert!(evaluate(&[&r], Some(&e), "tracepoint").is_ok());
        let mut bystander = r.clone();
        bystander["pid"] = json!(555);
        assert!(
            evaluate(&[&bystander], Some(&e), "tracepoint")
                .unwrap_err()
                .contains("kernel close")
        );
    }

    #[test]
    fn a_killed_server_must_be_reported_as_killed_by_the_checker() {
        let mut r = report(7);
        r["closed_at_exit"] = json!(true);
        r["diagnosis"] = json!({"code": "process_killed", "message": "m"});
        r["process_end"] = json!({"how": "signal", "signal": "SIGKILL", "signal_number": 9,
            "core_dumped": false, "exit_status": null, "killed_by": "process",
            "sent_by": {"pid": 9, "comm": "ws-scenario"}});
        let mut e = named(7);
        e.closer_pid = None;
        e.ending = Some(Ending {
            pid: 7,
            code: "process_killed",
            signal: Some("SIGKILL"),
            exit_status: None,
            sent_by: Some(9),
        });
        assert!(evaluate(&[&r], Some(&e), "tracepoint").is_ok());
        let mut wrong = r.clone();
        wrong["process_end"]["sent_by"]["pid"] = json!(8);
        assert!(
            evaluate(&[&wrong], Some(&e), "tracepoint")
                .unwrap_err()
                .contains("process end")
        );
        let mut unknown = r.clone();
        unknown["diagnosis"]["code"] = json!("unknown");
        assert!(evaluate(&[&unknown], Some(&e), "tracepoint").is_err());
    }

    #[test]
    fn a_crashed_server_must_keep_its_crash_stack() {
        let mut r = report(7);
        r["closed_at_exit"] = json!(true);
        r["diagnosis"] = json!({"code": "process_crashed", "message": "m"});
        r["process_end"] = json!({"how": "signal", "signal": "SIGSEGV", "signal_number": 11,
            "core_dumped": false, "exit_status": null, "killed_by": "self", "sent_by": null,
            "crash_tid": 7, "crash_stack": [
                {"function": "raise", "module": "/usr/lib/x86_64-linux-gnu/libc.so.6"},
                {"function": "ws_scenario::serve::crash", "module": "/bin/ws-scenario"}]});
        let mut e = named(7);
        e.closer_pid = None;
        e.ending = Some(Ending {
            pid: 7,
            code: "process_crashed",
            signal: Some("SIGSEGV"),
            exit_status: None,
            sent_by: None,
        });
        assert!(evaluate(&[&r], Some(&e), "tracepoint").is_ok());
        let mut libc_only = r.clone();
        libc_only["process_end"]["crash_stack"] = json!([
            {"function": "raise", "module": "/usr/lib/x86_64-linux-gnu/libc.so.6"},
            {"function": null, "module": "/bin/ws-scenario"}]);
        assert!(
            evaluate(&[&libc_only], Some(&e), "tracepoint")
                .unwrap_err()
                .contains("crash_stack")
        );
        let mut none = r.clone();
        none["process_end"]["crash_stack"] = json!(null);
        assert!(evaluate(&[&none], Some(&e), "tracepoint").is_err());
    }

    #[test]
    fn the_peer_must_come_from_the_kernel() {
        let r = report(7);
        assert!(evaluate(&[&r], Some(&named(7)), "tracepoint").is_ok());
        let mut fallback = report(7);
        fallback["peer"]["source"] = json!("socket_table");
        assert!(
            evaluate(&[&fallback], Some(&named(7)), "tracepoint")
                .unwrap_err()
                .contains("named by the kernel")
        );
        let mut none = report(7);
        none["peer"] = Value::Null;
        assert!(evaluate(&[&none], Some(&named(7)), "tracepoint").is_err());
        let mut other = report(7);
        other["peer"]["pid"] = json!(10);
        assert!(evaluate(&[&other], Some(&named(7)), "tracepoint").is_err());
    }

    #[test]
    fn matching_report_passes() {
        let r = report(7);
        let detail = evaluate(&[&r], Some(&named(7)), "tracepoint").unwrap();
        assert!(detail.contains("pid 7"), "{detail}");
        assert!(evaluate(&[&r], Some(&named(7)), "auto").is_ok());
    }

    #[test]
    fn wrong_fields_fail_with_what_was_seen() {
        let r = report(7);
        assert!(
            evaluate(&[&r], Some(&named(8)), "tracepoint")
                .unwrap_err()
                .contains("pid: want 8")
        );
        assert!(
            evaluate(&[&r], Some(&named(7)), "fentry")
                .unwrap_err()
                .contains("probe")
        );
        let mut peer = named(7);
        peer.closed_by = "peer";
        assert!(
            evaluate(&[&r], Some(&peer), "tracepoint")
                .unwrap_err()
                .contains("closed_by")
        );
        let mut r2 = report(7);
        r2["user_stack"] = json!([frame("main", Some("/bin/x"))]);
        assert!(
            evaluate(&[&r2], Some(&named(7)), "tracepoint")
                .unwrap_err()
                .contains("close frame")
        );
        let mut fp = report(7);
        fp["user_stack_unwind"] = json!("fp");
        assert!(
            evaluate(&[&fp], Some(&named(7)), "tracepoint")
                .unwrap_err()
                .contains("dwarf unwind")
        );
        let mut r3 = report(7);
        r3["kernel_stack"] = json!([]);
        assert!(evaluate(&[&r3], Some(&named(7)), "tracepoint").is_err());
        // The tracer's own frames on top of the kernel stack fail the check.
        for top in [
            "bpf_prog_1a2b_inet_sock_set_state_closer",
            "bpf_trampoline_6442",
            "__traceiter_inet_sock_set_state",
        ] {
            let mut r4 = report(7);
            r4["kernel_stack"] = json!([frame(top, None), frame("tcp_close", None)]);
            assert!(
                evaluate(&[&r4], Some(&named(7)), "tracepoint")
                    .unwrap_err()
                    .contains("tracer's own frames"),
                "{top}"
            );
        }
    }

    #[test]
    fn counts_matter() {
        let r = report(7);
        assert!(
            evaluate(&[], Some(&named(7)), "tracepoint")
                .unwrap_err()
                .contains("got none")
        );
        assert!(
            evaluate(&[&r, &r], Some(&named(7)), "tracepoint")
                .unwrap_err()
                .contains("got 2")
        );
        assert!(evaluate(&[], None, "tracepoint").is_ok());
        assert!(
            evaluate(&[&r], None, "tracepoint")
                .unwrap_err()
                .contains("expected no report")
        );
    }

    #[test]
    fn timing_and_address_bounds() {
        let r = report(7);
        let mut held = named(7);
        held.min_ms = Some(150.0);
        assert!(
            evaluate(&[&r], Some(&held), "tracepoint")
                .unwrap_err()
                .contains(">= 150")
        );
        let mut v6 = named(7);
        v6.local_prefix = Some("[::1]:");
        assert!(
            evaluate(&[&r], Some(&v6), "tracepoint")
                .unwrap_err()
                .contains("[::1]")
        );
    }

    #[test]
    fn local_ports_of_both_families() {
        assert_eq!(local_port(&json!({"local": "127.0.0.1:4000"})), Some(4000));
        assert_eq!(local_port(&json!({"local": "[::1]:4001"})), Some(4001));
        assert_eq!(local_port(&json!({"local": "nonsense"})), None);
        assert_eq!(local_port(&json!({})), None);
    }
}
