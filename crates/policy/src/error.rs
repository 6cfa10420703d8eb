//! Policy errors and analysis warnings.
//!
//! Messages follow Cedar's style: lowercase, one line, user input in backticks, no Rust
//! type names, and they say what was expected.

use std::fmt;

use thiserror::Error;

use crate::model::Origin;
use crate::values::{
    CidrError, DurationError, FingerprintError, NameError, PrincipalError, ScheduleError,
    SpiffeIdError,
};

/// Every error found in one run over a policy. INVARIANT: never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(Vec<PolicyError>);

impl PolicyErrors {
    /// Wraps a list of errors; `None` when the list is empty.
    pub(crate) fn new(errors: Vec<PolicyError>) -> Option<PolicyErrors> {
        if errors.is_empty() {
            None
        } else {
            Some(PolicyErrors(errors))
        }
    }

    /// The errors, sorted by file, line and column.
    pub fn errors(&self) -> &[PolicyError] {
        &self.0
    }

    /// How many errors there are (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false`: there is at least one error.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// One error, located in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where the offending text starts.
    pub origin: Origin,
    /// The offending source text, verbatim.
    pub snippet: String,
    /// What is wrong.
    pub kind: ErrorKind,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.kind)
    }
}

impl std::error::Error for PolicyError {}

/// What is wrong with a policy. One variant per error class; user input in fields is
/// shortened to one line (the full text is in [`PolicyError::snippet`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file is not valid TOML.
    #[error("toml syntax error: {message}")]
    Syntax {
        /// The TOML parser's description.
        message: String,
    },
    /// A key that the table does not have.
    #[error("unknown key `{key}` in {table}; allowed keys: {allowed}")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Which table (`rule`, `schedule`, …).
        table: &'static str,
        /// The keys that table does have.
        allowed: &'static str,
    },
    /// A required key is absent.
    #[error("missing required key `{key}` in {table}")]
    MissingKey {
        /// The missing key.
        key: &'static str,
        /// Which table.
        table: &'static str,
    },
    /// A value of the wrong TOML type.
    #[error("`{key}` must be {expected}, found {found} `{text}`")]
    WrongType {
        /// The key whose value is wrong.
        key: String,
        /// What the key takes.
        expected: &'static str,
        /// The TOML type found.
        found: &'static str,
        /// The value as written.
        text: String,
    },
    /// Two rules with one id.
    #[error("duplicate rule id `{id}`; first defined at {first}")]
    DuplicateRuleId {
        /// The id.
        id: String,
        /// The first definition.
        first: Origin,
    },
    /// Two groups with one name.
    #[error("duplicate group `{name}`; first defined at {first}")]
    DuplicateGroup {
        /// The group name.
        name: String,
        /// The first definition.
        first: Origin,
    },
    /// Two service declarations with one name.
    #[error("duplicate service declaration `{name}`; first declared at {first}")]
    DuplicateService {
        /// The service name.
        name: String,
        /// The first declaration.
        first: Origin,
    },
    /// `group:NAME` where no group has that name.
    #[error("undefined group `{name}`; no `[[group]]` has that name")]
    UndefinedGroup {
        /// The group name referenced.
        name: String,
    },
    /// Groups that contain themselves.
    #[error("group cycle: {}", render_cycle(.path))]
    GroupCycle {
        /// The cycle, starting and ending with the same group.
        path: Vec<String>,
    },
    /// A `spiffe://` principal that breaks the SPIFFE ID spec.
    #[error("malformed spiffe id `{text}`: {reason}")]
    MalformedSpiffeId {
        /// The principal as written.
        text: String,
        /// The spec rule broken.
        reason: SpiffeIdError,
    },
    /// A principal of unknown form, or a malformed `dns:`/`cn:`/wildcard principal.
    #[error("malformed principal `{text}`: {reason}")]
    MalformedPrincipal {
        /// The principal as written.
        text: String,
        /// What is wrong.
        reason: PrincipalError,
    },
    /// A source network that is not a CIDR.
    #[error("malformed cidr `{text}`: {reason}")]
    MalformedCidr {
        /// The entry as written.
        text: String,
        /// What is wrong.
        reason: CidrError,
    },
    /// A duration that does not parse.
    #[error("malformed duration `{text}` for `{key}`: {reason}")]
    MalformedDuration {
        /// `max_cert_age` or `max_session`.
        key: &'static str,
        /// The value as written.
        text: String,
        /// What is wrong.
        reason: DurationError,
    },
    /// A `sha256:` fingerprint that does not parse.
    #[error("malformed fingerprint `{text}`: {reason}")]
    MalformedFingerprint {
        /// The principal as written.
        text: String,
        /// What is wrong.
        reason: FingerprintError,
    },
    /// A schedule that can never be inside, or cannot be read.
    #[error("impossible schedule: {reason}")]
    ImpossibleSchedule {
        /// What is wrong.
        reason: ScheduleError,
    },
    /// An SNI entry that is not a DNS name (or `*.` wildcard).
    #[error("malformed sni `{text}`: {reason}")]
    MalformedSni {
        /// The entry as written.
        text: String,
        /// What is wrong.
        reason: NameError,
    },
    /// An ALPN entry that is empty or longer than 255 bytes.
    #[error("malformed alpn `{text}`: a protocol name must be 1 to 255 bytes")]
    MalformedAlpn {
        /// The entry as written.
        text: String,
    },
    /// An empty list where the list must have entries.
    #[error("`{key}` must not be empty; {hint}")]
    EmptyList {
        /// The key.
        key: &'static str,
        /// What to write instead.
        hint: &'static str,
    },
    /// `*` listed beside names.
    #[error("`*` cannot be mixed with other entries in `{key}`; use `[\"*\"]` alone")]
    WildcardMixed {
        /// The key.
        key: &'static str,
    },
    /// An allow-only field on a deny rule.
    #[error("`{key}` is only allowed on allow rules, and rule `{rule}` is a deny rule")]
    AllowOnlyField {
        /// The field.
        key: &'static str,
        /// The rule id.
        rule: String,
    },
    /// `max_risk` outside 0..=100.
    #[error("`max_risk` must be between 0 and 100, found `{text}`")]
    MaxRiskOutOfRange {
        /// The value as written.
        text: String,
    },
    /// A rule id with characters outside `[A-Za-z0-9._-]`.
    #[error("invalid rule id `{id}`; use one or more of `A-Z`, `a-z`, `0-9`, `.`, `_` and `-`")]
    BadRuleId {
        /// The id as written.
        id: String,
    },
    /// The id the built-in default deny uses.
    #[error("rule id `{id}` is reserved for the built-in default deny")]
    ReservedRuleId {
        /// The id as written.
        id: String,
    },
    /// A group or service name with characters outside `[A-Za-z0-9._-]`.
    #[error("invalid {what} `{name}`; use one or more of `A-Z`, `a-z`, `0-9`, `.`, `_` and `-`")]
    BadName {
        /// `group name` or `service name`.
        what: &'static str,
        /// The name as written.
        name: String,
    },
    /// `min_os_patch` that is not a calendar date.
    #[error("invalid `min_os_patch` date `{text}`; expected a calendar date as `YYYY-MM-DD`")]
    BadPatchDate {
        /// The value as written.
        text: String,
    },
    /// `action` other than `allow`/`deny`.
    #[error("invalid action `{text}`; expected `allow` or `deny`")]
    BadAction {
        /// The value as written.
        text: String,
    },
    /// A posture table that requires nothing.
    #[error("`posture` requires nothing; set at least one requirement or leave `posture` out")]
    EmptyPosture,
}

fn render_cycle(path: &[String]) -> String {
    path.iter()
        .map(|g| format!("`{g}`"))
        .collect::<Vec<_>>()
        .join(" includes ")
}

/// One analysis finding: the policy is valid but probably not what was meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where the rule the warning is about was written.
    pub origin: Origin,
    /// The id of the rule the warning is about.
    pub rule_id: Option<String>,
    /// What was found.
    pub kind: WarningKind,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: {}", self.origin, self.kind)
    }
}

/// What an analysis warning is about.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WarningKind {
    /// An allow rule every flow of which some deny rule also matches.
    #[error("allow rule `{rule}` never takes effect: deny rule `{deny}` at {deny_origin} matches every flow it matches")]
    ShadowedByDeny {
        /// The allow rule.
        rule: String,
        /// The deny rule that covers it.
        deny: String,
        /// Where the deny rule is.
        deny_origin: Origin,
    },
    /// A rule identical in every match condition to an earlier rule of the same action.
    #[error("rule `{rule}` matches exactly what earlier rule `{earlier}` at {earlier_origin} matches, so it is never named in a decision")]
    Duplicate {
        /// The later rule.
        rule: String,
        /// The earlier rule.
        earlier: String,
        /// Where the earlier rule is.
        earlier_origin: Origin,
    },
    /// A rule that no flow can match; it is left out of the policy.
    #[error("rule `{rule}` can never match: its principals only name groups with no members ({}); it is left out of the policy", render_groups(.groups))]
    NeverMatches {
        /// The rule.
        rule: String,
        /// The empty groups its principals name.
        groups: Vec<String>,
    },
    /// A broad allow rule on a sensitive service.
    #[error("allow rule `{rule}` admits {breadth} to sensitive service `{service}`; narrow `principals` or set `acknowledge_broad = true`")]
    BroadOnSensitive {
        /// The rule.
        rule: String,
        /// The sensitive service.
        service: String,
        /// `anyone` or `every workload in trust domain `td``.
        breadth: String,
    },
}

fn render_groups(groups: &[String]) -> String {
    groups
        .iter()
        .map(|g| format!("`group:{g}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
