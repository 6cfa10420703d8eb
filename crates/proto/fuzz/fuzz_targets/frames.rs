//! Control-channel bytes from an untrusted peer: the decoder must never panic, must
//! stay failed after an error, and what it accepts must re-encode to the same bytes
//! and apply to a fact set without panicking.
//!
//! Each input is tried twice: as a raw stream (cut into two pushes where its first
//! byte says), and as the payload of a frame of the kind its first byte names, with a
//! correct header and CRC, so that mutations reach the payload parser instead of
//! dying at the checksum.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zgate_proto::{Decoder, Encoder, Message, Side, HEADER_LEN, MAGIC, VERSION};
use zgate_table::LiveFacts;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let side = match first % 3 {
        0 => Side::Control,
        1 => Side::Dataplane,
        _ => Side::Any,
    };
    let cut = usize::from(first).min(rest.len());
    let mut d = Decoder::new(side, 1 << 16);
    d.push(&rest[..cut]);
    let mut got = drain(&mut d);
    d.push(&rest[cut..]);
    got.extend(drain(&mut d));
    check(&got);

    let mut framed = Vec::with_capacity(HEADER_LEN + rest.len());
    framed.extend_from_slice(&MAGIC);
    framed.push(VERSION);
    framed.push(first % 10);
    framed.extend_from_slice(&0u16.to_le_bytes());
    framed.extend_from_slice(&1u64.to_le_bytes());
    framed.extend_from_slice(&(rest.len() as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&framed[4..20]);
    h.update(rest);
    framed.extend_from_slice(&h.finalize().to_le_bytes());
    framed.extend_from_slice(rest);
    let mut d = Decoder::new(Side::Any, 1 << 16);
    d.push(&framed);
    if let Ok(Some(m)) = d.next() {
        // Canonical: a message that decodes re-encodes to the bytes it came from.
        let mut again = Vec::new();
        Encoder::new().encode(&m, &mut again);
        assert_eq!(again, framed);
        check(&[m]);
    }
});

fn drain(d: &mut Decoder) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        match d.next() {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return out,
            Err(e) => {
                // Failed for ever: the same error again, even with more bytes.
                d.push(b"ZGCP");
                assert_eq!(d.next().err(), Some(e));
                return out;
            }
        }
    }
}

fn check(messages: &[Message]) {
    let mut facts = LiveFacts::default();
    for m in messages {
        match m {
            Message::Facts(s) => s.changes.iter().for_each(|c| zgate_proto::apply(&mut facts, c)),
            Message::Delta(d) => d.changes.iter().for_each(|c| zgate_proto::apply(&mut facts, c)),
            _ => {}
        }
    }
    let _ = zgate_proto::snapshot(&facts);
}
