//! The session-ticket lock every resuming or ticket-issuing handshake takes (review
//! 16, "tests and docs that say the truth": workers were said to share nothing
//! mutable, yet each takes rustls' ticket-key rotator lock). Measured here: issuing and
//! redeeming one ticket (seal + open of ~250 bytes under the rotator's read lock) from
//! one thread, and from one thread while another does the same non-stop on the other
//! core, so the lock's cache line bounces. If the lock showed, the second number would
//! be far above the first; either is to be read beside a full mTLS handshake's ~260 µs
//! of gateway CPU (`docs/benchmarks.md`).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion};
use rustls::server::ProducesTickets;

fn ticketer() -> Arc<dyn ProducesTickets> {
    match rustls::crypto::ring::Ticketer::new() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("benchmark setup failed: ticketer: {e}");
            std::process::exit(1);
        }
    }
}

/// Issue and redeem one ticket.
fn round(t: &dyn ProducesTickets, plain: &[u8]) -> usize {
    let sealed = t.encrypt(plain).unwrap_or_default();
    t.decrypt(&sealed).map_or(0, |p| p.len())
}

fn bench(c: &mut Criterion) {
    let plain = vec![7u8; 250];
    let mut g = c.benchmark_group("ticket");
    let t = ticketer();
    g.bench_function("issue+redeem/alone", |b| {
        b.iter(|| black_box(round(&*t, &plain)));
    });
    let t = ticketer();
    g.bench_function("issue+redeem/beside-another-thread", |b| {
        b.iter_custom(|iters| {
            let stop = Arc::new(AtomicBool::new(false));
            let (t2, stop2, plain2) = (Arc::clone(&t), Arc::clone(&stop), plain.clone());
            let other = std::thread::spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    black_box(round(&*t2, &plain2));
                }
            });
            // The other thread is running before the clock starts.
            std::thread::sleep(Duration::from_millis(1));
            let start = Instant::now();
            for _ in 0..iters {
                black_box(round(&*t, &plain));
            }
            let took = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            let _ = other.join();
            took
        });
    });
    g.finish();
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
}

criterion_main!(benches);
