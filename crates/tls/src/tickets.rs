//! Session tickets that remember when the client's certificate chain was last verified.
//!
//! A resumed TLS 1.3 session runs no certificate verification: rustls restores the chain
//! from the ticket. And rustls issues fresh tickets on resumed handshakes too, carrying
//! that same chain, so without a bound a client that resumes often enough keeps a
//! once-verified chain alive for as long as the ticket key lives (review M1). This
//! ticketer wraps rustls' rotating one and puts, inside the encrypted (and so
//! authenticated) ticket, the instant of the full handshake the chain was verified in:
//! - a ticket older than the listener's `max_age` is refused, and so is every ticket
//!   once a configured CRL is past its nextUpdate: the client then makes a full
//!   handshake, which verifies the chain against the current CA bundle and CRLs (and,
//!   with a stale CRL, fails closed as every full handshake does);
//! - a ticket issued on a resumed handshake carries the instant of the original
//!   verification forward, never "now".
//!
//! rustls calls `decrypt` while reading the ClientHello and `encrypt` after the
//! client's Finished, in later calls into the same connection, on the worker's thread.
//! The verification instant travels between them in the session ([`TlsSession`]),
//! lent to this thread for each step ([`enter`] / [`leave`]).
//!
//! A change of CA bundle, CRL or certificate builds a new [`crate::ServerTls`], hence a
//! new ticket key: tickets issued before it are not accepted (the client makes a full
//! handshake).
//!
//! [`TlsSession`]: crate::TlsSession

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::ProducesTickets;

/// Bytes of the verification instant (Unix milliseconds, big-endian) in front of
/// rustls' own ticket plaintext.
const STAMP: usize = 8;

thread_local! {
    /// Unix ms of the full handshake that verified the chain of the session being
    /// resumed, during one step of its handshake on this thread (`None`: not resuming,
    /// so a ticket issued now records now).
    static VERIFIED_AT: Cell<Option<i64>> = const { Cell::new(None) };
}

/// Lend the session's resumed-from instant to this thread for one handshake step.
pub(crate) fn enter(verified_at: Option<i64>) {
    VERIFIED_AT.with(|v| v.set(verified_at));
}

/// Take it back after the step (a ticket decrypted during the step may have set it).
pub(crate) fn leave() -> Option<i64> {
    VERIFIED_AT.with(Cell::take)
}

/// Wall clock in Unix milliseconds (the clock rustls' verifier reads, too).
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// See the module doc.
pub(crate) struct AgedTickets {
    inner: Arc<dyn ProducesTickets>,
    max_age_ms: i64,
    /// Unix seconds of the earliest nextUpdate among the listener's CRLs.
    crl_next_update: Option<i64>,
    clock: fn() -> i64,
}

impl fmt::Debug for AgedTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgedTickets")
            .field("max_age_ms", &self.max_age_ms)
            .field("crl_next_update", &self.crl_next_update)
            .finish_non_exhaustive()
    }
}

impl AgedTickets {
    pub(crate) fn new(
        inner: Arc<dyn ProducesTickets>,
        max_age: Duration,
        crl_next_update: Option<i64>,
    ) -> AgedTickets {
        AgedTickets {
            inner,
            max_age_ms: i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX),
            crl_next_update,
            clock: unix_ms,
        }
    }

    #[cfg(test)]
    fn with_clock(mut self, clock: fn() -> i64) -> AgedTickets {
        self.clock = clock;
        self
    }
}

impl ProducesTickets for AgedTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    /// The lifetime hint the client gets: never past `max_age` (a client may then drop
    /// tickets we would refuse anyway).
    fn lifetime(&self) -> u32 {
        let max_age_s = u32::try_from(self.max_age_ms / 1000).unwrap_or(u32::MAX);
        self.inner.lifetime().min(max_age_s.max(1))
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        // Resuming: the original verification; otherwise it happened in this handshake.
        let verified_at = VERIFIED_AT
            .with(Cell::get)
            .unwrap_or_else(|| (self.clock)());
        let mut stamped = Vec::with_capacity(STAMP + plain.len());
        stamped.extend_from_slice(&verified_at.to_be_bytes());
        stamped.extend_from_slice(plain);
        self.inner.encrypt(&stamped)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let stamped = self.inner.decrypt(cipher)?;
        let (stamp, plain) = stamped.split_at_checked(STAMP)?;
        let verified_at = i64::from_be_bytes(stamp.try_into().ok()?);
        let now = (self.clock)();
        // A stamp from the future (the clock stepped back) counts as verified now, and
        // is carried forward as now: a clock jump cannot lengthen a ticket's life.
        let verified_at = verified_at.min(now);
        if now.saturating_sub(verified_at) >= self.max_age_ms {
            return None;
        }
        if self
            .crl_next_update
            .is_some_and(|n| now >= n.saturating_mul(1000))
        {
            return None;
        }
        // Several tickets in one ClientHello: keep the oldest instant (rustls resumes
        // with at most one of them; older is the safe side).
        VERIFIED_AT.with(|v| {
            v.set(Some(
                v.get().map_or(verified_at, |seen| seen.min(verified_at)),
            ))
        });
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    static NOW_MS: AtomicI64 = AtomicI64::new(1_000_000_000_000);

    fn fake_now() -> i64 {
        NOW_MS.load(Ordering::SeqCst)
    }

    fn tickets(max_age: Duration, crl_next_update: Option<i64>) -> AgedTickets {
        let inner = rustls::crypto::ring::Ticketer::new().unwrap();
        AgedTickets::new(inner, max_age, crl_next_update).with_clock(fake_now)
    }

    // One test, not several: they would share the fake clock across test threads.
    #[test]
    fn tickets_age_from_the_full_handshake_and_end_at_the_crl_next_update() {
        let t0 = 1_000_000_000_000;
        NOW_MS.store(t0, Ordering::SeqCst);
        let t = tickets(Duration::from_secs(60), None);
        assert!(t.lifetime() <= 60);

        // A full handshake (nothing lent): stamped now.
        enter(None);
        let first = t.encrypt(b"session").unwrap();
        assert_eq!(leave(), None);

        // Resumed 50 s later: accepted, and the original instant is lent back...
        NOW_MS.store(t0 + 50_000, Ordering::SeqCst);
        enter(None);
        assert_eq!(t.decrypt(&first).as_deref(), Some(&b"session"[..]));
        let resumed_from = leave();
        assert_eq!(resumed_from, Some(t0));
        // ...so the ticket issued on that resumed handshake carries it forward.
        enter(resumed_from);
        let second = t.encrypt(b"session").unwrap();
        assert_eq!(leave(), Some(t0));

        // 60 s after the full handshake neither ticket is accepted any more, though
        // the second was issued only 10 s ago.
        NOW_MS.store(t0 + 60_000, Ordering::SeqCst);
        enter(None);
        assert_eq!(t.decrypt(&first), None);
        assert_eq!(t.decrypt(&second), None);
        assert_eq!(leave(), None);

        // Tampered, truncated or foreign tickets are refused.
        NOW_MS.store(t0, Ordering::SeqCst);
        let mut bad = first.clone();
        if let Some(b) = bad.last_mut() {
            *b ^= 1;
        }
        assert_eq!(t.decrypt(&bad), None);
        assert_eq!(t.decrypt(&first[..10]), None);
        assert_eq!(tickets(Duration::from_secs(60), None).decrypt(&first), None);

        // Two tickets in one ClientHello: the oldest instant wins.
        let older = t.encrypt(b"a").unwrap();
        NOW_MS.store(t0 + 5_000, Ordering::SeqCst);
        let newer = t.encrypt(b"b").unwrap();
        enter(None);
        assert!(t.decrypt(&newer).is_some());
        assert!(t.decrypt(&older).is_some());
        assert_eq!(leave(), Some(t0));

        // A CRL past its nextUpdate ends every ticket, fresh ones included.
        let next_update_s = (t0 + 10_000) / 1000;
        let t = tickets(Duration::from_secs(3600), Some(next_update_s));
        enter(None);
        let fresh = t.encrypt(b"s").unwrap();
        assert!(t.decrypt(&fresh).is_some());
        NOW_MS.store(t0 + 10_000, Ordering::SeqCst);
        assert_eq!(t.decrypt(&fresh), None);
        leave();
    }
}
