//! Raw AEAD speed of ring on this CPU: seal (encrypt + tag) and open (verify + decrypt)
//! of one 16 KiB TLS record's worth of plaintext, in place, with AES-256-GCM,
//! AES-128-GCM and ChaCha20-Poly1305 (the three TLS 1.3 suites rustls offers).
//!
//! This is the floor under TLS bulk throughput: a gateway that terminates TLS must at
//! least open every record it receives (client to upstream) and seal every record it
//! sends (upstream to client). `docs/benchmarks.md` ("TLS") compares the gateway's
//! bytes per CPU-second with these bytes per second for the negotiated suite.
//!
//! `copy/memcpy` is a plain 16 KiB `copy_from_slice` beside them, and
//! `copy/memcpy-src-offset-5` the same from 5 bytes into a buffer (a record's plaintext
//! behind its header): a buffered TLS path also copies every record a few times.
//!
//! The nonce changes per record (a counter, as in TLS 1.3); the 5-byte additional data
//! is a TLS 1.3 record header. No allocation inside the timed loop.

use std::hint::black_box;

use criterion::{criterion_main, BatchSize, Criterion, Throughput};
use ring::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};

/// A full TLS record's plaintext.
const RECORD: usize = 16 * 1024;

fn key(alg: &'static ring::aead::Algorithm) -> LessSafeKey {
    let bytes = vec![0x42u8; alg.key_len()];
    match UnboundKey::new(alg, &bytes) {
        Ok(k) => LessSafeKey::new(k),
        Err(e) => {
            eprintln!("benchmark setup failed: key for {alg:?}: {e}");
            std::process::exit(1);
        }
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    for (d, s) in n.iter_mut().skip(4).zip(counter.to_be_bytes()) {
        *d = s;
    }
    Nonce::assume_unique_for_key(n)
}

/// TLS 1.3 record header for a full record: application_data, legacy version, length.
fn header() -> [u8; 5] {
    let len = u16::try_from(RECORD + 17).unwrap_or(u16::MAX).to_be_bytes();
    [23, 3, 3, len[0], len[1]]
}

fn aead(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead-16k");
    g.throughput(Throughput::Bytes(RECORD as u64));
    let algs: [(&str, &'static ring::aead::Algorithm); 3] = [
        ("aes-256-gcm", &AES_256_GCM),
        ("aes-128-gcm", &AES_128_GCM),
        ("chacha20-poly1305", &CHACHA20_POLY1305),
    ];
    for (name, alg) in algs {
        let k = key(alg);
        let hdr = header();
        let mut buf = vec![0x5au8; RECORD];
        let mut counter = 0u64;
        g.bench_function(format!("seal/{name}"), |b| {
            b.iter(|| {
                counter = counter.wrapping_add(1);
                let tag = k.seal_in_place_separate_tag(
                    nonce(counter),
                    Aad::from(hdr),
                    black_box(buf.as_mut_slice()),
                );
                black_box(tag.is_ok())
            });
        });

        // Open needs a valid record: seal one; each iteration opens a fresh copy of it,
        // made outside the timed routine (`iter_batched_ref`), so only the open is timed.
        let mut sealed = vec![0x5au8; RECORD];
        match k.seal_in_place_separate_tag(nonce(0), Aad::from(hdr), &mut sealed) {
            Ok(tag) => sealed.extend_from_slice(tag.as_ref()),
            Err(_) => {
                eprintln!("benchmark setup failed: seal for {name}");
                std::process::exit(1);
            }
        }
        let mut check = sealed.clone();
        if k.open_in_place(nonce(0), Aad::from(hdr), &mut check)
            .map(|p| p.len())
            != Ok(RECORD)
        {
            eprintln!("benchmark setup failed: open for {name}");
            std::process::exit(1);
        }
        g.bench_function(format!("open/{name}"), |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |work| {
                    let r =
                        k.open_in_place(nonce(0), Aad::from(hdr), black_box(work.as_mut_slice()));
                    black_box(r.map(|p| p.len()).unwrap_or(0))
                },
                BatchSize::SmallInput,
            );
        });
    }
    // A plain 16 KiB copy, the other per-record cost of a buffered TLS path (rustls'
    // buffered API copies each record in, out to a Vec and out to the caller). glibc
    // picks `rep movsb` or vector loops by size (GLIBC_TUNABLES
    // glibc.cpu.x86_rep_movsb_threshold), which matters on some AMD CPUs.
    let src = vec![0x5au8; RECORD];
    let mut dst = vec![0u8; RECORD];
    g.bench_function("copy/memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(dst.as_ptr())
        });
    });
    // The same from 5 bytes into a buffer (a record's plaintext after its header), as
    // rustls copies decrypted plaintext out of its receive buffer.
    let src5 = vec![0x5au8; RECORD + 5];
    g.bench_function("copy/memcpy-src-offset-5", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(src5.get(5..).unwrap_or_default()));
            black_box(dst.as_ptr())
        });
    });
    g.finish();
}

/// Private, so the undocumented `pub fn` that `criterion_group!` generates is not exported.
mod groups {
    criterion::criterion_group!(benches, super::aead);
}
criterion_main!(groups::benches);
