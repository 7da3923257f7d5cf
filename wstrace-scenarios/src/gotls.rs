//! `ws-scenario check --go-tls PATH`: wss:// served by a Go program over
//! Go's own `crypto/tls` (no OpenSSL anywhere), on every kernel and probe
//! set of the matrix. The program (wstrace-scenarios/go/ws-go-tls, static,
//! built per architecture by `cargo xtask vm`) is both the server and the
//! client; wstrace's uprobes are scoped to the traced port's server, so the
//! client is never probed. The servers are started with the others, traced
//! by the same wstrace, and judged on their reports.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::expect::{self, summary};

/// The `--go-tls` program's `-ldflags=-s -w` build (no symbol table, no DWARF), looked for
/// beside `--go-tls` (`cargo xtask vm` puts both in the VMs' /bin).
pub const STRIPPED: &str = "ws-go-tls-stripped";

/// One Go scenario: the server's mode, the client's, and what the report
/// must say beyond `tls: go` and the server as closer.
struct Spec {
    name: &'static str,
    server: &'static str,
    client: &'static str,
    diagnosis: &'static str,
    /// The first close frame's code, sent by the server and echoed back.
    close_code: Option<u64>,
    /// A frame the closing goroutine's stack must name, as Go code.
    frame: Option<&'static str>,
    /// The server is the stripped build ([`STRIPPED`]).
    stripped: bool,
}

const SPECS: [Spec; 4] = [
    // The README's story behind Go's TLS: an HTTP/1.0 upgrade answered and
    // closed. The request head is plaintext read at a RET of
    // `(*Conn).Read`; the close is in the program's own `(*hub).drop`.
    Spec {
        name: "go_tls_http10_upgrade_names_the_go_server",
        server: "close",
        client: "http10",
        diagnosis: "http10_upgrade",
        close_code: None,
        frame: Some("main.(*hub).drop"),
        stripped: false,
    },
    // A close frame written by `(*Conn).Write` and its answer read at a RET
    // of `(*Conn).Read`.
    Spec {
        name: "go_tls_close_frame_1001_is_seen",
        server: "goaway",
        client: "answer",
        diagnosis: "server_close_frame",
        close_code: Some(1001),
        frame: None,
        stripped: false,
    },
    // Pings written by `(*Conn).Write`, no pong read: the server's read
    // deadline ends the connection.
    Spec {
        name: "go_tls_unanswered_pings_are_heartbeat_timeout",
        server: "ping",
        client: "silent",
        diagnosis: "heartbeat_timeout",
        close_code: None,
        frame: None,
        stripped: false,
    },
    // Without symbols or DWARF, `crypto/tls` is found through
    // `.gopclntab`: the same story as the first.
    Spec {
        name: "go_tls_stripped_binary_is_covered",
        server: "close",
        client: "http10",
        diagnosis: "http10_upgrade",
        close_code: None,
        frame: None,
        stripped: true,
    },
];

/// A scenario's outcome so far (as check's own).
pub enum Verdict {
    Running,
    Skip(String),
    Fail(String),
}

struct Running {
    spec: &'static Spec,
    state: Verdict,
    server: Option<GoServer>,
}

/// A started Go server; killed when dropped.
struct GoServer {
    child: Child,
    port: u16,
}

impl Drop for GoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Go scenarios of one `check` run.
pub struct GoScenarios {
    program: PathBuf,
    stripped: PathBuf,
    runs: Vec<Running>,
}

pub fn is_go_scenario(name: &str) -> bool {
    SPECS.iter().any(|s| s.name == name)
}

impl GoScenarios {
    /// No program given: none (the kernel matrix always gives one). With one,
    /// every scenario (or `only`) with its server started; a port in `taken`
    /// (another family's server has it) is given back and another asked for.
    pub fn start(
        program: Option<&Path>,
        only: Option<&str>,
        taken: &mut std::collections::HashSet<u16>,
    ) -> Self {
        let Some(program) = program else {
            return Self {
                program: PathBuf::new(),
                stripped: PathBuf::new(),
                runs: Vec::new(),
            };
        };
        let stripped = program.with_file_name(STRIPPED);
        let mut runs = Vec::new();
        for spec in SPECS.iter().filter(|s| only.is_none_or(|o| o == s.name)) {
            let server = if spec.stripped { &stripped } else { program };
            let mut attempt = start_server(server, spec.server);
            for _ in 0..8 {
                match &attempt {
                    Ok(s) if taken.contains(&s.port) => {
                        attempt = start_server(server, spec.server);
                    }
                    _ => break,
                }
            }
            let (state, server) = match attempt {
                Ok(s) => {
                    taken.insert(s.port);
                    (Verdict::Running, Some(s))
                }
                Err(e) => (Verdict::Fail(format!("{e:#}")), None),
            };
            runs.push(Running {
                spec,
                state,
                server,
            });
        }
        Self {
            program: program.to_path_buf(),
            stripped,
            runs,
        }
    }

    pub fn any_running(&self) -> bool {
        self.runs
            .iter()
            .any(|r| matches!(r.state, Verdict::Running))
    }

    /// The traced ports of the running scenarios.
    pub fn ports(&self) -> Vec<u16> {
        self.runs
            .iter()
            .filter(|r| matches!(r.state, Verdict::Running))
            .filter_map(|r| r.server.as_ref().map(|s| s.port))
            .collect()
    }

    /// Runs every running scenario's client (wstrace is attached); the ports
    /// whose report must come.
    pub fn drive(&mut self) -> Vec<u16> {
        let mut expected = Vec::new();
        for run in &mut self.runs {
            let Some(server) = run
                .server
                .as_ref()
                .filter(|_| matches!(run.state, Verdict::Running))
            else {
                continue;
            };
            match run_client(&self.program, server.port, run.spec.client) {
                Ok(()) => expected.push(server.port),
                Err(e) => run.state = Verdict::Fail(format!("client: {e:#}")),
            }
        }
        expected
    }

    /// wstrace could not trace the batch: every running scenario gets that.
    pub fn stop_all(&mut self, why: &str, unavailable: bool) {
        for run in &mut self.runs {
            if matches!(run.state, Verdict::Running) {
                run.state = if unavailable {
                    Verdict::Skip(format!("probe set not available: {why}"))
                } else {
                    Verdict::Fail(why.to_string())
                };
            }
        }
    }

    /// (name, PASS|FAIL|SKIP, detail) of every scenario, against the
    /// reports by local port.
    pub fn judge(
        &self,
        reports: &[(u16, Value)],
        probe: &str,
    ) -> Vec<(&'static str, &'static str, String)> {
        self.runs
            .iter()
            .map(|run| {
                let (verdict, detail) = match (&run.state, &run.server) {
                    (Verdict::Skip(why), _) => ("SKIP", why.clone()),
                    (Verdict::Fail(why), _) => ("FAIL", why.clone()),
                    (Verdict::Running, None) => ("FAIL", "no server".to_string()),
                    (Verdict::Running, Some(server)) => {
                        let on_port: Vec<&Value> = reports
                            .iter()
                            .filter(|(p, _)| *p == server.port)
                            .map(|(_, v)| v)
                            .collect();
                        let program = if run.spec.stripped {
                            &self.stripped
                        } else {
                            &self.program
                        };
                        let comm = comm_of(program);
                        match check(&on_port, run.spec, server.child.id(), &comm, probe) {
                            Ok(d) => ("PASS", format!("port {}: {d}", server.port)),
                            Err(e) => ("FAIL", format!("port {}: {e}", server.port)),
                        }
                    }
                };
                (run.spec.name, verdict, detail)
            })
            .collect()
    }
}

fn start_server(program: &Path, mode: &str) -> Result<GoServer> {
    let mut child = Command::new(program)
        .args(["server", mode])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdout = child.stdout.take().context("Go server stdout")?;
    let mut line = String::new();
    // A line is at most a READY; bounded anyway (our child, but a broken
    // build must not hang the matrix on a line without end).
    let _ = BufReader::new(std::io::Read::take(stdout, 256)).read_line(&mut line);
    let mut server = GoServer { child, port: 0 };
    match line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
    {
        Some(port) => {
            server.port = port;
            Ok(server)
        }
        None => {
            let _ = server.child.kill();
            let mut err = String::new();
            if let Some(e) = server.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut std::io::Read::take(e, 4096), &mut err);
            }
            bail!(
                "{} server {mode} did not start: {:?} {}",
                program.display(),
                line.trim(),
                err.trim()
            )
        }
    }
}

/// The Go client (it ends after the server's FIN, with its own deadlines).
fn run_client(program: &Path, port: u16, mode: &str) -> Result<()> {
    let out = Command::new(program)
        .args(["client", &port.to_string(), mode])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} client", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} client {mode}: {}: {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The comm the kernel gives a process started from `program`: its file
/// name cut to 15 bytes (TASK_COMM_LEN 16 with the NUL).
fn comm_of(program: &Path) -> String {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.chars().take(15).collect()
}

/// One report, its plaintext from Go's crypto/tls: `tls: go`, the Go server
/// as the local closer, the diagnosis, the close frames, the goroutine frame.
fn check(
    reports: &[&Value],
    spec: &Spec,
    pid: u32,
    comm: &str,
    probe: &str,
) -> Result<String, String> {
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
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("<missing>");
    let got = (
        s("tls"),
        s("closed_by"),
        s("how"),
        r.get("pid").and_then(Value::as_u64),
        s("comm"),
        r.pointer("/diagnosis/code").and_then(Value::as_str),
    );
    let want = (
        "go",
        "local",
        "fin",
        Some(u64::from(pid)),
        comm,
        Some(spec.diagnosis),
    );
    if got != want {
        return Err(format!(
            "(tls, closed_by, how, pid, comm, diagnosis): want {want:?}, got {got:?} ({})",
            summary(r)
        ));
    }
    let report_probe = s("probe");
    let probe_ok = if probe == "auto" {
        expect::PROBE_SETS.contains(&report_probe)
    } else {
        report_probe == probe
    };
    if !probe_ok {
        return Err(format!("probe: want {probe}, got {report_probe}"));
    }
    let frames: Vec<(&str, Option<u64>)> = r
        .get("frames")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f.get("direction").and_then(Value::as_str).unwrap_or("?"),
                        f.get("code").and_then(Value::as_u64),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(code) = spec.close_code {
        // Sent by (*Conn).Write first; the client's answer read at a RET.
        if frames.first() != Some(&("sent", Some(code)))
            || !frames.contains(&("received", Some(code)))
        {
            return Err(format!(
                "close frames: want sent {code} first and received {code}, got {frames:?}"
            ));
        }
    } else if spec.diagnosis == "http10_upgrade" {
        let version = r.pointer("/request/version").and_then(Value::as_str);
        if version != Some("HTTP/1.0") {
            return Err(format!(
                "request.version: want HTTP/1.0 (the plaintext head), got {version:?}"
            ));
        }
    }
    if let Some(want) = spec.frame {
        let stack = r.get("user_stack").and_then(Value::as_array);
        let named = stack.is_some_and(|st| {
            st.iter().any(|f| {
                f.get("function").and_then(Value::as_str) == Some(want)
                    && f.get("language").and_then(Value::as_str) == Some("go")
            })
        });
        if !named {
            let names: Vec<&str> = stack
                .map(|st| {
                    st.iter()
                        .map(|f| f["function"].as_str().unwrap_or("[unknown]"))
                        .collect()
                })
                .unwrap_or_default();
            return Err(format!(
                "user_stack: want {want} (language go), got {names:?}"
            ));
        }
    }
    Ok(format!("tls go {} {}", spec.diagnosis, summary(r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The program's comm (the matrix's /bin/ws-go-tls).
    const PROGRAM: &str = "ws-go-tls";

    fn report(pid: u32) -> Value {
        json!({
            "local": "127.0.0.1:4000", "tls": "go", "closed_by": "local", "how": "fin",
            "pid": pid, "comm": PROGRAM, "probe": "kprobe", "ms_after_upgrade": 0.3,
            "diagnosis": {"code": "http10_upgrade"},
            "request": {"version": "HTTP/1.0"},
            "frames": [],
            "user_stack": [
                {"function": "internal/poll.(*FD).Close", "language": "go"},
                {"function": "main.(*hub).drop", "language": "go"},
            ],
        })
    }

    #[test]
    fn a_go_report_passes_and_each_missing_fact_fails() {
        let spec = &SPECS[0];
        let r = report(7);
        assert!(check(&[&r], spec, 7, PROGRAM, "kprobe").is_ok());
        assert!(check(&[&r], spec, 7, PROGRAM, "auto").is_ok());
        assert!(
            check(&[&r], spec, 8, PROGRAM, "kprobe").is_err(),
            "another pid"
        );
        assert!(
            check(&[&r], spec, 7, PROGRAM, "fentry").is_err(),
            "another set"
        );
        assert!(check(&[], spec, 7, PROGRAM, "kprobe").is_err(), "no report");
        assert!(check(&[&r, &r], spec, 7, PROGRAM, "kprobe").is_err(), "two");
        let mut openssl = r.clone();
        openssl["tls"] = json!("openssl");
        assert!(check(&[&openssl], spec, 7, PROGRAM, "kprobe").is_err());
        let mut native = r.clone();
        native["user_stack"][1]["language"] = Value::Null;
        assert!(check(&[&native], spec, 7, PROGRAM, "kprobe").is_err());
        let mut http11 = r.clone();
        http11["request"]["version"] = json!("HTTP/1.1");
        assert!(check(&[&http11], spec, 7, PROGRAM, "kprobe").is_err());
        assert!(
            check(&[&r], spec, 7, "ws-go-tls-strip", "kprobe").is_err(),
            "comm"
        );
    }

    #[test]
    fn the_stripped_build_is_judged_by_its_own_comm_without_frames() {
        let spec = SPECS.iter().find(|s| s.stripped).expect("a stripped spec");
        let comm = comm_of(Path::new("/bin").join(STRIPPED).as_path());
        assert_eq!(comm, "ws-go-tls-strip");
        let mut r = report(7);
        r["comm"] = json!(comm);
        r["user_stack"] = json!([{"function": null, "language": null}]);
        assert!(check(&[&r], spec, 7, &comm, "kprobe").is_ok());
        assert!(check(&[&r], spec, 7, PROGRAM, "kprobe").is_err());
    }

    #[test]
    fn the_close_frame_must_be_sent_first_and_answered() {
        let spec = &SPECS[1];
        let mut r = report(7);
        r["diagnosis"]["code"] = json!("server_close_frame");
        r["frames"] = json!([
            {"direction": "sent", "code": 1001},
            {"direction": "received", "code": 1001},
        ]);
        assert!(
            check(&[&r], spec, 7, PROGRAM, "tracepoint").is_err(),
            "probe"
        );
        r["probe"] = json!("tracepoint");
        assert!(check(&[&r], spec, 7, PROGRAM, "tracepoint").is_ok());
        r["frames"] = json!([{"direction": "sent", "code": 1001}]);
        assert!(check(&[&r], spec, 7, PROGRAM, "tracepoint").is_err());
    }
}
