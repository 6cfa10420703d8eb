//! The operator socket (`[operator]`) of the real `zgate` binary: `status`, `reload` and
//! `drain` from a Unix socket client, and peer credentials deciding who is answered.
#![expect(
    clippy::disallowed_methods,
    reason = "tests wait on real processes: wall-clock deadlines and short sleeps are the point"
)]

#[cfg(test)]
mod common;

#[cfg(test)]
mod control {
    use std::os::unix::fs::MetadataExt;

    use super::common::*;

    fn with_control(users: &str) -> (Upstream, Gateway) {
        let up = Upstream::echo();
        let mut setup = Setup::new(up.addr);
        setup.tables_extra = format!("[operator]\nsocket = \"zgate.sock\"\n{users}");
        let gw = Gateway::start(&setup);
        (up, gw)
    }

    #[test]
    fn status_reload_and_drain_over_the_control_socket() {
        let (_up, mut gw) = with_control("");
        // Relative to the config file.
        let socket = gw.dir.path().join("zgate.sock");
        let mode = std::fs::metadata(&socket).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "only the gateway's own uid is admitted");

        let s = gw.connect();
        assert_eq!(round_trip(&s, b"live"), b"live");
        let st = operator_ask(&socket, "status");
        assert_eq!(st["ok"], true);
        assert_eq!(st["phase"], "running");
        assert_eq!(st["table_version"], 1);
        assert_eq!(st["workers"], 1);
        assert_eq!(st["workers_ready"], 1);
        assert_eq!(st["connections_active"], 1, "{st}");

        // A new table, published by `reload` with its version in the answer.
        std::fs::write(&gw.table_path, table_bytes(allow_all("echo"), 2)).unwrap();
        let r = operator_ask(&socket, "reload");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["table_version"], 2);
        assert_eq!(r["tls_refused"], 0);
        assert_eq!(gw.wait_metric("zgate_table_version", 2), 2);
        // A broken one is refused, and the answer says so; the current table stays.
        std::fs::write(&gw.table_path, b"not a table").unwrap();
        let r = operator_ask(&socket, "reload");
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["table_version"], 2);
        let error = r["error"].as_str().unwrap();
        assert!(
            error.contains("refused, the current one stays: does not verify"),
            "{r}"
        );
        assert_eq!(round_trip(&s, b"still"), b"still");

        // Not a command: refused with the list of commands, nothing else happens.
        let r = operator_ask(&socket, "reboot now");
        assert_eq!(r["ok"], false);
        assert_eq!(
            r["error"],
            "unknown command `reboot now`: expected `status`, `reload` or `drain`"
        );

        // `drain` does what SIGTERM does: the live flow finishes, then exit 0.
        let r = operator_ask(&socket, "drain");
        assert_eq!(r["ok"], true);
        assert_eq!(operator_ask(&socket, "status")["phase"], "draining");
        assert_eq!(round_trip(&s, b"during drain"), b"during drain");
        // Asked again (a retrying script), it does not escalate as a second SIGTERM
        // would: the flow still runs.
        let r = operator_ask(&socket, "drain");
        assert_eq!(r["already"], true, "{r}");
        assert_eq!(round_trip(&s, b"still draining"), b"still draining");
        drop(s);
        assert_eq!(gw.wait_exit().code(), Some(0), "{}", gw.log());
        assert!(!socket.exists(), "the socket file is removed at exit");
    }

    #[test]
    fn uids_not_listed_are_refused_whatever_they_ask() {
        let own = std::fs::metadata("/proc/self").unwrap().uid();
        let other = own.wrapping_add(4242);
        let (_up, gw) = with_control(&format!("users = [{other}]\n"));
        let socket = gw.dir.path().join("zgate.sock");
        // Others must be able to connect to be told no: the kernel's credentials decide.
        let mode = std::fs::metadata(&socket).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o666);
        std::fs::write(&gw.table_path, table_bytes(allow_all("echo"), 2)).unwrap();
        for command in ["status", "reload", "drain"] {
            let r = operator_ask(&socket, command);
            assert_eq!(r["ok"], false);
            assert_eq!(
                r["error"],
                format!("uid {own} is not in `[operator] users`").as_str()
            );
        }
        // Nothing was reloaded or drained.
        assert_eq!(gw.metric_settled("zgate_table_version", 1), 1);
        assert_eq!(http_get(gw.admin, "/readyz").map(|r| r.0), Some(200));
    }

    #[test]
    fn a_second_gateway_on_the_same_socket_is_refused_before_it_serves() {
        let (_up, gw) = with_control("");
        let socket = gw.dir.path().join("zgate.sock");
        let up = Upstream::echo();
        let mut setup = Setup::new(up.addr);
        setup.tables_extra = format!("[operator]\nsocket = {:?}\n", socket.to_str().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("zgate.toml");
        std::fs::write(&cfg, setup.config_text(None)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zgate"))
            .args(["run", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains("another process is listening on it"), "{err}");
        // The first gateway still answers.
        assert_eq!(operator_ask(&socket, "status")["phase"], "running");
    }
}
