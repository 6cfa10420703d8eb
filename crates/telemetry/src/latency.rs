//! Latency histograms: what the gateway itself adds (dwell time), and how long
//! handshakes, upstream connects, decisions and flows take, per listener.
//!
//! A worker records into its own [`Latencies`] per listener (plain HdrHistograms: no
//! atomics, no sharing) and hands a copy to the supervisor once a second; the
//! supervisor merges them, keeps a short history for a sliding window, and renders
//! Prometheus histograms ([`prometheus`]) and the `/latency` JSON ([`Summary`]).
//!
//! Each measure is defined once, in [`Measure::ALL`]: its name, unit, help text and
//! Prometheus buckets.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Measure {
    /// Client → upstream: from the completion that brought bytes in to the completion
    /// of the send that carried the last of them out.
    DwellClientToUpstream,
    /// Upstream → client, likewise.
    DwellUpstreamToClient,
    /// A full TLS handshake, from the accept to the handshake's end (client round
    /// trips included).
    HandshakeFull,
    /// A resumed TLS handshake, likewise.
    HandshakeResumed,
    /// Connecting the upstream, from the connect's start to its completion.
    UpstreamConnect,
    /// One decision (`decide` and the permit), sampled: one in [`DECISION_SAMPLE`].
    Decision,
    /// A flow, from its accept to its slot being freed.
    FlowDuration,
    /// Decrypting what one receive brought from a TLS client (its records opened in
    /// place), sampled: one in [`CRYPTO_SAMPLE`].
    TlsOpen,
    /// Encrypting one batch of plaintext for a TLS client (sealed into its output),
    /// sampled: one in [`CRYPTO_SAMPLE`].
    TlsSeal,
}

/// One decision in this many is timed (two clock reads each; the rest cost nothing).
pub const DECISION_SAMPLE: u64 = 64;

/// One TLS open or seal call in this many is timed, per listener on each worker (two
/// clock reads each, ~40 ns, against the ~1-10 µs of the call itself).
pub const CRYPTO_SAMPLE: u64 = 64;

/// How a measure is named and kept.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The Prometheus family (seconds).
    pub family: &'static str,
    /// A label distinguishing measures that share a family, and its value.
    pub label: Option<(&'static str, &'static str)>,
    /// The `/latency` key.
    pub key: &'static str,
    /// HELP text.
    pub help: &'static str,
    /// Nanoseconds per recorded unit (1: ns; 1,000,000: ms).
    pub unit_ns: u64,
    /// Highest value kept, in units (higher ones count as this).
    pub highest: u64,
    /// Prometheus bucket bounds, in seconds.
    pub buckets: &'static [f64],
}

const FAST: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const LONG: &[f64] = &[
    1e-3, 1e-2, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 21_600.0, 86_400.0,
];

const DWELL_HELP: &str = "Time bytes spent in the gateway: from the completion that brought them in to the completion of the send that carried the last of them out (the gateway's own added latency; spliced bulk directions are not timed).";

const CRYPTO_HELP: &str = "The record layer's share of a TLS flow's dwell: decrypting what one receive brought from a client (open) and encrypting one batch of plaintext for it (seal), one call in 64 timed.";

impl Measure {
    /// Every measure, in order.
    pub const ALL: [Measure; 9] = [
        Measure::DwellClientToUpstream,
        Measure::DwellUpstreamToClient,
        Measure::HandshakeFull,
        Measure::HandshakeResumed,
        Measure::UpstreamConnect,
        Measure::Decision,
        Measure::FlowDuration,
        Measure::TlsOpen,
        Measure::TlsSeal,
    ];

    /// How it is named and kept.
    pub fn spec(self) -> Spec {
        let ns = |family, label, key, help| Spec {
            family,
            label,
            key,
            help,
            unit_ns: 1,
            highest: 60_000_000_000,
            buckets: FAST,
        };
        match self {
            Measure::DwellClientToUpstream => ns(
                "zgate_dwell_seconds",
                Some(("direction", "client_to_upstream")),
                "dwell_client_to_upstream",
                DWELL_HELP,
            ),
            Measure::DwellUpstreamToClient => ns(
                "zgate_dwell_seconds",
                Some(("direction", "upstream_to_client")),
                "dwell_upstream_to_client",
                DWELL_HELP,
            ),
            Measure::HandshakeFull => ns(
                "zgate_tls_handshake_seconds",
                Some(("resumed", "false")),
                "tls_handshake_full",
                "TLS handshakes, from the accept to the handshake's end (the client's round trips included), full and resumed apart.",
            ),
            Measure::HandshakeResumed => ns(
                "zgate_tls_handshake_seconds",
                Some(("resumed", "true")),
                "tls_handshake_resumed",
                "TLS handshakes, from the accept to the handshake's end (the client's round trips included), full and resumed apart.",
            ),
            Measure::UpstreamConnect => ns(
                "zgate_upstream_connect_seconds",
                None,
                "upstream_connect",
                "Upstream connects, from their start to their completion (successful ones).",
            ),
            Measure::Decision => ns(
                "zgate_decision_seconds",
                None,
                "decision",
                "Decisions of new flows (the table and the permit), one in 64 timed.",
            ),
            Measure::TlsOpen => ns(
                "zgate_tls_crypto_seconds",
                Some(("op", "open")),
                "tls_open",
                CRYPTO_HELP,
            ),
            Measure::TlsSeal => ns(
                "zgate_tls_crypto_seconds",
                Some(("op", "seal")),
                "tls_seal",
                CRYPTO_HELP,
            ),
            Measure::FlowDuration => Spec {
                family: "zgate_flow_duration_seconds",
                label: None,
                key: "flow_duration",
                help: "Flows, from their accept to their end.",
                unit_ns: 1_000_000,
                highest: 86_400_000 * 30,
                buckets: LONG,
            },
        }
    }
}

/// One listener's histograms (on one worker, or merged).
#[derive(Debug, Clone)]
pub struct Latencies {
    hists: Vec<Histogram<u64>>,
    /// Calls offered to [`Latencies::sample_crypto`] so far: opens, seals (counted
    /// apart: one counter for both, with opens and seals alternating, would sample
    /// only one of them).
    crypto_calls: [u64; 2],
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// Empty histograms, two significant digits (1 % resolution).
    pub fn new() -> Latencies {
        let hists = Measure::ALL
            .iter()
            .filter_map(|m| Histogram::new_with_bounds(1, m.spec().highest, 2).ok())
            .collect();
        Latencies {
            hists,
            crypto_calls: [0; 2],
        }
    }

    /// Whether to time this call of `m` ([`Measure::TlsOpen`] or [`Measure::TlsSeal`]):
    /// one in [`CRYPTO_SAMPLE`] of each.
    #[inline]
    pub fn sample_crypto(&mut self, m: Measure) -> bool {
        let i = usize::from(m == Measure::TlsSeal);
        self.crypto_calls.get_mut(i).is_some_and(|c| {
            *c = c.wrapping_add(1);
            *c % CRYPTO_SAMPLE == 0
        })
    }

    /// Record `ns` nanoseconds for `m` (clamped to its range).
    #[inline]
    pub fn record(&mut self, m: Measure, ns: u64) {
        let unit = m.spec().unit_ns;
        if let Some(h) = self.hists.get_mut(m as usize) {
            h.saturating_record((ns / unit).max(1));
        }
    }

    /// The histogram of `m`.
    pub fn get(&self, m: Measure) -> Option<&Histogram<u64>> {
        self.hists.get(m as usize)
    }

    /// Add `other`'s counts to these.
    pub fn merge(&mut self, other: &Latencies) {
        for (a, b) in self.hists.iter_mut().zip(&other.hists) {
            let _same_bounds = a.add(b);
        }
    }

    /// These counts minus `earlier`'s (a window: `earlier` is an older copy of the same
    /// cumulative histograms). Clamped at zero.
    pub fn since(&self, earlier: &Latencies) -> Latencies {
        let mut out = self.clone();
        for (a, b) in out.hists.iter_mut().zip(&earlier.hists) {
            if a.subtract(b).is_err() {
                // A worker restarted its counts (it cannot today): show what is there.
            }
        }
        out
    }
}

/// Percentiles of one histogram, in microseconds (`/latency`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// 99.99th percentile.
    pub p9999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Summary {
    /// The summary of `m` in `l`.
    pub fn of(l: &Latencies, m: Measure) -> Summary {
        let unit_us = m.spec().unit_ns as f64 / 1e3;
        let Some(h) = l.get(m) else {
            return Summary::empty();
        };
        if h.is_empty() {
            return Summary::empty();
        }
        let q = |p: f64| h.value_at_quantile(p) as f64 * unit_us;
        Summary {
            count: h.len(),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            p9999_us: q(0.9999),
            max_us: h.max() as f64 * unit_us,
        }
    }

    fn empty() -> Summary {
        Summary {
            count: 0,
            p50_us: 0.0,
            p90_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            p9999_us: 0.0,
            max_us: 0.0,
        }
    }
}

/// Prometheus histograms of every measure, per listener (`listeners`: name and its
/// merged histograms), appended to `out`.
pub fn prometheus(out: &mut String, listeners: &[(&str, &Latencies)]) {
    let mut headed: Vec<&str> = Vec::new();
    for m in Measure::ALL {
        let s = m.spec();
        if !headed.contains(&s.family) {
            headed.push(s.family);
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} histogram",
                s.family, s.help, s.family
            );
        }
        for (name, l) in listeners {
            let Some(h) = l.get(m) else { continue };
            let mut labels = format!("listener=\"{}\"", escape(name));
            if let Some((k, v)) = s.label {
                let _ = write!(labels, ",{k}=\"{v}\"");
            }
            let unit_s = s.unit_ns as f64 / 1e9;
            for le in s.buckets {
                // Values are kept in units; a bucket counts those at or below `le`.
                let top = (le / unit_s).floor() as u64;
                let n = if top == 0 { 0 } else { h.count_between(0, top) };
                let _ = writeln!(out, "{}_bucket{{{labels},le=\"{le}\"}} {n}", s.family);
            }
            let _ = writeln!(
                out,
                "{}_bucket{{{labels},le=\"+Inf\"}} {}",
                s.family,
                h.len()
            );
            let sum: f64 = h
                .iter_recorded()
                .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
                .sum::<f64>()
                * unit_s;
            let _ = writeln!(out, "{}_sum{{{labels}}} {sum}", s.family);
            let _ = writeln!(out, "{}_count{{{labels}}} {}", s.family, h.len());
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The reference rows of the histograms for `docs/metrics.md`.
pub fn markdown_rows() -> String {
    let mut out = String::new();
    let mut seen: Vec<&str> = Vec::new();
    for m in Measure::ALL {
        let s = m.spec();
        if seen.contains(&s.family) {
            continue;
        }
        seen.push(s.family);
        let label = s
            .label
            .map(|(k, _)| {
                let values: Vec<String> = Measure::ALL
                    .iter()
                    .filter_map(|o| {
                        let os = o.spec();
                        (os.family == s.family).then(|| os.label.map(|(_, v)| v.to_string()))
                    })
                    .flatten()
                    .collect();
                format!(", `{k}` ({})", values.join(", "))
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{}` | histogram | `listener`{label} | {} |",
            s.family, s.help
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_sums_and_windows() {
        let mut l = Latencies::new();
        for us in [3, 30, 300, 3000] {
            l.record(Measure::DwellClientToUpstream, us * 1000);
        }
        l.record(Measure::FlowDuration, 2_500_000_000);
        let earlier = l.clone();
        l.record(Measure::DwellClientToUpstream, 40_000);
        let mut out = String::new();
        prometheus(&mut out, &[("echo", &l)]);
        assert!(
            out.contains("# TYPE zgate_dwell_seconds histogram"),
            "{out}"
        );
        assert!(
            out.contains(
                "zgate_dwell_seconds_bucket{listener=\"echo\",direction=\"client_to_upstream\",le=\"0.00005\"} 3\n"
            ),
            "{out}"
        );
        assert!(out.contains(
            "zgate_dwell_seconds_count{listener=\"echo\",direction=\"client_to_upstream\"} 5\n"
        ));
        assert!(
            out.contains("zgate_flow_duration_seconds_bucket{listener=\"echo\",le=\"10\"} 1\n"),
            "{out}"
        );
        let w = l.since(&earlier);
        let s = Summary::of(&w, Measure::DwellClientToUpstream);
        assert_eq!(s.count, 1);
        assert!((39.0..=41.0).contains(&s.p50_us), "{s:?}");
        let all = Summary::of(&l, Measure::DwellClientToUpstream);
        assert_eq!(all.count, 5);
        assert!(all.max_us >= 2970.0, "{all:?}");
        // Merging adds counts.
        let mut m = l.clone();
        m.merge(&l);
        assert_eq!(Summary::of(&m, Measure::DwellClientToUpstream).count, 10);
    }
}
