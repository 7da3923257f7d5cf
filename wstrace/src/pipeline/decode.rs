//! Decoding ring-buffer records into typed events.
//!
//! The byte layout is `wstrace_common`'s; this module only checks lengths and
//! turns kernel representations (address bytes, comm arrays, stack lengths)
//! into Rust values.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::model::{
    CopyFate, Data, Direction, Event, InterpCapture, JiffiesSample, SignalSent, Stacks,
    UserStackCopy,
};
use anyhow::{Result, bail};
use wstrace_common::{
    AF_INET6, CloseEvent, DATA_CAP, DATA_EVENT_FIXED, DIR_SENT, DataEventOf, EventHeader,
    EventKind, FLAG_CONTINUES, FLAG_EXIT_CODE, FLAG_TASK_EXITING, FLAG_TLS_OPENSSL,
    SIGNAL_OOM_VICTIM, SMALL_DATA_CAP, STACK_DEPTH, SignalEvent, SockTuple, UserStackHeader,
    stack_copy,
};

pub fn comm_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

pub fn tuple_addrs(t: &SockTuple) -> (SocketAddr, SocketAddr) {
    let ip = |b: &[u8; 16]| -> IpAddr {
        if t.family == AF_INET6 {
            let v6 = Ipv6Addr::from(*b);
            // Dual-stack sockets carry IPv4 peers as ::ffff:a.b.c.d.
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
    };
    (
        SocketAddr::new(ip(&t.laddr), t.lport),
        SocketAddr::new(ip(&t.raddr), t.rport),
    )
}

fn stack(len: i64, addrs: &[u64; STACK_DEPTH]) -> Result<Vec<u64>, i64> {
    if len < 0 {
        return Err(-len);
    }
    let n = (len as usize / 8).min(STACK_DEPTH);
    Ok(addrs[..n].iter().copied().take_while(|&a| a != 0).collect())
}

/// The TLS library whose plaintext an event carries, by its flag.
fn tls_library(flags: u32) -> Option<&'static str> {
    if flags & wstrace_common::FLAG_TLS_GO != 0 {
        Some("go")
    } else if flags & FLAG_TLS_OPENSSL != 0 {
        Some("openssl")
    } else {
        None
    }
}

/// A record of the `STACKS` ring: a [`StackRecord`] cut after its
/// header's `len` bytes. Returns its id and the copy; fails on a record
/// shorter than it says.
pub fn decode_stack(bytes: &[u8]) -> Result<(u64, UserStackCopy)> {
    let head = size_of::<u64>() + size_of::<UserStackHeader>();
    if bytes.len() < head {
        bail!("short stack record: {} bytes", bytes.len());
    }
    let id: u64 = read_pod(bytes);
    let h: UserStackHeader = read_pod(&bytes[size_of::<u64>()..]);
    let len = h.len as usize;
    let Some(stack) = bytes.get(head..head.saturating_add(len)) else {
        bail!(
            "stack record of {len} bytes with {} left",
            bytes.len() - head
        );
    };
    Ok((
        id,
        UserStackCopy {
            ip: h.ip,
            sp: h.sp,
            fp: h.fp,
            lr: h.lr,
            start: h.start,
            status: h.status,
            bytes: stack.to_vec(),
        },
    ))
}

/// What the kernel says became of a close's user stack copy.
fn copy_fate(c: &CloseEvent) -> CopyFate {
    match c.stack_copy {
        stack_copy::COPIED if c.stack_id != 0 => CopyFate::Copied { id: c.stack_id },
        stack_copy::SAME_AS if c.stack_id != 0 => CopyFate::SameAs {
            id: c.stack_id,
            rate: c.elided_rate,
        },
        stack_copy::SAME_AS | stack_copy::ELIDED => CopyFate::Elided {
            rate: c.elided_rate,
        },
        stack_copy::DROPPED => CopyFate::Dropped,
        _ => CopyFate::None,
    }
}

/// The interpreter frames of a close, bounded by the kernel's budget
/// whatever `count` says.
fn interp_capture(s: &wstrace_common::InterpStack) -> InterpCapture {
    let n = (s.count as usize).min(wstrace_common::INTERP_FRAMES);
    InterpCapture {
        status: s.status,
        frames: s.frames[..n].iter().map(|f| (f.code, f.instr)).collect(),
        entry_mask: s.entry_mask,
    }
}

fn read_pod<T: Copy>(bytes: &[u8]) -> T {
    // SAFETY: callers checked `bytes.len() >= size_of::<T>()`; T is a
    // #[repr(C)] plain-old-data type from wstrace_common (every bit pattern
    // valid); read_unaligned because ring buffer records are only 8-aligned.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

pub fn decode(bytes: &[u8]) -> Result<Event> {
    if bytes.len() < size_of::<EventHeader>() {
        bail!("short event record: {} bytes", bytes.len());
    }
    let h: EventHeader = read_pod(bytes);
    let Some(kind) = EventKind::from_u8(h.kind) else {
        bail!("unknown event kind {}", h.kind);
    };
    // A crash is taken like a close, in the thread that crashed.
    let stacks = if matches!(kind, EventKind::Close | EventKind::Crash) {
        if bytes.len() < size_of::<CloseEvent>() {
            bail!("short close record: {} bytes", bytes.len());
        }
        let c: CloseEvent = read_pod(bytes);
        Some(Box::new(Stacks {
            kernel: stack(c.kernel_stack_len, &c.kernel_stack),
            user: stack(c.user_stack_len, &c.user_stack),
            // Joined from the STACKS ring by the reader.
            user_copy: None,
            dwarf: None,
            fate: copy_fate(&c),
            shared: None,
            interp: interp_capture(&c.interp),
        }))
    } else {
        None
    };
    let data = if kind == EventKind::Data {
        // Any record class (`SmallDataEvent`, `DataEvent`): the fixed part,
        // then `len` bytes, bounded by the class's capacity and the record.
        if bytes.len() < DATA_EVENT_FIXED + SMALL_DATA_CAP {
            bail!("short data record: {} bytes", bytes.len());
        }
        // The fixed part alone: a record class with no data bytes.
        let d: DataEventOf<0> = read_pod(bytes);
        let data = &bytes[DATA_EVENT_FIXED..];
        let n = (d.len as usize).min(DATA_CAP).min(data.len());
        Some(Data {
            direction: if d.direction == DIR_SENT {
                Direction::Sent
            } else {
                Direction::Received
            },
            bytes: data[..n].to_vec(),
            total: h.arg,
            continues: h.flags & FLAG_CONTINUES != 0,
            upgrade_read: h.flags & wstrace_common::FLAG_UPGRADE_READ != 0,
        })
    } else {
        None
    };
    let signal = if kind == EventKind::Signal {
        if bytes.len() < size_of::<SignalEvent>() {
            bail!("short signal record: {} bytes", bytes.len());
        }
        let s: SignalEvent = read_pod(bytes);
        Some(SignalSent {
            target_pid: s.target_pid,
            signal: s.signal,
            code: s.code,
            oom: s.oom == SIGNAL_OOM_VICTIM,
        })
    } else {
        None
    };
    let exiting = h.flags & FLAG_TASK_EXITING != 0;
    let exit_code =
        (kind == EventKind::Close && exiting && h.flags & FLAG_EXIT_CODE != 0).then_some(h.arg);
    let (local, remote) = tuple_addrs(&h.tuple);
    Ok(Event {
        kind,
        probe: h.probe,
        old_state: h.old_state,
        new_state: h.new_state,
        pid: h.pid,
        tid: h.tid,
        comm: comm_string(&h.comm),
        task_exiting: exiting,
        arg: h.arg,
        ts_ns: h.ts_ns,
        sk: h.sk,
        bytes_received: h.bytes_received,
        bytes_acked: h.bytes_acked,
        process_start_ns: h.process_start_ns,
        local,
        remote,
        jiffies: JiffiesSample {
            now: h.jiffies,
            last_send: h.last_send_jiffies,
            last_recv: h.last_recv_jiffies,
        },
        stacks,
        data,
        exit_code,
        signal,
        tls: tls_library(h.flags),
        client_side: kind == EventKind::Upgrade && h.flags & wstrace_common::FLAG_CLIENT_SIDE != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wstrace_common::{AF_INET, DIR_RECEIVED, DataEvent, SmallDataEvent};

    fn as_bytes<T>(v: &T) -> &[u8] {
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
    }

    fn header(kind: EventKind) -> EventHeader {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"swoole");
        EventHeader {
            kind: kind as u8,
            probe: 3,
            old_state: 1,
            new_state: 4,
            pid: 10,
            tid: 11,
            flags: 0,
            arg: 129,
            jiffies: 1000,
            last_send_jiffies: 990,
            last_recv_jiffies: 900,
            ts_ns: 5,
            sk: 0xffff_8880_0000_1000,
            bytes_received: 1,
            bytes_acked: 2,
            process_start_ns: 77,
            tuple: SockTuple {
                family: AF_INET,
                lport: 1215,
                rport: 40000,
                _pad: 0,
                laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                raddr: [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            },
            comm,
        }
    }

    #[test]
    fn decodes_an_ipv4_upgrade() {
        let h = header(EventKind::Upgrade);
        let e = decode(as_bytes(&h)).expect("decodes");
        assert_eq!(e.kind, EventKind::Upgrade);
        assert_eq!(e.local.to_string(), "127.0.0.1:1215");
        assert_eq!(e.remote.to_string(), "10.1.2.3:40000");
        assert_eq!(e.comm, "swoole");
        assert_eq!(e.arg, 129);
        assert!(e.stacks.is_none());
        assert!(!e.client_side, "a 101 written: the server side");
    }

    #[test]
    fn a_101_read_is_the_client_side() {
        let mut h = header(EventKind::Upgrade);
        h.flags = wstrace_common::FLAG_CLIENT_SIDE;
        assert!(decode(as_bytes(&h)).expect("decodes").client_side);
        // The flag means nothing on other events.
        let mut h = header(EventKind::State);
        h.flags = wstrace_common::FLAG_CLIENT_SIDE;
        assert!(!decode(as_bytes(&h)).expect("decodes").client_side);
    }

    #[test]
    fn ipv6_and_mapped_ipv4_addresses() {
        let mut t = header(EventKind::State).tuple;
        t.family = AF_INET6;
        t.laddr = Ipv6Addr::LOCALHOST.octets();
        t.raddr = Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped().octets();
        let (l, r) = tuple_addrs(&t);
        assert_eq!(l.to_string(), "[::1]:1215");
        assert_eq!(r.to_string(), "192.0.2.7:40000");
    }

    #[test]
    fn close_event_stacks_and_errors() {
        let mut c = CloseEvent {
            header: header(EventKind::Close),
            kernel_stack_len: 3 * 8,
            user_stack_len: -14, // EFAULT: no user address space (process exit)
            kernel_stack: [0; STACK_DEPTH],
            user_stack: [0; STACK_DEPTH],
            stack_copy: stack_copy::NONE,
            elided_rate: 0,
            stack_id: 0,
            interp: wstrace_common::InterpStack::EMPTY,
        };
        c.kernel_stack[..3].copy_from_slice(&[
            0xffffffff81000010,
            0xffffffff81000020,
            0xffffffff81000030,
        ]);
        c.header.flags = FLAG_TASK_EXITING;
        let e = decode(as_bytes(&c)).expect("decodes");
        // No FLAG_EXIT_CODE: `arg` is not an exit code.
        assert_eq!(e.exit_code, None);
        c.header.flags = FLAG_TASK_EXITING | FLAG_EXIT_CODE;
        c.header.arg = 11 | 0x80;
        assert_eq!(decode(as_bytes(&c)).expect("decodes").exit_code, Some(0x8b));
        let e = decode(as_bytes(&c)).expect("decodes");
        let s = e.stacks.expect("close carries stacks");
        assert_eq!(s.kernel.expect("kernel stack").len(), 3);
        assert_eq!(s.user, Err(14));
        assert_eq!(s.user_copy, None);
        assert!(e.task_exiting);
    }

    fn close_with(stack_copy: u32, stack_id: u64, elided_rate: u32) -> CloseEvent {
        CloseEvent {
            header: header(EventKind::Close),
            kernel_stack_len: 0,
            user_stack_len: 8,
            kernel_stack: [0; STACK_DEPTH],
            user_stack: [0x401000; STACK_DEPTH],
            stack_copy,
            elided_rate,
            stack_id,
            interp: wstrace_common::InterpStack::EMPTY,
        }
    }

    #[test]
    fn close_event_says_what_became_of_its_stack_copy() {
        let fate = |c: CloseEvent| {
            decode(as_bytes(&c))
                .expect("decodes")
                .stacks
                .expect("stacks")
        };
        let s = fate(close_with(stack_copy::COPIED, 7, 0));
        assert_eq!(s.fate, CopyFate::Copied { id: 7 });
        assert_eq!(s.user_copy, None, "the copy travels on the STACKS ring");
        assert_eq!(
            fate(close_with(stack_copy::SAME_AS, 7, 19_000)).fate,
            CopyFate::SameAs {
                id: 7,
                rate: 19_000
            }
        );
        // A reference to no copy is no reference.
        assert_eq!(
            fate(close_with(stack_copy::SAME_AS, 0, 5)).fate,
            CopyFate::Elided { rate: 5 }
        );
        assert_eq!(
            fate(close_with(stack_copy::ELIDED, 0, 5)).fate,
            CopyFate::Elided { rate: 5 }
        );
        assert_eq!(
            fate(close_with(stack_copy::DROPPED, 0, 0)).fate,
            CopyFate::Dropped
        );
        assert_eq!(
            fate(close_with(stack_copy::NONE, 0, 0)).fate,
            CopyFate::None
        );
        // Unknown statuses (a newer kernel object) are no copy, not a panic.
        assert_eq!(fate(close_with(99, 7, 0)).fate, CopyFate::None);
        assert_eq!(
            fate(close_with(stack_copy::COPIED, 0, 0)).fate,
            CopyFate::None
        );
    }

    #[test]
    fn stack_record_carries_its_id_registers_and_bytes() {
        let regs = UserStackHeader {
            ip: 0x401000,
            sp: 0x7ffd_0000_1000,
            fp: 7,
            lr: 9,
            start: 0x7ffd_0000_0ff0,
            len: 5,
            status: 0,
        };
        let mut rec = 0x1_0000_0000_0042u64.to_ne_bytes().to_vec();
        rec.extend_from_slice(as_bytes(&regs));
        rec.extend_from_slice(&[1, 2, 3, 4, 5]);
        let (id, copy) = decode_stack(&rec).expect("decodes");
        assert_eq!(id, 0x1_0000_0000_0042);
        assert_eq!(
            (copy.ip, copy.sp, copy.fp, copy.lr, copy.start),
            (0x401000, 0x7ffd_0000_1000, 7, 9, 0x7ffd_0000_0ff0)
        );
        assert_eq!(copy.bytes, [1, 2, 3, 4, 5]);
        // A record shorter than its header says is an error, not a panic.
        assert!(decode_stack(&rec[..rec.len() - 1]).is_err());
        assert!(decode_stack(&rec[..8 + 7]).is_err());
        assert!(decode_stack(&[]).is_err());
        // A hostile length cannot overflow the bound check.
        let mut huge = regs;
        huge.len = u32::MAX;
        let mut rec = 1u64.to_ne_bytes().to_vec();
        rec.extend_from_slice(as_bytes(&huge));
        assert!(decode_stack(&rec).is_err());
    }

    #[test]
    fn decodes_a_signal_sent_to_an_upgrader() {
        let s = SignalEvent {
            header: header(EventKind::Signal),
            target_pid: 4242,
            signal: 9,
            code: 0,
            oom: SIGNAL_OOM_VICTIM,
        };
        let e = decode(as_bytes(&s)).expect("decodes");
        assert_eq!(
            e.signal,
            Some(SignalSent {
                target_pid: 4242,
                signal: 9,
                code: 0,
                oom: true
            })
        );
        assert_eq!(e.comm, "swoole", "the header names the sender");
        assert!(decode(&as_bytes(&s)[..size_of::<EventHeader>() + 4]).is_err());
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(decode(&[0u8; 10]).is_err());
        let mut h = header(EventKind::Upgrade);
        h.kind = 99;
        assert!(decode(as_bytes(&h)).is_err());
        // A Close header without its stacks is truncated, not a crash.
        let h = header(EventKind::Close);
        assert!(decode(as_bytes(&h)).is_err());
    }

    #[test]
    fn data_event_carries_only_valid_bytes() {
        let mut d = DataEvent {
            header: header(EventKind::Data),
            len: 5,
            direction: DIR_SENT,
            data: [0xAA; DATA_CAP],
        };
        d.data[..5].copy_from_slice(b"GET /");
        let e = decode(as_bytes(&d)).expect("decodes");
        let data = e.data.expect("data");
        assert_eq!(data.bytes, b"GET /");
        assert_eq!(data.direction, Direction::Sent);
        d.len = 100_000; // a corrupt length is clamped, not trusted
        assert_eq!(
            decode(as_bytes(&d))
                .expect("decodes")
                .data
                .expect("data")
                .bytes
                .len(),
            DATA_CAP
        );
    }

    #[test]
    fn a_small_data_record_is_read_to_its_end_and_no_further() {
        let mut d = SmallDataEvent {
            header: header(EventKind::Data),
            len: 5,
            direction: DIR_RECEIVED,
            data: [0xAA; SMALL_DATA_CAP],
        };
        d.data[..5].copy_from_slice(b"GET /");
        let e = decode(as_bytes(&d)).expect("decodes");
        assert_eq!(e.data.expect("data").bytes, b"GET /");
        // A length past the small class is cut at the record's end.
        d.len = 2000;
        let data = decode(as_bytes(&d)).expect("decodes").data.expect("data");
        assert_eq!(data.bytes.len(), SMALL_DATA_CAP);
        assert_eq!(data.direction, Direction::Received);
        // A record shorter than the smallest class is refused.
        assert!(decode(&as_bytes(&d)[..DATA_EVENT_FIXED + 10]).is_err());
    }

    #[test]
    fn idle_jiffies_wrap_like_the_kernel() {
        let s = JiffiesSample {
            now: 5,
            last_send: u32::MAX - 4,
            last_recv: 1,
        };
        assert_eq!(s.idle(), Some(4));
        assert_eq!(
            JiffiesSample {
                now: 9,
                last_send: 0,
                last_recv: 0
            }
            .idle(),
            None
        );
        let e = decode(as_bytes(&header(EventKind::State))).expect("decodes");
        assert_eq!(e.jiffies.idle(), Some(10));
    }

    #[test]
    fn comm_stops_at_nul_and_survives_bad_utf8() {
        let mut c = [0u8; 16];
        c[..3].copy_from_slice(&[b'a', 0xff, b'b']);
        assert_eq!(comm_string(&c), "a\u{fffd}b");
        assert_eq!(comm_string(&[b'x'; 16]), "x".repeat(16));
    }
}
