//! The record layer of an established session, ours rather than rustls' (the kTLS
//! model, done in user space): rustls runs the handshake, then hands over the traffic
//! secrets and a [`rustls::kernel::KernelConnection`] that derives new secrets on a key
//! update; this module seals and opens records with ring's AEADs.
//!
//! Why: rustls 0.23's record path copies every received record into a fresh `Vec` and
//! every sent one through its own queue. Here a complete record is decrypted in place
//! where it was received (the dataplane's ring buffer) and its plaintext is left there:
//! [`RecordLayer::open_in_place`] reports where it lies ([`Runs`]) and the dataplane
//! sends it from that buffer. A record cut by the end of a receive is kept and, with
//! the next receive, moved into that buffer's headroom in front of its rest. A record
//! is sealed straight into the output buffer. A session keeps no receive buffer while
//! idle. ([`RecordLayer::open`], which copies the plaintext out, serves the first
//! records after the handshake, upstream TLS and the tests.)
//!
//! Scope (fail closed on anything else, with the alert the RFCs name):
//! - TLS 1.3 (RFC 8446 §5): outer type application_data only; inner plaintext at most
//!   2^14 + 1 bytes, padding included, its type recovered past the zero padding;
//!   alerts (close_notify ends the input, a warning-level user_canceled is ignored, any
//!   other is fatal whatever its level); KeyUpdate (followed at once; when requested,
//!   one update is owed however many requests come before it goes out) and, client
//!   side, NewSessionTicket. Handshake messages may span records (reassembled up to
//!   2^16 - 1 bytes of body), but nothing may come between their records.
//! - TLS 1.2 (RFC 5246, RFC 5288, RFC 7905): AES-GCM with its explicit nonce, and
//!   ChaCha20-Poly1305; fatal alerts end the session, warnings other than
//!   close_notify are ignored; a renegotiation request (ClientHello toward a server,
//!   HelloRequest toward a client) gets the `no_renegotiation` warning once.
//! - Ignored warnings are bounded (4), as are KeyUpdates without data between them (32).
//! - Sequence numbers never wrap; a TLS 1.3 sender updates its key before the suite's
//!   confidentiality limit, a TLS 1.2 one stops sealing there and the session ends
//!   with close_notify after what was sealed.
//! - Old traffic keys are zeroed when a key update replaces them.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};

use zeroize::Zeroizing;

use crate::error::{Alert, RejectReason};
use crate::wipe::WipedKey;

/// Largest plaintext in one record (RFC 8446 §5.1, RFC 5246 §6.2.1).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Record header: type, legacy version, length.
pub const HEADER: usize = 5;
const TAG: usize = 16;
/// Largest TLS 1.3 ciphertext body (RFC 8446 §5.2: 2^14 + 256).
const MAX_BODY_TLS13: usize = MAX_PLAINTEXT + 256;
/// Largest TLS 1.2 ciphertext body (RFC 5246 §6.2.3: 2^14 + 2048).
const MAX_BODY_TLS12: usize = MAX_PLAINTEXT + 2048;
/// The largest record this layer accepts, header included: a receive buffer of this
/// size always holds one whole record.
pub const MAX_RECORD: usize = HEADER + MAX_BODY_TLS12;
/// Most bytes sealing one record adds to its plaintext (TLS 1.2 GCM: header, explicit
/// nonce, tag; TLS 1.3: header, inner type, tag).
pub const MAX_OVERHEAD: usize = HEADER + 8 + TAG;

const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_APPDATA: u8 = 23;
const HS_HELLO_REQUEST: u8 = 0;
const HS_CLIENT_HELLO: u8 = 1;
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_USER_CANCELED: u8 = 90;
const ALERT_NO_RENEGOTIATION: u8 = 100;
const LEVEL_WARNING: u8 = 1;
const LEVEL_FATAL: u8 = 2;
/// A sealed TLS 1.3 KeyUpdate: header, the 5-byte message, inner type, tag.
const KEY_UPDATE_RECORD: usize = HEADER + 5 + 1 + TAG;
/// KeyUpdates accepted in a row without application data in between: each costs a key
/// derivation, so a peer may not send them forever (rustls and BoringSSL allow 32).
const MAX_KEY_UPDATES_IN_A_ROW: u8 = 32;
/// Warning alerts a peer may send over a session's life (TLS 1.2 warnings, TLS 1.3
/// user_canceled): they cost nothing to send and nothing useful to receive, so a peer
/// may not send them forever (rustls and BoringSSL allow 4).
const MAX_WARNING_ALERTS: u8 = 4;
/// Renegotiation requests a TLS 1.2 peer gets a `no_renegotiation` warning for; the
/// next one is fatal (as rustls does).
const MAX_RENEGOTIATION_REQUESTS: u8 = 1;
/// Largest post-handshake handshake message reassembled across records: a message
/// header and 2^16 - 1 bytes of body (rustls' own bound; a NewSessionTicket with a
/// large ticket is well inside it).
const MAX_HANDSHAKE_MESSAGE: usize = 4 + 0xffff;

/// The rustls half that outlives the handshake: it derives the next traffic secret.
pub enum Kernel {
    /// We are the server (a client connected to the gateway).
    Server(KernelConnection<ServerConnectionData>),
    /// We are the client (upstream TLS).
    Client(KernelConnection<ClientConnectionData>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Tls12,
    Tls13,
}

/// One direction's key and sequence number. Its key material is zeroed when it is
/// dropped (a key update drops the old key at once).
struct Keys {
    key: WipedKey,
    iv: Zeroizing<[u8; aead::NONCE_LEN]>,
    seq: u64,
    /// TLS 1.2 AES-GCM: the nonce's last 8 bytes travel in the record.
    explicit_nonce: bool,
}

impl Keys {
    fn new(
        seq: u64,
        secrets: ConnectionTrafficSecrets,
        version: Version,
    ) -> Result<Keys, RejectReason> {
        let (alg, key, iv, gcm) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, false)
            }
            _ => return Err(RejectReason::Internal("unsupported cipher suite")),
        };
        let unbound = UnboundKey::new(alg, key.as_ref())
            .map_err(|_| RejectReason::Internal("traffic key rejected by ring"))?;
        let iv: [u8; aead::NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| RejectReason::Internal("traffic IV is not 12 bytes"))?;
        Ok(Keys {
            key: WipedKey::new(LessSafeKey::new(unbound)),
            iv: Zeroizing::new(iv),
            seq,
            explicit_nonce: gcm && version == Version::Tls12,
        })
    }

    /// The per-record nonce: the IV with the sequence number XORed into its last 8
    /// bytes (RFC 8446 §5.3; RFC 7905 for TLS 1.2 ChaCha; our explicit nonce choice for
    /// TLS 1.2 GCM, as RFC 5288 §3 allows).
    fn nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut n = *self.iv;
        for (b, s) in n.iter_mut().skip(4).zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn advance(&mut self) -> Result<(), RejectReason> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| bad(Alert::InternalError, "sequence number exhausted"))?;
        Ok(())
    }
}

fn bad(alert: Alert, what: &'static str) -> RejectReason {
    RejectReason::BadRecord { alert, what }
}

/// What opening records did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Input bytes used (a record cut short by the input's end is kept inside).
    pub consumed: usize,
    /// Plaintext bytes written to the output.
    pub produced: usize,
}

/// Most separate plaintext pieces one [`RecordLayer::open_in_place`] reports: an
/// input of full records needs one per record (five for a 64 KiB receive).
pub const MAX_RUNS: usize = 8;
/// A record with less plaintext than this is moved up against the piece before it
/// rather than sent as a piece of its own: a send of many tiny pieces costs more than
/// the copy.
const JOIN_BELOW: usize = 1024;

/// Where opened plaintext lies in a receive buffer: up to [`MAX_RUNS`] pieces
/// (offset, length), in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Runs {
    runs: [(u32, u32); MAX_RUNS],
    len: usize,
}

impl Runs {
    /// The pieces, in order.
    pub fn as_slice(&self) -> &[(u32, u32)] {
        self.runs.get(..self.len).unwrap_or_default()
    }

    /// Plaintext bytes in all pieces.
    pub fn total(&self) -> usize {
        self.as_slice().iter().map(|&(_, n)| n as usize).sum()
    }

    /// Forget every piece.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drop the first `n` bytes (a send took them).
    pub fn advance(&mut self, mut n: usize) {
        let mut first = 0;
        while let Some(r) = self.runs.get_mut(first).filter(|_| first < self.len) {
            let len = r.1 as usize;
            if n < len {
                r.0 += n as u32;
                r.1 -= n as u32;
                break;
            }
            n -= len;
            first += 1;
        }
        self.runs.copy_within(first.min(self.len)..self.len, 0);
        self.len -= first.min(self.len);
    }

    /// Add `region[at..at + len]`, which lies after every piece so far: as a piece of
    /// its own, or moved to the end of the last piece when it is small or the list is
    /// full.
    pub(crate) fn add(&mut self, region: &mut [u8], at: usize, len: usize) {
        if len == 0 {
            return;
        }
        let (Ok(at32), Ok(len32)) = (u32::try_from(at), u32::try_from(len)) else {
            return;
        };
        if let Some(last) = self.len.checked_sub(1).and_then(|i| self.runs.get_mut(i)) {
            let last_end = (last.0 + last.1) as usize;
            if last_end == at {
                last.1 += len32;
                return;
            }
            if (len < JOIN_BELOW || self.len == MAX_RUNS) && at + len <= region.len() {
                // `last_end < at` (pieces come in order): the move goes down.
                region.copy_within(at..at + len, last_end);
                last.1 += len32;
                return;
            }
        }
        if let Some(slot) = self.runs.get_mut(self.len) {
            *slot = (at32, len32);
            self.len += 1;
        }
    }
}

/// The gateway's integration tests' limit (feature `test-limits`): the confidentiality
/// limit `ZGATE_TEST_TLS_RECORD_LIMIT` records after `tx_seq`.
#[cfg(feature = "test-limits")]
fn test_limit(tx_seq: u64) -> Option<u64> {
    let records: u64 = std::env::var("ZGATE_TEST_TLS_RECORD_LIMIT")
        .ok()?
        .parse()
        .ok()?;
    Some(tx_seq.saturating_add(records))
}

/// Without the feature, the cipher suite's limit always.
#[cfg(not(feature = "test-limits"))]
fn test_limit(_tx_seq: u64) -> Option<u64> {
    None
}

/// An established session's record layer.
pub struct RecordLayer {
    version: Version,
    tx: Keys,
    rx: Keys,
    kernel: Kernel,
    /// Records sealed before this many are sent, the key is updated (TLS 1.3) or the
    /// session closed (TLS 1.2).
    tx_limit: u64,
    /// A record cut by the end of an input, header included; empty (no capacity) when
    /// none, so an idle session holds no receive buffer.
    partial: Vec<u8>,
    peer_closed: bool,
    /// KeyUpdates received since the last record with application data in it.
    key_updates_in_a_row: u8,
    /// The peer asked for a KeyUpdate and ours is not sealed yet. However many it asks
    /// for meanwhile, it gets one (RFC 8446 §4.6.3), sealed when the session next
    /// writes: a peer that sends requests and never reads makes nothing pile up.
    update_owed: bool,
    /// The start of a post-handshake handshake message cut across records (RFC 8446
    /// §5.1 allows it); empty when none.
    hs_frag: Vec<u8>,
    /// Warning alerts the peer may still send.
    warnings_left: u8,
    /// TLS 1.2 renegotiation requests the peer may still send.
    renegotiations_left: u8,
    /// TLS 1.2: the confidentiality limit is reached; nothing more is sealed but the
    /// close_notify the session ends with.
    tx_exhausted: bool,
}

impl RecordLayer {
    /// Take over from rustls, whose handshake is complete with nothing left to send.
    pub fn new(secrets: ExtractedSecrets, kernel: Kernel) -> Result<RecordLayer, RejectReason> {
        let (version, suite) = match &kernel {
            Kernel::Server(k) => (k.protocol_version(), k.negotiated_cipher_suite()),
            Kernel::Client(k) => (k.protocol_version(), k.negotiated_cipher_suite()),
        };
        let version = match version {
            ProtocolVersion::TLSv1_3 => Version::Tls13,
            ProtocolVersion::TLSv1_2 => Version::Tls12,
            _ => return Err(RejectReason::Internal("unsupported protocol version")),
        };
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        // Stop well before the limit: a key update (or close) has to go out first.
        let limit = match suite {
            rustls::SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            rustls::SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        Ok(RecordLayer {
            version,
            tx: Keys::new(tx_seq, tx, version)?,
            rx: Keys::new(rx_seq, rx, version)?,
            kernel,
            tx_limit: test_limit(tx_seq).unwrap_or(limit.saturating_sub(limit / 16).max(1)),
            partial: Vec::new(),
            peer_closed: false,
            key_updates_in_a_row: 0,
            update_owed: false,
            hs_frag: Vec::new(),
            warnings_left: MAX_WARNING_ALERTS,
            renegotiations_left: MAX_RENEGOTIATION_REQUESTS,
            tx_exhausted: false,
        })
    }

    /// Whether a KeyUpdate is owed to the peer (the next write seals it).
    pub fn owes_update(&self) -> bool {
        self.update_owed
    }

    /// Whether the TLS 1.2 confidentiality limit stopped sealing: the session must end
    /// with close_notify.
    pub fn tx_exhausted(&self) -> bool {
        self.tx_exhausted
    }

    /// Whether the peer sent close_notify (nothing after it is read).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether a whole record waits inside (it was completed when the plaintext buffer
    /// had no room for it): the next [`RecordLayer::open`] delivers it, even with no
    /// new input.
    pub fn holds_record(&self) -> bool {
        self.partial.len() >= HEADER
            && self
                .record_len(&self.partial)
                .is_ok_and(|total| self.partial.len() >= total)
    }

    /// Test hook: the confidentiality limit is `records` records from now.
    #[cfg(test)]
    pub(crate) fn set_tx_limit_in(&mut self, records: u64) {
        self.tx_limit = self.tx.seq + records;
    }

    /// Test hook: seal a KeyUpdate whose `request_update` byte is `request` (any value,
    /// for the tests of bad ones), then switch to the next key as a sender must.
    #[cfg(test)]
    pub(crate) fn send_key_update_for_test(&mut self, request: u8, out: &mut Vec<u8>) {
        self.seal_into_vec(CT_HANDSHAKE, &[HS_KEY_UPDATE, 0, 0, 1, request], out)
            .unwrap();
        self.next_tx_key().unwrap();
    }

    /// Test hook: switch to the next sending key without sending anything (a test
    /// that split its KeyUpdate across records itself).
    #[cfg(test)]
    pub(crate) fn rotate_tx_for_test(&mut self) {
        self.next_tx_key().unwrap();
    }

    /// Test hook (TLS 1.3): seal `inner` as a record's whole TLSInnerPlaintext (content,
    /// type and padding as the test wrote them).
    #[cfg(test)]
    pub(crate) fn seal_inner_for_test(&mut self, inner: &[u8], out: &mut Vec<u8>) {
        assert_eq!(self.version, Version::Tls13);
        let body = u16::try_from(inner.len() + TAG).unwrap().to_be_bytes();
        let header = [CT_APPDATA, 3, 3, body[0], body[1]];
        let mut data = inner.to_vec();
        let nonce = Nonce::assume_unique_for_key(self.tx.nonce());
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut data)
            .unwrap();
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        out.extend_from_slice(tag.as_ref());
        self.tx.advance().unwrap();
    }

    fn max_body(&self) -> usize {
        match self.version {
            Version::Tls13 => MAX_BODY_TLS13,
            Version::Tls12 => MAX_BODY_TLS12,
        }
    }

    /// Open the records in `input` (decrypted in place there) into `plain`. Stops before
    /// a record whose plaintext might not fit, and after close_notify. Control messages
    /// that need an answer (KeyUpdate) append sealed records to `reply`.
    pub fn open(
        &mut self,
        input: &mut [u8],
        plain: &mut [u8],
        reply: &mut Vec<u8>,
    ) -> Result<Opened, RejectReason> {
        let mut done = Opened::default();
        // A record cut short last time: complete it from `input` first.
        if !self.partial.is_empty() && !self.peer_closed {
            let have = self.partial.len();
            let want = if have < HEADER {
                HEADER
            } else {
                self.record_len(&self.partial)?
            };
            let take = want.saturating_sub(have).min(input.len());
            self.partial
                .extend_from_slice(input.get(..take).unwrap_or_default());
            done.consumed = take;
            if self.partial.len() < HEADER {
                return Ok(done);
            }
            let total = self.record_len(&self.partial)?;
            if self.partial.len() < total {
                // Header complete now: take the body too.
                let more = (total - self.partial.len()).min(input.len() - take);
                self.partial
                    .extend_from_slice(input.get(take..take + more).unwrap_or_default());
                done.consumed += more;
                if self.partial.len() < total {
                    return Ok(done);
                }
            }
            if plain.len() < total {
                return Ok(done);
            }
            let mut rec = std::mem::take(&mut self.partial);
            done.produced += self.open_copy(&mut rec, plain, reply)?;
        }
        // Whole records in place.
        while !self.peer_closed {
            let rest = input.get_mut(done.consumed..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            if rest.len() < HEADER {
                self.keep_partial(rest);
                done.consumed += rest.len();
                break;
            }
            let total = self.record_len(rest)?;
            if rest.len() < total {
                self.keep_partial(rest);
                done.consumed += rest.len();
                break;
            }
            let out = plain.get_mut(done.produced..).unwrap_or_default();
            if out.len() < total {
                break;
            }
            let rec = rest.get_mut(..total).unwrap_or_default();
            done.produced += self.open_copy(rec, out, reply)?;
            done.consumed += total;
        }
        if self.peer_closed {
            // Nothing after close_notify counts (RFC 8446 §6.1): swallow it.
            done.consumed = input.len();
            self.partial = Vec::new();
        }
        Ok(done)
    }

    /// Open the records of `region[data_start..]` where they lie, without copying their
    /// plaintext: each application data record's plaintext is added to `runs` (offsets
    /// into `region`, small ones moved up against the run before them). The whole input
    /// is used: a record cut by its end is kept inside, and a record kept from the last
    /// input is first moved into `region[..data_start]` (the headroom, which must hold
    /// [`MAX_RECORD`] bytes) to be completed in place. KeyUpdate answers go to `reply`.
    ///
    /// Not with a whole record inside ([`RecordLayer::holds_record`]): that one needs
    /// [`RecordLayer::open`].
    pub fn open_in_place(
        &mut self,
        region: &mut [u8],
        data_start: usize,
        runs: &mut Runs,
        reply: &mut Vec<u8>,
    ) -> Result<(), RejectReason> {
        let end = region.len();
        let mut pos = data_start.min(end);
        let mut spare = Vec::new();
        if !self.partial.is_empty() && !self.peer_closed {
            let have = self.partial.len();
            let Some(start) = pos.checked_sub(have) else {
                return Err(bad(Alert::InternalError, "no headroom for a cut record"));
            };
            let head = region
                .get_mut(start..pos)
                .ok_or_else(|| bad(Alert::InternalError, "no headroom for a cut record"))?;
            head.copy_from_slice(&self.partial);
            spare = std::mem::take(&mut self.partial);
            spare.clear();
            pos = start;
        }
        while !self.peer_closed && pos < end {
            let rest = region.get_mut(pos..).unwrap_or_default();
            let total = if rest.len() < HEADER {
                None
            } else {
                Some(self.record_len(rest)?).filter(|&t| t <= rest.len())
            };
            let Some(total) = total else {
                // Cut by the input's end: keep it (reusing the last cut record's buffer).
                if spare.capacity() < MAX_RECORD {
                    spare = Vec::with_capacity(MAX_RECORD);
                }
                spare.extend_from_slice(rest);
                self.partial = spare;
                return Ok(());
            };
            let rec = rest.get_mut(..total).unwrap_or_default();
            let (at, len) = self.open_one(rec, reply)?;
            runs.add(region, pos + at, len);
            pos += total;
        }
        if self.peer_closed {
            // Nothing after close_notify counts (RFC 8446 §6.1).
            self.partial = Vec::new();
        }
        Ok(())
    }

    /// Open one whole record and copy its application data into `plain` (which holds
    /// at least the record's length). Returns the plaintext bytes written.
    fn open_copy(
        &mut self,
        rec: &mut [u8],
        plain: &mut [u8],
        reply: &mut Vec<u8>,
    ) -> Result<usize, RejectReason> {
        let (at, len) = self.open_one(rec, reply)?;
        let src = rec.get(at..at + len).unwrap_or_default();
        let dst = plain
            .get_mut(..len)
            .ok_or_else(|| bad(Alert::InternalError, "plaintext buffer too small"))?;
        dst.copy_from_slice(src);
        Ok(len)
    }

    fn keep_partial(&mut self, bytes: &[u8]) {
        let mut v = Vec::with_capacity(MAX_RECORD);
        v.extend_from_slice(bytes);
        self.partial = v;
    }

    /// The whole record's length from its header (at least [`HEADER`] bytes given),
    /// after the checks that need no key.
    fn record_len(&self, rec: &[u8]) -> Result<usize, RejectReason> {
        let (Some(&typ), Some(&major), Some(&hi), Some(&lo)) =
            (rec.first(), rec.get(1), rec.get(3), rec.get(4))
        else {
            return Err(bad(Alert::DecodeError, "short record header"));
        };
        if major != 3 {
            return Err(bad(Alert::DecodeError, "record version is not TLS"));
        }
        let body = usize::from(u16::from_be_bytes([hi, lo]));
        if body > self.max_body() {
            return Err(bad(
                Alert::RecordOverflow,
                "record longer than the protocol allows",
            ));
        }
        let ok_type = match self.version {
            Version::Tls13 => typ == CT_APPDATA,
            Version::Tls12 => matches!(typ, CT_APPDATA | CT_ALERT | CT_HANDSHAKE),
        };
        if !ok_type {
            return Err(bad(
                Alert::UnexpectedMessage,
                "unexpected record type after the handshake",
            ));
        }
        Ok(HEADER + body)
    }

    /// Decrypt one whole record in place. Returns where its application data now lies
    /// inside `rec` (offset, length); `(0, 0)` for a control record.
    fn open_one(
        &mut self,
        rec: &mut [u8],
        reply: &mut Vec<u8>,
    ) -> Result<(usize, usize), RejectReason> {
        let (header, body) = rec.split_at_mut(HEADER);
        let header: [u8; HEADER] = header
            .try_into()
            .map_err(|_| bad(Alert::DecodeError, "short record header"))?;
        let (typ, content_at, content) = match self.version {
            Version::Tls13 => {
                if body.len() < TAG + 1 {
                    return Err(bad(Alert::DecodeError, "record too short"));
                }
                let nonce = Nonce::assume_unique_for_key(self.rx.nonce());
                let opened = self
                    .rx
                    .key
                    .open_in_place(nonce, Aad::from(header), body)
                    .map_err(|_| bad(Alert::BadRecordMac, "record failed authentication"))?;
                // RFC 8446 §5.4: the whole TLSInnerPlaintext, padding included, is at
                // most 2^14 + 1 bytes.
                if opened.len() > MAX_PLAINTEXT + 1 {
                    return Err(bad(
                        Alert::RecordOverflow,
                        "inner plaintext longer than 2^14 + 1",
                    ));
                }
                // Inner plaintext: content, content type, zero padding.
                let Some(end) = opened.iter().rposition(|b| *b != 0) else {
                    return Err(bad(
                        Alert::UnexpectedMessage,
                        "record without a content type",
                    ));
                };
                let (content, typ) = opened.split_at(end);
                let typ = typ.first().copied().unwrap_or(0);
                (typ, HEADER, content)
            }
            Version::Tls12 => {
                let explicit = if self.rx.explicit_nonce { 8 } else { 0 };
                if body.len() < explicit + TAG {
                    return Err(bad(Alert::DecodeError, "record too short"));
                }
                let mut nonce = self.rx.nonce();
                if explicit > 0 {
                    // RFC 5288 §3: the salt from the key block, then the record's own 8 bytes.
                    for (n, b) in nonce.iter_mut().skip(4).zip(body.iter()) {
                        *n = *b;
                    }
                }
                let plain_len = body.len() - explicit - TAG;
                let mut aad = [0u8; 13];
                aad[..8].copy_from_slice(&self.rx.seq.to_be_bytes());
                aad[8..11].copy_from_slice(&header[..3]);
                aad[11..]
                    .copy_from_slice(&u16::try_from(plain_len).unwrap_or(u16::MAX).to_be_bytes());
                let sealed = body.get_mut(explicit..).unwrap_or_default();
                let opened = self
                    .rx
                    .key
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
                    .map_err(|_| bad(Alert::BadRecordMac, "record failed authentication"))?;
                (header[0], HEADER + explicit, &*opened)
            }
        };
        self.rx.advance()?;
        if content.len() > MAX_PLAINTEXT {
            return Err(bad(Alert::RecordOverflow, "plaintext longer than 2^14"));
        }
        if !self.hs_frag.is_empty() && typ != CT_HANDSHAKE {
            // RFC 8446 §5.1: nothing between the records of one handshake message.
            return Err(bad(
                Alert::UnexpectedMessage,
                "record interleaved with a handshake message",
            ));
        }
        match typ {
            CT_APPDATA => {
                // An empty record does not count as data: it would let a peer reset
                // the KeyUpdate bound for free.
                if !content.is_empty() {
                    self.key_updates_in_a_row = 0;
                }
                Ok((content_at, content.len()))
            }
            CT_ALERT => {
                let &[level, desc] = content else {
                    return Err(bad(Alert::DecodeError, "malformed alert"));
                };
                self.alert(level, desc)?;
                Ok((0, 0))
            }
            CT_HANDSHAKE => {
                let content = content.to_vec();
                self.handshake_record(&content, reply)?;
                Ok((0, 0))
            }
            _ => Err(bad(Alert::UnexpectedMessage, "unexpected content type")),
        }
    }

    /// An alert from the peer. close_notify ends its input (either level); in TLS 1.3
    /// every other alert but a warning-level user_canceled is fatal, whatever its level
    /// (RFC 8446 §6); in TLS 1.2 the level decides (RFC 5246 §7.2). The warnings that
    /// are ignored are bounded ([`MAX_WARNING_ALERTS`]).
    fn alert(&mut self, level: u8, desc: u8) -> Result<(), RejectReason> {
        if !matches!(level, LEVEL_WARNING | LEVEL_FATAL) {
            return Err(bad(Alert::IllegalParameter, "unknown alert level"));
        }
        if desc == ALERT_CLOSE_NOTIFY {
            self.peer_closed = true;
            return Ok(());
        }
        let ignorable = level == LEVEL_WARNING
            && (self.version == Version::Tls12 || desc == ALERT_USER_CANCELED);
        if !ignorable {
            return Err(RejectReason::PeerAlert(Alert::from_code(desc)));
        }
        self.warnings_left = self
            .warnings_left
            .checked_sub(1)
            .ok_or_else(|| bad(Alert::UnexpectedMessage, "too many warning alerts"))?;
        Ok(())
    }

    /// The content of a handshake record after the handshake: joined to the start of a
    /// message an earlier record left, split into messages, each handled; the start of
    /// a message cut by the record's end is kept (at most [`MAX_HANDSHAKE_MESSAGE`]).
    fn handshake_record(
        &mut self,
        content: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<(), RejectReason> {
        if content.is_empty() {
            return Err(bad(Alert::UnexpectedMessage, "empty handshake record"));
        }
        let mut msgs = std::mem::take(&mut self.hs_frag);
        msgs.extend_from_slice(content);
        let mut pos = 0;
        while let Some(&[typ, a, b, c]) = msgs.get(pos..pos + 4) {
            let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
            if 4 + len > MAX_HANDSHAKE_MESSAGE {
                return Err(bad(Alert::DecodeError, "handshake message too long"));
            }
            let Some(body) = msgs.get(pos + 4..pos + 4 + len) else {
                break;
            };
            pos += 4 + len;
            let ends_record = pos == msgs.len();
            self.handshake_message(typ, body, ends_record, reply)?;
        }
        let rest = msgs.get(pos..).unwrap_or_default();
        if rest.len() > MAX_HANDSHAKE_MESSAGE {
            return Err(bad(Alert::DecodeError, "handshake message too long"));
        }
        if !rest.is_empty() {
            self.hs_frag = rest.to_vec();
        }
        Ok(())
    }

    /// One post-handshake handshake message. TLS 1.3: KeyUpdate, and a NewSessionTicket
    /// from a server we connected to. TLS 1.2: a renegotiation request (a ClientHello
    /// toward us as server, a HelloRequest toward us as client) gets the
    /// `no_renegotiation` warning and the session carries on, once
    /// ([`MAX_RENEGOTIATION_REQUESTS`]). Anything else is refused.
    fn handshake_message(
        &mut self,
        typ: u8,
        body: &[u8],
        ends_record: bool,
        reply: &mut Vec<u8>,
    ) -> Result<(), RejectReason> {
        match (self.version, typ, &mut self.kernel) {
            (Version::Tls13, HS_KEY_UPDATE, _) => {
                let requested = match body {
                    [0] => false,
                    [1] => true,
                    [_] => {
                        return Err(bad(
                            Alert::IllegalParameter,
                            "KeyUpdate request_update is neither 0 nor 1",
                        ))
                    }
                    _ => return Err(bad(Alert::DecodeError, "malformed KeyUpdate")),
                };
                self.key_updates_in_a_row = self.key_updates_in_a_row.saturating_add(1);
                if self.key_updates_in_a_row > MAX_KEY_UPDATES_IN_A_ROW {
                    return Err(bad(
                        Alert::UnexpectedMessage,
                        "too many KeyUpdates in a row",
                    ));
                }
                // RFC 8446 §5.1: the key changes at a record boundary.
                if !ends_record {
                    return Err(bad(
                        Alert::UnexpectedMessage,
                        "data after KeyUpdate in its record",
                    ));
                }
                let (seq, secrets) = match &mut self.kernel {
                    Kernel::Server(k) => k.update_rx_secret(),
                    Kernel::Client(k) => k.update_rx_secret(),
                }
                .map_err(|e| RejectReason::from_rustls(&e))?;
                self.rx = Keys::new(seq, secrets, self.version)?;
                self.update_owed |= requested;
                Ok(())
            }
            (Version::Tls13, HS_NEW_SESSION_TICKET, Kernel::Client(k)) => k
                .handle_new_session_ticket(body)
                .map_err(|e| RejectReason::from_rustls(&e)),
            (Version::Tls12, HS_CLIENT_HELLO, Kernel::Server(_))
            | (Version::Tls12, HS_HELLO_REQUEST, Kernel::Client(_)) => {
                if typ == HS_HELLO_REQUEST && !body.is_empty() {
                    return Err(bad(Alert::DecodeError, "malformed HelloRequest"));
                }
                self.renegotiations_left =
                    self.renegotiations_left.checked_sub(1).ok_or_else(|| {
                        bad(Alert::UnexpectedMessage, "too many renegotiation requests")
                    })?;
                self.seal_alert(ALERT_NO_RENEGOTIATION, reply)
            }
            _ => Err(bad(
                Alert::UnexpectedMessage,
                "unexpected handshake message after the handshake",
            )),
        }
    }

    /// Seal KeyUpdate(update_not_requested) under the current key into the front of
    /// `out` (room for [`KEY_UPDATE_RECORD`]), then switch to the next key (RFC 8446
    /// §4.6.3). Returns its length.
    fn seal_key_update(&mut self, out: &mut [u8]) -> Result<usize, RejectReason> {
        let n = self.seal_record(CT_HANDSHAKE, &[HS_KEY_UPDATE, 0, 0, 1, 0], out)?;
        self.next_tx_key()?;
        self.update_owed = false;
        Ok(n)
    }

    /// Switch to the next sending key (the old one is zeroed as it drops).
    fn next_tx_key(&mut self) -> Result<(), RejectReason> {
        let (seq, secrets) = match &mut self.kernel {
            Kernel::Server(k) => k.update_tx_secret(),
            Kernel::Client(k) => k.update_tx_secret(),
        }
        .map_err(|e| RejectReason::from_rustls(&e))?;
        self.tx = Keys::new(seq, secrets, self.version)?;
        Ok(())
    }

    /// Seal the KeyUpdate owed to the peer, if any, into the front of `out`. Returns
    /// its length: 0 when none is owed or `out` has no room for it (it stays owed).
    pub fn seal_owed_update(&mut self, out: &mut [u8]) -> Result<usize, RejectReason> {
        if !self.update_owed || out.len() < KEY_UPDATE_RECORD {
            return Ok(0);
        }
        self.seal_key_update(out)
    }

    /// Seal an alert (close_notify: `desc` 0) onto `out`: at warning level for the
    /// closure alerts and `no_renegotiation`, which are warnings; fatal otherwise.
    pub fn seal_alert(&mut self, desc: u8, out: &mut Vec<u8>) -> Result<(), RejectReason> {
        let level = match desc {
            ALERT_CLOSE_NOTIFY | ALERT_USER_CANCELED | ALERT_NO_RENEGOTIATION => LEVEL_WARNING,
            _ => LEVEL_FATAL,
        };
        self.seal_into_vec(CT_ALERT, &[level, desc], out)
    }

    pub(crate) fn seal_into_vec(
        &mut self,
        typ: u8,
        content: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RejectReason> {
        let at = out.len();
        out.resize(at + content.len() + MAX_OVERHEAD, 0);
        let n = self.seal_record(typ, content, out.get_mut(at..).unwrap_or_default())?;
        out.truncate(at + n);
        Ok(())
    }

    /// Seal application data from `plaintext` into `out`, as many records as fit (each
    /// at most [`MAX_PLAINTEXT`]). Returns (plaintext taken, bytes written). A KeyUpdate
    /// owed to the peer, or one our own confidentiality limit needs (TLS 1.3), goes into
    /// `out` first. At the TLS 1.2 limit sealing stops: what was sealed is returned and
    /// [`RecordLayer::tx_exhausted`] says so (the session then ends with close_notify).
    pub fn seal(
        &mut self,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, usize), RejectReason> {
        let (mut taken, mut written) = (0, 0);
        while taken < plaintext.len() && !self.tx_exhausted {
            if self.tx.seq >= self.tx_limit && self.version == Version::Tls12 {
                self.tx_exhausted = true;
                break;
            }
            if self.update_owed || self.tx.seq >= self.tx_limit {
                // Room for the KeyUpdate record and one byte of data after it, or wait
                // for the next call (an output with more room).
                if out.len().saturating_sub(written) < KEY_UPDATE_RECORD + MAX_OVERHEAD + 1 {
                    break;
                }
                written += self.seal_key_update(out.get_mut(written..).unwrap_or_default())?;
            }
            let room = out.len().saturating_sub(written);
            if room <= MAX_OVERHEAD {
                break;
            }
            let n = (plaintext.len() - taken)
                .min(MAX_PLAINTEXT)
                .min(room - MAX_OVERHEAD);
            let chunk = plaintext.get(taken..taken + n).unwrap_or_default();
            written += self.seal_record(
                CT_APPDATA,
                chunk,
                out.get_mut(written..).unwrap_or_default(),
            )?;
            taken += n;
        }
        Ok((taken, written))
    }

    /// Seal one record of type `typ` into the front of `out` (room for the content plus
    /// [`MAX_OVERHEAD`]). Returns its length.
    fn seal_record(
        &mut self,
        typ: u8,
        content: &[u8],
        out: &mut [u8],
    ) -> Result<usize, RejectReason> {
        let n = content.len();
        let (outer, explicit, inner) = match self.version {
            Version::Tls13 => (CT_APPDATA, 0, 1),
            Version::Tls12 => (typ, if self.tx.explicit_nonce { 8 } else { 0 }, 0),
        };
        let body = explicit + n + inner + TAG;
        let total = HEADER + body;
        let rec = out
            .get_mut(..total)
            .ok_or_else(|| bad(Alert::InternalError, "no room for a record"))?;
        let len = u16::try_from(body).map_err(|_| bad(Alert::InternalError, "record too long"))?;
        let [hi, lo] = len.to_be_bytes();
        let header = [outer, 3, 3, hi, lo];
        let nonce = self.tx.nonce();
        let (head, rest) = rec.split_at_mut(HEADER);
        head.copy_from_slice(&header);
        let (expl, rest) = rest.split_at_mut(explicit);
        expl.copy_from_slice(nonce.get(4..4 + explicit).unwrap_or_default());
        let (data, tag_out) = rest.split_at_mut(n + inner);
        let (text, inner_type) = data.split_at_mut(n);
        text.copy_from_slice(content);
        if let Some(t) = inner_type.first_mut() {
            *t = typ;
        }
        let tag = match self.version {
            Version::Tls13 => self.tx.key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                data,
            ),
            Version::Tls12 => {
                let mut aad = [0u8; 13];
                aad[..8].copy_from_slice(&self.tx.seq.to_be_bytes());
                aad[8] = typ;
                aad[9..11].copy_from_slice(&[3, 3]);
                aad[11..].copy_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
                self.tx.key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    data,
                )
            }
        }
        .map_err(|_| bad(Alert::InternalError, "sealing failed"))?;
        tag_out.copy_from_slice(tag.as_ref());
        self.tx.advance()?;
        Ok(total)
    }
}
