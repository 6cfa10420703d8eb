//! `zgate doctor`: on fixture `/proc` and `/sys` trees (a badly set up host, a well set
//! up one) and on this machine, whatever it finds.

#[cfg(test)]
mod doctor {
    use std::path::Path;
    use std::process::Command;

    fn write(root: &Path, path: &str, text: &str) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A config: one worker on the first core, a listener on `port`.
    fn config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
        let p = dir.join("zgate.toml");
        std::fs::write(
            &p,
            format!(
                "[workers]\ncount = 1\n{extra}\n[[listener]]\nname = \"redis\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:6379\"\nmax_connections = 1000\n"
            ),
        )
        .unwrap();
        p
    }

    fn doctor(config: &Path, root: &Path) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_zgate"))
            .args(["doctor", "--config"])
            .arg(config)
            .arg("--root")
            .arg(root)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn first_core() -> usize {
        // The first core this process may run on (the config's `count = 1` takes it).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        list.split([',', '-']).next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_badly_set_up_host_gets_every_finding_and_exit_1() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let c = first_core();
        write(&root, "/sys/devices/system/cpu/online", &format!("{c}\n"));
        write(
            &root,
            &format!("/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"),
            "powersave\n",
        );
        write(
            &root,
            &format!("/sys/devices/system/cpu/cpu{c}/cpuidle/state2/name"),
            "C6\n",
        );
        write(
            &root,
            &format!("/sys/devices/system/cpu/cpu{c}/cpuidle/state2/latency"),
            "133\n",
        );
        write(
            &root,
            &format!("/sys/devices/system/cpu/cpu{c}/cpuidle/state2/disable"),
            "0\n",
        );
        write(&root, "/sys/devices/system/cpu/isolated", "\n");
        write(
            &root,
            "/sys/kernel/mm/transparent_hugepage/enabled",
            "[always] madvise never\n",
        );
        write(&root, "/proc/sys/net/core/somaxconn", "128\n");
        write(&root, "/proc/sys/kernel/io_uring_disabled", "2\n");
        write(&root, "/proc/sys/fs/pipe-user-pages-soft", "16384\n");
        write(&root, "/proc/self/limits", "Limit Soft Limit Hard Limit Units\nMax open files            1024                 1024                 files\n");
        write(
            &root,
            "/proc/self/status",
            "Name:\tzgate\nUid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\n",
        );
        write(
            &root,
            "/proc/interrupts",
            "           CPU0\n  40:   1000   PCI-MSI  eth0-TxRx-0\n  41:   1000   PCI-MSI  eth0-TxRx-1\n",
        );
        let other = c + 1;
        write(
            &root,
            "/proc/irq/40/smp_affinity_list",
            &format!("{other}\n"),
        );
        write(
            &root,
            "/proc/irq/41/smp_affinity_list",
            &format!("{other}\n"),
        );
        let cfg = config(dir.path(), 443, "poll = \"busy\"");
        let (code, out) = doctor(&cfg, &root);
        assert_eq!(code, 1, "{out}");
        for want in [
            "WARNING  cpu frequency governor: cores",
            "advice   cpu idle states",
            "C6 (133 us)",
            "advice   isolated cores",
            "WARNING  busy polling",
            "advice   nic interrupts: 2 NIC queue interrupt(s), none steered to a worker core",
            "advice   transparent huge pages: always",
            "WARNING  net.core.somaxconn: 128",
            "WARNING  open files: hard limit 1024",
            "advice   splice pipes",
            "ERROR    io_uring: disabled",
            "ERROR    privileges: listeners `redis` (127.0.0.1:443) need a port under 1024",
            "hw-config/",
        ] {
            assert!(out.contains(want), "missing `{want}` in:\n{out}");
        }
        assert!(out.contains("2 error(s)"), "{out}");
    }

    #[test]
    fn a_well_set_up_host_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let c = first_core();
        write(
            &root,
            "/sys/devices/system/cpu/online",
            &format!("0-{}\n", c + 3),
        );
        write(
            &root,
            &format!("/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"),
            "performance\n",
        );
        write(&root, "/sys/devices/system/cpu/isolated", &format!("{c}\n"));
        write(
            &root,
            "/sys/devices/system/cpu/nohz_full",
            &format!("{c}\n"),
        );
        write(
            &root,
            "/sys/kernel/mm/transparent_hugepage/enabled",
            "always [madvise] never\n",
        );
        write(&root, "/proc/sys/net/core/somaxconn", "65535\n");
        write(&root, "/proc/sys/fs/pipe-user-pages-soft", "262144\n");
        write(
            &root,
            "/proc/self/limits",
            "Max open files            1048576              1048576              files\n",
        );
        write(
            &root,
            "/proc/self/status",
            "Uid:\t998\t998\t998\t998\nCapEff:\t0000000000000400\n",
        );
        write(
            &root,
            "/proc/interrupts",
            "           CPU0\n  40:   1000   PCI-MSI  eth0-TxRx-0\n",
        );
        write(&root, "/proc/irq/40/smp_affinity_list", &format!("{c}\n"));
        let cfg = config(dir.path(), 443, "");
        let (code, out) = doctor(&cfg, &root);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("0 error(s), 0 warning(s), 0 piece(s) of advice"),
            "{out}"
        );
        assert!(out.contains("ok       nic interrupts: 1 of 1"), "{out}");
    }

    /// On this machine: whatever it finds is real; it must run, look at every topic
    /// and say how many findings of each kind.
    #[test]
    fn it_runs_on_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 17_999, "");
        let out = Command::new(env!("CARGO_BIN_EXE_zgate"))
            .args(["doctor", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for topic in [
            "worker cores",
            "cpu frequency governor",
            "isolated cores",
            "open files",
            "kTLS",
            "io_uring",
            "privileges",
        ] {
            assert!(text.contains(topic), "no `{topic}` in:\n{text}");
        }
        assert!(text.contains("error(s)"), "{text}");
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    }
}
