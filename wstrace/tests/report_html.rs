//! `wstrace report --html` on the committed fleet sample (three hosts, six
//! diagnoses, hostile comm/exe/request/frames), opened in a real browser:
//! Debian's chromium, headless, driven through chromedriver (WebDriver over
//! HTTP, spoken here with std only). The page's own script runs, the test
//! clicks like an operator would, and it looks at a screenshot.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Fails (or, with WSTRACE_TEST_ALLOW_SKIP=1, skips: the harness's one
/// gate) when a tool is missing.
fn require_tools(_test: &str) -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|t| !Path::new(t).is_file())
        .collect();
    wstrace_scenarios::harness::require(
        missing.is_empty(),
        &format!(
            "missing {missing:?}: run `cargo xtask setup` (installs Debian's chromium and chromium-driver)"
        ),
    )
}

fn fleet_files() -> Vec<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report/fleet");
    vec![
        d.join("web-1.jsonl"),
        d.join("web-2.jsonl"),
        d.join("edge-3/closes.jsonl"),
    ]
}

/// One HTTP/1.1 exchange with chromedriver; the JSON `value` of its answer.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to chromedriver");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    // chromedriver keeps the connection open whatever we ask: read the
    // head, then exactly the body it announces.
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let (head, rest) = loop {
        let n = s.read(&mut buf).expect("answer");
        assert!(n > 0, "{method} {path}: connection closed early");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let lower = head.to_ascii_lowercase();
        let done = match lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
        {
            Some(len) => rest.len() >= len.trim().parse::<usize>().expect("length"),
            None => rest.ends_with("0\r\n\r\n"),
        };
        if done {
            break (head.to_string(), rest.to_string());
        }
    };
    let rest = rest.as_str();
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let v: Value = serde_json::from_str(&payload)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}: {head}\n{payload}"));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{method} {path} {body}: {head}\n{v:#}"
    );
    v["value"].clone()
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= u32::from(val(c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    out
}

struct Driver {
    child: Child,
    port: u16,
    session: String,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromedriver did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": CHROMIUM,
            // --no-sandbox: tests run as root.
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                     "--window-size=1280,2600", "--force-device-scale-factor=1"],
        }}}});
        let mut d = Driver {
            child,
            port,
            session: String::new(),
        };
        let v = d.call("POST", "/session", Some(&caps));
        d.session = v["sessionId"].as_str().expect("session id").to_string();
        d
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        http(self.port, method, path, body)
    }

    fn s(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn js(&self, script: &str) -> Value {
        self.s(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    fn click(&self, css: &str) {
        let e = self.s(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        let id = e
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {e}"))
            .to_string();
        self.s("POST", &format!("/element/{id}/click"), Some(&json!({})));
    }

    /// (rows shown, their distinct values of `data-<attr>`).
    fn shown(&self, attr: &str) -> (u64, Vec<String>) {
        let v = self.js(&format!(
            "var rows = Array.from(document.querySelectorAll('#close-table tbody tr'))\
               .filter(function (r) {{ return r.offsetParent !== null; }});\
             var seen = {{}}; rows.forEach(function (r) {{ seen[r.getAttribute('data-{attr}')] = 1; }});\
             return [rows.length, Object.keys(seen).sort()];"
        ));
        let vals = v[1]
            .as_array()
            .expect("values")
            .iter()
            .map(|x| x.as_str().unwrap_or("").to_string())
            .collect();
        (v[0].as_u64().expect("count"), vals)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(|| {
                http(
                    self.port,
                    "DELETE",
                    &format!("/session/{}", self.session),
                    None,
                )
            });
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pixels in `rect` (CSS px = screenshot px at scale 1) that are not the
/// page's white, and those that are warm (user frames) or blue (kernel).
struct Region {
    total: usize,
    inked: usize,
    warm: usize,
    blue: usize,
}

fn region(png: &[u8], rect: &Value) -> Region {
    let decoder = png::Decoder::new(png);
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let ch = info.color_type.samples();
    let f = |k: &str| rect[k].as_f64().expect("rect") as usize;
    let (x0, y0) = (f("x"), f("y"));
    let (x1, y1) = (
        (x0 + f("width")).min(info.width as usize),
        (y0 + f("height")).min(info.height as usize),
    );
    assert!(
        x1 > x0 && y1 > y0,
        "region {rect} outside the {}x{} screenshot",
        info.width,
        info.height
    );
    let mut r = Region {
        total: 0,
        inked: 0,
        warm: 0,
        blue: 0,
    };
    for y in y0..y1 {
        for x in x0..x1 {
            let i = (y * info.width as usize + x) * ch;
            let (red, g, b) = (
                i32::from(buf[i]),
                i32::from(buf[i + 1]),
                i32::from(buf[i + 2]),
            );
            r.total += 1;
            if red < 240 || g < 240 || b < 240 {
                r.inked += 1;
            }
            if red > 200 && b < 150 && red - b > 80 {
                r.warm += 1;
            }
            if b > 150 && b - red > 40 {
                r.blue += 1;
            }
        }
    }
    r
}

#[test]
fn html_report_leads_with_the_answer_and_filters_in_chromium() {
    if !require_tools("html_report_leads_with_the_answer_and_filters_in_chromium") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wstrace-html-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let html = dir.join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .arg("report")
        .args(fleet_files())
        .arg("--html")
        .arg(&html)
        .output()
        .expect("wstrace report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let d = Driver::start();
    d.s(
        "POST",
        "/url",
        Some(&json!({"url": format!("file://{}", html.display())})),
    );

    // The first heading is the most frequent diagnosis, with its fix.
    let first = d.js(
        "var h = document.querySelector('h1, h2, h3, h4, h5, h6');\
         return [h.tagName, h.querySelector('.code').textContent, h.querySelector('.fix').textContent, h.textContent];",
    );
    assert_eq!(first[0], "H1", "{first}");
    assert_eq!(first[1], "http10_upgrade", "{first}");
    let fix = first[2].as_str().expect("fix");
    assert!(
        fix.starts_with("Fix: add `proxy_http_version 1.1;`"),
        "{first}"
    );
    assert!(
        first[3]
            .as_str()
            .is_some_and(|t| t.contains("16 of 40 closes (40%)")),
        "{first}"
    );
    // Its example close shows the request line.
    let example = d.js("return document.querySelector('.headline .example').textContent;");
    assert!(
        example
            .as_str()
            .is_some_and(|t| t.contains("request GET /ws HTTP/1.0")),
        "{example}"
    );
    // Sections in the order an operator reads them.
    let order = d.js(
        "return Array.from(document.querySelectorAll('#diagnoses, #timeline, #programs, #hosts, #flame, #closes'))\
           .map(function (e) { return e.id; });",
    );
    assert_eq!(
        order,
        json!([
            "diagnoses",
            "timeline",
            "programs",
            "hosts",
            "flame",
            "closes"
        ])
    );

    // Flame graph: labels are function names, never module paths; the
    // tooltip has the module and the source line; inlined and kernel
    // frames are marked.
    let labels = d.js(
        "return Array.from(document.querySelectorAll('#flamegraph text')).map(function (t) { return t.textContent; });",
    );
    let labels: Vec<&str> = labels
        .as_array()
        .expect("labels")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "ngx_close_connection",
        "swoole::Server::close_connection",
        "tcp_close",
    ] {
        assert!(labels.contains(&want), "no label {want:?} in {labels:?}");
    }
    // node's own native frames (uv__close among them) fold like any
    // runtime's: a flame graph names the script's frames, and this recorded
    // node close has none named.
    assert!(
        labels
            .iter()
            .any(|l| l.starts_with("… ") && l.ends_with(" frames in node")),
        "no folded node frames in {labels:?}"
    );
    assert!(
        !labels.contains(&"uv__close"),
        "node's native frames are folded: {labels:?}"
    );
    for l in &labels {
        assert!(
            !l.contains(".so") && !l.contains("/usr/") && !l.contains("/bin/"),
            "a module path in the label {l:?}"
        );
    }
    let tip = d.js(
        "var g = Array.from(document.querySelectorAll('#flamegraph g'))\
           .filter(function (g) { var t = g.querySelector('text'); return t && t.textContent === 'ngx_close_connection'; })[0];\
         return g.querySelector('title').textContent;",
    );
    let tip = tip.as_str().expect("tooltip");
    assert!(
        tip.contains("module: /usr/sbin/nginx")
            && tip.contains("at src/core/ngx_connection.c:1262"),
        "{tip}"
    );
    let marks = d.js(
        "return [document.querySelectorAll('#flamegraph g.inlined rect[stroke-dasharray]').length,\
                 document.querySelectorAll('#flamegraph g.kernel').length,\
                 document.querySelectorAll('#flamegraph g.user').length];",
    );
    assert!(
        marks[0].as_u64() >= Some(1)
            && marks[1].as_u64() >= Some(10)
            && marks[2].as_u64() >= Some(10),
        "{marks}"
    );
    // Same module, same colour: every libc frame of the php stack shares one fill.
    let fills = d.js(
        "var f = {}; Array.from(document.querySelectorAll('#flamegraph g.user')).forEach(function (g) {\
           var m = /module: (.*)/.exec(g.querySelector('title').textContent);\
           if (m) { (f[m[1]] = f[m[1]] || {})[g.querySelector('rect').getAttribute('fill')] = 1; } });\
         return Object.keys(f).map(function (k) { return [k, Object.keys(f[k]).length]; });",
    );
    for pair in fills.as_array().expect("fills") {
        assert_eq!(pair[1], 1, "module {} drawn in several colours", pair[0]);
    }

    // Zoom: clicking nginx's close path fills the width with it and hides
    // the other programs' frames; labels stay function names; reset undoes it.
    d.click("#flamegraph g.user[data-name='ngx_http_upstream_process_upgraded'] rect");
    let zoomed = d.js(
        "var g = document.querySelector(\"#flamegraph g[data-name='ngx_http_upstream_process_upgraded']\");\
         var php = document.querySelector(\"#flamegraph g[data-name='zif_swoole_server_start']\");\
         var caller = document.querySelector(\"#flamegraph g[data-name='ngx_event_expire_timers']\");\
         return [parseFloat(g.querySelector('rect').getAttribute('width')), getComputedStyle(php).display,\
                 parseFloat(caller.querySelector('rect').getAttribute('width')),\
                 document.querySelector(\"#flamegraph g[data-name='ngx_close_connection'] text\").textContent];",
    );
    assert_eq!(zoomed[0], 1200.0, "{zoomed}");
    assert_eq!(zoomed[1], "none", "{zoomed}");
    assert_eq!(zoomed[2], 1200.0, "{zoomed}");
    assert_eq!(zoomed[3], "ngx_close_connection", "{zoomed}");
    d.click("#flame-reset");
    let reset = d.js(
        "return getComputedStyle(document.querySelector(\"#flamegraph g[data-name='zif_swoole_server_start']\")).display;",
    );
    assert_ne!(reset, "none");

    // Hostile values are text, never markup: the only script is the page's.
    let scripts = d.js("return document.querySelectorAll('script').length;");
    assert_eq!(scripts, 1);
    let gw = d.js(
        "return Array.from(document.querySelectorAll('#program-table a')).map(function (a) { return a.textContent; });",
    );
    assert!(
        gw.as_array()
            .expect("programs")
            .iter()
            .any(|p| p == "/opt/gw/bin/ws-gw\\u{202e}exe.sh"),
        "{gw}"
    );

    // Clicking filters the table: a diagnosis, then a host, then a program.
    assert_eq!(d.shown("diag").0, 40);
    d.click(".headline[data-diag='idle_timeout'] a.code");
    assert_eq!(d.shown("diag"), (8, vec!["idle_timeout".to_string()]));
    let state = d.js("return document.getElementById('filter-state').textContent;");
    assert!(
        state
            .as_str()
            .is_some_and(|s| s.contains("8 of 40") && s.contains("idle_timeout")),
        "{state}"
    );
    d.click("#host-table a[data-value='web-2']");
    assert_eq!(d.shown("host"), (14, vec!["web-2".to_string()]));
    d.click("#program-table a[data-value='/usr/sbin/nginx']");
    assert_eq!(d.shown("program"), (8, vec!["/usr/sbin/nginx".to_string()]));
    d.click("#clear-filter");
    assert_eq!(d.shown("diag").0, 40);
    // Sorting by lifetime: shortest first, then longest first.
    let life = "return Array.from(document.querySelectorAll('#close-table tbody tr'))\
                .map(function (r) { return parseFloat(r.cells[6].getAttribute('data-sort')); });";
    d.click("#close-table th:nth-child(7)");
    let asc: Vec<f64> = serde_json::from_value(d.js(life)).expect("numbers");
    assert!(asc.windows(2).all(|w| w[0] <= w[1]), "{asc:?}");
    d.click("#close-table th:nth-child(7)");
    let desc: Vec<f64> = serde_json::from_value(d.js(life)).expect("numbers");
    assert!(desc.windows(2).all(|w| w[0] >= w[1]), "{desc:?}");
    assert!(desc[0] > 200_000.0, "{desc:?}");

    // The screenshot: the charts are drawn where the page says they are.
    d.js("window.scrollTo(0, 0); return 0;");
    let rects = d.js(
        "return ['timeline-chart', 'flamegraph', 'program-table'].map(function (id) {\
           var r = document.getElementById(id).getBoundingClientRect();\
           return {x: r.left, y: r.top, width: r.width, height: r.height}; });",
    );
    let shot = base64(d.s("GET", "/screenshot", None).as_str().expect("png"));
    let png_path = dir.join("report.png");
    std::fs::write(&png_path, &shot).expect("save screenshot");
    eprintln!("screenshot: {}", png_path.display());
    let timeline = region(&shot, &rects[0]);
    let flame = region(&shot, &rects[1]);
    let programs = region(&shot, &rects[2]);
    // Bars of six diagnoses over 21 minutes: a good part of the plot inked.
    assert!(
        timeline.inked * 100 > timeline.total * 10,
        "time line mostly blank: {}/{} pixels inked in {}",
        timeline.inked,
        timeline.total,
        png_path.display()
    );
    // Frames fill most of the flame graph, warm user frames and blue kernel ones.
    assert!(
        flame.inked * 100 > flame.total * 50,
        "flame graph mostly blank: {}/{} in {}",
        flame.inked,
        flame.total,
        png_path.display()
    );
    assert!(
        flame.warm * 100 > flame.total * 15 && flame.blue * 100 > flame.total * 15,
        "flame graph lacks user (warm {}) or kernel (blue {}) frames of {} in {}",
        flame.warm,
        flame.blue,
        flame.total,
        png_path.display()
    );
    assert!(
        programs.inked * 100 > programs.total * 10,
        "program table blank: {}/{}",
        programs.inked,
        programs.total
    );
}
