//! `zgate doctor`: is this host set up for this config? Read-only: it reads `/proc` and
//! `/sys` (under a root that tests point at fixture files) and, on the real host, tries
//! the io_uring set-up the workers use. Each finding says what was found, what to
//! change and why, pointing at `hw-config/`. Errors are what would stop the gateway
//! from running this config; warnings what would hurt it; advice what would help the
//! tail.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Config, Host, PollMode};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// As it should be.
    Ok,
    /// Worth knowing; changes nothing by itself.
    Info,
    /// Would help the latency tail.
    Advice,
    /// Would hurt this config under load.
    Warning,
    /// The gateway cannot run this config here.
    Error,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Info => "info",
            Level::Advice => "advice",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How much it matters.
    pub level: Level,
    /// What was looked at.
    pub topic: &'static str,
    /// What was found.
    pub found: String,
    /// What to change, and why (empty when nothing).
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<8} {}: {}",
            self.level.label(),
            self.topic,
            self.found
        )?;
        if !self.fix.is_empty() {
            write!(f, "\n         -> {}", self.fix)?;
        }
        Ok(())
    }
}

/// Where the host's files are read from (`/`, or a fixture tree).
pub struct Root {
    dir: PathBuf,
    /// Whether this is the real host (live probes: io_uring).
    live: bool,
}

impl Root {
    /// The real host.
    pub fn host() -> Root {
        Root {
            dir: PathBuf::from("/"),
            live: true,
        }
    }

    /// A fixture tree standing for `/` (no live probe).
    pub fn fixture(dir: &Path) -> Root {
        Root {
            dir: dir.to_path_buf(),
            live: false,
        }
    }

    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(path.trim_start_matches('/')))
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn list(&self, path: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join(path.trim_start_matches('/')))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A CPU list as the kernel writes it (`0-3,8,10-11`).
pub fn parse_cpu_list(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b.min(a + 4096));
                }
            }
            None => {
                if let Ok(c) = part.parse() {
                    out.push(c);
                }
            }
        }
    }
    out
}

fn cores_text(c: &[usize]) -> String {
    c.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Every finding for `config` on the host under `root`.
pub fn examine(config: &Config, host: &Host, root: &Root) -> Vec<Finding> {
    let mut out = Vec::new();
    let cores = config.worker_cores(host);
    let mut push = |level, topic, found: String, fix: &str| {
        out.push(Finding {
            level,
            topic,
            found,
            fix: fix.to_string(),
        });
    };

    // Worker cores exist and are online.
    let online = root
        .read("/sys/devices/system/cpu/online")
        .map(|t| parse_cpu_list(&t))
        .unwrap_or_default();
    let offline: Vec<usize> = cores
        .iter()
        .copied()
        .filter(|c| !online.contains(c))
        .collect();
    if online.is_empty() {
        push(
            Level::Info,
            "worker cores",
            "cannot read the online CPUs".into(),
            "",
        );
    } else if offline.is_empty() {
        push(
            Level::Ok,
            "worker cores",
            format!("{} online", cores_text(&cores)),
            "",
        );
    } else {
        push(
            Level::Error,
            "worker cores",
            format!(
                "{} not online (online: {})",
                cores_text(&offline),
                cores_text(&online)
            ),
            "name online cores in [workers] cores (lscpu -e)",
        );
    }

    // Frequency governor.
    let mut not_performance = Vec::new();
    let mut governors = Vec::new();
    for c in &cores {
        if let Some(g) = root.read(&format!(
            "/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"
        )) {
            if g != "performance" {
                not_performance.push(*c);
            }
            governors.push(g);
        }
    }
    if governors.is_empty() {
        push(
            Level::Info,
            "cpu frequency governor",
            "no cpufreq on the worker cores (a VM, or the firmware decides)".into(),
            "",
        );
    } else if not_performance.is_empty() {
        push(
            Level::Ok,
            "cpu frequency governor",
            "performance on every worker core".into(),
            "",
        );
    } else {
        push(
            Level::Warning,
            "cpu frequency governor",
            format!("cores {} not on `performance` ({})", cores_text(&not_performance), governors.join(", ")),
            "`cpupower frequency-set -g performance`: a core that clocks down between bursts adds its ramp-up time to the next request",
        );
    }

    // Deep idle states.
    let mut deep = Vec::new();
    for c in &cores {
        let base = format!("/sys/devices/system/cpu/cpu{c}/cpuidle");
        for s in root.list(&base) {
            let lat: u64 = root
                .read(&format!("{base}/{s}/latency"))
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let disabled = root.read(&format!("{base}/{s}/disable")).as_deref() == Some("1");
            if lat > 10 && !disabled {
                let name = root.read(&format!("{base}/{s}/name")).unwrap_or(s.clone());
                deep.push(format!("cpu{c} {name} ({lat} us)"));
            }
        }
    }
    if deep.is_empty() {
        push(
            Level::Ok,
            "cpu idle states",
            "no idle state deeper than 10 us enabled on worker cores".into(),
            "",
        );
    } else {
        deep.dedup();
        let shown: Vec<String> = deep.iter().take(4).cloned().collect();
        push(
            Level::Advice,
            "cpu idle states",
            format!("{} enabled{}", shown.join(", "), if deep.len() > 4 { ", ..." } else { "" }),
            "a worker waking from a deep C-state pays its exit latency on the first packet: `cpupower idle-set -D 10` on worker cores, or poll = \"busy\"/\"adaptive\" (hw-config/README.md)",
        );
    }

    // Isolation.
    let isolated = root
        .read("/sys/devices/system/cpu/isolated")
        .map(|t| parse_cpu_list(&t))
        .unwrap_or_default();
    let nohz = root
        .read("/sys/devices/system/cpu/nohz_full")
        .map(|t| parse_cpu_list(&t))
        .unwrap_or_default();
    let not_isolated: Vec<usize> = cores
        .iter()
        .copied()
        .filter(|c| !isolated.contains(c))
        .collect();
    if not_isolated.is_empty() {
        push(
            Level::Ok,
            "isolated cores",
            format!("worker cores {} isolated", cores_text(&cores)),
            "",
        );
    } else {
        push(
            Level::Advice,
            "isolated cores",
            format!("worker cores {} not isolated (isolated: {}, nohz_full: {})", cores_text(&not_isolated),
                if isolated.is_empty() { "none".into() } else { cores_text(&isolated) },
                if nohz.is_empty() { "none".into() } else { cores_text(&nohz) }),
            "keep other work off the worker cores: isolcpus= and nohz_full= on the kernel command line, or systemd CPUAffinity= for everything else (hw-config/README.md)",
        );
    }
    if matches!(config.workers.poll, PollMode::Busy) && !not_isolated.is_empty() {
        push(
            Level::Warning,
            "busy polling",
            "poll = \"busy\" on cores that are not isolated".into(),
            "a busy worker takes its whole core from whatever else runs there: isolate the cores, or use poll = \"adaptive\"",
        );
    }

    // NIC interrupts.
    let irqs = nic_irqs(root);
    if irqs.is_empty() {
        push(
            Level::Info,
            "nic interrupts",
            "no NIC queue interrupts found in /proc/interrupts".into(),
            "",
        );
    } else {
        let mut on_workers = 0;
        for (_, cpus) in &irqs {
            if cpus.iter().any(|c| cores.contains(c)) {
                on_workers += 1;
            }
        }
        if on_workers == 0 {
            push(
                Level::Advice,
                "nic interrupts",
                format!("{} NIC queue interrupt(s), none steered to a worker core", irqs.len()),
                "steer queue i's interrupt to worker core i (/proc/irq/N/smp_affinity_list, irqbalance off or banned there) so a packet is handled where its worker runs (hw-config/README.md)",
            );
        } else {
            push(
                Level::Ok,
                "nic interrupts",
                format!(
                    "{on_workers} of {} NIC queue interrupt(s) on worker cores",
                    irqs.len()
                ),
                "",
            );
        }
    }

    // Transparent huge pages.
    if let Some(thp) = root.read("/sys/kernel/mm/transparent_hugepage/enabled") {
        let mode = thp
            .split_whitespace()
            .find(|w| w.starts_with('['))
            .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
            .unwrap_or(thp.clone());
        if mode == "always" {
            push(
                Level::Advice,
                "transparent huge pages",
                "always".into(),
                "`madvise` avoids khugepaged compaction stalls on the gateway's threads (echo madvise > /sys/kernel/mm/transparent_hugepage/enabled)",
            );
        } else {
            push(Level::Ok, "transparent huge pages", mode, "");
        }
    }

    // Accept backlog.
    if let Some(n) = root
        .read("/proc/sys/net/core/somaxconn")
        .and_then(|s| s.parse::<u64>().ok())
    {
        if n < 4096 {
            push(
                Level::Warning,
                "net.core.somaxconn",
                format!("{n}: each worker's listen backlog (4096) is cut to it"),
                "a burst of connects beyond it is dropped: hw-config/90-zgate.conf sets 65535",
            );
        } else {
            push(Level::Ok, "net.core.somaxconn", n.to_string(), "");
        }
    }

    // Socket buffers (bulk).
    let rmem = root
        .read("/proc/sys/net/core/rmem_max")
        .and_then(|s| s.parse::<u64>().ok());
    let wmem = root
        .read("/proc/sys/net/core/wmem_max")
        .and_then(|s| s.parse::<u64>().ok());
    if let (Some(r), Some(w)) = (rmem, wmem) {
        let level = if r < 4 << 20 || w < 4 << 20 {
            Level::Advice
        } else {
            Level::Ok
        };
        push(
            level,
            "socket buffer limits",
            format!("rmem_max {r}, wmem_max {w}"),
            if level == Level::Ok {
                ""
            } else {
                "bulk flows over long, fast paths want larger windows: net.core.rmem_max/wmem_max of 16 MiB and tcp_rmem/tcp_wmem to match"
            },
        );
    }
    if let Some(bp) = root.read("/proc/sys/net/core/busy_poll") {
        push(
            Level::Info,
            "net.core.busy_poll",
            format!("{bp} (zgate's own poll modes do not depend on it)"),
            "",
        );
    }

    // Open files.
    let need: u64 = 2 * config
        .listeners
        .iter()
        .map(|l| u64::from(l.max_connections))
        .sum::<u64>()
        + 256;
    match root.read("/proc/self/limits").and_then(|t| hard_nofile(&t)) {
        Some(hard) if hard < need => push(
            Level::Warning,
            "open files",
            format!(
                "hard limit {hard}, but the listeners' max_connections need {need} (two per flow, plus 256): at most {} flows at once",
                hard.saturating_sub(256) / 2
            ),
            "raise LimitNOFILE (hw-config/zgate.service) or lower max_connections",
        ),
        Some(hard) => push(Level::Ok, "open files", format!("hard limit {hard} >= {need}"), ""),
        None => push(Level::Info, "open files", "cannot read the limit".into(), ""),
    }

    // Pipes for splice.
    if config.workers.splice {
        if let Some(pages) = root
            .read("/proc/sys/fs/pipe-user-pages-soft")
            .and_then(|s| s.parse::<u64>().ok())
        {
            let full = pages * 4096 / (1 << 20);
            let want = u64::from(config.workers.splice_pipes) * cores.len().max(1) as u64;
            if pages != 0 && full < want {
                push(
                    Level::Advice,
                    "splice pipes",
                    format!("fs.pipe-user-pages-soft allows {full} pipes of 1 MiB; the workers may hold {want}"),
                    "past it new pipes are cut to 64 KiB and bulk costs more CPU: hw-config/90-zgate.conf sets 262144 (1 GiB)",
                );
            } else {
                push(
                    Level::Ok,
                    "splice pipes",
                    format!(
                        "room for {} pipes of 1 MiB",
                        if pages == 0 {
                            "unlimited".to_string()
                        } else {
                            full.to_string()
                        }
                    ),
                    "",
                );
            }
        }
    }

    // kTLS.
    let ulps = root
        .read("/proc/sys/net/ipv4/tcp_available_ulp")
        .unwrap_or_default();
    push(
        Level::Info,
        "kTLS",
        if ulps.split_whitespace().any(|u| u == "tls") {
            "available (zgate seals and opens records in user space today)".into()
        } else {
            "not available on this kernel (zgate seals and opens records in user space)".into()
        },
        "",
    );

    // io_uring.
    match root.read("/proc/sys/kernel/io_uring_disabled").as_deref() {
        Some("2") => push(
            Level::Error,
            "io_uring",
            "disabled (kernel.io_uring_disabled = 2)".into(),
            "zgate's workers run on io_uring: sysctl kernel.io_uring_disabled=0",
        ),
        Some("1") => push(
            Level::Warning,
            "io_uring",
            "restricted to kernel.io_uring_group (kernel.io_uring_disabled = 1)".into(),
            "run the gateway in that group, or set kernel.io_uring_disabled=0",
        ),
        _ => {}
    }
    if root.live {
        match crate::sys::probe_ring(config.workers.defer_taskrun) {
            Ok(()) => push(
                Level::Ok,
                "io_uring",
                "a worker's ring and buffer ring set up".into(),
                "",
            ),
            Err(e) => push(
                Level::Error,
                "io_uring",
                format!("a worker's ring cannot be set up: {e}"),
                "a kernel 6.1 or later with io_uring enabled is needed",
            ),
        }
    }

    // Privileges.
    let low: Vec<String> = config
        .listeners
        .iter()
        .filter(|l| l.listen.port() < 1024)
        .map(|l| format!("`{}` ({})", l.name, l.listen))
        .collect();
    let status = root.read("/proc/self/status").unwrap_or_default();
    let uid0 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false);
    let bind_cap = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 10) != 0);
    if !low.is_empty() && !uid0 && !bind_cap {
        push(
            Level::Error,
            "privileges",
            format!("listeners {} need a port under 1024, and this process has neither root nor CAP_NET_BIND_SERVICE", low.join(", ")),
            "run it with AmbientCapabilities=CAP_NET_BIND_SERVICE (hw-config/zgate.service), or use ports from 1024",
        );
    } else if uid0 && config.process.user.is_none() {
        push(
            Level::Advice,
            "privileges",
            "root, without [process] user".into(),
            "set [process] user so the gateway runs unprivileged once bound (docs/operations.md, Privileges)",
        );
    } else {
        push(
            Level::Ok,
            "privileges",
            "enough to bind, and no more than needed".into(),
            "",
        );
    }
    if root.live {
        if let Err(e) = crate::process::resolve(&config.process) {
            push(
                Level::Error,
                "privileges",
                e.to_string(),
                "create the user, or fix [process] user/group",
            );
        }
    }
    out
}

/// The hard `Max open files` of a `/proc/PID/limits` text.
fn hard_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut f = line.trim_start_matches("Max open files").split_whitespace();
    let _soft = f.next()?;
    let hard = f.next()?;
    if hard == "unlimited" {
        Some(u64::MAX)
    } else {
        hard.parse().ok()
    }
}

/// NIC queue interrupts (`/proc/interrupts` names that look like a NIC's queues) and
/// the CPUs each may run on.
fn nic_irqs(root: &Root) -> Vec<(String, Vec<usize>)> {
    let text = root.read("/proc/interrupts").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let Some((irq, rest)) = line.trim_start().split_once(':') else {
            continue;
        };
        if !irq.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let name = rest.split_whitespace().last().unwrap_or_default();
        let lower = name.to_ascii_lowercase();
        let nic = lower.contains("-rx-")
            || lower.contains("-tx-")
            || lower.contains("txrx")
            || lower.contains("mlx5_comp")
            || (lower.starts_with("virtio")
                && (lower.contains("input") || lower.contains("output")));
        if !nic {
            continue;
        }
        let cpus = root
            .read(&format!("/proc/irq/{irq}/smp_affinity_list"))
            .map(|t| parse_cpu_list(&t))
            .unwrap_or_default();
        out.push((name.to_string(), cpus));
    }
    out
}

/// Print the findings; the exit code: 1 with any error, else 0.
pub fn report(config_path: &Path, findings: &[Finding]) -> u8 {
    println!("zgate doctor: `{}` on this host", config_path.display());
    for f in findings {
        println!("  {f}");
    }
    let errors = findings.iter().filter(|f| f.level == Level::Error).count();
    let warnings = findings
        .iter()
        .filter(|f| f.level == Level::Warning)
        .count();
    let advice = findings.iter().filter(|f| f.level == Level::Advice).count();
    println!("{errors} error(s), {warnings} warning(s), {advice} piece(s) of advice");
    u8::from(errors > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_limits_parse() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), [0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 20000                files\n";
        assert_eq!(hard_nofile(limits), Some(20000));
    }
}
