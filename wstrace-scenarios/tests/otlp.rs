//! `--otlp` against a real OTLP/HTTP receiver: the receiver decodes what
//! wstrace sends with the official OpenTelemetry protobuf definitions
//! (PyPI `opentelemetry-proto`), and the close is a real one (the
//! `close-after101` server, the real probes). With the collector down, or
//! accepting and never answering, tracing, stdout and `--output` go on and
//! the records it did not get are counted. Needs root and the test venv
//! (`cargo xtask setup --for test`): without them the tests fail.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Kill, TracerOptions, require_root, require_venv_python, server, spawn_ready, upgrade_once,
};
use serde_json::Value;

/// The receiver: `ok` answers like a collector and appends each decoded
/// request to OUT as a JSON line; `hang` accepts, reads and never answers.
const RECEIVER: &str = r#"
import http.server, json, socket, sys, threading
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics

mode, out = sys.argv[1], sys.argv[2]
if mode == "hang":
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    print("READY", s.getsockname()[1], flush=True)
    def swallow(c):
        while c.recv(65536):
            pass
    while True:
        c, _ = s.accept()
        threading.Thread(target=swallow, args=(c,), daemon=True).start()

KINDS = {
    "/v1/logs": (logs.ExportLogsServiceRequest, logs.ExportLogsServiceResponse),
    "/v1/metrics": (metrics.ExportMetricsServiceRequest, metrics.ExportMetricsServiceResponse),
}

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        kind = KINDS.get(self.path)
        if kind is None or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        req = kind[0]()
        req.ParseFromString(body)
        with open(out, "a") as f:
            f.write(json.dumps({"path": self.path,
                                "request": MessageToDict(req, preserving_proto_field_name=True)}) + "\n")
        data = kind[1]().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print("READY", srv.server_address[1], flush=True)
srv.serve_forever()
"#;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wstrace-otlp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn receiver(python: &Path, dir: &Path, mode: &str) -> (Kill, u16, PathBuf) {
    let script = dir.join("receiver.py");
    std::fs::write(&script, RECEIVER).expect("write receiver");
    let out = dir.join("received.jsonl");
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .arg(mode)
        .arg(&out)
        .stderr(Stdio::inherit());
    let (child, port) = spawn_ready(&mut cmd);
    (child, port, out)
}

fn received(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("receiver line"))
        .collect()
}

/// OTLP `KeyValue` lists as (key, value as JSON: ints are strings there).
fn attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a Value> {
    attrs
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| {
            let v = &kv["value"];
            v.get("string_value")
                .or_else(|| v.get("int_value"))
                .or_else(|| v.get("bool_value"))
                .or_else(|| v.get("double_value"))
                .unwrap_or(v)
        })
}

fn log_records(reqs: &[Value]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for r in reqs.iter().filter(|r| r["path"] == "/v1/logs") {
        for rl in r["request"]["resource_logs"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for sl in rl["scope_logs"].as_array().into_iter().flatten() {
                for rec in sl["log_records"].as_array().into_iter().flatten() {
                    out.push((rl["resource"].clone(), rec.clone()));
                }
            }
        }
    }
    out
}

/// Every (metric name, data point) received.
fn metric_points(reqs: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for r in reqs.iter().filter(|r| r["path"] == "/v1/metrics") {
        for rm in r["request"]["resource_metrics"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for sm in rm["scope_metrics"].as_array().into_iter().flatten() {
                for m in sm["metrics"].as_array().into_iter().flatten() {
                    let name = m["name"].as_str().unwrap_or("").to_string();
                    for kind in ["sum", "gauge", "histogram"] {
                        for p in m[kind]["data_points"].as_array().into_iter().flatten() {
                            out.push((name.clone(), p.clone()));
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn otlp_receiver_gets_the_close_and_the_metrics() {
    if !require_root() {
        return;
    }
    let Some(python) = require_venv_python() else {
        return;
    };
    let d = dir("ok");
    let (_receiver, rport, out) = receiver(&python, &d, "ok");
    let (_srv, port) = server(&["--mode", "close-after101"]);
    let mut w = TracerOptions::new()
        .port(port)
        .format("json")
        .args(&[
            // Both ends of the one connection: the server's socket and
            // this test's, which read the 101 (the client side).
            "--count",
            "2",
            "--otlp",
            &format!("http://127.0.0.1:{rport}"),
        ])
        // Metrics also go out at exit; this makes them go during the run too.
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .start()
        .expect("wstrace attaches");
    upgrade_once(port);
    let (report, client_report) = w.wait_for_both_ends(port, Duration::from_secs(20));
    // --count 2: wstrace exits after them, sending the last batch first.
    let status = w.wait();
    assert!(
        status.success(),
        "wstrace exit {status}:\n{}",
        w.stderr_text()
    );

    let reqs = received(&out);
    let records = log_records(&reqs);
    assert_eq!(records.len(), 2, "one record per close: {reqs:#?}");
    let side = |rec: &Value| {
        attr(&rec["attributes"], "wstrace.side")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (resource, rec) = records
        .iter()
        .find(|(_, rec)| side(rec).as_deref() == Some("server"))
        .unwrap_or_else(|| panic!("no server-side record: {records:#?}"));
    // The client side's record: the same connection from this test's end,
    // closed by the server (the peer), the server still server.*.
    let (_, crec) = records
        .iter()
        .find(|(_, rec)| side(rec).as_deref() == Some("client"))
        .unwrap_or_else(|| panic!("no client-side record: {records:#?}"));
    let ca = |k: &str| {
        attr(&crec["attributes"], k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    assert_eq!(ca("wstrace.closed_by").as_deref(), Some("peer"), "{crec:#}");
    assert_eq!(ca("server.port"), Some(port.to_string()), "{crec:#}");
    assert_eq!(
        ca("process.pid"),
        client_report["pid"].as_u64().map(|p| p.to_string()),
        "{crec:#}"
    );
    let cbody = crec["body"]["string_value"].as_str().unwrap_or("");
    assert!(cbody.contains("(client side)"), "{cbody}");
    let a = &rec["attributes"];
    let r = &resource["attributes"];
    assert_eq!(attr(r, "service.name"), Some(&"wstrace".into()));
    assert!(attr(r, "service.version").is_some(), "{resource}");
    assert!(attr(r, "host.name").is_some_and(|h| h != ""), "{resource}");
    assert_eq!(rec["event_name"], "websocket.close", "{rec:#}");
    let body = rec["body"]["string_value"].as_str().unwrap_or("");
    assert!(body.contains("closed by local (fin)"), "{body}");
    assert!(body.contains(&format!("127.0.0.1:{port} <-> ")), "{body}");
    let s = |k: &str| attr(a, k).and_then(Value::as_str).map(str::to_string);
    let n = |v: &Value| v.as_u64().map(|n| n.to_string()).unwrap_or_default();
    // The server wrote the 101: it is server.*, the connecting end client.*.
    assert_eq!(s("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(s("server.port"), Some(port.to_string()));
    let remote_port = report["remote"]
        .as_str()
        .and_then(|r| r.rsplit(':').next())
        .unwrap();
    assert_eq!(s("client.port").as_deref(), Some(remote_port));
    assert_eq!(s("network.peer.port").as_deref(), Some(remote_port));
    assert_eq!(s("network.peer.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(s("network.transport").as_deref(), Some("tcp"));
    assert_eq!(s("process.pid"), Some(n(&report["pid"])));
    assert_eq!(s("thread.id"), Some(n(&report["tid"])));
    assert_eq!(
        s("process.executable.path").as_deref(),
        report["exe"].as_str()
    );
    assert_eq!(
        s("error.type").as_deref(),
        report["diagnosis"]["code"].as_str()
    );
    assert_eq!(s("wstrace.closed_by").as_deref(), Some("local"));
    assert_eq!(s("wstrace.how").as_deref(), Some("fin"));
    assert_eq!(s("wstrace.side").as_deref(), Some("server"));
    assert!(attr(a, "wstrace.kernel_stack").is_some(), "{rec:#}");

    let points = metric_points(&reqs);
    let closes: Vec<&Value> = points
        .iter()
        .filter(|(name, p)| {
            name == "wstrace.closes" && attr(&p["attributes"], "closed_by") == Some(&"local".into())
        })
        .map(|(_, p)| p)
        .collect();
    assert!(
        closes.iter().any(|p| p["as_int"] == "1"),
        "wstrace.closes{{closed_by=local}} 1: {points:#?}"
    );
    assert!(
        points.iter().any(|(name, p)| name == "wstrace.lost_events"
            && attr(&p["attributes"], "reason") == Some(&"otlp".into())),
        "the otlp loss series is exported from the start: {points:#?}"
    );
    assert!(
        points.iter().any(|(name, _)| name == "wstrace.upgrades"),
        "{points:#?}"
    );
}

/// The collector away (nothing listening) or hung (accepts, never
/// answers): every close still reaches stdout and `--output`, and the
/// records the collector did not get are counted as lost.
fn collector_away_costs_records_not_reports(mode: &str) {
    if !require_root() {
        return;
    }
    let Some(python) = require_venv_python() else {
        return;
    };
    let d = dir(mode);
    let (_receiver, rport) = match mode {
        "hang" => {
            let (k, p, _) = receiver(&python, &d, "hang");
            (Some(k), p)
        }
        _ => (None, common::free_port()),
    };
    const N: usize = 3;
    let (_srv, port) = server(&["--mode", "close-after101"]);
    let log = d.join("closes.jsonl");
    let w = TracerOptions::new()
        .port(port)
        .format("json")
        .metrics()
        .args(&[
            "--otlp",
            &format!("http://127.0.0.1:{rport}"),
            "--output",
            &log.display().to_string(),
        ])
        .start()
        .expect("wstrace attaches");
    for _ in 0..N {
        upgrade_once(port);
    }
    // Both ends of each connection (this test's sockets read the 101).
    w.wait_for_ends(port, N, Duration::from_secs(20));
    let start = Instant::now();
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    while lines() < 2 * N && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lines(), 2 * N, "--output goes on");
    // The exporter retries with back-off within its 10 s deadline (each
    // attempt cut at 5 s): then the batch is counted as lost.
    let start = Instant::now();
    let mut lost = w.lost_events().expect("scrape");
    while lost.get("otlp").copied().unwrap_or(0) < 2 * N as u64
        && start.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(250));
        lost = w.lost_events().expect("scrape");
    }
    assert_eq!(
        lost.get("otlp"),
        Some(&(2 * N as u64)),
        "{lost:?}\n{}",
        w.stderr_text()
    );
    // And tracing still goes on after the failed exports.
    upgrade_once(port);
    w.wait_for_ends(port, N + 1, Duration::from_secs(20));
}

#[test]
fn otlp_collector_down_costs_records_not_reports() {
    collector_away_costs_records_not_reports("down");
}

#[test]
fn otlp_collector_that_never_answers_costs_records_not_reports() {
    collector_away_costs_records_not_reports("hang");
}
