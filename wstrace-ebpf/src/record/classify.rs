//! What a write's (or a read's) first bytes are: a 101, a request, a
//! WebSocket control frame, or nothing of interest.
use wstrace_common::{DATA_CAP, REQUEST_PREFIX, UPGRADE_PREFIX_LEN, is_upgrade_response};

use crate::ptr::UPtr;

/// What a write's first bytes say about it.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// An HTTP/1.x 101 status line: the socket is being upgraded.
    Upgrade,
    /// A WebSocket control frame (close, ping or pong) starts at the first
    /// byte, or right after a first text or binary frame (only meaningful
    /// on upgraded sockets). `missing`: its bytes beyond the write (0: it
    /// ends inside), which the next write of the socket carries.
    ControlFrame {
        missing: u32,
    },
    /// Starts with `GET `: a request, if the socket's remote port is traced.
    Request,
    Other,
}

/// WebSocket frames start with FIN|opcode: 0x88 close, 0x89 ping, 0x8A pong
/// (control frames are never fragmented, so FIN is always set).
const WS_CLOSE: u8 = 0x88;
const WS_PONG: u8 = 0x8A;

/// The longest control frame: 2 header bytes, a client's 4-byte mask key
/// and at most 125 payload bytes.
const MAX_CONTROL: u64 = 131;

/// Is `b` the first byte of a close, ping or pong frame? One compare: the
/// three are consecutive. Data frames (0x81 text, 0x82 binary, fragments)
/// are not: a busy socket pays nothing per message.
#[inline(always)]
pub(super) fn is_control_frame_start(b: u8) -> bool {
    b.wrapping_sub(WS_CLOSE) <= WS_PONG - WS_CLOSE
}

/// Bytes of the control frame whose second byte is `b1` that lie beyond the
/// `have` (>= 1) bytes there are of it; with only its first byte, the most
/// a control frame can have.
#[inline(always)]
fn control_missing(b1: u8, have: u64) -> u32 {
    let total = if have < 2 {
        MAX_CONTROL
    } else {
        2 + if b1 & 0x80 != 0 { 4 } else { 0 } + (b1 & 0x7F) as u64
    };
    if total > have {
        (total - have) as u32
    } else {
        0
    }
}

/// Does a control frame start in the `len` bytes at user address `buf`,
/// whose first bytes are `head` (little-endian; bytes 0-1 always, 2-3 when
/// `ext` is set)? At the first byte, or right after a first final text or
/// binary frame (a close after the last message, in one write). Returns the
/// bytes of it that lie beyond `len`.
///
/// The look past a data frame costs one 2-byte copy, and only for writes
/// that hold more than one frame whose first is short enough for the
/// control frame to fit in the copy (DATA_CAP); a socket that writes one
/// message per write never pays it.
#[inline(always)]
pub(super) fn control_frame_in(buf: UPtr, len: u64, head: u64, ext: bool) -> Option<u32> {
    let b0 = head as u8;
    let b1 = (head >> 8) as u8;
    if is_control_frame_start(b0) {
        return Some(control_missing(b1, len));
    }
    // FIN text or binary; RSV1 may be set (permessage-deflate).
    let op = b0 & 0xBF;
    if (op != 0x81 && op != 0x82) || len < 2 {
        return None;
    }
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let at = match b1 & 0x7F {
        127 => return None,
        126 if !ext => return None,
        126 => 4 + mask + u16::from_be_bytes([(head >> 16) as u8, (head >> 24) as u8]) as u64,
        n => 2 + mask + n as u64,
    };
    if at >= len || at + MAX_CONTROL > DATA_CAP as u64 {
        return None;
    }
    let next = if at + 2 <= len {
        buf.add(at).read::<u16>().ok()?
    } else {
        buf.add(at).read::<u8>().ok()? as u16
    };
    if !is_control_frame_start(next as u8) {
        return None;
    }
    Some(control_missing((next >> 8) as u8, len - at))
}

/// The first 8 (or, for shorter buffers, 2 or 1) bytes at `buf`, as one
/// little-endian integer, and whether bytes 2-3 are in it.
#[inline(always)]
pub(super) fn first_bytes(buf: UPtr, len: u64) -> Option<(u64, bool)> {
    if len >= 8 {
        let w = buf.read::<u64>().ok()?;
        Some((w, true))
    } else if len >= 2 {
        let w = buf.read::<u16>().ok()?;
        Some((w as u64, false))
    } else {
        let w = buf.read::<u8>().ok()?;
        Some((w as u64, false))
    }
}

/// The first 8 bytes of a 101 status line, as one little-endian integer.
const HTTP_1_1: u64 = u64::from_le_bytes(*b"HTTP/1.1");
const HTTP_1_0: u64 = u64::from_le_bytes(*b"HTTP/1.0");

/// Classifies a write from its first bytes. Runs on every write on the
/// machine (before the fd walk and the port check, which cost more), so the
/// common case is one 8-byte copy compared as integers: the full status line
/// is read only when those 8 bytes are `HTTP/1.x`.
#[inline(always)]
pub fn classify_write(buf: UPtr, len: u64) -> Write {
    if buf.is_null() || len == 0 {
        return Write::Other;
    }
    let Some((word, ext)) = first_bytes(buf, len) else {
        return Write::Other;
    };
    if let Some(missing) = control_frame_in(buf, len, word, ext) {
        return Write::ControlFrame { missing };
    }
    if len < 8 {
        return Write::Other;
    }
    if word as u32 == u32::from_le_bytes(REQUEST_PREFIX) {
        return Write::Request;
    }
    if len < UPGRADE_PREFIX_LEN as u64 || (word != HTTP_1_1 && word != HTTP_1_0) {
        return Write::Other;
    }
    let mut head = [0u8; UPGRADE_PREFIX_LEN];
    if buf.read_buf(&mut head).is_err() {
        return Write::Other;
    }
    if is_upgrade_response(&head) {
        Write::Upgrade
    } else {
        Write::Other
    }
}
