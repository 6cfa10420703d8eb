//! The supervisor's side of the latency histograms: once a second it merges the copies
//! the workers handed over (per listener) and keeps the last few merges, so that
//! `/latency` and `/metrics` can show both since start and the last [`WINDOW`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;
use zgate_telemetry::latency::{Latencies, Measure, Summary};

use crate::shared::WorkerStats;

/// The sliding window `/latency` reports beside "since start".
pub const WINDOW: Duration = Duration::from_secs(10);
/// Merges are taken this often (workers hand copies over once a second).
const EVERY: Duration = Duration::from_secs(1);

/// Merged histograms over time.
#[derive(Debug, Default)]
pub struct LatencyBook {
    /// (when, per listener merged over workers), oldest first, covering [`WINDOW`].
    history: VecDeque<(Instant, Vec<Latencies>)>,
}

impl LatencyBook {
    /// Merge the workers' latest copies if a second has passed since the last merge.
    pub fn sample(&mut self, now: Instant, workers: &[&WorkerStats], listeners: usize) {
        if self
            .history
            .back()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) < EVERY)
        {
            return;
        }
        let mut merged: Vec<Latencies> = (0..listeners).map(|_| Latencies::new()).collect();
        let mut any = false;
        for w in workers {
            if let Some(copy) = w.latency.load_full() {
                any = true;
                for (m, l) in merged.iter_mut().zip(copy.iter()) {
                    m.merge(l);
                }
            }
        }
        if !any {
            return;
        }
        if self.history.is_empty() {
            // The window starts at the start, until it has a full WINDOW behind it.
            self.history
                .push_back((now, (0..listeners).map(|_| Latencies::new()).collect()));
        }
        self.history.push_back((now, merged));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > WINDOW)
        {
            self.history.pop_front();
        }
    }

    /// Per listener, since start (as of the last merge).
    pub fn since_start(&self) -> Option<&[Latencies]> {
        self.history.back().map(|(_, l)| l.as_slice())
    }

    /// Per listener, over the last [`WINDOW`] (or what the history covers).
    pub fn window(&self) -> Option<Vec<Latencies>> {
        let (_, newest) = self.history.back()?;
        let (_, oldest) = self.history.front()?;
        Some(newest.iter().zip(oldest).map(|(n, o)| n.since(o)).collect())
    }
}

#[derive(Serialize)]
struct Json<'a> {
    window_s: u64,
    listeners: Vec<ListenerJson<'a>>,
}

#[derive(Serialize)]
struct ListenerJson<'a> {
    listener: &'a str,
    measures: Vec<MeasureJson>,
}

#[derive(Serialize)]
struct MeasureJson {
    measure: &'static str,
    since_start: Summary,
    last_window: Summary,
}

/// `/latency`: per listener and measure, percentiles since start and over the window.
pub fn json(names: &[String], since_start: &[Latencies], window: &[Latencies]) -> String {
    let listeners = names
        .iter()
        .zip(since_start.iter().zip(window))
        .map(|(name, (all, win))| ListenerJson {
            listener: name,
            measures: Measure::ALL
                .iter()
                .map(|&m| MeasureJson {
                    measure: m.spec().key,
                    since_start: Summary::of(all, m),
                    last_window: Summary::of(win, m),
                })
                .collect(),
        })
        .collect();
    serde_json::to_string_pretty(&Json {
        window_s: WINDOW.as_secs(),
        listeners,
    })
    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
