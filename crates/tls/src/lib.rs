//! zgate's TLS layer: the only crate that touches rustls (STYLE A.3).
//!
//! What it does:
//! - builds a listener's TLS configuration from PEM bytes with a typestate builder
//!   ([`ServerTls::builder`]): server certificates selected by SNI, client auth
//!   required / optional / none against a CA bundle, or one bundle per SPIFFE trust
//!   domain, with optional CRLs, ALPN, minimum version (TLS 1.3 by default; TLS 1.2
//!   only with Extended Master Secret), session resumption on or off, each ticket
//!   bounded by the age of the verification it resumes and by the CRLs' nextUpdate;
//! - verifies client certificates with webpki and then enforces the SPIFFE X.509-SVID
//!   rules webpki leaves out ([`svid`]; `docs/tls.md` lists each gap);
//! - drives one server session with byte slices ([`TlsSession`]): the dataplane's
//!   io_uring loop owns sockets and buffers;
//! - extracts the peer identity ([`PeerIdentityOwned`]) and lends it to decisions as a
//!   [`zgate_table::facts::PeerIdentity`];
//! - classifies every failure ([`RejectReason`]) with its TLS alert and a metric label.
//!
//! - originates TLS to upstreams ([`ClientTls`]): verifies the upstream by CA and name,
//!   optionally presents the gateway's own certificate; the same [`TlsSession`] drives it.
//!
//! What it does not do: read files or sockets (sans-IO: PEM bytes in), watch files for
//! reload. The caller passes time where it matters; the one clock read here is the
//! wall clock rustls' verifier reads too, for session tickets' age (`tickets.rs`).
//!
//! Invariants:
//! - A [`PeerIdentityOwned`] is made only from a certificate this crate's verifier
//!   accepted; its SPIFFE ID is the certificate's one URI SAN, parsed and validated,
//!   never a string found elsewhere in the certificate.
//! - With per-trust-domain bundles, a chain is validated only against the bundle of its
//!   leaf's SPIFFE trust domain: a CA never vouches for another trust domain's IDs.
//! - rustls types do not appear in the public API, so a rustls upgrade touches only
//!   this crate.
//! - Traffic keys are zeroed when they are dropped (`wipe.rs`, the crate's one `unsafe`
//!   block: ring does not zero its key schedules).
#![deny(unsafe_code)]

mod client;
mod config;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod record;
mod session;
pub mod svid;
mod tickets;
#[expect(
    unsafe_code,
    reason = "zeroes ring's traffic keys on drop: one block, its SAFETY note says why"
)]
mod wipe;

pub use client::{ClientTls, ClientTlsSpec};
pub use config::{
    ClientAuth, MinVersion, NeedCert, NeedClientAuth, Ready, ServerTls, ServerTlsBuilder,
    SpiffeVerifierSlot, DEFAULT_RESUMPTION_MAX_AGE,
};
pub use error::{Alert, RejectReason, SvidError, TlsConfigError, REJECT_LABELS};
pub use record::{Opened, Runs, MAX_OVERHEAD, MAX_PLAINTEXT, MAX_RECORD, MAX_RUNS};
pub use session::{Sealed, TlsSession};
pub use svid::{DnsRefs, PeerIdentityOwned};

#[cfg(test)]
mod tests;
