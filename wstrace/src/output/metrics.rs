//! `--metrics ADDR`: Prometheus metrics on `http://ADDR/metrics`, for fleets
//! that already scrape their hosts. Counters are updated by the tracer loop;
//! a small HTTP/1.1 responder serves the text exposition.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
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

/// Everything exported; cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    pub upgrades: Counter,
    pub closes: Family<CloseLabels, Counter>,
    pub lifetime: Histogram,
    pub lost_events: Family<LostLabels, Counter>,
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
        // 1 ms .. ~9 h: right-after-101 closes up to long-lived sessions.
        let lifetime =
            Histogram::new([0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 3600.0, 32400.0].into_iter());
        registry.register(
            "connection_lifetime_seconds",
            "Time from the 101 to the close",
            lifetime.clone(),
        );
        let lost_events = Family::<LostLabels, Counter>::default();
        registry.register(
            "lost_events",
            "Events or reports lost, by reason (ring_full, recursion_miss, max_sockets, orphan_event, not_an_upgrade)",
            lost_events.clone(),
        );
        let probe_set = Family::<ProbeLabels, Gauge>::default();
        registry.register("probe_set", "The probe set in use (1)", probe_set.clone());
        Metrics {
            upgrades,
            closes,
            lifetime,
            lost_events,
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
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
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
            crate::attach::privileges::drop_all_in_this_thread();
            rt.block_on(accept_loop(std_listener, metrics))
        })
        .context("--metrics: starting the server thread")?;
    Ok(bound)
}

async fn accept_loop(std_listener: std::net::TcpListener, metrics: Metrics) {
    let Ok(listener) = TcpListener::from_std(std_listener) else {
        eprintln!(
            "wstrace: error: --metrics: the listener could not join the runtime; no metrics served"
        );
        return;
    };
    {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let m = metrics.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    conn.read(&mut buf),
                )
                .await
                {
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
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    }
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
