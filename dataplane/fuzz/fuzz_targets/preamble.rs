//! The PostgreSQL preamble reader (`zgate_dataplane::postgres`): arbitrary bytes, split
//! into reads of sizes the first byte picks. Beyond "no panic", `fuzz_one` checks that
//! the reader never takes more than it was given, keeps at most 8 bytes, and reaches a
//! verdict in a bounded number of steps.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = zgate_dataplane::postgres::fuzz_one(data) {
        panic!("{e}");
    }
});
