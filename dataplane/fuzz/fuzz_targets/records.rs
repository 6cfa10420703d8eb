//! The TLS record layer after a real handshake (`zgate_tls::fuzzing::fuzz_records`):
//! garbage records, and real records cut at fuzzer-chosen places with a byte flipped,
//! both directions. Beyond "no panic", delivered bytes must be exactly what was sent.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = zgate_tls::fuzzing::fuzz_records(data) {
        panic!("{e}");
    }
});
