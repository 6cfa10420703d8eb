//! `zgate`: the dataplane binary. `zgate run --config FILE`, `zgate check --config FILE`.
#![deny(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use zgate_dataplane::config::{Config, ConfigError, ConfigErrors, Host};
use zgate_dataplane::supervisor;
use zgate_dataplane::tls::ListenerTls;

/// sysexits.h EX_USAGE: the configuration is wrong.
const EX_USAGE: u8 = 64;
/// sysexits.h EX_NOINPUT: the configuration file cannot be read.
const EX_NOINPUT: u8 = 66;

#[derive(Parser)]
#[command(
    name = "zgate",
    version,
    about = "zgate: a zero-trust L4 gateway (dataplane)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM/SIGINT (then drain and exit 0).
    Run {
        /// Path to zgate.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// See the whole system work on loopback: an allowed client, a denied client, and a
    /// live flow closed by a policy change. Starts and stops everything it needs.
    Demo,
    /// Check the configuration (and the table it names): every error, nothing bound.
    Check {
        /// Path to zgate.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Inspect this host against the configuration, read-only: CPU governor and idle
    /// states, isolated cores, NIC interrupts, huge pages, sysctls, limits, io_uring,
    /// privileges. Exits 1 when something would stop the gateway running it.
    Doctor {
        /// Path to zgate.toml.
        #[arg(long)]
        config: PathBuf,
        /// Read /proc and /sys under this directory instead of the host's (fixtures).
        #[arg(long, hide = true)]
        root: Option<PathBuf>,
    },
}

/// Read, parse and check `path` against this machine; also verify the table it names
/// and load every listener's TLS files. Relative table and TLS paths are taken
/// relative to the config file's directory.
fn load_config(path: &Path, host: &Host) -> Result<(Config, Vec<Option<ListenerTls>>), ExitCode> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("zgate: cannot read config `{}`: {e}", path.display());
            return Err(ExitCode::from(EX_NOINPUT));
        }
    };
    let mut errors = Vec::new();
    let mut config = match Config::parse_for_host(&text, host) {
        Ok(c) => Some(c),
        Err(ConfigErrors(e)) => {
            errors = e;
            None
        }
    };
    let mut tls = Vec::new();
    if let Some(c) = config.as_mut() {
        let base = path.parent().unwrap_or(Path::new("."));
        match zgate_dataplane::tls::load_all(c, base, supervisor::unix_now()) {
            Ok(t) => tls = t,
            Err(e) => errors.extend(e),
        }
        if let zgate_dataplane::config::AuditSink::File(p) = &mut c.audit {
            if p.is_relative() {
                if let Some(dir) = path.parent() {
                    *p = dir.join(&*p);
                }
            }
        }
        if let Some(ctl) = c.operator.as_mut() {
            if ctl.socket.is_relative() {
                if let Some(dir) = path.parent() {
                    ctl.socket = dir.join(&ctl.socket);
                }
            }
            // The limit holds for the path bind(2) gets, after the config's directory.
            if ctl.socket.as_os_str().len() > zgate_dataplane::config::MAX_SOCKET_PATH {
                errors.push(ConfigError::Value {
                    key: "operator.socket".into(),
                    value: ctl.socket.display().to_string(),
                    reason: "longer than 107 bytes once taken relative to the config file's directory (a Unix socket path limit): use a shorter or absolute path",
                });
            }
        }
        if let (Some(ctl), Some(dir)) = (c.control.as_mut(), path.parent()) {
            if ctl.socket.is_relative() {
                ctl.socket = dir.join(&ctl.socket);
            }
            if ctl.state_dir.is_relative() {
                ctl.state_dir = dir.join(&ctl.state_dir);
            }
            if ctl.socket.as_os_str().len() > zgate_dataplane::config::MAX_SOCKET_PATH {
                errors.push(ConfigError::Value {
                    key: "control.socket".into(),
                    value: ctl.socket.display().to_string(),
                    reason: "longer than 107 bytes once taken relative to the config file's directory (a Unix socket path limit): use a shorter or absolute path",
                });
            }
        }
        if let Err(e) = zgate_dataplane::process::resolve(&c.process) {
            errors.push(ConfigError::Process(e));
        }
        if let Some(t) = c.table.as_mut() {
            if t.is_relative() {
                if let Some(dir) = path.parent() {
                    *t = dir.join(&*t);
                }
            }
            if let Err(e) = supervisor::load_table(t) {
                errors.push(ConfigError::Table {
                    path: t.display().to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
    match config {
        Some(c) if errors.is_empty() => Ok((c, tls)),
        _ => {
            eprintln!("zgate: `{}`: {} error(s):", path.display(), errors.len());
            for e in &errors {
                eprintln!("  {e}");
            }
            Err(ExitCode::from(EX_USAGE))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let host = Host::detect();
    match cli.command {
        Command::Demo => match zgate_dataplane::demo::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zgate: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Doctor { config, root } => {
            let (c, _) = match load_config(&config, &host) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let root = match &root {
                Some(r) => zgate_dataplane::doctor::Root::fixture(r),
                None => zgate_dataplane::doctor::Root::host(),
            };
            let findings = zgate_dataplane::doctor::examine(&c, &host, &root);
            ExitCode::from(zgate_dataplane::doctor::report(&config, &findings))
        }
        Command::Check { config } => match load_config(&config, &host) {
            Ok((c, _)) => {
                println!(
                    "zgate: `{}` is valid: {} listener(s), {} worker(s), table: {}",
                    config.display(),
                    c.listeners.len(),
                    c.worker_cores(&host).len(),
                    c.table
                        .as_ref()
                        .map_or("none (deny all)".to_string(), |t| t.display().to_string())
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let (c, tls) = match load_config(&config, &host) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Each flow needs two fds: take all the kernel lets us have.
            match zgate_dataplane::raise_nofile_limit() {
                Ok((before, after)) if before != after => {
                    eprintln!("zgate: open-file limit raised from {before} to {after}");
                }
                Ok(_) => {}
                Err(e) => eprintln!("zgate: cannot raise the open-file limit: {e}"),
            }
            let base = config.parent().unwrap_or(Path::new("."));
            match supervisor::run(&c, &host, &tls, base) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("zgate: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}
