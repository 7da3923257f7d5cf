//! `ws-scenario check`: start every scenario's servers, one wstrace tracing
//! all their ports, drive the clients, then judge the reports per port.
//!
//! One wstrace for all scenarios, not one each: loading and attaching the
//! probes is the slow part under QEMU's software emulation, and the kernel
//! matrix runs this for 4 probe sets on 3 kernels.
use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use wstrace_scenarios::harness::{Tracer, TracerOptions};

use crate::{
    client::{self, Then},
    expect::{self, Ending, Expect},
    gotls::GoScenarios,
    serve::Mode,
};

#[derive(clap::Args)]
pub struct Args {
    /// The wstrace binary under test.
    #[arg(long)]
    wstrace: PathBuf,
    /// Probe set to ask wstrace for: auto, fentry, kprobe or tracepoint.
    #[arg(long, default_value = "auto")]
    probe: String,
    /// Run only this scenario.
    #[arg(long)]
    only: Option<String>,
    /// Echo wstrace's stderr and the reports.
    #[arg(long)]
    verbose: bool,
    /// One more argument for wstrace (repeatable), e.g.
    /// `--wstrace-arg=--symbolize-timeout=30` (default: the harness's
    /// `SYMBOLIZE_TIMEOUT`).
    #[arg(long = "wstrace-arg", value_name = "ARG", allow_hyphen_values = true)]
    wstrace_args: Vec<String>,
    /// The Go crypto/tls scenarios' program (`ws-go-tls`, built per
    /// architecture by `cargo xtask vm`); without it those are not run.
    #[arg(long, value_name = "PATH")]
    go_tls: Option<PathBuf>,
    /// Seconds wstrace may take to load and attach (QEMU TCG on a busy
    /// host can need more than the default for the tracepoint set).
    #[arg(long, value_name = "SECS", default_value_t = READY_TIMEOUT.as_secs())]
    ready_timeout: u64,
}

/// How long wstrace may take to load and attach by default (QEMU TCG is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines saying where a step's time went start with this (`cargo xtask vm`
/// prints them per VM).
pub const TIME_PREFIX: &str = "ws-scenario: time:";
/// How long to wait for the expected reports after the last client.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One server of a scenario and what its connection must produce.
struct ServerSpec {
    bind: IpAddr,
    mode: Mode,
    /// Passed to wstrace as --port.
    traced: bool,
    request: &'static [u8],
    then: Then,
    /// None: no report at all on this port. The pid is filled in at start.
    expect: Option<Expect>,
    /// With every port traced: the checker's own socket to this server is
    /// the client side (it read the 101), and must be reported, closed by
    /// this (`closed_by`).
    client: Option<&'static str>,
    /// A relay (`Mode::Relay`) to the scenario's server at this index: the
    /// checker drives the relay only, and the server's peer is the relay.
    relay_to: Option<usize>,
    /// `--rewrite-key` for a relay.
    rewrite_key: bool,
}

struct Scenario {
    name: &'static str,
    servers: Vec<ServerSpec>,
    /// Traced by a wstrace started without --port (every port), instead of
    /// the one given every other scenario's ports.
    all_ports: bool,
    /// The scenario's sockets are one proxied WebSocket, linked by this
    /// evidence (`chain.linked_by`): see `judge_chain`.
    chain: Option<&'static str>,
}

fn named_local_fin() -> Option<Expect> {
    Some(Expect {
        closed_by: "local",
        how: "fin",
        closer_pid: Some(0),
        min_ms: None,
        local_prefix: None,
        peer_pid: Some(0),
        ending: None,
        kernel: None,
        diagnosis: None,
    })
}

/// The server ended with the connection open (the kernel closed it, FIN):
/// the report names it at its exit and says how it ended.
fn ended(mode: Mode, then: Then, ending: Ending) -> ServerSpec {
    upgrade(
        LOCALHOST,
        mode,
        then,
        Some(Expect {
            closed_by: "local",
            how: "fin",
            closer_pid: None,
            min_ms: None,
            local_prefix: None,
            peer_pid: Some(0),
            ending: Some(ending),
            kernel: None,
            diagnosis: None,
        }),
    )
}

fn upgrade(bind: IpAddr, mode: Mode, then: Then, expect: Option<Expect>) -> ServerSpec {
    ServerSpec {
        bind,
        mode,
        traced: true,
        request: client::UPGRADE_REQUEST,
        then,
        expect,
        client: None,
        relay_to: None,
        rewrite_key: false,
    }
}

/// An HTTP/1.0 upgrade request (what nginx sends upstream without
/// `proxy_http_version 1.1`) with a Key of this run's own: chains are
/// linked by the handshake, and with every port traced the other
/// scenarios' connections (the RFC's example Key) are seen too.
fn fresh_http10_upgrade() -> &'static [u8] {
    let key = crate::serve::fresh_key().unwrap_or_else(|e| {
        // Without /dev/urandom the chain is ambiguous and the scenario
        // fails, saying why.
        eprintln!("ws-scenario: {e:#}");
        "AAAAAAAAAAAAAAAAAAAAAA==".into()
    });
    let req = format!(
        "GET /ws HTTP/1.0\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    // Once per scenario per run: a request lives as long as the checker.
    Box::leak(req.into_bytes().into_boxed_slice())
}

/// A relay in front of a server that closes HTTP/1.0 upgrades (the seed
/// case with nginx, made of ws-scenario so it runs in every VM): the
/// backend's report is `http10_upgrade`; the relay's report on the
/// client's side is `upstream_closed`, naming the backend; the four
/// sockets are one chain, linked by `linked_by`.
fn proxy_chain(name: &'static str, rewrite_key: bool, linked_by: &'static str) -> Scenario {
    let named = |code| {
        Some(Expect {
            diagnosis: Some((code, None)),
            ..named_local_fin().expect("some")
        })
    };
    Scenario {
        all_ports: true,
        name,
        chain: Some(linked_by),
        servers: vec![
            ServerSpec {
                // The relay's socket to it, closed by the backend.
                client: Some("peer"),
                ..upgrade(
                    LOCALHOST,
                    Mode::Swoole,
                    Then::ReadToEnd,
                    named("http10_upgrade"),
                )
            },
            ServerSpec {
                request: fresh_http10_upgrade(),
                client: Some("peer"),
                relay_to: Some(0),
                rewrite_key,
                ..upgrade(
                    LOCALHOST,
                    Mode::Relay,
                    Then::ReadToEnd,
                    named("upstream_closed"),
                )
            },
        ],
    }
}

fn scenarios() -> Vec<Scenario> {
    let close = |bind| {
        upgrade(
            bind,
            Mode::CloseAfter101,
            Then::ReadToEnd,
            named_local_fin(),
        )
    };
    vec![
        Scenario {
            all_ports: false,
            chain: None,
            name: "server_close_after_101_names_the_server",
            servers: vec![close(LOCALHOST)],
        },
        Scenario {
            all_ports: false,
            chain: None,
            name: "client_close_after_upgrade_reports_peer",
            servers: vec![upgrade(
                LOCALHOST,
                Mode::WaitForPeer,
                Then::CloseAfter(Duration::from_millis(200)),
                Some(Expect {
                    closed_by: "peer",
                    how: "fin",
                    closer_pid: None,
                    min_ms: Some(150.0),
                    local_prefix: None,
                    peer_pid: Some(0),
                    ending: None,
                    kernel: None,
                    diagnosis: None,
                }),
            )],
        },
        // A client (or proxy) that closes and exits microseconds after the
        // 101: its socket is gone before the daemon reads the upgrade, so
        // only the kernel's record of the request's writer can name it.
        Scenario {
            all_ports: false,
            chain: None,
            name: "client_closing_at_once_is_named_by_the_kernel",
            servers: vec![upgrade(
                LOCALHOST,
                Mode::WaitForPeer,
                Then::CloseAfter(Duration::ZERO),
                Some(Expect {
                    closed_by: "peer",
                    how: "fin",
                    closer_pid: None,
                    min_ms: None,
                    local_prefix: None,
                    peer_pid: Some(0),
                    ending: None,
                    kernel: None,
                    diagnosis: None,
                }),
            )],
        },
        Scenario {
            all_ports: false,
            chain: None,
            name: "server_crash_after_101_is_process_crashed",
            servers: vec![ended(
                Mode::CrashAfter101,
                Then::ReadToEnd,
                Ending {
                    pid: 0,
                    code: "process_crashed",
                    signal: Some("SIGSEGV"),
                    exit_status: None,
                    sent_by: None,
                },
            )],
        },
        Scenario {
            all_ports: false,
            chain: None,
            name: "server_killed_after_101_names_the_killer",
            servers: vec![ended(
                Mode::WaitForPeer,
                Then::KillServer(0),
                Ending {
                    pid: 0,
                    code: "process_killed",
                    signal: Some("SIGKILL"),
                    exit_status: None,
                    sent_by: Some(0),
                },
            )],
        },
        Scenario {
            all_ports: false,
            chain: None,
            name: "server_exiting_on_sigterm_names_the_sender",
            servers: vec![ended(
                Mode::ExitOnSigterm,
                Then::TermServer(0),
                Ending {
                    pid: 0,
                    code: "process_exited",
                    signal: None,
                    exit_status: Some(0),
                    sent_by: Some(0),
                },
            )],
        },
        Scenario {
            all_ports: false,
            chain: None,
            name: "server_exit_without_close_is_process_exited",
            servers: vec![ended(
                Mode::ExitAfter101,
                Then::ReadToEnd,
                Ending {
                    pid: 0,
                    code: "process_exited",
                    signal: None,
                    exit_status: Some(crate::serve::EXIT_STATUS as u64),
                    sent_by: None,
                },
            )],
        },
        // The kernel, not a process, ended these: no pid and no stacks,
        // whichever task the softirq or timer interrupted.
        Scenario {
            all_ports: false,
            chain: None,
            name: "peer_reset_is_no_local_close",
            servers: vec![upgrade(
                LOCALHOST,
                Mode::WaitForPeer,
                Then::Reset,
                Some(Expect {
                    closed_by: "peer",
                    how: "rst",
                    closer_pid: None,
                    min_ms: None,
                    local_prefix: None,
                    peer_pid: Some(0),
                    ending: None,
                    kernel: Some(("reset_received", "abort_rst")),
                    diagnosis: None,
                }),
            )],
        },
        Scenario {
            all_ports: false,
            chain: None,
            name: "retransmission_timeout_is_the_kernels_close",
            servers: vec![upgrade(
                LOCALHOST,
                Mode::TimeoutAfter101,
                Then::GoSilent,
                Some(Expect {
                    closed_by: "kernel",
                    how: "abort",
                    closer_pid: None,
                    min_ms: None,
                    local_prefix: None,
                    peer_pid: Some(0),
                    ending: None,
                    kernel: Some(("tcp_timeout", "tcp_timeout")),
                    diagnosis: None,
                }),
            )],
        },
        // Frames after the upgrade: pings the client never answers, and a
        // close frame after a text frame and split across two writes.
        Scenario {
            all_ports: false,
            chain: None,
            name: "unanswered_pings_are_heartbeat_timeout",
            servers: vec![upgrade(
                LOCALHOST,
                Mode::PingNoPong,
                Then::ReadToEnd,
                Some(Expect {
                    diagnosis: Some(("heartbeat_timeout", None)),
                    ..named_local_fin().expect("some")
                }),
            )],
        },
        Scenario {
            all_ports: false,
            chain: None,
            name: "split_close_frame_after_text_is_seen",
            servers: vec![upgrade(
                LOCALHOST,
                Mode::SplitCloseFrame,
                Then::ReadToEnd,
                Some(Expect {
                    diagnosis: Some((
                        "server_close_frame",
                        Some(u64::from(crate::serve::SPLIT_CLOSE_CODE)),
                    )),
                    ..named_local_fin().expect("some")
                }),
            )],
        },
        Scenario {
            all_ports: false,
            chain: None,
            name: "http_200_is_not_reported",
            servers: vec![ServerSpec {
                bind: LOCALHOST,
                mode: Mode::Http200,
                traced: true,
                request: client::PLAIN_REQUEST,
                then: Then::ReadToEnd,
                expect: None,
                client: None,
                relay_to: None,
                rewrite_key: false,
            }],
        },
        Scenario {
            all_ports: false,
            chain: None,
            name: "ipv6_loopback",
            servers: vec![upgrade(
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                Mode::CloseAfter101,
                Then::ReadToEnd,
                Some(Expect {
                    local_prefix: Some("[::1]:"),
                    ..named_local_fin().expect("some")
                }),
            )],
        },
        Scenario {
            all_ports: false,
            chain: None,
            name: "linger_zero_close_reports_rst",
            servers: vec![upgrade(
                LOCALHOST,
                Mode::Linger0,
                Then::ReadToEnd,
                Some(Expect {
                    how: "rst",
                    ..named_local_fin().expect("some")
                }),
            )],
        },
        Scenario {
            all_ports: false,
            chain: None,
            name: "lookalike_101s_are_not_reported",
            servers: vec![
                // `HTTP/1.1 1010`: the prefix check includes the space after 101.
                ServerSpec {
                    mode: Mode::Status1010,
                    expect: None,
                    ..close(LOCALHOST)
                },
                // A 101 in a 200's body, for a request that asked for no upgrade.
                ServerSpec {
                    mode: Mode::BodyWith101,
                    request: client::PLAIN_REQUEST,
                    expect: None,
                    ..close(LOCALHOST)
                },
                // A status line split over writes is not seen (documented limit),
                // and must not turn into a wrong report either.
                ServerSpec {
                    mode: Mode::ByteAtATime,
                    expect: None,
                    ..close(LOCALHOST)
                },
            ],
        },
        // No --port: a server on any port is followed, and the checker's
        // own socket to it as the client side (it read the 101; the server
        // closed first); a plain HTTP 200 on another port is not reported.
        Scenario {
            all_ports: true,
            chain: None,
            name: "all_ports_by_default_follows_any_port",
            servers: vec![
                ServerSpec {
                    client: Some("peer"),
                    ..close(LOCALHOST)
                },
                ServerSpec {
                    mode: Mode::Http200,
                    request: client::PLAIN_REQUEST,
                    expect: None,
                    ..close(LOCALHOST)
                },
            ],
        },
        proxy_chain("proxy_chain_links_both_hops", false, "handshake"),
        // The relay sends its own Key upstream: no nonce is on both hops,
        // and only its thread's hand-off (it read the upstream 101, then
        // wrote the client's) links them.
        proxy_chain("proxy_rewriting_the_key_links_by_thread", true, "thread"),
        Scenario {
            all_ports: false,
            chain: None,
            name: "two_ports_and_other_port_ignored",
            servers: vec![
                close(LOCALHOST),
                close(LOCALHOST),
                ServerSpec {
                    traced: false,
                    expect: None,
                    ..close(LOCALHOST)
                },
            ],
        },
    ]
}

/// A started server child; killed when dropped, so no path leaks one.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `upstream`: a relay's server, and whether it rewrites the handshake.
fn start_server(bind: IpAddr, mode: Mode, upstream: Option<(SocketAddr, bool)>) -> Result<Server> {
    let exe = std::env::current_exe().context("finding ws-scenario's own path")?;
    let mode_name = clap::ValueEnum::to_possible_value(&mode)
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let mut cmd = Command::new(exe);
    cmd.args(["serve", "--bind", &bind.to_string(), "--mode", &mode_name]);
    if let Some((addr, rewrite)) = upstream {
        cmd.args(["--upstream", &addr.to_string()]);
        if rewrite {
            cmd.arg("--rewrite-key");
        }
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a scenario server")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    let port = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok());
    let mut server = Server { child, port: 0 };
    match port {
        Some(p) => {
            server.port = p;
            Ok(server)
        }
        None => {
            let mut err = String::new();
            if let Some(mut e) = server.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("server on {bind} did not start: {}", err.trim())
        }
    }
}

/// A scenario's outcome so far.
enum State {
    Running,
    Skip(String),
    Fail(String),
}

/// wstrace (the harness's one launcher, ready by its `--ready-file`) on
/// `ports`, with `--metrics` for what it lost.
fn start_tracer(args: &Args, ports: &[u16]) -> Result<Tracer> {
    TracerOptions::with_binary(args.wstrace.clone())
        .ports(ports)
        .args(&["--probe", args.probe.as_str()])
        .args(&args.wstrace_args)
        .metrics()
        .echo(args.verbose)
        .ready_timeout(Duration::from_secs(args.ready_timeout))
        .start()
}

/// What wstrace counted as lost or evicted (ring full, probe runs the
/// kernel skipped, kretprobe misses, evictions), from its metrics: shown
/// with a failure, so a flake in CI says whether the kernel dropped the
/// evidence.
fn losses(tracer: &Tracer) -> Vec<String> {
    match tracer.lost_events() {
        Ok(lost) => lost
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| format!("{n} lost ({reason})"))
            .collect(),
        Err(e) => vec![format!("no metrics: {e:#}")],
    }
}

/// The report lines (trailing newlines and blank lines dropped).
fn report_lines(tracer: &Tracer) -> Vec<String> {
    tracer
        .raw_lines()
        .iter()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// wstrace's `start-up took ...` line (printed when its start was slow).
fn tracer_startup_note(tracer: &Tracer) -> Option<String> {
    tracer
        .stderr_text()
        .lines()
        .find_map(|l| l.strip_prefix("wstrace: note: start-up took"))
        .map(|rest| format!("start-up took{rest}"))
}

/// The last two non-empty lines wstrace printed on stderr.
fn stderr_tail(tracer: &Tracer) -> String {
    let e = tracer.stderr_text();
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(2)..].join(" | ")
}

/// SIGINT (wstrace's clean exit: detach, flush pending reports); then
/// every report line it printed.
fn stop(mut tracer: Tracer) -> Result<Vec<String>> {
    let status = tracer.interrupt(Duration::from_secs(15))?;
    if !status.success() {
        bail!(
            "wstrace exited with {status} after SIGINT: {}",
            stderr_tail(&tracer)
        );
    }
    Ok(report_lines(&tracer))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn run(args: &Args) -> Result<i32> {
    // Not root is a failure, not a skip: a check that tested nothing must
    // not pass.
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "not root: wstrace needs root (CAP_BPF + CAP_PERFMON) to load its probes; run ws-scenario check as root"
        );
    }
    let kernel = kernel_release();
    let mut all = scenarios();
    if let Some(only) = &args.only {
        all.retain(|s| s.name == only);
        if all.is_empty() && !crate::gotls::is_go_scenario(only) {
            bail!("no scenario named {only}");
        }
    }

    // Servers first: wstrace needs their ports.
    let run_started = Instant::now();
    let mut states: Vec<State> = Vec::new();
    let mut servers: Vec<Vec<Server>> = Vec::new();
    // Reports are judged by local port, and IPv4 and IPv6 hand out ephemeral
    // ports independently: a port already taken by another server (of the
    // other family) is given back and another asked for.
    let mut taken: std::collections::HashSet<u16> = std::collections::HashSet::new();
    for sc in &mut all {
        let mut started: Vec<Server> = Vec::new();
        let mut state = State::Running;
        for spec in &mut sc.servers {
            let upstream = match spec.relay_to.map(|i| started.get(i)) {
                None => None,
                Some(Some(up)) => Some((SocketAddr::new(spec.bind, up.port), spec.rewrite_key)),
                Some(None) => {
                    state = State::Fail("a relay must come after its server".into());
                    break;
                }
            };
            let mut attempt = start_server(spec.bind, spec.mode, upstream);
            for _ in 0..8 {
                match &attempt {
                    Ok(s) if taken.contains(&s.port) => {
                        attempt = start_server(spec.bind, spec.mode, upstream);
                    }
                    _ => break,
                }
            }
            if let Ok(s) = &attempt {
                taken.insert(s.port);
            }
            match attempt {
                Ok(s) => {
                    if let Some(e) = &mut spec.expect {
                        if e.closer_pid.is_some() {
                            e.closer_pid = Some(s.child.id());
                        }
                        // The checker itself is every scenario's client.
                        if e.peer_pid.is_some() {
                            e.peer_pid = Some(std::process::id());
                        }
                        if let Some(end) = &mut e.ending {
                            end.pid = s.child.id();
                            // The checker sends the kill.
                            if end.sent_by.is_some() {
                                end.sent_by = Some(std::process::id());
                            }
                        }
                    }
                    started.push(s);
                }
                Err(e) if spec.bind.is_ipv6() => {
                    state = State::Skip(format!("no IPv6 loopback here: {e:#}"));
                    break;
                }
                Err(e) => {
                    state = State::Fail(format!("{e:#}"));
                    break;
                }
            }
        }
        // A relayed server's peer is its relay, not the checker.
        for j in 0..sc.servers.len() {
            if let (Some(i), Some(relay)) = (sc.servers[j].relay_to, started.get(j))
                && let Some(e) = sc.servers.get_mut(i).and_then(|s| s.expect.as_mut())
                && e.peer_pid.is_some()
            {
                e.peer_pid = Some(relay.child.id());
            }
        }
        states.push(state);
        servers.push(started);
    }
    let mut go = GoScenarios::start(args.go_tls.as_deref(), args.only.as_deref(), &mut taken);
    println!(
        "{TIME_PREFIX} servers started in {:.1} s",
        run_started.elapsed().as_secs_f64()
    );
    // Two wstraces, one after the other: one given every traced port of
    // the port scenarios (more than the 8 the kernel filter once had), and
    // one with no --port for the all-ports scenarios (which would see the
    // others' connections too).
    let running = |i: &usize| matches!(states[*i], State::Running);
    let batches: [(bool, Vec<usize>); 2] = [
        (
            false,
            (0..all.len())
                .filter(running)
                .filter(|&i| !all[i].all_ports)
                .collect(),
        ),
        (
            true,
            (0..all.len())
                .filter(running)
                .filter(|&i| all[i].all_ports)
                .collect(),
        ),
    ];
    let mut reports = Vec::new();
    let mut losses: Vec<Vec<String>> = vec![Vec::new(); all.len()];
    // The Go scenarios ride with the port scenarios' wstrace.
    let go_running = go.any_running();
    let with_go = |all_ports: bool| !all_ports && go_running;
    for (all_ports, batch) in batches
        .iter()
        .filter(|(all_ports, b)| !b.is_empty() || with_go(*all_ports))
    {
        let go_here = with_go(*all_ports);
        let mut ports: Vec<u16> = if *all_ports {
            Vec::new()
        } else {
            batch
                .iter()
                .flat_map(|&i| {
                    all[i]
                        .servers
                        .iter()
                        .zip(&servers[i])
                        .filter(|(spec, _)| spec.traced)
                        .map(|(_, s)| s.port)
                })
                .collect()
        };
        if go_here {
            ports.extend(go.ports());
        }
        if !*all_ports && ports.is_empty() {
            continue;
        }
        let go_batch = go_here.then_some(&mut go);
        match trace(args, &all, &servers, &mut states, batch, &ports, go_batch) {
            Ok((r, lost)) => {
                reports.extend(r);
                for &i in batch {
                    losses[i].clone_from(&lost);
                }
            }
            Err(e) => {
                let why = format!("{e:#}");
                eprintln!("ws-scenario: {why}");
                // wstrace's own words for a kernel that lacks the hooks (no
                // kprobes, ftrace locked): the set cannot run here, which is a
                // SKIP. Anything else (a verifier rejection, a crash) is a FAIL.
                let unavailable = why.contains("not available on this kernel");
                for &i in batch {
                    if matches!(states[i], State::Running) {
                        states[i] = if unavailable {
                            State::Skip(format!("probe set not available: {why}"))
                        } else {
                            State::Fail(why.clone())
                        };
                    }
                }
                if go_here {
                    go.stop_all(&why, unavailable);
                }
            }
        }
    }
    let mut failed = false;
    for (((sc, st), srv), lost) in all.iter().zip(&states).zip(&servers).zip(&losses) {
        let (verdict, mut detail) = match st {
            State::Skip(why) => ("SKIP", why.clone()),
            State::Fail(why) => ("FAIL", why.clone()),
            State::Running => judge(sc, srv, &reports, &args.probe),
        };
        if verdict == "FAIL" && !lost.is_empty() {
            detail.push_str(&format!(" [wstrace said: {}]", lost.join(" | ")));
        }
        failed |= verdict == "FAIL";
        println!(
            "SCENARIO {} probe={} kernel={kernel} {verdict} {}",
            sc.name,
            args.probe,
            one_line(&detail)
        );
    }
    for (name, verdict, detail) in go.judge(&reports, &args.probe) {
        failed |= verdict == "FAIL";
        println!(
            "SCENARIO {name} probe={} kernel={kernel} {verdict} {}",
            args.probe,
            one_line(&detail)
        );
    }
    Ok(if failed { 1 } else { 0 })
}

/// Reports by the local port they are for.
type PortReports = Vec<(u16, Value)>;

/// Start wstrace (on `ports` and the barrier's; on every port when
/// `ports` is empty), drive every running scenario's clients, wait for the
/// reports and the barrier's, stop wstrace. Returns the parsed reports
/// (the barrier's left out) and what wstrace's metrics say it lost.
fn trace(
    args: &Args,
    all: &[Scenario],
    servers: &[Vec<Server>],
    states: &mut [State],
    batch: &[usize],
    ports: &[u16],
    go: Option<&mut GoScenarios>,
) -> Result<(PortReports, Vec<String>)> {
    // The barrier: one more traced server whose close is made last and
    // must be reported. Reports come in the order the kernel saw the
    // closes, so once it is in, a report that a "no report" scenario looks
    // for would have arrived too: no sleep and hope. Its port must differ
    // from every scenario's (IPv6 ports are handed out independently).
    let used: std::collections::HashSet<u16> = servers.iter().flatten().map(|s| s.port).collect();
    let mut barrier = start_server(LOCALHOST, Mode::CloseAfter101, None)?;
    for _ in 0..8 {
        if !used.contains(&barrier.port) {
            break;
        }
        barrier = start_server(LOCALHOST, Mode::CloseAfter101, None)?;
    }
    if used.contains(&barrier.port) {
        bail!("no barrier port distinct from the scenarios' ports");
    }
    // With every port traced the barrier is traced too; naming its port
    // would narrow wstrace to it.
    let mut traced = ports.to_vec();
    if !traced.is_empty() {
        traced.push(barrier.port);
    }
    let what = if ports.is_empty() {
        "all ports"
    } else {
        "--port"
    };
    let started = Instant::now();
    let tracer = start_tracer(args, &traced)?;
    let ready = started.elapsed();
    let _readers = BlockedReaders::start(BLOCKED_READERS).context("blocking readers")?;
    // Ports that must each get a report: waiting for a count instead let
    // an unexpected report (the failure of another scenario) end the wait
    // before a slow expected one (a timeout) arrived, failing both.
    let mut expected: Vec<u16> = Vec::new();
    // Server ports whose client-side report (the checker's socket) must come.
    let mut expected_clients: Vec<u16> = Vec::new();
    for &i in batch {
        let (sc, srv, st) = (&all[i], &servers[i], &mut states[i]);
        if !matches!(st, State::Running) {
            continue;
        }
        for (j, (spec, s)) in sc.servers.iter().zip(srv).enumerate() {
            let addr = SocketAddr::new(spec.bind, s.port);
            let then = match spec.then {
                Then::KillServer(_) => Then::KillServer(s.child.id()),
                Then::TermServer(_) => Then::TermServer(s.child.id()),
                t => t,
            };
            // A relayed server is reached through its relay only.
            let relayed = sc.servers.iter().any(|o| o.relay_to == Some(j));
            if !relayed && let Err(e) = client::exchange(addr, spec.request, then) {
                *st = State::Fail(format!("client: {e:#}"));
                break;
            }
            if spec.traced && spec.expect.is_some() {
                expected.push(s.port);
            }
            if spec.client.is_some() {
                expected_clients.push(s.port);
            }
        }
    }
    if let Some(go) = go {
        expected.extend(go.drive());
    }
    let start = Instant::now();
    while start.elapsed() < REPORT_TIMEOUT {
        let lines = report_lines(&tracer);
        let parsed: Vec<Value> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        let reported: std::collections::HashSet<u16> =
            parsed.iter().filter_map(expect::local_port).collect();
        if expected.iter().all(|p| reported.contains(p))
            && expected_clients
                .iter()
                .all(|&p| parsed.iter().any(|v| expect::is_client_of(v, p)))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    client::exchange(
        SocketAddr::new(LOCALHOST, barrier.port),
        client::UPGRADE_REQUEST,
        Then::ReadToEnd,
    )
    .context("the barrier's client")?;
    let start = Instant::now();
    let barrier_reported = || {
        report_lines(&tracer)
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| expect::local_port(&v) == Some(barrier.port))
    };
    while !barrier_reported() {
        if start.elapsed() > REPORT_TIMEOUT {
            bail!(
                "the barrier's close (port {}) was not reported within {REPORT_TIMEOUT:?}: {}",
                barrier.port,
                stderr_tail(&tracer)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let losses = losses(&tracer);
    let reported = started.elapsed();
    let startup_note = tracer_startup_note(&tracer);
    let lines = stop(tracer)?;
    // Where a step's time goes (the kernel matrix prints these per VM).
    println!(
        "{TIME_PREFIX} wstrace ({what}) ready in {:.1} s, clients and reports {:.1} s, stopped in {:.1} s",
        ready.as_secs_f64(),
        (reported - ready).as_secs_f64(),
        (started.elapsed() - reported).as_secs_f64()
    );
    // wstrace's own account of a slow start (which program's verification,
    // which attach), echoed as printed.
    if let Some(note) = startup_note {
        println!("{TIME_PREFIX} wstrace ({what}) {note}");
    }
    let mut reports = Vec::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("wstrace printed a line that is not JSON: {line}"))?;
        let port = expect::local_port(&v)
            .with_context(|| format!("report without a local port: {line}"))?;
        if port != barrier.port {
            reports.push((port, v));
        }
    }
    Ok((reports, losses))
}

/// Threads blocked in a read for a whole batch: more than the kernel's
/// default kretprobe room (one instance per CPU on Debian's 5.10, 10 on
/// 6.x), so that a return probe on tcp_recvmsg made with the default is
/// seen to miss server request heads here, as it would on a blocking-I/O
/// server with idle connections (the kprobe set's lookalike flake).
const BLOCKED_READERS: usize = 16;

/// `n` threads each blocked in read() on its own untraced loopback
/// connection, until dropped.
struct BlockedReaders {
    peers: Vec<std::net::TcpStream>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BlockedReaders {
    fn start(n: usize) -> Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let mut readers = BlockedReaders {
            peers: Vec::new(),
            threads: Vec::new(),
        };
        for _ in 0..n {
            readers.peers.push(std::net::TcpStream::connect(addr)?);
            let (conn, _) = listener.accept()?;
            readers.threads.push(std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                // Returns at EOF, when the peer is dropped.
                let _ = std::io::Read::read(&mut &conn, &mut byte);
            }));
        }
        Ok(readers)
    }
}

impl Drop for BlockedReaders {
    fn drop(&mut self) {
        self.peers.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Every server of the scenario against the reports on its port.
fn judge(
    sc: &Scenario,
    srv: &[Server],
    reports: &[(u16, Value)],
    probe: &str,
) -> (&'static str, String) {
    let mut details = Vec::new();
    let mut chose = None;
    for (spec, s) in sc.servers.iter().zip(srv) {
        let on_port: Vec<&Value> = reports
            .iter()
            .filter(|(p, _)| *p == s.port)
            .map(|(_, v)| v)
            .collect();
        if let Some(r) = on_port.first() {
            chose = r.get("probe").and_then(Value::as_str).map(str::to_string);
        }
        let what = if spec.traced { "" } else { "untraced " };
        match expect::evaluate(&on_port, spec.expect.as_ref(), probe) {
            Ok(d) => details.push(format!("{what}port {}: {d}", s.port)),
            Err(e) => return ("FAIL", format!("{what}port {}: {e}", s.port)),
        }
        if let Some(by) = spec.client {
            let client = reports
                .iter()
                .map(|(_, v)| v)
                .find(|v| expect::is_client_of(v, s.port));
            let Some(c) = client else {
                return (
                    "FAIL",
                    format!(
                        "port {}: no client-side report of the checker's socket",
                        s.port
                    ),
                );
            };
            let closed_by = c.get("closed_by").and_then(Value::as_str).unwrap_or("?");
            if closed_by != by {
                return (
                    "FAIL",
                    format!(
                        "port {}: client side closed_by {closed_by}, want {by}",
                        s.port
                    ),
                );
            }
            details.push(format!(
                "client side of port {}: closed_by {closed_by}",
                s.port
            ));
        }
    }
    if let Some(linked_by) = sc.chain {
        match judge_chain(sc, srv, reports, linked_by) {
            Ok(d) => details.push(d),
            Err(e) => return ("FAIL", e),
        }
    }
    let mut detail = details.join("; ");
    if probe == "auto" {
        detail = format!("chose={} {detail}", chose.as_deref().unwrap_or("?"));
    }
    ("PASS", detail)
}

/// A relay scenario's four sockets (client, relay's two, backend) are one
/// chain of two hops linked by `linked_by`, rooted at the backend's close,
/// and the relay's report on the client's side names the backend as the
/// cause.
fn judge_chain(
    sc: &Scenario,
    srv: &[Server],
    reports: &[(u16, Value)],
    linked_by: &str,
) -> Result<String, String> {
    let Some((relay, Some(back))) = sc
        .servers
        .iter()
        .zip(srv)
        .find_map(|(spec, s)| Some((s, srv.get(spec.relay_to?))))
    else {
        return Err("a chain scenario needs a relay and its server".into());
    };
    let server_on = |port: u16| {
        reports
            .iter()
            .map(|(_, v)| v)
            .find(|v| v["side"] == "server" && expect::local_port(v) == Some(port))
    };
    let client_of = |port: u16| {
        reports
            .iter()
            .map(|(_, v)| v)
            .find(|v| expect::is_client_of(v, port))
    };
    let found = [
        ("client", 0, client_of(relay.port)),
        ("relay's client side", 0, server_on(relay.port)),
        ("relay's upstream", 1, client_of(back.port)),
        ("backend", 1, server_on(back.port)),
    ];
    let mut id = None;
    for (what, hop, r) in found {
        let r = r.ok_or(format!("no report of the {what}"))?;
        let c = &r["chain"];
        let got = (
            c["id"].as_str(),
            c["linked_by"].as_str(),
            c["hop"].as_u64(),
            c["hops"].as_u64(),
            c["closed_first_hop"].as_u64(),
        );
        let want_id = *id.get_or_insert(got.0);
        if got != (want_id, Some(linked_by), Some(hop), Some(2), Some(1)) || want_id.is_none() {
            return Err(format!(
                "chain of the {what}: want (id {want_id:?}, {linked_by}, hop {hop}, 2 hops, hop 1 closed first), got {got:?}"
            ));
        }
    }
    let edge = server_on(relay.port).unwrap_or(&Value::Null);
    let backend_pid = u64::from(back.child.id());
    let named = (
        edge.pointer("/chain/upstream/pid").and_then(Value::as_u64),
        edge.pointer("/diagnosis/cause/pid").and_then(Value::as_u64),
        edge.pointer("/diagnosis/cause/code")
            .and_then(Value::as_str),
    );
    if named != (Some(backend_pid), Some(backend_pid), Some("http10_upgrade")) {
        return Err(format!(
            "the relay's report must name the backend (pid {backend_pid}) upstream and as the cause (http10_upgrade), got {named:?}: {}",
            edge.get("diagnosis").unwrap_or(&Value::Null)
        ));
    }
    Ok(format!(
        "chain {} linked by {linked_by}: 2 hops, root the backend (pid {backend_pid})",
        id.flatten().unwrap_or("?")
    ))
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}
