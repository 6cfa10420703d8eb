//! Frames: the header, the checksum, the sequence, and the sans-IO [`Decoder`] and
//! [`Encoder`].

use crate::message::{Kind, Message};
use crate::wire::DecodeError;

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"ZGCP";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Bytes of header before the payload.
pub const HEADER_LEN: usize = 24;
/// Default payload limit: a table of 100,000 rules is about 20 MiB.
pub const MAX_PAYLOAD: u32 = 128 << 20;

/// Which side a decoder reads: it refuses the kinds that side never sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Frames from the control process (a dataplane's decoder).
    Control,
    /// Frames from a dataplane (the control process's decoder).
    Dataplane,
    /// Any kind (state files).
    Any,
}

/// Why the channel must close. Nothing received with or after the error is used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first bytes are not `ZGCP`: not this protocol.
    #[error("not a zgate control frame (magic {found:02x?})")]
    BadMagic {
        /// What was there.
        found: [u8; 4],
    },
    /// A protocol version this build does not speak.
    #[error("protocol version {found}, this build speaks {VERSION}")]
    UnsupportedVersion {
        /// The version found.
        found: u8,
    },
    /// Flags this build does not know.
    #[error("unknown frame flags {0:#06x}")]
    UnknownFlags(u16),
    /// A kind byte with no meaning.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A kind the sending side never sends.
    #[error("a {kind:?} message cannot come from this side")]
    WrongDirection {
        /// The kind.
        kind: Kind,
    },
    /// A payload over the limit, refused from its header.
    #[error("a {len}-byte payload is over the {max}-byte limit")]
    Oversized {
        /// The declared length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A frame out of sequence: lost, repeated or reordered.
    #[error("frame {found} out of order, expected {expected}")]
    OutOfOrder {
        /// The sequence number expected.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// The checksum does not match: corrupted.
    #[error("frame {seq}: checksum mismatch")]
    Checksum {
        /// The frame's sequence number.
        seq: u64,
    },
    /// The payload is not the message its kind says.
    #[error("frame {seq} ({kind:?}): {source}")]
    Payload {
        /// The frame's sequence number.
        seq: u64,
        /// Its kind.
        kind: Kind,
        /// What is wrong.
        source: DecodeError,
    },
    /// A standalone frame cut short.
    #[error("the frame is cut short ({have} bytes)")]
    Truncated {
        /// Bytes there were.
        have: usize,
    },
    /// Bytes after a standalone frame.
    #[error("{extra} byte(s) after the frame")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

struct Header {
    kind: u8,
    flags: u16,
    seq: u64,
    len: u32,
    crc: u32,
}

fn parse_header(h: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
    let [m0, m1, m2, m3, version, kind, f0, f1, s0, s1, s2, s3, s4, s5, s6, s7, l0, l1, l2, l3, c0, c1, c2, c3] =
        *h;
    let found = [m0, m1, m2, m3];
    if found != MAGIC {
        return Err(FrameError::BadMagic { found });
    }
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    Ok(Header {
        kind,
        flags: u16::from_le_bytes([f0, f1]),
        seq: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        crc: u32::from_le_bytes([c0, c1, c2, c3]),
    })
}

/// The CRC of a frame: header from `version` through `length`, then the payload.
fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header.get(4..20).unwrap_or(&[]));
    h.update(payload);
    h.finalize()
}

/// Turns a byte stream into checked messages. Feed it with [`Decoder::push`], take
/// messages with [`Decoder::next`]. After an error it returns that error for ever: a
/// channel that sent one bad frame is not trusted with the next.
#[derive(Debug)]
pub struct Decoder {
    side: Side,
    max_payload: u32,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed (compacted on push).
    start: usize,
    next_seq: u64,
    failed: Option<FrameError>,
}

impl Decoder {
    /// A decoder for frames sent by `side`, refusing payloads over `max_payload`.
    pub fn new(side: Side, max_payload: u32) -> Decoder {
        Decoder {
            side,
            max_payload,
            buf: Vec::new(),
            start: 0,
            next_seq: 1,
            failed: None,
        }
    }

    /// Append bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received and not yet consumed by a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// The next whole message, `None` until one has arrived, or why the channel must
    /// close.
    #[expect(
        clippy::should_implement_trait,
        reason = "fallible and resumable, not an Iterator"
    )]
    pub fn next(&mut self) -> Result<Option<Message>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.next_inner() {
            Ok(m) => Ok(m),
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                self.start = 0;
                Err(e)
            }
        }
    }

    fn next_inner(&mut self) -> Result<Option<Message>, FrameError> {
        let pending = self.buf.get(self.start..).unwrap_or(&[]);
        let Some(head) = pending.get(..HEADER_LEN) else {
            // A wrong magic is refused as soon as its bytes are in, not after 24.
            let n = pending.len().min(4);
            if pending.get(..n) != MAGIC.get(..n) {
                let mut found = [0; 4];
                found.iter_mut().zip(pending).for_each(|(d, s)| *d = *s);
                return Err(FrameError::BadMagic { found });
            }
            return Ok(None);
        };
        let head: &[u8; HEADER_LEN] = head
            .try_into()
            .map_err(|_| FrameError::Truncated { have: head.len() })?;
        let h = parse_header(head)?;
        let kind = Kind::from_byte(h.kind).ok_or(FrameError::UnknownKind(h.kind))?;
        let allowed = match self.side {
            Side::Control => kind.from_control(),
            Side::Dataplane => kind.from_dataplane(),
            Side::Any => true,
        };
        if !allowed {
            return Err(FrameError::WrongDirection { kind });
        }
        if h.flags != 0 {
            return Err(FrameError::UnknownFlags(h.flags));
        }
        if h.len > self.max_payload {
            return Err(FrameError::Oversized {
                len: h.len,
                max: self.max_payload,
            });
        }
        if h.seq != self.next_seq {
            return Err(FrameError::OutOfOrder {
                expected: self.next_seq,
                found: h.seq,
            });
        }
        let total = HEADER_LEN + h.len as usize;
        let Some(payload) = pending.get(HEADER_LEN..total) else {
            return Ok(None);
        };
        if checksum(head, payload) != h.crc {
            return Err(FrameError::Checksum { seq: h.seq });
        }
        let m = Message::decode_payload(kind, payload).map_err(|source| FrameError::Payload {
            seq: h.seq,
            kind,
            source,
        })?;
        self.start += total;
        self.next_seq += 1;
        Ok(Some(m))
    }
}

/// Turns messages into frames, numbering them.
#[derive(Debug)]
pub struct Encoder {
    next_seq: u64,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder::new()
    }
}

impl Encoder {
    /// An encoder whose first frame is number 1.
    pub fn new() -> Encoder {
        Encoder { next_seq: 1 }
    }

    /// Append `message` as one frame to `out`.
    pub fn encode(&mut self, message: &Message, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(message.kind() as u8);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.next_seq.to_le_bytes());
        out.extend_from_slice(&[0; 8]); // length and crc, below
        let body = out.len();
        message.encode_payload(out);
        let len = u32::try_from(out.len() - body).unwrap_or(u32::MAX);
        if let Some(slot) = out.get_mut(at + 16..at + 20) {
            slot.copy_from_slice(&len.to_le_bytes());
        }
        let (head, payload) = out.split_at(body);
        let crc = checksum(head.get(at..).unwrap_or(&[]), payload);
        if let Some(slot) = out.get_mut(at + 20..at + 24) {
            slot.copy_from_slice(&crc.to_le_bytes());
        }
        self.next_seq += 1;
    }
}
