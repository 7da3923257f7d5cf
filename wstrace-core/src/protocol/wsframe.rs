//! WebSocket frames (RFC 6455 §5.2) in the bytes the kernel copied after the
//! upgrade: close frames with their status code and reason, pings and pongs,
//! in either direction (frames from the client are masked).
//!
//! The kernel copies a write or read only when it starts with a control
//! frame (or continues one it cut), so a captured chunk is a run of frames
//! from its first byte: [`FrameStream`] walks every frame in it, keeps a
//! control frame cut at the chunk's end for the next chunk (bounded), skips
//! the bytes of a frame that breaks a control-frame rule (its length is
//! still plain, so the frames around it count), and drops a chunk whose
//! frames do not line up (a read that started inside a message, on a byte
//! that happens to look like a frame: a reserved opcode, the wrong mask bit).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
    Reserved(u8),
}

impl Opcode {
    fn from(n: u8) -> Self {
        match n {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            n => Self::Reserved(n),
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes before the payload (2 to 14).
    pub header_len: usize,
}

/// The frame header at the start of `buf`; None when `buf` is too short or
/// the header is invalid (a control frame that is fragmented or longer than
/// 125 bytes, a 64-bit length with the top bit set).
pub fn parse_frame_head(buf: &[u8]) -> Option<FrameHead> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from(b0 & 0x0F);
    let masked = b1 & 0x80 != 0;
    let (payload_len, mut header_len) = match b1 & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => {
            let n = u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?);
            if n >> 63 != 0 {
                return None;
            }
            (n, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || payload_len > 125) {
        return None;
    }
    let mask = if masked {
        let key: [u8; 4] = buf.get(header_len..header_len + 4)?.try_into().ok()?;
        header_len += 4;
        Some(key)
    } else {
        None
    };
    Some(FrameHead {
        fin,
        opcode,
        mask,
        payload_len,
        header_len,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// None for a close frame without a body (RFC 6455: status 1005).
    pub code: Option<u16>,
    pub reason: String,
}

/// The close frame at the start of `buf` (unmasked if needed). The reason
/// may be cut short where the capture ended; invalid UTF-8 is shown lossily.
pub fn parse_close(buf: &[u8]) -> Option<CloseFrame> {
    let head = parse_frame_head(buf)?;
    if head.opcode != Opcode::Close {
        return None;
    }
    let end = head
        .header_len
        .saturating_add(head.payload_len as usize)
        .min(buf.len());
    let mut payload = buf.get(head.header_len..end)?.to_vec();
    if let Some(key) = head.mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    let code = payload.get(0..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
    let reason = payload
        .get(2..)
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .unwrap_or_default();
    Some(CloseFrame { code, reason })
}

/// The frames that start in `buf`, in order (several small frames can share
/// one write); stops at the first header that does not fit or parse.
pub fn frames_in(buf: &[u8]) -> Vec<FrameHead> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(head) = buf.get(at..).and_then(parse_frame_head) {
        out.push(head);
        let next = (head.header_len as u64).saturating_add(head.payload_len);
        match at.checked_add(usize::try_from(next).unwrap_or(usize::MAX)) {
            Some(n) if n < buf.len() => at = n,
            _ => break,
        }
    }
    out
}

/// The first close frame among the frames of `buf`.
pub fn first_close(buf: &[u8]) -> Option<CloseFrame> {
    let mut at = 0usize;
    for head in frames_in(buf) {
        if head.opcode == Opcode::Close {
            return parse_close(&buf[at..]);
        }
        at = at
            .saturating_add(head.header_len)
            .saturating_add(usize::try_from(head.payload_len).unwrap_or(usize::MAX));
    }
    None
}

/// The longest control frame: a 14-byte header at most, but control frames
/// have a 7-bit length (<= 125) and, from a client, a 4-byte mask key.
pub const MAX_CONTROL_FRAME: usize = 2 + 4 + 125;

/// A control frame found in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    Ping,
    Pong,
    /// The whole close frame, header included (for [`parse_close`]).
    Close(Vec<u8>),
}

/// The header at the start of `buf`, told apart: cut short, or not a
/// frame this direction may carry.
enum Head {
    Frame(FrameHead),
    Short,
    /// A control frame breaking RFC 6455's rules for control frames (over
    /// 125 bytes, fragmented, RSV bits) whose header still says how long it
    /// is: these bytes, the whole frame, are skipped.
    Malformed(usize),
    Invalid,
}

/// Reads the header at the start of `buf`, with the checks RFC 6455 makes
/// of every frame: `masked` frames from the client, unmasked from the
/// server (§5.1); no reserved opcode; no RSV bit except RSV1 on a data frame
/// (permessage-deflate, RFC 7692).
fn head_at(buf: &[u8], masked: bool) -> Head {
    let Some(&b0) = buf.first() else {
        return Head::Short;
    };
    let opcode = Opcode::from(b0 & 0x0F);
    let rsv = b0 & 0x70;
    let fin = b0 & 0x80 != 0;
    if matches!(opcode, Opcode::Reserved(_)) || (!opcode.is_control() && rsv & 0x30 != 0) {
        return Head::Invalid;
    }
    let Some(&b1) = buf.get(1) else {
        return Head::Short;
    };
    let len7 = b1 & 0x7F;
    if (b1 & 0x80 != 0) != masked || (len7 == 127 && buf.get(2).is_some_and(|&b| b & 0x80 != 0)) {
        return Head::Invalid;
    }
    if opcode.is_control() && (rsv != 0 || !fin || len7 > 125) {
        return match raw_frame_len(buf) {
            Some(n) => Head::Malformed(n),
            None => Head::Short,
        };
    }
    // Every remaining reason for `None` is a header cut short.
    match parse_frame_head(buf) {
        Some(h) => Head::Frame(h),
        None => Head::Short,
    }
}

/// Header plus payload of the frame at the start of `buf` by its length
/// fields alone (no RFC checks); None when the header is cut short or the
/// length does not fit in usize.
fn raw_frame_len(buf: &[u8]) -> Option<usize> {
    let b1 = *buf.get(1)?;
    let (payload, header) = match b1 & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let header = header + if b1 & 0x80 != 0 { 4 } else { 0 };
    usize::try_from(payload).ok()?.checked_add(header)
}

/// The frames of one direction of one connection, as captured chunks
/// arrive: what is left of a control frame cut at a chunk's end.
#[derive(Clone, Debug, Default)]
pub struct FrameStream {
    partial: Vec<u8>,
    /// Chunks dropped because their frames did not line up.
    pub invalid_chunks: u32,
    /// Frames skipped for breaking a control-frame rule (the frames around
    /// them still count).
    pub malformed_frames: u32,
    /// Cut control frames whose rest never came.
    pub lost_partials: u32,
}

impl FrameStream {
    /// Walks one captured chunk. `masked`: the direction's frames are
    /// masked (client to server). `complete`: the kernel copied every byte
    /// of the read or write (else a frame cut at the end is not continued).
    /// `continues`: the kernel copied the chunk because it continues a
    /// control frame it cut before (it need not start with a frame).
    pub fn feed(
        &mut self,
        chunk: &[u8],
        masked: bool,
        complete: bool,
        continues: bool,
    ) -> Vec<Control> {
        let joined;
        let buf: &[u8] = if continues {
            if self.partial.is_empty() {
                // The start of the frame was not seen: nothing to add to.
                return Vec::new();
            }
            let mut b = std::mem::take(&mut self.partial);
            b.extend_from_slice(chunk);
            joined = b;
            &joined
        } else {
            chunk
        };
        let mut out = Vec::new();
        if !continues && !self.partial.is_empty() {
            // The rest of the cut frame never came (the kernel missed it,
            // or the ring was full): a close frame's start still says
            // something (its code, if that was in it).
            out.extend(self.pending_close().map(Control::Close));
            self.partial.clear();
            self.lost_partials += 1;
        }
        let mut at = 0usize;
        while at < buf.len() {
            let rest = &buf[at..];
            let head = match head_at(rest, masked) {
                Head::Frame(h) => h,
                Head::Short => {
                    self.cut_control(rest, complete, &mut out);
                    break;
                }
                Head::Malformed(len) => {
                    // Only this frame's bytes: a bad close frame must not
                    // hide the valid ping after it (issue 25, item 6).
                    self.malformed_frames = self.malformed_frames.saturating_add(1);
                    match at.checked_add(len) {
                        Some(end) if end <= buf.len() => {
                            at = end;
                            continue;
                        }
                        // Runs past the copy: nothing after it is known.
                        _ => break,
                    }
                }
                Head::Invalid => {
                    self.invalid_chunks += 1;
                    self.partial.clear();
                    return Vec::new();
                }
            };
            // Control frames are at most 131 bytes: this cannot overflow.
            let len = usize::try_from(head.payload_len)
                .ok()
                .and_then(|p| p.checked_add(head.header_len));
            let end = match len.and_then(|l| at.checked_add(l)) {
                Some(end) if end <= buf.len() => end,
                _ => {
                    // Runs past the bytes copied: a data frame's payload is
                    // not followed; a control frame's rest may come next.
                    self.cut_control(rest, complete, &mut out);
                    break;
                }
            };
            match head.opcode {
                Opcode::Ping => out.push(Control::Ping),
                Opcode::Pong => out.push(Control::Pong),
                Opcode::Close => out.push(Control::Close(buf[at..end].to_vec())),
                _ => {}
            }
            at = end;
        }
        out
    }

    /// `rest` starts a frame that runs past the chunk. A control frame is
    /// kept for the chunk that continues it when the kernel copied the whole
    /// read or write (it then copies the next one too); a close frame the
    /// kernel's copy cut is reported as far as it goes (code, reason cut).
    fn cut_control(&mut self, rest: &[u8], complete: bool, out: &mut Vec<Control>) {
        if rest.len() >= MAX_CONTROL_FRAME || !is_control_start(rest[0]) {
            return;
        }
        if complete {
            self.partial = rest.to_vec();
        } else if rest[0] == CLOSE_START {
            out.push(Control::Close(rest.to_vec()));
        }
    }

    /// The start of a close frame still waiting for its rest: what a report
    /// made now shows of it.
    pub fn pending_close(&self) -> Option<Vec<u8>> {
        (self.partial.first() == Some(&CLOSE_START)).then(|| self.partial.clone())
    }
}

/// FIN + close: the first byte of every close frame.
const CLOSE_START: u8 = 0x88;

fn is_control_start(b: u8) -> bool {
    matches!(b, 0x88..=0x8A)
}

/// What a close status code means (RFC 6455 §7.4.1 and the IANA registry).
pub fn close_code_meaning(code: u16) -> &'static str {
    match code {
        1000 => "normal closure",
        1001 => "going away (server shutting down or page left)",
        1002 => "protocol error",
        1003 => "unsupported data",
        1005 => "no status code",
        1006 => "abnormal closure (never sent on the wire)",
        1007 => "invalid payload data",
        1008 => "policy violation",
        1009 => "message too big",
        1010 => "mandatory extension missing",
        1011 => "internal server error",
        1012 => "service restart",
        1013 => "try again later",
        1014 => "bad gateway",
        1015 => "TLS handshake failure (never sent on the wire)",
        3000..=3999 => "registered by a library or framework",
        4000..=4999 => "application-specific",
        _ => "unknown or reserved",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close_frame(code: Option<u16>, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut payload = Vec::new();
        if let Some(c) = code {
            payload.extend_from_slice(&c.to_be_bytes());
        }
        payload.extend_from_slice(reason.as_bytes());
        let mut f = vec![
            0x88,
            payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 },
        ];
        if let Some(k) = mask {
            f.extend_from_slice(&k);
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        f.extend_from_slice(&payload);
        f
    }

    #[test]
    fn server_close_unmasked() {
        let f = close_frame(Some(1011), "backend exploded", None);
        assert_eq!(
            parse_close(&f),
            Some(CloseFrame {
                code: Some(1011),
                reason: "backend exploded".into()
            })
        );
    }

    #[test]
    fn client_close_masked() {
        let f = close_frame(Some(1001), "bye", Some([1, 2, 3, 4]));
        let head = parse_frame_head(&f).expect("head");
        assert_eq!(head.mask, Some([1, 2, 3, 4]));
        assert_eq!(head.header_len, 6);
        assert_eq!(
            parse_close(&f),
            Some(CloseFrame {
                code: Some(1001),
                reason: "bye".into()
            })
        );
    }

    #[test]
    fn empty_and_truncated_close() {
        assert_eq!(
            parse_close(&[0x88, 0x00]),
            Some(CloseFrame {
                code: None,
                reason: String::new()
            })
        );
        let f = close_frame(Some(1000), "a long reason", None);
        let cut = parse_close(&f[..7]).expect("parses");
        assert_eq!(
            cut,
            CloseFrame {
                code: Some(1000),
                reason: "a l".into()
            }
        );
        assert_eq!(parse_close(&f[..1]), None);
        let bad = [0x88, 0x04, 0x03, 0xE8, 0xFF, 0xFE];
        assert_eq!(parse_close(&bad).expect("lossy").code, Some(1000));
    }

    #[test]
    fn length_encodings() {
        let h = parse_frame_head(&[0x82, 0x05]).expect("7-bit");
        assert_eq!(
            (h.opcode, h.payload_len, h.header_len),
            (Opcode::Binary, 5, 2)
        );
        let h = parse_frame_head(&[0x81, 126, 0x01, 0x00]).expect("16-bit");
        assert_eq!(
            (h.opcode, h.payload_len, h.header_len),
            (Opcode::Text, 256, 4)
        );
        let h = parse_frame_head(&[0x02, 127, 0, 0, 0, 0, 0, 1, 0, 0]).expect("64-bit");
        assert_eq!((h.fin, h.payload_len, h.header_len), (false, 65536, 10));
        let h = parse_frame_head(&[0x82, 0xFE, 0x01, 0x00, 9, 9, 9, 9]).expect("16-bit masked");
        assert_eq!(h.header_len, 8);
        assert_eq!(parse_frame_head(&[0x82, 126, 0x01]), None);
        assert_eq!(
            parse_frame_head(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
    }

    #[test]
    fn invalid_control_frames() {
        assert_eq!(parse_frame_head(&[0x08, 0x00]), None, "fragmented close");
        assert_eq!(parse_frame_head(&[0x89, 126, 0, 200]), None, "ping > 125");
        assert_eq!(
            parse_frame_head(&[0x89, 0x00]).map(|h| h.opcode),
            Some(Opcode::Ping)
        );
        assert_eq!(
            parse_frame_head(&[0x8A, 0x00]).map(|h| h.opcode),
            Some(Opcode::Pong)
        );
        assert_eq!(
            parse_frame_head(&[0x83, 0x00]).map(|h| h.opcode),
            Some(Opcode::Reserved(3))
        );
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut b = vec![0x81, 0x02, b'h', b'i', 0x89, 0x00];
        b.extend_from_slice(&close_frame(Some(1008), "policy", None));
        let ops: Vec<Opcode> = frames_in(&b).iter().map(|h| h.opcode).collect();
        assert_eq!(ops, [Opcode::Text, Opcode::Ping, Opcode::Close]);
        assert_eq!(first_close(&b).expect("close").code, Some(1008));
        assert_eq!(first_close(&b[..4]), None);
    }

    /// A frame as an end writes it: `mask` for a client's.
    fn frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![b0];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(n as u8 | m),
            n if n <= 0xFFFF => {
                f.push(126 | m);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127 | m);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mut p = payload.to_vec();
        if let Some(k) = mask {
            f.extend_from_slice(&k);
            for (i, b) in p.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        f.extend_from_slice(&p);
        f
    }

    fn close_payload(code: u16, reason: &str) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        p
    }

    fn codes(found: &[Control]) -> Vec<Option<u16>> {
        found
            .iter()
            .filter_map(|c| match c {
                Control::Close(b) => parse_close(b).map(|f| f.code),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_frame_of_a_write_is_walked() {
        // A text frame, a ping and a close in one server write.
        let mut w = frame(0x81, b"last words", None);
        w.extend(frame(0x89, b"", None));
        w.extend(frame(0x88, &close_payload(1000, "done"), None));
        let mut s = FrameStream::default();
        let found = s.feed(&w, false, true, false);
        assert_eq!(found[0], Control::Ping);
        assert_eq!(codes(&found), [Some(1000)]);
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn masked_client_frames_and_extended_lengths() {
        let k = Some([0x37, 0xfa, 0x21, 0x3d]);
        let mut r = frame(0x82, &[7u8; 300], k); // 16-bit length
        r.extend(frame(0x8A, b"p", k));
        r.extend(frame(0x88, &close_payload(1001, "tab closed"), k));
        let mut s = FrameStream::default();
        let found = s.feed(&r, true, true, false);
        assert_eq!(found[0], Control::Pong);
        let close = match &found[1] {
            Control::Close(b) => parse_close(b).expect("close"),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (close.code, close.reason.as_str()),
            (Some(1001), "tab closed")
        );
        // A 64-bit length frame cut by the copy: nothing after it is known.
        let mut big = frame(0x82, &vec![1u8; 70_000], None);
        big.truncate(2048);
        assert!(s.feed(&big, false, false, false).is_empty());
        assert_eq!(s.invalid_chunks, 0);
    }

    #[test]
    fn a_close_frame_split_across_writes_is_joined() {
        let whole = frame(0x88, &close_payload(4000, "kicked"), None);
        for cut in 1..whole.len() {
            let mut s = FrameStream::default();
            assert!(
                s.feed(&whole[..cut], false, true, false).is_empty(),
                "cut {cut}"
            );
            let found = s.feed(&whole[cut..], false, true, true);
            assert_eq!(codes(&found), [Some(4000)], "cut {cut}");
        }
        // A masked client close split after its mask key.
        let whole = frame(0x88, &close_payload(1000, ""), Some([1, 2, 3, 4]));
        let mut s = FrameStream::default();
        assert!(s.feed(&whole[..6], true, true, false).is_empty());
        assert_eq!(codes(&s.feed(&whole[6..], true, true, true)), [Some(1000)]);
    }

    #[test]
    fn a_cut_frame_whose_rest_never_came_is_dropped() {
        let whole = frame(0x88, &close_payload(4000, "kicked"), None);
        let mut s = FrameStream::default();
        s.feed(&whole[..5], false, true, false);
        assert_eq!(s.pending_close(), Some(whole[..5].to_vec()));
        // The next chunk starts a frame of its own: the cut one is reported
        // as far as it went (the code was in it), then the new one.
        let found = s.feed(&frame(0x89, b"", None), false, true, false);
        assert_eq!(codes(&found), [Some(4000)]);
        assert_eq!(found[1], Control::Ping);
        assert_eq!(s.lost_partials, 1);
        assert_eq!(s.pending_close(), None);
        // A continuation with nothing to continue is ignored.
        assert!(s.feed(&whole[3..], false, true, true).is_empty());
        // A copy the kernel cut short is not continued: what it has counts.
        let found = s.feed(&whole[..5], false, false, false);
        assert_eq!(codes(&found), [Some(4000)]);
        assert!(s.feed(&whole[5..], false, true, true).is_empty());
        // A cut ping is not a ping.
        assert!(s.feed(&[0x89], false, false, false).is_empty());
    }

    #[test]
    fn a_read_that_starts_inside_a_message_is_not_frames() {
        // UTF-8 text read from the middle of a message: 0x89 0xB8 looks
        // like a masked ping header; what follows does not line up.
        let text = "正义中文字符串的中间部分，以及更多的文字。".repeat(8);
        let bytes = text.as_bytes();
        let at = bytes
            .iter()
            .position(|&b| b == 0x89)
            .expect("0x89 in the text");
        let mut s = FrameStream::default();
        let found = s.feed(&bytes[at..], true, true, false);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(s.invalid_chunks, 1);
        // The wrong mask bit for the direction is not a frame either.
        assert!(
            s.feed(&frame(0x89, b"", None), true, true, false)
                .is_empty()
        );
        assert!(
            s.feed(&frame(0x89, b"", Some([1, 1, 1, 1])), false, true, false)
                .is_empty()
        );
        // RSV bits on a control frame, a reserved opcode.
        assert!(s.feed(&[0xC9, 0x00], false, true, false).is_empty());
        assert!(s.feed(&[0x83, 0x00], false, true, false).is_empty());
        // RSV1 on a data frame is permessage-deflate: valid.
        let mut w = frame(0xC1, b"zz", None);
        w.extend(frame(0x89, b"", None));
        assert_eq!(s.feed(&w, false, true, false), [Control::Ping]);
    }

    /// Issue 25, item 6: a close frame with a 126-byte payload (control
    /// frames carry at most 125) between two pings skips its own 130 bytes
    /// only: both pings count, in either direction.
    #[test]
    fn a_malformed_frame_skips_only_its_bytes() {
        for (masked, key) in [(false, None), (true, Some([9u8, 8, 7, 6]))] {
            let mut w = frame(0x89, b"before", key);
            let mut bad = vec![0x88, 0x7E | if masked { 0x80 } else { 0 }, 0x00, 126];
            if let Some(k) = key {
                bad.extend_from_slice(&k);
            }
            bad.extend(std::iter::repeat_n(b'x', 126));
            w.extend(&bad);
            w.extend(frame(0x89, b"after", key));
            let mut s = FrameStream::default();
            let found = s.feed(&w, masked, true, false);
            assert_eq!(found, [Control::Ping, Control::Ping], "masked {masked}");
            assert_eq!(s.malformed_frames, 1);
            assert_eq!(s.invalid_chunks, 0);
            // A fragmented ping (no FIN) and RSV bits on a pong: skipped,
            // the close after them still seen.
            let mut w = frame(0x09, b"frag", key);
            w.extend(frame(0xCA, b"", key));
            w.extend(frame(0x88, &close_payload(1000, "ok"), key));
            let found = s.feed(&w, masked, true, false);
            assert_eq!(codes(&found), [Some(1000)], "masked {masked}");
            assert_eq!(s.malformed_frames, 3);
        }
        // A malformed frame running past the copy ends the walk there; the
        // ping before it counts.
        let mut w = frame(0x89, b"", None);
        w.extend([0x88, 0x7E, 0x00, 200, 1, 2, 3]);
        let mut s = FrameStream::default();
        assert_eq!(s.feed(&w, false, true, false), [Control::Ping]);
        assert!(s.partial.is_empty());
    }

    #[test]
    fn a_partial_is_bounded() {
        let mut s = FrameStream::default();
        // A header claiming 125 bytes, cut after 2: kept (131 at most).
        s.feed(&[0x89, 125], false, true, false);
        assert_eq!(s.partial.len(), 2);
        // Joined chunks that still do not complete it stay bounded.
        for _ in 0..200 {
            s.feed(&[0u8; 1], false, true, true);
            assert!(s.partial.len() < MAX_CONTROL_FRAME);
        }
    }

    #[test]
    fn meanings() {
        assert_eq!(close_code_meaning(1000), "normal closure");
        assert!(close_code_meaning(1011).contains("internal"));
        assert!(close_code_meaning(4001).contains("application"));
        assert!(close_code_meaning(3003).contains("library"));
        assert!(close_code_meaning(2000).contains("unknown"));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for round in 0..5000 {
            let len = round % 40;
            let b: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = frames_in(&b);
            let _ = first_close(&b);
            let _ = parse_close(&b);
            let mut s = FrameStream::default();
            for (masked, continues) in [(true, false), (false, true), (false, false)] {
                let _ = s.feed(&b, masked, true, continues);
                assert!(s.partial.len() < MAX_CONTROL_FRAME);
            }
        }
    }
}
