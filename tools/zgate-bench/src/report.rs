//! What a run says: the JSON line on stdout (always, for scripts), a human summary on
//! stderr (unless `--json`), and a progress line on stderr while a measured window
//! longer than a couple of seconds runs (unless `--json`; indicatif draws it only on a
//! terminal, so logs stay clean).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// Windows shorter than this get no progress line.
const PROGRESS_AFTER: Duration = Duration::from_secs(2);
/// The loops tell the bar at most this often (they call [`Progress::tick`] per event).
const TICK_EVERY: Duration = Duration::from_millis(100);

/// A progress line over a measured window of known length.
pub struct Progress {
    bar: Option<ProgressBar>,
    last: Instant,
}

impl Progress {
    /// A line for a window of `window`, counting `what`; hidden with `quiet`, for short
    /// windows, and when stderr is not a terminal.
    pub fn new(quiet: bool, window: Duration, what: &'static str) -> Progress {
        let bar = (!quiet && window >= PROGRESS_AFTER).then(|| {
            let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
            let bar = ProgressBar::new(ms);
            let template = format!("{{elapsed:>3}} [{{bar:30}}] {{msg}} {what}");
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress {
            bar,
            last: Instant::now(),
        }
    }

    /// Where the window is (`elapsed` of it) and how many were counted; cheap to call
    /// on every event (draws at most every 100 ms).
    pub fn tick(&mut self, now: Instant, elapsed: Duration, count: u64) {
        let Some(bar) = &self.bar else { return };
        if now.saturating_duration_since(self.last) < TICK_EVERY {
            return;
        }
        self.last = now;
        bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        bar.set_message(count.to_string());
    }

    /// Remove the line (before the summary is printed).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Print `report`: its JSON line on stdout, and unless `quiet` its summary on stderr.
pub fn print<T: serde::Serialize>(report: &T, quiet: bool) {
    // The line keeps the report's field order; the summary reads the same fields.
    match (serde_json::to_string(report), serde_json::to_value(report)) {
        (Ok(line), Ok(value)) => {
            println!("{line}");
            if !quiet {
                eprintln!("{}", summary(&value));
            }
        }
        (Err(e), _) | (_, Err(e)) => eprintln!("zgate-bench: the report did not serialize: {e}"),
    }
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

/// A latency in µs, in the unit that reads best.
fn lat(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// An integer-ish count with thousands separators.
fn count(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human summary of a report (its JSON value): a few lines a person reads.
pub fn summary(v: &Value) -> String {
    let mode = v.get("mode").and_then(Value::as_str).unwrap_or("?");
    let target = v.get("target").and_then(Value::as_str).unwrap_or("");
    let tls = if v.get("tls").and_then(Value::as_bool) == Some(true) {
        ", TLS"
    } else {
        ""
    };
    let conns = num(v, "connections").map_or(String::new(), |c| {
        format!(
            ", {} connection{}",
            count(c),
            if c == 1.0 { "" } else { "s" }
        )
    });
    let cpu = |key: &str, what: &str| {
        num(v, key).map_or(String::new(), |x| format!("\n  gateway CPU: {x:.2} {what}"))
    };
    match mode {
        "pingpong" | "open-loop" => {
            let rate = num(v, "target_rate")
                .map_or(String::new(), |r| format!(" at {} requests/s", count(r)));
            let late = num(v, "client_late")
                .filter(|l| *l > 0.0)
                .map_or(String::new(), |l| {
                    format!("\n  client late: {} requests left over 1 ms after they were due (the client's own delay)", count(l))
                });
            let p = |k| num(v, k).map_or("-".into(), lat);
            format!(
                "{mode} {target}{tls}{conns}{rate}, {} B {}: {} requests, {} per second\n  latency p50 {}  p99 {}  p99.9 {}  p99.99 {}  max {}{}{late}",
                num(v, "size").map_or("?".into(), count),
                v.get("payload").and_then(Value::as_str).unwrap_or("raw"),
                num(v, "requests").map_or("?".into(), count),
                num(v, "msgs_per_s").map_or("?".into(), count),
                p("p50_us"),
                p("p99_us"),
                p("p999_us"),
                p("p9999_us"),
                p("max_us"),
                cpu("gateway_cpu_us_per_req", "µs per request"),
            )
        }
        "bulk" => format!(
            "bulk {} {target}{tls}{conns}: {:.2} GB sent{} in {:.2} s, {:.2} GB/s{}{}",
            v.get("direction").and_then(Value::as_str).unwrap_or("one-way"),
            num(v, "bytes").unwrap_or(0.0) / 1e9,
            num(v, "bytes_back").map_or(String::new(), |b| format!(", {:.2} GB back", b / 1e9)),
            num(v, "elapsed_s").unwrap_or(0.0),
            num(v, "bytes_per_s").unwrap_or(0.0) / 1e9,
            if num(v, "bytes_back").is_some() {
                " (both ways counted)"
            } else {
                ""
            },
            num(v, "bytes_per_gateway_cpu_s").map_or(String::new(), |b| format!(
                "\n  {:.2} GB per gateway CPU-second",
                b / 1e9
            )),
        ),
        "revoke" => format!(
            "revoke over {} gateway(s), {} rounds x {} affected flows among {}\n  flow closed after the request: p50 {}  p99 {}  max {}\n  after the control process accepted it: p50 {}  p99 {}  max {}\n  bystander flows lost: {}",
            num(v, "gateways").map_or("?".into(), count),
            num(v, "rounds").map_or("?".into(), count),
            num(v, "affected").map_or("?".into(), count),
            num(v, "flows").map_or("?".into(), count),
            num(v, "close_p50_us").map_or("-".into(), lat),
            num(v, "close_p99_us").map_or("-".into(), lat),
            num(v, "close_max_us").map_or("-".into(), lat),
            num(v, "accepted_close_p50_us").map_or("-".into(), lat),
            num(v, "accepted_close_p99_us").map_or("-".into(), lat),
            num(v, "accepted_close_max_us").map_or("-".into(), lat),
            num(v, "bystanders_lost").map_or("?".into(), count),
        ),
        "handshake" => {
            let tls = v.get("negotiated").is_some_and(|n| !n.is_null());
            format!(
                "connection rate {target}, {}, {} at a time: {} connections, {} per second{}\n  {}connect to echo p50 {}  p99 {}{}",
                if tls { "TLS" } else { "plain TCP" },
                num(v, "concurrency").map_or("?".into(), count),
                num(v, "handshakes").map_or("?".into(), count),
                num(v, "handshakes_per_s").map_or("?".into(), count),
                num(v, "resumed")
                    .filter(|r| *r > 0.0)
                    .map_or(String::new(), |r| format!(" ({} resumed)", count(r))),
                if tls {
                    format!(
                        "handshake p50 {}  p99 {};  ",
                        num(v, "handshake_p50_us").map_or("-".into(), lat),
                        num(v, "handshake_p99_us").map_or("-".into(), lat)
                    )
                } else {
                    String::new()
                },
                num(v, "conn_p50_us").map_or("-".into(), lat),
                num(v, "conn_p99_us").map_or("-".into(), lat),
                num(v, "handshakes_per_gateway_cpu_s").map_or(String::new(), |h| format!(
                    "\n  {} per gateway CPU-second",
                    count(h)
                )),
            )
        }
        // idle and anything newer: its fields, one per line.
        _ => {
            let mut out = format!("{mode} {target}{tls}{conns}");
            if let Some(obj) = v.as_object() {
                for (k, x) in obj {
                    if matches!(k.as_str(), "mode" | "target" | "tls" | "connections" | "label")
                        || x.is_null()
                    {
                        continue;
                    }
                    out.push_str(&format!("\n  {k}: {x}"));
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_read_like_numbers_a_person_reads() {
        let v = serde_json::json!({
            "mode": "pingpong", "target": "127.0.0.1:1", "tls": true, "connections": 50,
            "size": 64, "payload": "raw", "requests": 1234567, "msgs_per_s": 149574.2,
            "p50_us": 156.2, "p99_us": 304.0, "p999_us": 1100.0, "p9999_us": 12345.0,
            "max_us": 20000.0, "gateway_cpu_us_per_req": 6.62,
        });
        let s = summary(&v);
        assert!(s.contains("50 connections"), "{s}");
        assert!(s.contains("1,234,567 requests, 149,574 per second"), "{s}");
        assert!(
            s.contains("p99 304 µs  p99.9 1.10 ms  p99.99 12.3 ms"),
            "{s}"
        );
        assert!(s.contains("6.62 µs per request"), "{s}");
        let b = summary(&serde_json::json!({
            "mode": "bulk", "target": "t", "connections": 1, "bytes": 4e9,
            "elapsed_s": 2.0, "bytes_per_s": 2e9, "bytes_per_gateway_cpu_s": 3.64e9,
        }));
        assert!(
            b.contains("2.00 GB/s") && b.contains("3.64 GB per gateway CPU-second"),
            "{b}"
        );
        assert_eq!(count(1000.0), "1,000");
        assert_eq!(count(999.0), "999");
    }
}
