//! Gateway CPU time from `/proc/PID/stat`: user + system ticks of every thread of the
//! process (the kernel sums threads into the process line), for the measured window.

use crate::LoadError;

/// A sum of CPU ticks over the watched processes at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    ticks: u64,
}

/// Reads user+system ticks of each pid and sums them. No pids: zero.
pub fn sample(pids: &[u32]) -> Result<Sample, LoadError> {
    let mut ticks = 0u64;
    for &pid in pids {
        let text =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| LoadError::Cpu {
                pid,
                reason: e.to_string(),
            })?;
        ticks = ticks.saturating_add(parse_stat(&text).ok_or_else(|| LoadError::Cpu {
            pid,
            reason: "unexpected /proc/PID/stat format".to_owned(),
        })?);
    }
    Ok(Sample { ticks })
}

/// utime + stime from one `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and `)`, so fields are counted from the
/// last `)`: after it come state (field 3) ... utime (14), stime (15).
fn parse_stat(text: &str) -> Option<u64> {
    let rest = text.get(text.rfind(')')?.checked_add(1)?..)?;
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// CPU seconds spent between two samples, or `None` when no pid was watched.
pub fn seconds_between(pids: &[u32], before: Sample, after: Sample, clk_tck: u64) -> Option<f64> {
    if pids.is_empty() || clk_tck == 0 {
        return None;
    }
    #[expect(clippy::cast_precision_loss, reason = "tick counts are far below 2^52")]
    Some(after.ticks.saturating_sub(before.ticks) as f64 / clk_tck as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_after_a_name_with_spaces_and_parens() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 100 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some(325));
    }

    #[test]
    fn refuses_a_truncated_line() {
        assert_eq!(parse_stat("1234 (x) S 1 2 3"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        // At 100 Hz the counter may not move between two reads; check that reading
        // works and never goes backwards.
        let a = sample(&[me]).unwrap();
        let b = sample(&[me]).unwrap();
        assert!(b.ticks >= a.ticks);
        assert_eq!(seconds_between(&[], a, b, 100), None);
        assert!(seconds_between(&[me], a, b, 100).unwrap() >= 0.0);
    }
}
