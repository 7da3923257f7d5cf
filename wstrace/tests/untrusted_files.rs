//! The files wstrace opens as root, against what another user can put in
//! their place (issue 14): `--output` and `report --html` planted as a
//! symlink, a FIFO or a file of `nobody`, in a directory anyone can write;
//! `wstrace report` fed a FIFO, /dev/zero, a gzip bomb and megabytes of
//! junk under a memory limit (RLIMIT_AS). The real binary; attackers are `nobody`
//! (setpriv). Tests that need root or a tool fail without them unless
//! WSTRACE_TEST_ALLOW_SKIP=1.
use std::{
    io::Write as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use wstrace_scenarios::harness::{require, require_root_because};

fn wstrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wstrace"))
}

/// True when the test can run (as root if `root`, with `tools`); fails
/// otherwise, unless WSTRACE_TEST_ALLOW_SKIP=1 (the harness's one gate).
fn can_run(_test: &str, root: bool, tools: &[&str]) -> bool {
    if root && !require_root_because("reads files as another user and loads BPF") {
        return false;
    }
    tools.iter().all(|t| {
        require(
            Path::new(t).is_file(),
            &format!("missing {t}: run `cargo xtask setup`"),
        )
    })
}

fn dir(name: &str, mode: u32) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wstrace-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).expect("chmod");
    d
}

/// Runs a shell command as nobody:nogroup (the attacker).
fn as_nobody(script: &str) {
    let ok = Command::new("/usr/bin/setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["/bin/sh", "-c", script])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "as nobody: {script}");
}

/// Runs `cmd`, killing it after `limit`; None when it had to be killed.
fn run_for(mut cmd: Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().ok();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `wstrace --output PATH` on an unused port for a moment: Err(stderr) when
/// it refused to start.
fn trace_with_output(path: &Path) -> Result<(), String> {
    let mut c = wstrace();
    c.args(["--port", "9", "--duration", "0.5", "--output"])
        .arg(path);
    let out =
        run_for(c, Duration::from_secs(30)).expect("wstrace hung (blocked opening --output?)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn output_symlink_planted_by_another_user_is_not_followed() {
    if !can_run(
        "output_symlink_planted_by_another_user_is_not_followed",
        true,
        &["/usr/bin/setpriv"],
    ) {
        return;
    }
    let d = dir("symlink", 0o1777);
    let victim = dir("symlink-victim", 0o755).join("shadow");
    std::fs::write(&victim, "root:secret\n").expect("victim");
    let log = d.join("closes.jsonl");
    as_nobody(&format!("ln -s {} {}", victim.display(), log.display()));
    let err = trace_with_output(&log).expect_err("refused");
    assert!(
        err.contains("is a symbolic link") && err.contains(&log.display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read"),
        "root:secret\n"
    );
}

#[test]
fn output_fifo_planted_by_another_user_does_not_hang_the_start() {
    if !can_run(
        "output_fifo_planted_by_another_user_does_not_hang_the_start",
        true,
        &["/usr/bin/setpriv"],
    ) {
        return;
    }
    let d = dir("fifo", 0o1777);
    let log = d.join("closes.jsonl");
    as_nobody(&format!("mkfifo -m 666 {}", log.display()));
    let start = Instant::now();
    let err = trace_with_output(&log).expect_err("refused");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn output_file_of_another_user_is_refused_and_kept_as_it_is() {
    if !can_run(
        "output_file_of_another_user_is_refused_and_kept_as_it_is",
        true,
        &["/usr/bin/setpriv"],
    ) {
        return;
    }
    let d = dir("owner", 0o1777);
    let log = d.join("closes.jsonl");
    as_nobody(&format!("umask 0; echo planted > {}", log.display()));
    let err = trace_with_output(&log).expect_err("refused");
    assert!(err.contains("is owned by uid 65534"), "{err}");
    let m = std::fs::metadata(&log).expect("meta");
    assert_eq!((m.uid(), m.mode() & 0o777), (65534, 0o666));
    assert_eq!(std::fs::read_to_string(&log).expect("read"), "planted\n");
}

#[test]
fn output_in_a_world_writable_directory_without_sticky_bit_is_refused() {
    let d = dir("worldw", 0o777);
    let err = trace_with_output(&d.join("closes.jsonl")).expect_err("refused");
    assert!(
        err.contains("writable by other users (mode 0777)") && err.contains("not sticky"),
        "{err}"
    );
    assert!(!d.join("closes.jsonl").exists(), "nothing created");
}

#[test]
fn output_of_our_own_with_mode_0666_becomes_0640() {
    if !can_run("output_of_our_own_with_mode_0666_becomes_0640", true, &[]) {
        return;
    }
    let d = dir("mode", 0o755);
    let log = d.join("closes.jsonl");
    std::fs::write(&log, "").expect("write");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    trace_with_output(&log).expect("traced");
    assert_eq!(
        std::fs::metadata(&log).expect("meta").mode() & 0o7777,
        0o640
    );
}

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/report/sample.jsonl"
);

#[test]
fn report_html_symlink_planted_by_another_user_is_not_followed() {
    if !can_run(
        "report_html_symlink_planted_by_another_user_is_not_followed",
        true,
        &["/usr/bin/setpriv"],
    ) {
        return;
    }
    let d = dir("html", 0o1777);
    let victim = dir("html-victim", 0o755).join("authorized_keys");
    std::fs::write(&victim, "ssh-ed25519 AAAA\n").expect("victim");
    let html = d.join("report.html");
    as_nobody(&format!("ln -s {} {}", victim.display(), html.display()));
    let out = wstrace()
        .arg("report")
        .arg(SAMPLE)
        .arg("--html")
        .arg(&html)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is a symbolic link"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read"),
        "ssh-ed25519 AAAA\n"
    );
}

#[test]
fn report_refuses_a_fifo_and_dev_zero_at_once() {
    let d = dir("input", 0o755);
    let fifo = d.join("closes.jsonl");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success())
    );
    for (input, what) in [
        (fifo.as_path(), "is a FIFO"),
        (Path::new("/dev/zero"), "is a device"),
    ] {
        let mut c = wstrace();
        c.arg("report").arg(input);
        let out = run_for(c, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("wstrace report {} did not return", input.display()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}", input.display());
        assert!(
            err.contains(what) && err.contains("not a regular file"),
            "{err}"
        );
    }
}

/// Runs argv[3:] in a fresh child under an address-space limit of
/// argv[1] bytes; prints "exit status, peak RSS in KiB". Measured from a
/// grandchild of the test: a child started straight from the test would
/// inherit the test process's own peak RSS (exec records the old address
/// space's high-water mark), and a python child starts from ~10 MiB.
const LIMITED: &str = r#"
import os, resource, sys
limit = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out, 1)
    os.execv(sys.argv[3], sys.argv[3:])
_, status, ru = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), ru.ru_maxrss)
"#;

/// `wstrace report FILE` under an address-space limit: (stdout, peak RSS in
/// KiB).
fn report_limited(file: &Path, limit_bytes: u64) -> (String, u64) {
    let stdout = file.with_extension("out");
    let out = Command::new("/usr/bin/python3")
        .args(["-c", LIMITED])
        .arg(limit_bytes.to_string())
        .arg(&stdout)
        .arg(env!("CARGO_BIN_EXE_wstrace"))
        .arg("report")
        .arg(file)
        .output()
        .expect("python3");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = String::from_utf8_lossy(&out.stdout);
    let mut f = line
        .split_whitespace()
        .map(|x| x.parse::<i64>().unwrap_or(-1));
    let (code, rss) = (f.next().unwrap_or(-1), f.next().unwrap_or(-1));
    assert_eq!(
        code,
        0,
        "wstrace report failed under a {} MiB limit:\n{err}",
        limit_bytes >> 20
    );
    (
        std::fs::read_to_string(&stdout).expect("report output"),
        rss as u64,
    )
}

const LIMIT: u64 = 256 << 20;

#[test]
fn report_on_a_gzip_bomb_stays_small() {
    if !can_run(
        "report_on_a_gzip_bomb_stays_small",
        false,
        &["/usr/bin/python3"],
    ) {
        return;
    }
    // 3 MB of gzip that expands to 3 GiB of zeros: 3072 concatenated members
    // of 1 MiB each (a `cat` of .gz files is one valid .gz).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 1 << 20]).expect("gz");
    let member = gz.finish().expect("gz");
    let d = dir("bomb", 0o755);
    let bomb = d.join("closes.jsonl.gz");
    let mut f = std::fs::File::create(&bomb).expect("create");
    for _ in 0..3072 {
        f.write_all(&member).expect("write");
    }
    drop(f);
    let size = std::fs::metadata(&bomb).expect("meta").len();
    let start = Instant::now();
    let (out, rss_kib) = report_limited(&bomb, LIMIT);
    eprintln!(
        "gzip bomb: {:.1} MB expanding to 3 GiB: {:.1} s, peak RSS {} KiB",
        size as f64 / 1e6,
        start.elapsed().as_secs_f64(),
        rss_kib
    );
    assert!(
        out.contains("0 closes (1 lines read, 0 filtered out, 1 malformed)"),
        "{out}"
    );
    assert!(
        out.contains(":1: line of 3221225472 bytes, longer than 1 MiB: skipped"),
        "{out}"
    );
    assert!(rss_kib < 64 * 1024, "peak RSS {rss_kib} KiB");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn report_on_ten_megabytes_of_junk_lines_stays_small() {
    if !can_run(
        "report_on_ten_megabytes_of_junk_lines_stays_small",
        false,
        &["/usr/bin/python3"],
    ) {
        return;
    }
    let d = dir("junk", 0o755);
    let junk = d.join("closes.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&junk).expect("create"));
    let mut n = 0u64;
    let mut written = 0usize;
    while written < 10_000_000 {
        // Short junk, long junk, almost-JSON and valid JSON that is no report.
        let line = match n % 4 {
            0 => format!("junk {n} \x1b[31m{}", "z".repeat((n % 97) as usize)),
            1 => format!("{{\"ts\": \"{}", "x".repeat(200)),
            2 => format!("[{n}, {n}, {n}]"),
            _ => "{\"a\":1}".to_string(),
        };
        writeln!(f, "{line}").expect("write");
        written += line.len() + 1;
        n += 1;
    }
    // One line of 40 MB without a newline at the end.
    f.write_all(&vec![b'{'; 40 << 20]).expect("write");
    drop(f);
    let (out, rss_kib) = report_limited(&junk, LIMIT);
    eprintln!("junk: {n} lines + one 40 MiB line: peak RSS {rss_kib} KiB");
    let want = format!(
        "0 closes ({} lines read, 0 filtered out, {} malformed)",
        n + 1,
        n + 1
    );
    assert!(out.contains(&want), "want {want:?} in\n{out}");
    assert!(
        out.contains(&format!("... and {} more", n + 1 - 20)),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "junk is escaped too");
    assert!(rss_kib < 64 * 1024, "peak RSS {rss_kib} KiB");
    let _ = std::fs::remove_dir_all(&d);
}
