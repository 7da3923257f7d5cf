//! Command line. `--help` is the manual most users read: it says what each
//! option is for, not only what it is.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    attach::{ProbeChoice, TlsMode},
    enrich::unwind::UserStackMode,
    output::{ColorChoice, Format},
};

#[derive(Parser, Debug)]
#[command(
    name = "wstrace",
    version,
    about = "Who closed my WebSocket, and why? Traces upgraded (HTTP 101) sockets with eBPF.",
    long_about = "Who closed my WebSocket, and why?\n\n\
        wstrace watches every TCP socket on the host (or the ports you name). When a \
        local process writes an `HTTP/1.1 101 Switching Protocols` response on a socket, \
        that socket is traced; \
        when it closes, wstrace prints which side closed first (FIN or RST), the process \
        and thread that closed the local end, the kernel and user stacks of that close, \
        how long after the 101 it happened, and why: a diagnosis with a fix, drawn from \
        the upgrade request (HTTP version, Connection header), WebSocket close frames and \
        the idle time before the close. Secret headers (Cookie, Authorization, \
        Sec-WebSocket-Key ...) are never printed.\n\n\
        Needs root (or CAP_BPF + CAP_PERFMON) and a kernel with BTF (5.10+). \
        wss:// (TLS) is seen in servers that use OpenSSL or BoringSSL (libssl, or \
        linked in with symbols), or Go's crypto/tls (Go 1.17+): uprobes on \
        SSL_write/SSL_read or (*Conn).Write/Read give the plaintext (--tls). Other \
        TLS stacks (rustls, GnuTLS ...) are named at start-up and not covered: trace \
        the port behind the TLS-terminating proxy.",
    after_help = "Examples:\n  \
        sudo wstrace demo                       # see it work first: built-in server and client\n  \
        sudo wstrace                            # every WebSocket server on this host\n  \
        sudo wstrace --port 1215                # only connections to port 1215 (both ends)\n  \
        sudo wstrace --exe nginx --format json  # only sockets nginx upgraded\n  \
        sudo wstrace -p 80 -p 8080 --format json --count 10\n  \
        sudo wstrace -p 1215 --probe tracepoint # force the tracepoint-only probe set",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a built-in loopback WebSocket server that closes HTTP/1.0 upgrades
    /// right after the 101 (like Swoole behind nginx without
    /// `proxy_http_version 1.1;`), drive one HTTP/1.0 and one HTTP/1.1 upgrade
    /// against it, and trace both with the real probes.
    Demo(DemoArgs),
    /// Summarize recorded reports (JSON lines from --output or --format json;
    /// rotated and .gz files too): closes per diagnosis and closer, top
    /// closing stacks, lifetimes, a per-minute time line. Needs no root.
    Report(crate::report::ReportArgs),
    /// Benchmark support (not for operators): attach near-empty programs on
    /// the fentry or kprobe set's hooks until interrupted, as the floor the
    /// kernel-matrix cost benchmark compares wstrace's programs with.
    #[command(hide = true)]
    Floor(FloorArgs),
}

#[derive(Args, Debug)]
pub struct FloorArgs {
    /// The set whose hooks get a near-empty program: fentry or kprobe.
    #[arg(long, value_enum)]
    pub probe: ProbeChoice,
    /// Created once attached (as the tracer's --ready-file).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Trace only connections to this TCP port (repeatable, any number):
    /// both ends, the server's socket (local port PORT, where the 101 is
    /// written) and a local client's (remote port PORT, where the 101 is
    /// read). Without --port every TCP socket on which a process writes or
    /// reads a 101 is traced, whatever its port.
    #[arg(short, long = "port", value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Report only sockets upgraded by this process (repeatable).
    #[arg(long = "pid", value_name = "PID",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,

    /// Report only sockets upgraded by this executable (repeatable): a path
    /// matches the whole path, a bare name the file name (`nginx`).
    #[arg(long = "exe", value_name = "PATH|NAME", value_parser = parse_exe)]
    pub exes: Vec<String>,

    #[command(flatten)]
    pub common: CommonArgs,

    /// Report what this host supports (privileges, BTF, tracefs, each probe
    /// set) without tracing; exit 1 if no probe set can work.
    #[arg(long)]
    pub check: bool,

    /// Exit after this many close reports.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Exit after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Also append every report as a JSON line to FILE (created 0640; whole
    /// lines only; synced on exit). A path that cannot be opened stops the
    /// start; a write that fails later (disk full) is said once, and
    /// reporting goes on on stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Rotate --output when it would grow past this size (K, M, G suffixes; 0 = never).
    #[arg(long, value_name = "SIZE", default_value = "100M", value_parser = parse_size)]
    pub rotate_size: u64,

    /// Serve Prometheus metrics on http://ADDR/metrics. A bare PORT binds
    /// loopback (127.0.0.1); give 0.0.0.0:PORT to expose it.
    #[arg(long, value_name = "ADDR", value_parser = crate::output::metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Send every close as an OpenTelemetry log record, and the metrics,
    /// to the collector at URL over OTLP/HTTP protobuf (http://HOST:4318;
    /// /v1/logs and /v1/metrics are added). Batched and retried with
    /// back-off off the event loop; records a full queue or an unreachable
    /// collector costs are counted in wstrace_lost_events_total{reason="otlp"}.
    /// Empty: no OTLP.
    #[arg(long, value_name = "URL", env = "WSTRACE_OTLP", value_parser = crate::output::otlp::parse_url)]
    pub otlp: Option<String>,

    /// Rotated files to keep (FILE.1 newest ... FILE.N oldest).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub rotate_keep: u32,

    /// Create FILE once the probes are attached (when the "tracing" line is
    /// printed), with the probe set and pid inside; it appears whole (renamed
    /// into place) and is removed on exit. With $NOTIFY_SOCKET set (systemd
    /// Type=notify), READY=1 is sent at the same moment.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
}

/// An `--exe` value: not empty, and a path must be absolute (it is
/// compared with /proc/PID/exe, which always is).
pub fn parse_exe(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("an empty executable name matches nothing".into());
    }
    if s.contains('/') && !s.starts_with('/') {
        return Err(format!(
            "{s:?}: give an absolute path (as /proc/PID/exe shows it) or a bare file name"
        ));
    }
    Ok(s.to_string())
}

/// "1048576", "512K", "100M", "2G" (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&s[..i], 1u64 << 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&s[..i], 1 << 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            format!("{s:?} is not a size: use bytes or a number with K, M or G (e.g. 100M)")
        })
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Kernel hooks to use. `auto` tries fentry, then kprobe, then tracepoint,
    /// and says why it skipped any.
    #[arg(long, value_enum, default_value_t = ProbeChoice::Auto)]
    pub probe: ProbeChoice,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// In text output, print every close on its own. By default closes that
    /// share the closer, the cause and the moment (one process exiting with
    /// thousands of connections open) print as one summary with the first
    /// and last connection and one stack; JSON and --output always have one
    /// object per connection.
    #[arg(long)]
    pub no_fold: bool,

    /// In text output, print every user-stack frame with its offset, module
    /// and full source path, as JSON has them. By default a frame is its
    /// function, file name and line, and runs of runtime frames (Rust std,
    /// tokio, the C++ library, libc) fold into `… N frames in std`.
    #[arg(long)]
    pub full_stacks: bool,

    /// Colour in text output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Upgraded sockets tracked at once in the kernel (LRU beyond that).
    #[arg(long, value_name = "N", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(64..=(1 << 22)))]
    pub max_sockets: u32,

    /// Also show this request header's value (repeatable; case-insensitive,
    /// `*` wildcards). By default only the headers the diagnosis needs show
    /// values (Connection, Upgrade, Host, Origin, User-Agent,
    /// Sec-WebSocket-Version/-Extensions, X-Forwarded-*, X-Real-IP,
    /// Forwarded, Via, Content-Length, Transfer-Encoding, Keep-Alive); every
    /// other header prints as `Name: [redacted]`, query values too.
    #[arg(long, value_name = "HEADER")]
    pub show_header: Vec<String>,

    /// Hide this request header's value even if it is shown by default
    /// (repeatable; case-insensitive, `*` wildcards).
    #[arg(long, value_name = "HEADER")]
    pub redact: Vec<String>,

    /// Print every header value, query string and command-line argument as
    /// it was (Cookie, Authorization ...): for a private debugging session
    /// only, never for stored logs.
    #[arg(long)]
    pub show_secrets: bool,

    /// Kernel BTF to read struct offsets from.
    #[arg(long, value_name = "PATH", default_value = crate::attach::btf::DEFAULT_BTF_PATH)]
    pub btf: PathBuf,

    /// How the user stack of a close is walked. `dwarf` copies the closing
    /// thread's registers and the top of its stack into the event and
    /// unwinds it here with the binaries' .eh_frame/.debug_frame: full
    /// stacks through code built without frame pointers (most distro and
    /// C/C++ servers), at the cost of --user-stack-size bytes per close.
    /// `fp` follows frame pointers in the kernel (cheap; stops early in such
    /// code). `auto` is dwarf, and shows the frame-pointer walk instead
    /// whenever that one has more frames (x86_64).
    #[arg(long, value_enum, default_value_t = UserStackMode::Auto)]
    pub user_stack: UserStackMode,

    /// wss:// (TLS) servers: `auto` puts uprobes on SSL_write/SSL_read of
    /// the OpenSSL-compatible library (libssl, or a binary with it linked
    /// in with symbols), or on Go's crypto/tls `(*Conn).Write`/`Read`, of
    /// each process serving a traced port, when it is
    /// found listening at start-up, and says per process which TLS stack
    /// is covered and which is not (servers started later are named, not
    /// covered: attaching needs CAP_SYS_ADMIN, dropped after start-up).
    /// `off`: plaintext only.
    #[arg(long, value_enum, default_value_t = TlsMode::Auto)]
    pub tls: TlsMode,

    /// Print the kernel programs' decisions to stderr (`wstrace: probe:`
    /// lines): which socket's 101 was traced, and why a 101 was ignored
    /// (no listener accepted the socket while wstrace ran, not at the start
    /// of a write, a port not traced, ...), and how each socket's first
    /// read was classified. For "why wasn't my connection reported?". At
    /// most 100 lines a second per CPU (the rest are counted and said);
    /// off by default, and free when off.
    #[arg(long)]
    pub debug_probes: bool,

    /// Bytes of user stack copied per close for dwarf unwinding (from the
    /// stack pointer up; deeper stacks are reported as truncated).
    #[arg(long, value_name = "BYTES", default_value_t = 16384,
          value_parser = clap::value_parser!(u32).range(64..=(wstrace_common::USER_STACK_MAX as i64)))]
    pub user_stack_size: u32,

    /// Seconds the daemon waits for one user-stack symbolization while the
    /// symbolizer computes (the first lookup in a big binary parses its
    /// debug info); past it that process's frames print unknown. Raise it
    /// on slow or emulated machines; a symbolizer that is blocked (a FIFO,
    /// a hung mount) is still given up after 250 ms.
    #[arg(long, value_name = "SECS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub symbolize_timeout: u64,

    /// A fleet secret for the chain ids (`chain.id`, the keyed digest of a
    /// proxied WebSocket's handshake that is the same on every hop and
    /// host): give every host the same file. Without it a built-in key is
    /// used, which links hosts with no configuration, but lets anyone who
    /// saw a handshake compute its id. At least 16 bytes; trailing
    /// whitespace is ignored.
    #[arg(long, value_name = "FILE")]
    pub chain_key_file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ports_are_validated() {
        let e = Cli::try_parse_from(["wstrace", "--port", "70000"]).unwrap_err();
        assert!(e.to_string().contains("70000"), "{e}");
        let e = Cli::try_parse_from(["wstrace", "--port", "0"]).unwrap_err();
        assert!(e.to_string().contains("0"), "{e}");
        let c = Cli::try_parse_from(["wstrace"]).expect("no port: every port");
        assert!(c.trace.ports.is_empty());
        let c = Cli::try_parse_from(["wstrace", "-p", "80", "--port", "8080"]).expect("parses");
        assert_eq!(c.trace.ports, vec![80, 8080]);
        // No limit on how many.
        let many: Vec<String> = (1..=40).map(|p| format!("--port={}", 1000 + p)).collect();
        let c = Cli::try_parse_from(std::iter::once("wstrace".to_string()).chain(many))
            .expect("40 ports parse");
        assert_eq!(c.trace.ports.len(), 40);
    }

    #[test]
    fn pid_and_exe_narrow() {
        let c = Cli::try_parse_from([
            "wstrace",
            "--pid",
            "42",
            "--pid",
            "7",
            "--exe",
            "nginx",
            "--exe",
            "/usr/bin/php8.2",
        ])
        .expect("parses");
        assert_eq!(c.trace.pids, vec![42, 7]);
        assert_eq!(c.trace.exes, vec!["nginx", "/usr/bin/php8.2"]);
        assert!(Cli::try_parse_from(["wstrace", "--pid", "0"]).is_err());
        assert!(Cli::try_parse_from(["wstrace", "--exe", ""]).is_err());
        let e = Cli::try_parse_from(["wstrace", "--exe", "bin/php"]).unwrap_err();
        assert!(e.to_string().contains("absolute path"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn check_needs_no_port() {
        let c = Cli::try_parse_from(["wstrace", "--check"]).expect("parses");
        assert!(c.trace.check && c.trace.ports.is_empty());
    }

    #[test]
    fn demo_needs_no_port() {
        let c = Cli::try_parse_from(["wstrace", "demo"]).expect("parses");
        assert!(matches!(c.command, Some(Command::Demo(_))));
    }
}
