//! `wstrace report --html` rendered by a real browser (Debian's chromium,
//! headless): the page loads without script errors and the screenshot shows
//! the flame graph (its warm-coloured frames) and the lifetime bars.
use std::{path::Path, process::Command};

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("chromium is not installed: run `cargo xtask setup` (installs Debian's chromium)")
}

/// (flame-coloured pixels, lifetime-bar pixels) in an RGB(A) screenshot.
fn count_colours(png_path: &Path) -> (usize, usize) {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).expect("screenshot"));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let channels = info.color_type.samples();
    let (mut flame, mut bars) = (0, 0);
    for px in buf[..info.buffer_size()].chunks(channels) {
        let (r, g, b) = (px[0] as i32, px[1] as i32, px[2] as i32);
        // inferno's default "hot" palette: red to yellow, little blue.
        if r > 200 && g < 230 && b < 90 {
            flame += 1;
        }
        // The histogram's bars (#4a7ebb).
        if (r - 0x4a).abs() < 8 && (g - 0x7e).abs() < 8 && (b - 0xbb).abs() < 8 {
            bars += 1;
        }
    }
    (flame, bars)
}

#[test]
fn html_report_renders_a_flame_graph_in_chromium() {
    let dir = std::env::temp_dir().join(format!("wstrace-html-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let html = dir.join("report.html");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report/sample.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .arg("report")
        .arg(&sample)
        .arg("--html")
        .arg(&html)
        .output()
        .expect("wstrace report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let shot = dir.join("report.png");
    let browser = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox", // tests run as root
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,1000",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("running chromium");
    let log = String::from_utf8_lossy(&browser.stderr);
    assert!(
        browser.status.success() && shot.is_file(),
        "chromium failed:\n{log}"
    );
    // Console errors from the page's own script (inferno's search/zoom JS).
    for line in log.lines().filter(|l| l.contains("CONSOLE")) {
        assert!(
            !line.contains("Uncaught") && !line.contains("Error"),
            "page script error: {line}"
        );
    }
    let (flame, bars) = count_colours(&shot);
    assert!(
        flame > 20_000,
        "flame graph not visible: {flame} warm pixels in {}",
        shot.display()
    );
    assert!(
        bars > 10_000,
        "lifetime histogram not visible: {bars} bar pixels in {}",
        shot.display()
    );
}
