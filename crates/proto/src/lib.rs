//! zgate's control channel: the messages between `zgate-control` and the dataplanes,
//! and their framing.
//!
//! # Purpose
//!
//! One format, parsed and validated here, with typed errors, so that neither process
//! ever acts on bytes it has not checked. A dataplane subscribes with [`Hello`]; the
//! control process answers with the enforced table ([`Message::Table`]) and the full fact
//! set ([`Message::Facts`]), then sends deltas ([`Message::Delta`]) as facts change, a
//! candidate table to evaluate in shadow ([`Message::Shadow`]), impact queries, and twice
//! a second how fresh the facts are ([`Message::Freshness`]). The dataplane reports what it enforces ([`Message::Report`]) and answers queries.
//!
//! # Frame
//!
//! ```text
//! magic "ZGCP" | version u8 | kind u8 | flags u16 (0) | seq u64 | length u32 | crc32 u32 | payload
//! ```
//!
//! Little-endian; 24 bytes of header. `seq` counts the frames one side has sent on
//! this connection, from 1 without gaps: a frame out of order is an error, not a
//! reordering. The CRC-32 covers the header from `version` to `length` and the payload.
//! A payload longer than the decoder's limit is refused from its header, before any of
//! it is buffered.
//!
//! # Non-goals
//!
//! - IO: [`Decoder`] is fed bytes and yields messages; [`Encoder`] appends frames to a
//!   buffer. A Unix socket today, TCP + mTLS later, carry the same bytes.
//! - Authenticity: the CRC catches corruption, not forgery. Who may speak on the
//!   channel is decided by the transport (peer credentials, mTLS).
//! - Policy: whether a version may replace another is the receiver's decision; this
//!   crate checks only that each message is well formed.
#![forbid(unsafe_code)]

mod facts;
mod frame;
mod message;
mod wire;

pub use facts::{apply, snapshot, Cause, Change, Subject, Touched};
pub use frame::{Decoder, Encoder, FrameError, Side, HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION};
pub use message::{
    FactsDelta, FactsSnapshot, Freshness, Hello, ImpactFlow, ImpactReport, Kind, Message, Report,
    Shadow, TableUpdate,
};
pub use wire::DecodeError;

/// One message as a standalone frame (sequence number 1): how a dataplane persists
/// the last fact set it received, so that the state file is checked as the channel is.
pub fn to_standalone(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new().encode(message, &mut out);
    out
}

/// Read back a [`to_standalone`] frame: exactly one frame, nothing after it.
pub fn from_standalone(bytes: &[u8], max_payload: u32) -> Result<Message, FrameError> {
    let mut d = Decoder::new(Side::Any, max_payload);
    d.push(bytes);
    let m = d
        .next()?
        .ok_or(FrameError::Truncated { have: bytes.len() })?;
    if d.buffered() != 0 {
        return Err(FrameError::TrailingBytes {
            extra: d.buffered(),
        });
    }
    Ok(m)
}

#[cfg(test)]
mod tests;
