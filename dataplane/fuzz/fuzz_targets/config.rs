//! `zgate.toml` (`zgate_dataplane::config::Config::parse`): arbitrary text must give a
//! configuration or a non-empty list of errors, each of which prints, and never panic.
//! A configuration that parses must hold what `zgate run` relies on: at least one
//! listener, unique listener names, a control socket path that fits `sun_path`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zgate_dataplane::config::{Config, MAX_SOCKET_PATH};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(c) => {
            assert!(!c.listeners.is_empty(), "a config without listeners");
            let mut names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
            names.sort_unstable();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "duplicate listener names accepted");
            if let Some(ctl) = &c.control {
                let len = ctl.socket.as_os_str().len();
                assert!((1..=MAX_SOCKET_PATH).contains(&len), "socket path of {len} bytes");
            }
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "an error without a reason");
            for e in &errs.0 {
                assert!(!e.to_string().is_empty());
            }
        }
    }
});
