//! zgate's policy language: TOML policy-as-code in, a validated [`model::Policy`] out.
//!
//! # What it does
//!
//! [`parse_policy`] takes the text of every `*.toml` file of a policy directory and
//! runs three stages, one module each:
//!
//! ```text
//!  files ──► load (per file: TOML → spanned drafts, local checks)
//!        ──► resolve (all files: duplicates, group references and cycles, flattening)
//!        ──► analyze (warnings on a valid policy: shadowed, duplicate, broad rules)
//! ```
//!
//! Every error of every file is reported in one run, each with `file:line:col`, the
//! offending text and what was expected ([`PolicyErrors`]). Warnings are only computed
//! for a policy without errors. The single-value parsers ([`parse_spiffe_id`],
//! [`parse_principal`], [`parse_cidr`], [`parse_duration`], [`parse_fingerprint`]) are
//! public so the control CLI and the TLS layer read values exactly as policies do.
//!
//! The language itself is documented in `docs/policy.md`.
//!
//! # What it does not do
//!
//! No I/O: the caller reads the directory and passes [`SourceFile`]s. No clock: time
//! zones are checked against the tz database bundled into `jiff`. No evaluation:
//! deciding flows is `zgate-table`'s job.
//!
//! # Invariants
//!
//! * A [`Checked`] policy satisfies every invariant documented in [`model`]: group
//!   references resolved, principal lists never empty, schedules sorted and
//!   non-overlapping, allow-only fields only on allow rules.
//! * The output depends only on the set of files, not the order they are passed in:
//!   files are processed sorted by name.
//! * Nothing here panics on any input (fuzzed, see `fuzz/`).

#![forbid(unsafe_code)]

mod analyze;
mod error;
mod load;
pub mod model;
mod resolve;
mod values;

use sha2::{Digest, Sha256};

pub use error::{ErrorKind, PolicyError, PolicyErrors, Warning, WarningKind};
pub use values::{
    parse_cidr, parse_dns_name, parse_duration, parse_fingerprint, parse_principal,
    parse_spiffe_id, spiffe_trust_domain, CidrError, DurationError, FingerprintError, NameError,
    PrincipalError, ScheduleError, SpiffeIdError, MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN,
};

/// One policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the policy directory; used in every error and origin.
    pub name: String,
    /// The file's text.
    pub text: String,
}

/// A validated policy and the analysis warnings about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The policy.
    pub policy: model::Policy,
    /// Findings that do not stop the policy from loading, in rule order.
    pub warnings: Vec<Warning>,
}

/// Parses, validates and analyses a policy made of `files`.
///
/// Files are merged in name order; rules are ordered by file name, then position.
///
/// # Errors
/// Every error found in any file, sorted by file, line and column.
pub fn parse_policy(files: &[SourceFile]) -> Result<Checked, PolicyErrors> {
    let mut sorted: Vec<&SourceFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));

    let mut errs = Vec::new();
    let items: Vec<load::FileItems> = sorted
        .iter()
        .map(|f| {
            let cx = load::FileCx::new(&f.name, &f.text);
            load::load_file(&cx, &f.text, &mut errs)
        })
        .collect();
    let resolved = resolve::resolve(&items, &mut errs);
    errs.sort_by(|a, b| {
        (&a.origin.file, a.origin.line, a.origin.column).cmp(&(
            &b.origin.file,
            b.origin.line,
            b.origin.column,
        ))
    });
    if let Some(errors) = PolicyErrors::new(errs) {
        return Err(errors);
    }
    let mut warnings = resolved.warnings;
    warnings.extend(analyze::analyze(&resolved.rules, &resolved.services));
    warnings.sort_by(|a, b| {
        (&a.origin.file, a.origin.line, a.origin.column).cmp(&(
            &b.origin.file,
            b.origin.line,
            b.origin.column,
        ))
    });
    Ok(Checked {
        policy: model::Policy {
            groups: resolved.groups,
            services: resolved.services,
            rules: resolved.rules,
            source_hash: source_hash(&sorted),
        },
        warnings,
    })
}

/// The rule analyses [`parse_policy`] runs (shadowed, duplicate, broad on a sensitive
/// service), over a policy that is already a model: for tools and for the property
/// test that checks every such warning against the reference evaluator.
pub fn analyze(policy: &model::Policy) -> Vec<Warning> {
    analyze::analyze(&policy.rules, &policy.services)
}

/// SHA-256 over the files sorted by name, each as (u64 LE name length, name, u64 LE
/// text length, text).
fn source_hash(sorted: &[&SourceFile]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in sorted {
        h.update((f.name.len() as u64).to_le_bytes());
        h.update(f.name.as_bytes());
        h.update((f.text.len() as u64).to_le_bytes());
        h.update(f.text.as_bytes());
    }
    h.finalize().into()
}
