//! WebSocket frames (RFC 6455 §5.2) in the bytes the kernel copied after the
//! upgrade: close frames with their status code and reason, in either
//! direction (frames from the client are masked).

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
    let code = match payload.get(0..2) {
        Some(c) => Some(u16::from_be_bytes([c[0], c[1]])),
        None => None,
    };
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
        }
    }
}
