//! `--metrics ADDR`: Prometheus metrics on `http://ADDR/metrics`, for fleets
//! that already scrape their hosts. Counters are updated by the tracer loop;
//! a small HTTP/1.1 responder serves the text exposition.
//!
//! Anyone who can reach the port can connect, so the responder is bounded:
//! at most `MAX_SCRAPES` connections served at once (the rest answered 503
//! and closed at once), a deadline to send the request and one to take the
//! response, and back-off when accepting fails (no fd left) instead of a
//! spin.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub closed_by: String,
    pub how: String,
    pub diagnosis: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe: String,
}

/// `wstrace_connection_lifetime_seconds` buckets (and the OTLP histogram's):
/// 1 ms .. ~9 h, right-after-101 closes up to long-lived sessions.
pub const LIFETIME_BUCKETS: [f64; 9] = [0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 3600.0, 32400.0];

/// Everything exported; cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    pub upgrades: Counter,
    pub closes: Family<CloseLabels, Counter>,
    pub lifetime: Histogram,
    pub lost_events: Family<LostLabels, Counter>,
    /// Closes reported without a user stack copy of their own, by reason
    /// (`budget`: their call site was over its copies a second, `ring_full`:
    /// the stack ring was full). Not lost events: the close was reported.
    pub stacks_elided: Family<LostLabels, Counter>,
    pub probe_set: Family<ProbeLabels, Gauge>,
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wstrace");
        let upgrades = Counter::default();
        registry.register(
            "upgrades",
            "Sockets seen switching protocols (HTTP 101) on traced ports",
            upgrades.clone(),
        );
        let closes = Family::<CloseLabels, Counter>::default();
        registry.register(
            "closes",
            "Upgraded sockets that closed, by side, FIN/RST and diagnosis",
            closes.clone(),
        );
        let lifetime = Histogram::new(LIFETIME_BUCKETS);
        registry.register(
            "connection_lifetime_seconds",
            "Time from the 101 to the close",
            lifetime.clone(),
        );
        let lost_events = Family::<LostLabels, Counter>::default();
        registry.register(
            "lost_events",
            "Events or reports lost, by reason (ring_full, over_budget, not_accepted, map_full, recursion_miss, retprobe_miss, max_sockets, orphan_event, not_an_upgrade, chain_evicted, log_unwritten)",
            lost_events.clone(),
        );
        let stacks_elided = Family::<LostLabels, Counter>::default();
        registry.register(
            "stacks_elided",
            "Closes reported without a user stack copy of their own, by reason (budget: the call site sent its copies this second, the report names its last one; ring_full: the stack ring was full)",
            stacks_elided.clone(),
        );
        let probe_set = Family::<ProbeLabels, Gauge>::default();
        registry.register("probe_set", "The probe set in use (1)", probe_set.clone());
        Metrics {
            upgrades,
            closes,
            lifetime,
            lost_events,
            stacks_elided,
            probe_set,
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(reg) = self.registry.lock() {
            let _ = encode(&mut out, &reg);
        }
        out
    }
}

/// OpenMetrics (what prometheus-client writes) to the Prometheus text
/// format 0.0.4, for scrapers and tools that do not negotiate OpenMetrics
/// (`promtool check metrics`, curl): counters' HELP/TYPE take the `_total`
/// name their samples have, and the `# EOF` trailer goes.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{kind}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// "9464" or ":9464" -> 127.0.0.1:9464 (loopback unless asked otherwise);
/// "0.0.0.0:9464", "[::]:9464" as given.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let port_only = t.strip_prefix(':').unwrap_or(t);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    t.parse().map_err(|_| {
        format!("{s:?} is not an address: use PORT (loopback), IP:PORT or [IPv6]:PORT")
    })
}

/// Scrapes served at once. A connection beyond them is answered 503 and
/// closed at once: a flood of connections costs one accept and one close
/// each, never a file descriptor held or a task parked.
pub const MAX_SCRAPES: usize = 8;

/// Time a scraper has to send its request, and then to take the response:
/// a client that stalls gives its slot back after this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits after a failed accept (EMFILE, ENFILE, ENOBUFS...): the failing
/// connection stays in the backlog, so retrying at once would spin.
const ACCEPT_RETRY_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);

/// Binds now (so a busy port is an error at start-up) and serves until the
/// process exits, on a thread of its own: the event loop runs on one thread
/// and may spend a long stretch draining a full ring buffer, and a scrape
/// must not wait for that.
pub fn serve(addr: SocketAddr, metrics: Metrics) -> Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("--metrics {addr}: cannot listen (port in use, or not allowed)")
    })?;
    std_listener
        .set_nonblocking(true)
        .context("--metrics: setting the listener non-blocking")?;
    let bound = std_listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("--metrics: starting the server's runtime")?;
    std::thread::Builder::new()
        .name("wstrace-metrics".into())
        .spawn(move || {
            crate::hardening::privileges::drop_all_in_this_thread();
            rt.block_on(async move {
                match TcpListener::from_std(std_listener) {
                    Ok(listener) => accept_loop(listener, metrics).await,
                    Err(e) => eprintln!(
                        "wstrace: error: --metrics: the listener could not join the runtime ({e}); no metrics served"
                    ),
                }
            })
        })
        .context("--metrics: starting the server thread")?;
    Ok(bound)
}

/// Where connections come from: the listener, or a test's stand-in.
trait Accept {
    async fn accept(&mut self) -> std::io::Result<TcpStream>;
}

impl Accept for TcpListener {
    async fn accept(&mut self) -> std::io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(conn, _)| conn)
    }
}

/// The wait before the next accept after `failures` failed in a row.
fn accept_retry(failures: u32) -> Duration {
    ACCEPT_RETRY_FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(ACCEPT_RETRY_MAX)
}

async fn accept_loop(mut listener: impl Accept, metrics: Metrics) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    let mut failures = 0u32;
    loop {
        let conn = match listener.accept().await {
            Ok(conn) => {
                failures = 0;
                conn
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    eprintln!(
                        "wstrace: warning: --metrics: cannot accept a connection ({e}); retrying with back-off"
                    );
                }
                tokio::time::sleep(accept_retry(failures)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Best effort and never waiting: the socket buffer of a new
            // connection has room for this.
            let _ = conn.try_write(BUSY);
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_one(conn, &m).await;
        });
    }
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 43\r\nRetry-After: 1\r\nConnection: close\r\n\r\nwstrace: too many scrapes at once, retry.\r\n";

async fn serve_one(mut conn: TcpStream, m: &Metrics) {
    let mut buf = [0u8; 2048];
    let n = match tokio::time::timeout(READ_TIMEOUT, conn.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        _ => return,
    };
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let response = if path == "/metrics" || path.starts_with("/metrics?") {
        // Prometheus asks for OpenMetrics; everything else gets
        // the classic text format.
        let wants_om = req.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("accept:")
                && l.contains("application/openmetrics-text")
        });
        let (ctype, body) = if wants_om {
            (
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                m.render(),
            )
        } else {
            (
                "text/plain; version=0.0.4; charset=utf-8",
                to_prometheus_text(&m.render()),
            )
        };
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 31\r\nConnection: close\r\n\r\nwstrace serves /metrics only.\r\n".to_string()
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        conn.write_all(response.as_bytes()).await?;
        conn.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("9464"),
            Ok("127.0.0.1:9464".parse().expect("addr"))
        );
        assert_eq!(
            parse_addr(":9464"),
            Ok("127.0.0.1:9464".parse().expect("addr"))
        );
        assert_eq!(
            parse_addr("0.0.0.0:9464"),
            Ok("0.0.0.0:9464".parse().expect("addr"))
        );
        assert_eq!(
            parse_addr("[::1]:9464"),
            Ok("[::1]:9464".parse().expect("addr"))
        );
        assert!(parse_addr("localhost:x").is_err());
        assert!(parse_addr("70000").is_err());
    }

    #[test]
    fn accept_back_off_doubles_to_a_second() {
        let ms = |n| accept_retry(n).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4)], [10, 20, 40, 80]);
        assert_eq!(ms(7), 640);
        assert_eq!(ms(8), 1000);
        assert_eq!(ms(u32::MAX), 1000);
    }

    /// A listener whose every accept fails, as with no fd left (EMFILE).
    struct NoFds(Arc<std::sync::atomic::AtomicU64>);

    impl Accept for NoFds {
        async fn accept(&mut self) -> std::io::Result<TcpStream> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(std::io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    #[tokio::test]
    async fn failing_accepts_back_off_instead_of_spinning() {
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let run = accept_loop(NoFds(calls.clone()), Metrics::new());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), run).await;
        let n = calls.load(std::sync::atomic::Ordering::Relaxed);
        // 10+20+40+...+640 ms, then 1 s each: 8 or 9 tries in 2 s.
        assert!((5..=12).contains(&n), "{n} accepts in 2 s");
    }

    fn scrape(addr: SocketAddr) -> String {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    }

    #[test]
    fn scrapes_beyond_the_cap_are_refused_at_once_and_stalled_ones_time_out() {
        let addr = serve("127.0.0.1:0".parse().expect("addr"), Metrics::new()).expect("serve");
        assert!(scrape(addr).starts_with("HTTP/1.1 200 OK"));
        use std::time::{Duration, Instant};
        // Waits for the server, not for a guess at how fast it is: on a
        // loaded host accepting the stalled clients may take a while.
        const PATIENCE: Duration = Duration::from_secs(120);
        let refused = |r: &str| r.is_empty() || r.starts_with("HTTP/1.1 503");
        // MAX_SCRAPES clients that connect and send nothing hold every slot
        // once the server has accepted them all: until then a scrape gets a
        // free slot and its answer (which gives the slot back).
        let stalled: Vec<_> = (0..MAX_SCRAPES)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let waiting = Instant::now();
        let (busy, took) = loop {
            let start = Instant::now();
            let r = scrape(addr);
            let took = start.elapsed();
            if refused(&r) || waiting.elapsed() > PATIENCE {
                break (r, took);
            }
            assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        };
        assert!(refused(&busy), "{busy}");
        // Refused at once: an answer after a wait would have taken at least
        // READ_TIMEOUT (a slot given back), an unanswered scrape the
        // client's 10 s.
        assert!(took < READ_TIMEOUT, "refused at once, not after {took:?}");
        // The server gives the slots back after READ_TIMEOUT (no sooner:
        // nothing else frees them), answering again from then on.
        std::thread::sleep(READ_TIMEOUT);
        let freed = Instant::now();
        let again = loop {
            let r = scrape(addr);
            if !refused(&r) || freed.elapsed() > PATIENCE {
                break r;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(again.starts_with("HTTP/1.1 200 OK"), "{again}");
        drop(stalled);
    }

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new();
        m.upgrades.inc();
        m.closes
            .get_or_create(&CloseLabels {
                closed_by: "local".into(),
                how: "fin".into(),
                diagnosis: "http10_upgrade".into(),
            })
            .inc();
        m.lifetime.observe(0.0004);
        m.probe_set
            .get_or_create(&ProbeLabels {
                probe: "tracepoint".into(),
            })
            .set(1);
        let text = m.render();
        let classic = to_prometheus_text(&text);
        assert!(
            classic.contains("# TYPE wstrace_upgrades_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP wstrace_closes_total Upgraded"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE wstrace_connection_lifetime_seconds histogram\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"));
        for want in [
            "wstrace_upgrades_total 1",
            "wstrace_closes_total{closed_by=\"local\",how=\"fin\",diagnosis=\"http10_upgrade\"} 1",
            "wstrace_connection_lifetime_seconds_bucket{le=\"0.001\"} 1",
            "wstrace_probe_set{probe=\"tracepoint\"} 1",
        ] {
            assert!(text.contains(want), "missing {want}:\n{text}");
        }
    }
}
