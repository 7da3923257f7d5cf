use std::os::fd::AsRawFd as _;

use super::Helper;
use super::policy::*;
use super::wire::*;

fn req(pid: u32, path: &str) -> Request {
    Request {
        pid,
        path: path.into(),
        dev: (0xfd, 1),
        inode: 1234,
        offset: 0x2000,
        retprobe: true,
    }
}

#[test]
fn maps_devices_parse() {
    assert_eq!(parse_maps_dev("fd:01"), Some((0xfd, 1)));
    assert_eq!(parse_maps_dev("103:0a"), Some((0x103, 0xa)));
    for bad in ["", "fd", "fd:", ":01", "zz:01", "fd:01:02", "123456789:0"] {
        assert_eq!(parse_maps_dev(bad), None, "{bad:?}");
    }
}

#[test]
fn requests_round_trip_and_junk_is_malformed() {
    let r = req(42, "/proc/42/map_files/7f0000000000-7f0000001000");
    let wire = r.encode().expect("fits");
    assert_eq!(Request::decode(&wire), Ok(r.clone()));
    assert_eq!(
        Request::decode(&wire[..REQUEST_LEN - 1]),
        Err(Refusal::Malformed)
    );
    let mut long = wire.to_vec();
    long.push(0);
    assert_eq!(Request::decode(&long), Err(Refusal::Malformed));
    let mut bad_version = wire;
    bad_version[0] ^= 0xff;
    assert_eq!(Request::decode(&bad_version), Err(Refusal::Malformed));
    let mut bad_flags = wire;
    bad_flags[8] = 0x80;
    assert_eq!(Request::decode(&bad_flags), Err(Refusal::Malformed));
    let mut bad_len = wire;
    bad_len[20..24].copy_from_slice(&(MAX_PATH as u32 + 1).to_ne_bytes());
    assert_eq!(Request::decode(&bad_len), Err(Refusal::Malformed));
    let mut not_utf8 = wire;
    not_utf8[40] = 0xff;
    assert_eq!(Request::decode(&not_utf8), Err(Refusal::Malformed));
    assert_eq!(req(1, &"x".repeat(MAX_PATH + 1)).encode(), None);
}

#[test]
fn only_the_pids_own_map_files_entries_pass() {
    assert_eq!(check_path(42, "/proc/42/map_files/1000-2000"), Ok(()));
    assert_eq!(
        check_path(42, "/proc/42/map_files/7f0000000000-ffffffffffffffff"),
        Ok(())
    );
    for bad in [
        "/etc/shadow",
        "/proc/43/map_files/1000-2000", // another process's entry
        "/proc/42/map_files/../../1/exe",
        "/proc/42/map_files/1000-2000/..",
        "/proc/42/map_files/1000-2000\0",
        "/proc/42/map_files/1000-2000 ",
        "/proc/42/map_files/1000",
        "/proc/42/map_files/2000-1000", // end before start
        "/proc/42/map_files/1000-1000",
        "/proc/42/map_files/01000-2000", // not as the kernel writes it
        "/proc/42/map_files/1000-2000A",
        "/proc/42/map_files/-1000-2000",
        "/proc/042/map_files/1000-2000",
        "/proc/self/map_files/1000-2000",
        "/proc/42/root/usr/lib/libssl.so.3",
        "/proc/42/fd/3",
        "//proc/42/map_files/1000-2000",
        "/proc/42/map_files/10000000000000000-20000000000000000",
    ] {
        assert_eq!(check_path(42, bad), Err(Refusal::NotMapFiles), "{bad:?}");
    }
    assert_eq!(
        check_path(0, "/proc/0/map_files/1000-2000"),
        Err(Refusal::NotMapFiles)
    );
}

#[test]
fn only_the_file_asked_for_within_its_size_passes() {
    let r = req(42, "/proc/42/map_files/1000-2000");
    let good = FileFacts {
        regular: true,
        dev: (0xfd, 1),
        inode: 1234,
        size: 0x10000,
    };
    assert_eq!(check_file(&r, &good), Ok(()));
    let cases = [
        (
            FileFacts {
                regular: false,
                ..good
            },
            Refusal::NotRegularFile,
        ),
        (
            FileFacts {
                inode: 1235,
                ..good
            },
            Refusal::NotThatFile,
        ),
        (
            FileFacts {
                dev: (0xfd, 2),
                ..good
            },
            Refusal::NotThatFile,
        ),
        (
            FileFacts {
                size: 0x2000,
                ..good
            },
            Refusal::OffsetBeyondFile,
        ),
        (FileFacts { size: 0, ..good }, Refusal::OffsetBeyondFile),
    ];
    for (facts, want) in cases {
        assert_eq!(check_file(&r, &facts), Err(want), "{facts:?}");
    }
}

#[test]
fn refusal_codes_round_trip() {
    for r in Refusal::ALL {
        assert_eq!(Refusal::from_code(r as u32), Some(r));
    }
    assert_eq!(Refusal::from_code(0), None);
    assert_eq!(Refusal::from_code(99), None);
}

/// A file mapped by process `pid`: (map_files path, dev, inode, size).
pub(crate) fn a_mapped_file(pid: u32) -> (String, (u32, u32), u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[5].starts_with('/') || f[4] == "0" {
            continue;
        }
        let Ok(meta) = std::fs::metadata(f[5]) else {
            continue;
        };
        let (start, end) = f[0].split_once('-').expect("range");
        let s = u64::from_str_radix(start, 16).expect("start");
        let e = u64::from_str_radix(end, 16).expect("end");
        return (
            format!("/proc/{pid}/map_files/{s:x}-{e:x}"),
            parse_maps_dev(f[3]).expect("dev"),
            f[4].parse().expect("inode"),
            meta.len(),
        );
    }
    panic!("process {pid} maps no file");
}

/// The helper itself, through its socket: a request outside
/// /proc/PID/map_files, one for a pid that does not map the file, one
/// for another file than asked, one past the end, and raw junk are
/// refused; a good one comes back as the checked file's fd (the perf
/// event made on it is `attach::uprobe`'s, tested there).
#[test]
fn the_helper_refuses_what_is_not_a_file_that_pid_maps() {
    if !crate::testenv::require_root("forks the uprobe helper, which needs CAP_SYS_ADMIN") {
        return;
    }
    let helper = Helper::start(open_file_checked).expect("helper starts as root");
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", helper.pid())).expect("helper status");
    // CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21).
    assert!(
        status.contains("CapEff:\t0000000000280004") && status.contains("NoNewPrivs:\t1"),
        "helper keeps more than it needs:\n{status}"
    );
    assert!(
        status.contains("Name:\twstrace-uprobe"),
        "helper is not named:\n{status}"
    );
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", helper.pid()))
        .expect("helper fds")
        .collect();
    assert_eq!(fds.len(), 1, "helper holds other fds than its socket");

    let me = std::process::id();
    let (path, dev, inode, size) = a_mapped_file(me);
    let good = Request {
        pid: me,
        path: path.clone(),
        dev,
        inode,
        offset: 0,
        retprobe: false,
    };
    let refused = |r: &Request| match helper.open(r) {
        Err(OpenError::Refused(why)) => why,
        Ok(_) => panic!("{r:?} was opened"),
        Err(e) => panic!("{r:?}: {e}"),
    };
    assert_eq!(
        refused(&Request {
            path: "/etc/passwd".into(),
            ..good.clone()
        }),
        Refusal::NotMapFiles
    );
    // Another process (a child that maps other files) asked about a
    // range only this one maps.
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let other_pid = other.id();
    assert_eq!(
        refused(&Request {
            pid: other_pid,
            ..good.clone()
        }),
        Refusal::NotMapFiles
    );
    let range = path.rsplit('/').next().expect("range");
    assert_eq!(
        refused(&Request {
            pid: other_pid,
            path: format!("/proc/{other_pid}/map_files/{range}"),
            ..good.clone()
        }),
        Refusal::NotMapped
    );
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(
        refused(&Request {
            inode: inode + 1,
            ..good.clone()
        }),
        Refusal::NotThatFile
    );
    assert_eq!(
        refused(&Request {
            offset: size,
            ..good.clone()
        }),
        Refusal::OffsetBeyondFile
    );
    match helper.exchange(b"junk") {
        Err(OpenError::Refused(Refusal::Malformed)) => {}
        other => panic!("junk: {other:?}"),
    }
    let fd = helper.open(&good).expect("a good request gets the file");
    let st = rustix::fs::fstat(&fd).expect("fstat");
    assert_eq!(st.st_ino, inode, "the helper passed another file");
    assert!(fd.as_raw_fd() >= 0);
    let pid = helper.pid();
    drop(helper);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the helper outlived its socket"
    );
}
