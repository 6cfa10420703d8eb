//! A timing wheel for the flows' deadlines (idle timeout, max lifetime, handshake
//! timeout, the decision's expiry).
//!
//! Why: the worker used to look at every flow every tick (100 ms). At 100,000 flows that
//! is a million slot visits a second on each core, a few milliseconds at a time, and
//! every flow of the core waits through them: a p99.9 spike ten times a second. With the
//! wheel a tick visits only the flows whose next check falls in it; an idle flow with a
//! 5-minute idle timeout is visited about once in those 5 minutes.
//!
//! How: each flow has at most one live entry, at the tick of its earliest deadline
//! (rounded up). When the entry comes due the worker checks the flow as before and, if
//! it lives on, schedules it again from its current state. Deadlines only move later on
//! their own (activity pushes the idle deadline out), so an entry is never late;
//! the events that can make one earlier (a new decision's expiry, an upstream handshake
//! starting) schedule again, and an earlier entry replaces the later one. Replaced and
//! freed entries stay in their bucket and are dropped when it comes due: an entry is
//! live only while the slot still has its generation and its tick. Deadlines past the
//! wheel's horizon get an entry at the horizon and are re-evaluated there.

use std::time::{Duration, Instant};

/// Buckets in the wheel: with the worker's 100 ms tick, a horizon of 409.6 s.
pub const BUCKETS: usize = 4096;

/// No entry scheduled (a slot's `check_tick`).
pub const NOT_SCHEDULED: u64 = u64::MAX;

/// One scheduled check: (slot, generation, tick).
pub type Entry = (u32, u32, u64);

/// The wheel.
pub struct Wheel {
    buckets: Vec<Vec<Entry>>,
    origin: Instant,
    tick: Duration,
    /// Ticks before this one have been handed out.
    done: u64,
}

impl Wheel {
    /// An empty wheel whose tick 0 starts at `origin`.
    pub fn new(origin: Instant, tick: Duration) -> Wheel {
        Wheel {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            origin,
            tick: tick.max(Duration::from_millis(1)),
            done: 0,
        }
    }

    fn ticks(&self, d: Duration) -> u64 {
        u64::try_from(d.as_nanos() / self.tick.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The tick a deadline at `at` is due in: the first whose start is at or after `at`,
    /// but never one already handed out, nor past the horizon.
    pub fn tick_for(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        let mut t = self.ticks(since);
        let start = u32::try_from(t)
            .ok()
            .and_then(|n| self.tick.checked_mul(n))
            .and_then(|d| self.origin.checked_add(d));
        if start.is_none_or(|s| s < at) {
            t = t.saturating_add(1);
        }
        let horizon = self.done.saturating_add(BUCKETS as u64 - 1);
        t.clamp(self.done, horizon)
    }

    /// Schedule `slot` (of generation `gen`) for tick `t` (from [`Wheel::tick_for`]).
    pub fn insert(&mut self, slot: u32, gen: u32, t: u64) {
        let b = usize::try_from(t % BUCKETS as u64).unwrap_or(0);
        if let Some(bucket) = self.buckets.get_mut(b) {
            bucket.push((slot, gen, t));
        }
    }

    /// Move every entry due at `now` into `out` (which the caller drains; checking an
    /// entry's liveness is the caller's business). Visits only the buckets of the ticks
    /// passed since the last call, and each bucket at most once.
    pub fn take_due(&mut self, now: Instant, out: &mut Vec<Entry>) {
        let now_tick = self.ticks(now.saturating_duration_since(self.origin));
        if now_tick < self.done {
            return;
        }
        let span = (now_tick - self.done + 1).min(BUCKETS as u64);
        for k in 0..span {
            let b = usize::try_from((self.done + k) % BUCKETS as u64).unwrap_or(0);
            let Some(bucket) = self.buckets.get_mut(b) else {
                continue;
            };
            // A bucket holds the entries of one tick, except after a stall longer than
            // the horizon: keep any that are not due yet.
            bucket.retain(|e| {
                if e.2 <= now_tick {
                    out.push(*e);
                    false
                } else {
                    true
                }
            });
        }
        self.done = now_tick + 1;
    }

    /// Entries held, live or not (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    /// Any instant will do as the wheel's origin; these tests never wait.
    #[expect(clippy::disallowed_methods, reason = "a test needs one origin instant")]
    fn origin() -> Instant {
        Instant::now()
    }

    #[test]
    fn an_entry_comes_due_in_the_first_tick_at_or_after_its_deadline() {
        let t0 = origin();
        let mut w = Wheel::new(t0, TICK);
        let at = t0 + Duration::from_millis(250);
        let t = w.tick_for(at);
        assert_eq!(t, 3);
        w.insert(7, 1, t);
        let mut out = Vec::new();
        w.take_due(t0 + Duration::from_millis(299), &mut out);
        assert!(out.is_empty());
        w.take_due(t0 + Duration::from_millis(300), &mut out);
        assert_eq!(out, vec![(7, 1, 3)]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn past_deadlines_go_to_the_next_tick_and_far_ones_to_the_horizon() {
        let t0 = origin();
        let mut w = Wheel::new(t0, TICK);
        let mut out = Vec::new();
        w.take_due(t0 + Duration::from_secs(1), &mut out);
        // Ticks 0..=10 are handed out: a deadline in the past is due in tick 11.
        assert_eq!(w.tick_for(t0), 11);
        let far = w.tick_for(t0 + Duration::from_secs(3600));
        assert_eq!(far, 11 + BUCKETS as u64 - 1);
        w.insert(1, 0, far);
        w.take_due(t0 + TICK * 11 * 1 + TICK * (BUCKETS as u32 - 2), &mut out);
        assert!(out.is_empty(), "not before the horizon");
        w.take_due(t0 + TICK * (11 + BUCKETS as u32 - 1), &mut out);
        assert_eq!(out, vec![(1, 0, far)]);
    }

    #[test]
    fn a_stall_longer_than_the_horizon_loses_nothing_and_hands_out_nothing_early() {
        let t0 = origin();
        let mut w = Wheel::new(t0, TICK);
        for i in 0..10_000u32 {
            let at = t0 + Duration::from_millis(u64::from(i) * 37);
            w.insert(i, 0, w.tick_for(at));
        }
        let mut out = Vec::new();
        // 200 s: about half of them (those due by then) come out, in one call.
        let now = t0 + Duration::from_secs(200);
        w.take_due(now, &mut out);
        let due = (0..10_000u64).filter(|i| i * 37 <= 200_000).count();
        assert_eq!(out.len(), due);
        assert!(out.iter().all(|e| e.2 <= 2000));
        // A stall of ten horizons: everything left comes out, once.
        out.clear();
        w.take_due(now + TICK * (10 * BUCKETS as u32), &mut out);
        assert_eq!(out.len(), 10_000 - due);
        assert_eq!(w.len(), 0);
    }
}
