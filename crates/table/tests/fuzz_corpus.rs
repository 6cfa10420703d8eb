//! The loader fuzz target's checked-in seeds, replayed as an ordinary test so CI runs
//! the corpus on every change (the fuzzer itself needs a sanitizer build and minutes).
//! Each seed is a table written by `examples/fuzz_corpus.rs`: it must decode, decide
//! without panicking, and re-encode to the same bytes; every truncation of it must be
//! refused with an error.

#![expect(
    clippy::disallowed_methods,
    reason = "the test reads the corpus files it replays; the crate itself does no IO"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use zgate_table::{DecisionTable, FlowFacts};

#[test]
fn every_seed_decodes_decides_and_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_table");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let table = DecisionTable::decode(&bytes)
            .unwrap_or_else(|e| panic!("seed {} does not decode: {e}", path.display()));
        for service in table.service_names().chain(["unknown"]) {
            let flow = FlowFacts::plain(
                service,
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                1_780_000_000,
            );
            let _ = table.decide(&flow, &Default::default());
        }
        assert_eq!(
            table.encode(),
            bytes,
            "seed {} re-encodes differently",
            path.display()
        );
        for cut in 0..bytes.len() {
            assert!(
                DecisionTable::decode(&bytes[..cut]).is_err(),
                "seed {} truncated to {cut} bytes was accepted",
                path.display()
            );
        }
        seeds += 1;
    }
    assert!(
        seeds >= 2,
        "expected the checked-in seeds in {}",
        dir.display()
    );
}
