//! Who the gateway runs as (review 16.14; DESIGN "Failure stance": the dataplane drops
//! privileges after binding).
//!
//! Every socket is bound first: a port under 1024 needs root or `CAP_NET_BIND_SERVICE`
//! at bind time, and nothing else the gateway does needs a privilege. Then, before the
//! first thread starts (capabilities are per thread):
//! - started as root with `[process] user`, it becomes that user and group for good
//!   (real, effective and saved ids; supplementary groups reduced to the group);
//! - in every case it gives up every capability (ambient, effective, permitted,
//!   inheritable) and sets `no_new_privs`.
//!
//! io_uring needs no capability (kernel 5.12+ charges rings to the memory cgroup, not
//! to `RLIMIT_MEMLOCK`), nor does pinning its own threads. What runs later as the new
//! user: reloads read the table, TLS and CRL files, and SIGHUP reopens the audit file,
//! so those must be readable (the audit file's directory writable) by it.

use crate::config::{Account, ProcessConfig};
use crate::sys;

/// The account to switch to, resolved from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Why `[process]` cannot be used, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// No such user or group on this machine.
    #[error("process.{key}: no such {what} `{name}` on this machine")]
    Unknown {
        /// `user` or `group`.
        key: &'static str,
        /// `user` or `group`, in words.
        what: &'static str,
        /// What the config said.
        name: String,
    },
    /// The user or group database could not be read.
    #[error("process.{key}: cannot look `{name}` up: {reason}")]
    Lookup {
        /// `user` or `group`.
        key: &'static str,
        /// What the config said.
        name: String,
        /// The library's answer.
        reason: String,
    },
    /// `group` without `user`.
    #[error("process.group: set `user` too (the group alone is not switched to)")]
    GroupWithoutUser,
}

/// Resolve `[process]` against this machine's user and group databases.
pub fn resolve(cfg: &ProcessConfig) -> Result<Option<RunAs>, ProcessError> {
    let Some(user) = &cfg.user else {
        return match cfg.group {
            Some(_) => Err(ProcessError::GroupWithoutUser),
            None => Ok(None),
        };
    };
    let (uid, primary) = match user {
        Account::Name(name) => sys::user_by_name(name)
            .map_err(|e| ProcessError::Lookup {
                key: "user",
                name: name.clone(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| ProcessError::Unknown {
                key: "user",
                what: "user",
                name: name.clone(),
            })?,
        Account::Id(uid) => {
            let gid = sys::user_by_uid(*uid).map_err(|e| ProcessError::Lookup {
                key: "user",
                name: uid.to_string(),
                reason: e.to_string(),
            })?;
            // A uid the database does not know may still be used, with a group given.
            (*uid, gid.unwrap_or(u32::MAX))
        }
    };
    let gid = match &cfg.group {
        None if primary == u32::MAX => {
            return Err(ProcessError::Unknown {
                key: "user",
                what: "user (for its primary group; or set `group`)",
                name: uid.to_string(),
            })
        }
        None => primary,
        Some(Account::Id(gid)) => *gid,
        Some(Account::Name(name)) => sys::group_by_name(name)
            .map_err(|e| ProcessError::Lookup {
                key: "group",
                name: name.clone(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| ProcessError::Unknown {
                key: "group",
                what: "group",
                name: name.clone(),
            })?,
    };
    Ok(Some(RunAs { uid, gid }))
}

/// What [`drop_privileges`] did, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Switched to this account, and gave up every capability.
    Switched(RunAs),
    /// Stayed who it was (no `[process] user`, or already that user), and gave up
    /// every capability.
    Stayed {
        /// The uid it runs as.
        uid: u32,
    },
}

/// Why privileges could not be dropped: the gateway stops rather than serve with them.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    /// `[process] user` is set, the process is not root and not already that user.
    #[error("process.user: cannot become uid {uid}: not started as root (uid {current})")]
    NotRoot {
        /// The uid asked for.
        uid: u32,
        /// Who we are.
        current: u32,
    },
    /// A system call refused.
    #[error("{what}: {source}")]
    Call {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        source: std::io::Error,
    },
}

/// Become `run_as` (when started as root) and give up every capability. Call once, on
/// the main thread, after every socket is bound and before any other thread starts.
pub fn drop_privileges(run_as: Option<RunAs>) -> Result<Dropped, DropError> {
    let current = sys::effective_uid();
    let dropped = match run_as {
        Some(r) if r.uid == current => Dropped::Stayed { uid: current },
        Some(r) if current != 0 => {
            return Err(DropError::NotRoot {
                uid: r.uid,
                current,
            })
        }
        Some(r) => {
            sys::switch_user(r.uid, r.gid).map_err(|source| DropError::Call {
                what: "switching user",
                source,
            })?;
            Dropped::Switched(r)
        }
        None => Dropped::Stayed { uid: current },
    };
    sys::drop_capabilities().map_err(|source| DropError::Call {
        what: "dropping capabilities",
        source,
    })?;
    Ok(dropped)
}
