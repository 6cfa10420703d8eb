//! Time zones flattened, at compile time, into lists of UTC offset changes.
//!
//! `decide` must not call into `jiff` (allocation, locks in the zone cache, and
//! non-trivial cost), so each distinct zone a schedule names becomes a sorted list of
//! `(instant, offset)` transitions from jiff's earliest instant up to [`LIST_END`].
//! Beyond that every zone follows its POSIX rule (the tzdb footer), and a POSIX rule
//! repeats exactly every 400 Gregorian years (146,097 days, a whole number of weeks),
//! so an instant past the list is folded back by whole cycles into
//! `CYCLE_START..LIST_END`, a window that begins well after the last explicit
//! transition in the database. The unit tests check this against jiff over its whole
//! range.

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Earliest instant a schedule can be evaluated at (jiff's `Timestamp::MIN`); earlier
/// instants are outside every schedule, as in the reference evaluator.
pub(crate) const MIN_INSTANT: i64 = -377_705_023_201;
/// Latest instant a schedule can be evaluated at (jiff's `Timestamp::MAX`).
pub(crate) const MAX_INSTANT: i64 = 253_402_207_200;
/// 2100-01-01T00:00:00Z: from here on every zone is governed by its POSIX rule.
pub(crate) const CYCLE_START: i64 = 4_102_444_800;
/// 400 Gregorian years in seconds.
pub(crate) const CYCLE: i64 = 146_097 * 86_400;
/// End of the explicit list: one whole cycle after [`CYCLE_START`].
pub(crate) const LIST_END: i64 = CYCLE_START + CYCLE;
/// Largest UTC offset magnitude accepted when decoding (jiff's limit is 25:59:59).
pub(crate) const MAX_OFFSET: i32 = 26 * 3600;

/// One zone as a transition list. `offsets[i]` is in force from `at[i]` (inclusive)
/// until `at[i + 1]`; `initial` before `at[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Zone {
    pub name: Box<str>,
    pub initial: i32,
    pub at: Box<[i64]>,
    pub offsets: Box<[i32]>,
}

impl Zone {
    /// Flatten the named zone from the bundled database; `None` if it is unknown.
    pub(crate) fn build(name: &str) -> Option<Zone> {
        let tz = TimeZone::get(name).ok()?;
        let initial = tz.to_offset(Timestamp::MIN).seconds();
        let mut at = Vec::new();
        let mut offsets = Vec::new();
        let mut last = initial;
        for t in tz.following(Timestamp::MIN) {
            let when = t.timestamp().as_second();
            if when >= LIST_END {
                break;
            }
            let off = t.offset().seconds();
            // Abbreviation-only changes carry no information for us.
            if off != last {
                at.push(when);
                offsets.push(off);
                last = off;
            }
        }
        Some(Zone {
            name: name.into(),
            initial,
            at: at.into_boxed_slice(),
            offsets: offsets.into_boxed_slice(),
        })
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Zone>()
            + self.name.len()
            + std::mem::size_of_val(&*self.at)
            + std::mem::size_of_val(&*self.offsets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::local_time;

    #[test]
    fn constants_match_jiff() {
        assert_eq!(MIN_INSTANT, Timestamp::MIN.as_second());
        assert_eq!(MAX_INSTANT, Timestamp::MAX.as_second());
        let start: Timestamp = "2100-01-01T00:00:00Z".parse().unwrap();
        let end: Timestamp = "2500-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(CYCLE_START, start.as_second());
        assert_eq!(LIST_END, end.as_second());
    }

    #[test]
    fn unknown_zone_is_none() {
        assert!(Zone::build("Mars/Olympus_Mons").is_none());
        assert!(Zone::build("UTC").is_some_and(|z| z.at.is_empty() && z.initial == 0));
    }

    /// Weekday and second of day against jiff, over instants spread across jiff's
    /// whole range (including far past the explicit list) and around DST changes.
    #[test]
    fn local_time_agrees_with_jiff() {
        let zones = [
            "UTC",
            "Europe/London",
            "America/New_York",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
            "America/Sao_Paulo",
            "Pacific/Chatham",
            "Africa/Casablanca",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for name in zones {
            let zone = Zone::build(name).unwrap();
            let tz = TimeZone::get(name).unwrap();
            let span = (MAX_INSTANT - MIN_INSTANT) as u64;
            let mut instants: Vec<i64> = (0..3000)
                .map(|_| MIN_INSTANT + (next() % span) as i64)
                .collect();
            // Dense near now and around every transition of a few years.
            instants.extend((0..3000).map(|_| 1_700_000_000 + (next() % 400_000_000) as i64));
            for t in tz
                .following("2024-01-01T00:00:00Z".parse().unwrap())
                .take(20)
            {
                let s = t.timestamp().as_second();
                instants.extend([s - 1, s, s + 1]);
            }
            instants.extend([
                MIN_INSTANT,
                MAX_INSTANT,
                LIST_END,
                LIST_END - 1,
                CYCLE_START,
            ]);
            for t in instants {
                let z = Timestamp::from_second(t).unwrap().to_zoned(tz.clone());
                let want_day = z.weekday().to_monday_zero_offset() as u8;
                let want_secs =
                    i64::from(z.hour()) * 3600 + i64::from(z.minute()) * 60 + i64::from(z.second());
                let (day, secs) = local_time(&zone, t).unwrap();
                assert_eq!((day, secs), (want_day, want_secs), "{name} at {t}");
            }
            assert!(local_time(&zone, MIN_INSTANT - 1).is_none());
            assert!(local_time(&zone, MAX_INSTANT + 1).is_none());
        }
    }
}
