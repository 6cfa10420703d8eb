//! The PostgreSQL preamble on `protocol = "postgres"` listeners: what a client sends
//! before TLS starts, and what zgate answers. Sans-IO: bytes in, a verdict out; the
//! worker (`worker::tls`) moves the bytes.
//!
//! A PostgreSQL client asks for TLS in one of two ways (protocol docs, "SSL Session
//! Encryption"):
//! - an `SSLRequest` (8 bytes: length 8, code 80877103); the server answers one byte,
//!   `S` (TLS follows) or `N`. zgate always answers `S`.
//! - PostgreSQL 17's direct TLS (`sslnegotiation=direct`): a TLS ClientHello straight
//!   away, which must then negotiate ALPN `postgresql`.
//!
//! libpq may first send a `GSSENCRequest`; zgate answers `N` (no GSSAPI encryption) and
//! reads again, as PostgreSQL does. Everything else is refused before TLS: a plaintext
//! `StartupMessage` gets a PostgreSQL `ErrorResponse` saying TLS is required (so `psql`
//! prints a reason), a plaintext `CancelRequest` (it cannot be authenticated) and
//! anything malformed are closed. Bytes sent after an `SSLRequest` in the same read,
//! before the `S`, are refused: they would be plaintext that a man in the middle could
//! have injected ahead of the handshake (CVE-2021-23214).

/// The most bytes the preamble needs: a length and a request code.
pub const PREAMBLE_LEN: usize = 8;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol 3.x startup: major version 3 in the high 16 bits.
const PROTOCOL_3: u32 = 3 << 16;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What the bytes received so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preamble {
    /// Not enough bytes to tell yet (fewer than [`PREAMBLE_LEN`]).
    NeedMore,
    /// `SSLRequest`: answer `S`, then the TLS handshake.
    SslRequest,
    /// `GSSENCRequest`: answer `N`, then read the next request.
    GssEncRequest,
    /// A TLS record: PostgreSQL 17 direct TLS (ALPN `postgresql` required).
    DirectTls,
    /// Refused before TLS.
    Refused(Refusal),
}

/// Why a preamble was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A plaintext `StartupMessage`: the client did not ask for TLS.
    PlaintextStartup,
    /// A plaintext `CancelRequest`: zgate cannot tell who sent it.
    PlaintextCancel,
    /// Bytes after the `SSLRequest` before the answer.
    DataAfterRequest,
    /// A second `GSSENCRequest` after zgate answered `N` to the first.
    RepeatedGssEnc,
    /// Direct TLS that did not negotiate ALPN `postgresql`.
    DirectTlsWithoutAlpn,
    /// Not a PostgreSQL request at all (bad length or unknown code).
    Malformed,
}

/// How many [`Refusal`] kinds there are (metric array size).
pub const REFUSAL_KINDS: usize = 6;

/// Every [`Refusal`]'s metric label, in [`Refusal::index`] order.
pub const REFUSAL_LABELS: [&str; REFUSAL_KINDS] = [
    "plaintext-startup",
    "plaintext-cancel",
    "data-after-ssl-request",
    "repeated-gssenc-request",
    "direct-tls-without-alpn",
    "malformed",
];

impl Refusal {
    /// Every kind, in [`Refusal::index`] order.
    pub const ALL: [Refusal; REFUSAL_KINDS] = [
        Refusal::PlaintextStartup,
        Refusal::PlaintextCancel,
        Refusal::DataAfterRequest,
        Refusal::RepeatedGssEnc,
        Refusal::DirectTlsWithoutAlpn,
        Refusal::Malformed,
    ];

    /// Position in [`Refusal::ALL`] (metric index).
    pub fn index(self) -> usize {
        match self {
            Refusal::PlaintextStartup => 0,
            Refusal::PlaintextCancel => 1,
            Refusal::DataAfterRequest => 2,
            Refusal::RepeatedGssEnc => 3,
            Refusal::DirectTlsWithoutAlpn => 4,
            Refusal::Malformed => 5,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        REFUSAL_LABELS
            .get(self.index())
            .copied()
            .unwrap_or("malformed")
    }

    /// What to send the client before closing: a PostgreSQL `ErrorResponse` where the
    /// client is speaking the protocol in plaintext and will print it, nothing otherwise.
    pub fn reply(self) -> Option<&'static [u8]> {
        match self {
            Refusal::PlaintextStartup => Some(TLS_REQUIRED_ERROR),
            _ => None,
        }
    }
}

/// `ErrorResponse`: severity FATAL, SQLSTATE 28000 (invalid authorization
/// specification, what PostgreSQL itself uses when pg_hba requires TLS), and a message.
/// Built by hand once, checked by a test against the wire format.
const TLS_REQUIRED_ERROR: &[u8] = b"E\x00\x00\x00\x5f\
SFATAL\x00\
VFATAL\x00\
C28000\x00\
Mzgate: this listener requires TLS; connect with sslmode=verify-full\x00\
\x00";

/// Classify the first bytes a client sent. `after_gssenc`: zgate already answered `N` to
/// a `GSSENCRequest` on this connection.
pub fn classify(bytes: &[u8], after_gssenc: bool) -> Preamble {
    if bytes.first() == Some(&TLS_HANDSHAKE_RECORD) && !after_gssenc {
        return Preamble::DirectTls;
    }
    let (Some(len), Some(code)) = (be_u32(bytes, 0), be_u32(bytes, 4)) else {
        // The first byte of a valid length is 0 (messages are far below 16 MiB).
        return match bytes.first() {
            Some(0) | None => Preamble::NeedMore,
            Some(_) => Preamble::Refused(Refusal::Malformed),
        };
    };
    match (len, code) {
        (8, SSL_REQUEST) if bytes.len() > PREAMBLE_LEN => {
            Preamble::Refused(Refusal::DataAfterRequest)
        }
        (8, SSL_REQUEST) => Preamble::SslRequest,
        (8, GSSENC_REQUEST) if after_gssenc => Preamble::Refused(Refusal::RepeatedGssEnc),
        (8, GSSENC_REQUEST) if bytes.len() > PREAMBLE_LEN => {
            Preamble::Refused(Refusal::DataAfterRequest)
        }
        (8, GSSENC_REQUEST) => Preamble::GssEncRequest,
        (16, CANCEL_REQUEST) => Preamble::Refused(Refusal::PlaintextCancel),
        // A StartupMessage: length, protocol version, then parameters (at least the
        // terminating zero).
        (9..=10_000, v) if v >> 16 == PROTOCOL_3 >> 16 => {
            Preamble::Refused(Refusal::PlaintextStartup)
        }
        _ => Preamble::Refused(Refusal::Malformed),
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(s.try_into().ok()?))
}

/// What [`PreambleReader::push`] made of the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The verdict so far.
    pub verdict: Preamble,
    /// How many of the given bytes it took. The rest stay with the caller: after
    /// [`Preamble::DirectTls`] they are the ClientHello for the TLS session.
    pub consumed: usize,
}

/// Reads the preamble across however many reads it arrives in: keeps up to
/// [`PREAMBLE_LEN`] bytes between calls, and remembers a `GSSENCRequest` it answered.
#[derive(Debug, Default, Clone)]
pub struct PreambleReader {
    buf: [u8; PREAMBLE_LEN],
    len: usize,
    gss_answered: bool,
}

impl PreambleReader {
    /// Look at `fresh`, the bytes received since the last call (none of them taken
    /// yet). After [`Preamble::GssEncRequest`] the caller answers `N` and calls again
    /// with what follows; after [`Preamble::SslRequest`] it answers `S` and starts TLS.
    pub fn push(&mut self, fresh: &[u8]) -> Step {
        // What was kept, then up to one byte more than a request, so a byte sent after
        // the request in the same read shows.
        let mut view = [0u8; PREAMBLE_LEN + 1];
        let have = self.len.min(PREAMBLE_LEN);
        let take = fresh.len().min(view.len() - have);
        if let (Some(dst), Some(src)) = (view.get_mut(..have), self.buf.get(..have)) {
            dst.copy_from_slice(src);
        }
        if let (Some(dst), Some(src)) = (view.get_mut(have..have + take), fresh.get(..take)) {
            dst.copy_from_slice(src);
        }
        let seen = view.get(..have + take).unwrap_or_default();
        let verdict = classify(seen, self.gss_answered);
        let consumed = match verdict {
            Preamble::NeedMore => {
                // Fewer than PREAMBLE_LEN bytes in all: keep them.
                if let (Some(dst), Some(src)) = (self.buf.get_mut(..seen.len()), Some(seen)) {
                    dst.copy_from_slice(src);
                }
                self.len = seen.len();
                take
            }
            Preamble::SslRequest | Preamble::GssEncRequest => {
                self.gss_answered |= verdict == Preamble::GssEncRequest;
                self.len = 0;
                PREAMBLE_LEN - have
            }
            Preamble::DirectTls | Preamble::Refused(_) => 0,
        };
        Step { verdict, consumed }
    }
}

/// The fuzz target's body (`dataplane/fuzz`), also replayed over its corpus by a unit
/// test: the first byte of `data` picks read sizes, the rest is fed in reads of those
/// sizes. Checks that the reader never takes more than it was given, keeps at most
/// [`PREAMBLE_LEN`] bytes, reaches a verdict within a bounded number of steps, and
/// agrees with a one-shot [`classify`] where the split cannot matter.
pub fn fuzz_one(data: &[u8]) -> Result<(), String> {
    let Some((&sizes, input)) = data.split_first() else {
        return Ok(());
    };
    let mut r = PreambleReader::default();
    let mut rest = input;
    // Every step consumes bytes or ends: a request is 8 bytes, at most 2 are answered.
    for turn in 0.. {
        if turn > input.len() + 4 {
            return Err(format!("no verdict after {turn} steps"));
        }
        let chunk = usize::from(sizes >> ((turn % 4) * 2) & 3) * 3 + 1;
        let fresh = rest.get(..chunk.min(rest.len())).unwrap_or_default();
        let step = r.push(fresh);
        if step.consumed > fresh.len() {
            return Err(format!("took {} of {} bytes", step.consumed, fresh.len()));
        }
        if r.len > PREAMBLE_LEN {
            return Err(format!("kept {} bytes", r.len));
        }
        rest = rest.get(step.consumed..).unwrap_or_default();
        match step.verdict {
            Preamble::NeedMore if fresh.is_empty() => return Ok(()),
            Preamble::NeedMore | Preamble::GssEncRequest => {}
            Preamble::SslRequest | Preamble::DirectTls | Preamble::Refused(_) => break,
        }
    }
    // Given all at once, a lone first request gets the same verdict as a one-shot
    // classification of its bytes.
    let whole = PreambleReader::default().push(input).verdict;
    if whole != classify(input.get(..PREAMBLE_LEN + 1).unwrap_or(input), false) {
        return Err(format!("reader {whole:?} disagrees with classify"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(len: u32, code: u32) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v
    }

    #[test]
    fn ssl_request_gssenc_and_direct_tls_are_told_apart() {
        assert_eq!(classify(&msg(8, SSL_REQUEST), false), Preamble::SslRequest);
        assert_eq!(
            classify(&msg(8, GSSENC_REQUEST), false),
            Preamble::GssEncRequest
        );
        assert_eq!(classify(&[0x16, 3, 1], false), Preamble::DirectTls);
        assert_eq!(
            classify(&msg(8, SSL_REQUEST), true),
            Preamble::SslRequest,
            "libpq sends SSLRequest after a refused GSSENCRequest"
        );
    }

    #[test]
    fn partial_requests_wait_for_more() {
        let m = msg(8, SSL_REQUEST);
        for n in 0..PREAMBLE_LEN {
            assert_eq!(classify(&m[..n], false), Preamble::NeedMore, "{n} bytes");
        }
    }

    #[test]
    fn the_reader_assembles_split_requests_and_counts_what_it_takes() {
        let mut r = PreambleReader::default();
        let m = msg(8, GSSENC_REQUEST);
        assert_eq!(
            r.push(&m[..3]),
            Step {
                verdict: Preamble::NeedMore,
                consumed: 3
            }
        );
        assert_eq!(
            r.push(&m[3..]),
            Step {
                verdict: Preamble::GssEncRequest,
                consumed: 5
            }
        );
        let ssl = msg(8, SSL_REQUEST);
        assert_eq!(r.push(&ssl).verdict, Preamble::SslRequest);
        // A second GSSENCRequest after the `N` is refused.
        let mut r = PreambleReader::default();
        assert_eq!(r.push(&m).verdict, Preamble::GssEncRequest);
        assert_eq!(
            r.push(&m).verdict,
            Preamble::Refused(Refusal::RepeatedGssEnc)
        );
        // Direct TLS takes nothing: the bytes belong to the TLS session.
        let mut r = PreambleReader::default();
        assert_eq!(
            r.push(&[0x16, 3, 1, 0, 5]),
            Step {
                verdict: Preamble::DirectTls,
                consumed: 0
            }
        );
    }

    #[test]
    fn fuzz_corpus_seeds_hold_the_invariants() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/preamble");
        let mut seeds = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            fuzz_one(&bytes).unwrap();
            seeds += 1;
        }
        assert!(seeds >= 8, "only {seeds} seeds in {}", dir.display());
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        let mut stuffed = msg(8, SSL_REQUEST);
        stuffed.push(b'Q');
        let mut startup = msg(41, PROTOCOL_3);
        startup.extend_from_slice(b"user\0postgres\0");
        let cases = [
            (stuffed, false, Refusal::DataAfterRequest),
            (startup, false, Refusal::PlaintextStartup),
            (msg(16, CANCEL_REQUEST), false, Refusal::PlaintextCancel),
            (msg(8, GSSENC_REQUEST), true, Refusal::RepeatedGssEnc),
            (msg(8, 1234), false, Refusal::Malformed),
            (msg(9, SSL_REQUEST), false, Refusal::Malformed),
            (msg(0xFFFF, PROTOCOL_3), false, Refusal::Malformed),
            (b"GET / HTTP/1.1\r\n".to_vec(), false, Refusal::Malformed),
            (vec![0x16, 3, 1], true, Refusal::Malformed),
        ];
        for (bytes, gss, want) in cases {
            assert_eq!(
                classify(&bytes, gss),
                Preamble::Refused(want),
                "{bytes:?} after_gssenc={gss}"
            );
        }
    }

    #[test]
    fn refusal_indexes_match_all_and_labels_are_unique() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut labels: Vec<_> = Refusal::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), REFUSAL_KINDS);
    }

    /// The canned ErrorResponse is well-formed: its length field counts itself and the
    /// body, fields are NUL-terminated, and the message ends with an empty field.
    #[test]
    fn tls_required_error_is_a_valid_error_response() {
        let e = TLS_REQUIRED_ERROR;
        assert_eq!(e[0], b'E');
        let len = u32::from_be_bytes(e[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, e.len() - 1);
        let body = &e[5..];
        assert_eq!(body.last(), Some(&0));
        let fields: Vec<&[u8]> = body[..body.len() - 1]
            .split(|&b| b == 0)
            .filter(|f| !f.is_empty())
            .collect();
        assert_eq!(fields[0], b"SFATAL");
        assert_eq!(fields[2], b"C28000");
        assert!(fields[3].starts_with(b"Mzgate: this listener requires TLS"));
        assert_eq!(fields.len(), 4);
    }
}
