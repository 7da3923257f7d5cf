//! A close inside a real container: Debian's podman runs an image imported
//! from a rootfs tarball this test builds (no registry: `ws-scenario` and
//! the shared libraries it loads), whose server closes an HTTP/1.0
//! upgrade right after its 101. The report names the container, its image
//! and its runtime, read from podman's state on disk. Needs root, podman
//! and runc (`cargo xtask setup --for test`): without them the test fails.
mod common;

use std::{
    io::Read,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Tracer, free_port, require, require_root, require_tool, upgraded_with};

const HTTP10_UPGRADE: &[u8] =
    b"GET /ws HTTP/1.0\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A rootfs with `bin` and every library `ldd` says it loads, as a tar.
fn rootfs_tar(dir: &Path, bin: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("tmp")).expect("rootfs");
    std::fs::copy(bin, root.join("ws-scenario")).expect("copy ws-scenario");
    let ldd = run(Command::new("ldd").arg(bin));
    for lib in ldd
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
    {
        let dest = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("lib dir")).expect("lib dir");
        std::fs::copy(lib, &dest).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
    }
    let tar = dir.join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    tar
}

/// Removes the container and the image however the test ends.
struct Cleanup {
    podman: PathBuf,
    name: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(&self.podman)
            .args(["rm", "-f", "-t", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new(&self.podman)
            .args(["rmi", "-f", &self.image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn a_close_in_a_podman_container_names_the_container_and_image() {
    if !require_root() {
        return;
    }
    let Some(podman) = require_tool("podman", "apt-get install podman (cargo xtask setup)") else {
        return;
    };
    let Some(_runc) = require_tool("runc", "apt-get install runc (cargo xtask setup)") else {
        return;
    };
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ws-scenario"));
    if !require(bin.exists(), "the ws-scenario binary") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wstrace-container-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let tar = rootfs_tar(&dir, &bin);
    let tag = std::process::id();
    let image = format!("localhost/wstrace-test-ws:{tag}");
    let name = format!("wstrace-test-ws-{tag}");
    let _cleanup = Cleanup {
        podman: podman.clone(),
        name: name.clone(),
        image: image.clone(),
    };
    run(Command::new(&podman).arg("import").arg(&tar).arg(&image));

    let port = free_port();
    let w = Tracer::start(port, &[]);
    // runc, not crun: crun refuses hybrid cgroup v1/v2 hosts (this
    // development VM is one). The ulimits are lowered to what this process
    // has: podman's defaults raise them, which needs CAP_SYS_RESOURCE.
    // Host networking: the server's socket is the host's, on loopback.
    run(Command::new(&podman).args([
        "--runtime",
        "runc",
        "run",
        "-d",
        "--network",
        "host",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--name",
        &name,
        &image,
        "/ws-scenario",
        "serve",
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--mode",
        "close-after101",
    ]));
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server in the container did not listen on {port}: {}",
            run(Command::new(&podman).args(["logs", &name]))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // That probe connection was a plain close, never reported; this one is
    // upgraded, over HTTP/1.0, and closed by the server right after its 101.
    // The client waits for the server's FIN before its own: dropped at
    // once, its FIN can race the server's close and be honestly reported
    // as the peer closing first (seen in a clean-clone run).
    let mut c = upgraded_with(port, HTTP10_UPGRADE);
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("the server closes right after its 101 (read timeout 10 s)");
    drop(c);
    let (reports, found) = w.wait_for_report(Duration::from_secs(20), |r| {
        r["diagnosis"]["code"] == "http10_upgrade"
    });
    assert!(
        found,
        "no report of the close: {reports:#?}\n{}",
        w.stderr_text()
    );
    let r = reports
        .iter()
        .find(|r| r["diagnosis"]["code"] == "http10_upgrade")
        .expect("the report");
    let id = run(Command::new(&podman).args(["inspect", "--format", "{{.Id}}", &name]));
    let c = &r["container"];
    assert_eq!(c["id"], id.trim(), "{r:#}");
    assert_eq!(r["container_id"], id.trim(), "{r:#}");
    assert_eq!(c["name"], name.as_str(), "{r:#}");
    assert_eq!(c["image"], image.as_str(), "{r:#}");
    assert_eq!(c["runtime"], "podman", "{r:#}");
}
