//! Stage 1: one file's TOML text → spanned drafts of groups, services and rules.
//!
//! Everything that can be checked inside one file is checked here, and every error is
//! recorded (the walk never stops at the first one). Cross-file checks (duplicates,
//! group references) happen in [`crate::resolve`].

use std::collections::HashSet;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{ErrorKind, PolicyError};
use crate::model::{
    Action, Cidr, MinuteRange, Origin, PostureRequirement, Principal, Schedule, ServiceDecl,
    ServiceSelector, Weekdays,
};
use crate::values::{
    check_dns_name, check_name, check_time_zone, parse_cidr, parse_days, parse_duration,
    parse_hours, parse_member, parse_patch_date, Member, PrincipalError, ScheduleError,
};

/// Longest user text quoted inside a one-line message.
const MAX_QUOTE: usize = 80;

/// One source file with a line index for turning byte offsets into line and column.
pub(crate) struct FileCx<'a> {
    pub(crate) name: &'a str,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> FileCx<'a> {
    pub(crate) fn new(name: &'a str, text: &'a str) -> FileCx<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        FileCx {
            name,
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn origin(&self, offset: usize) -> Origin {
        let offset = offset.min(self.text.len());
        let line_idx = self
            .line_starts
            .partition_point(|start| *start <= offset)
            .saturating_sub(1);
        let line_start = self.line_starts.get(line_idx).copied().unwrap_or(0);
        let column = self
            .text
            .get(line_start..offset)
            .map_or(offset - line_start, |s| s.chars().count());
        Origin {
            file: self.name.to_owned(),
            line: u32::try_from(line_idx + 1).unwrap_or(u32::MAX),
            column: u32::try_from(column + 1).unwrap_or(u32::MAX),
        }
    }

    /// The source text of a span; for an empty span, the rest of its line.
    pub(crate) fn snippet(&self, span: &Range<usize>) -> String {
        if span.start < span.end {
            if let Some(s) = self.text.get(span.clone()) {
                return s.to_owned();
            }
        }
        let rest = self.text.get(span.start..).unwrap_or("");
        rest.lines().next().unwrap_or("").trim().to_owned()
    }

    pub(crate) fn error(&self, span: &Range<usize>, kind: ErrorKind) -> PolicyError {
        PolicyError {
            origin: self.origin(span.start),
            snippet: self.snippet(span),
            kind,
        }
    }
}

/// User text made fit for a one-line message: the first line, at most [`MAX_QUOTE`]
/// characters, control characters escaped (no terminal escapes reach a log).
pub(crate) fn quote(s: &str) -> String {
    let first = s.lines().next().unwrap_or("");
    let mut out = String::with_capacity(first.len().min(MAX_QUOTE * 2));
    let mut taken = 0;
    for c in first.chars().take(MAX_QUOTE) {
        taken += c.len_utf8();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if taken < s.len() {
        out.push('…');
    }
    out
}

/// A value with where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Loc<T> {
    pub(crate) value: T,
    pub(crate) origin: Origin,
    pub(crate) snippet: String,
}

/// A `[[group]]` as written: members not yet expanded.
pub(crate) struct RawGroup {
    pub(crate) name: Loc<String>,
    pub(crate) members: Vec<Loc<Member>>,
}

/// A `[[rule]]` as written. `draft` is `None` when the rule had errors of its own.
pub(crate) struct RawRule {
    pub(crate) id: Option<Loc<String>>,
    /// Every well-formed `group:NAME` in `principals`, checked even when the rule
    /// has other errors.
    pub(crate) group_refs: Vec<Loc<String>>,
    pub(crate) draft: Option<RuleDraft>,
}

/// A rule with every field validated except the group references in its principals.
pub(crate) struct RuleDraft {
    /// The rule, with `principals` still `None`.
    pub(crate) rule: crate::model::Rule,
    /// Principals as written; `None` when the key was left out.
    pub(crate) principals: Option<Vec<Loc<Member>>>,
}

/// Everything one file contributed.
#[derive(Default)]
pub(crate) struct FileItems {
    pub(crate) groups: Vec<RawGroup>,
    pub(crate) services: Vec<Loc<ServiceDecl>>,
    pub(crate) rules: Vec<RawRule>,
    /// Whether the file parsed as TOML (its items are empty otherwise).
    pub(crate) parsed: bool,
}

/// A TOML table the language defines: its name in messages and its keys.
struct TableSpec {
    name: &'static str,
    keys: &'static [&'static str],
    /// `keys` joined for "allowed keys" messages.
    allowed: &'static str,
}

const TOP: TableSpec = TableSpec {
    name: "the top level",
    keys: &["group", "service", "rule"],
    allowed: "group, service, rule",
};
const GROUP: TableSpec = TableSpec {
    name: "group",
    keys: &["name", "members"],
    allowed: "name, members",
};
const SERVICE: TableSpec = TableSpec {
    name: "service",
    keys: &["name", "sensitive"],
    allowed: "name, sensitive",
};
const RULE: TableSpec = TableSpec {
    name: "rule",
    keys: &[
        "id",
        "action",
        "services",
        "principals",
        "sources",
        "sni",
        "alpn",
        "schedule",
        "posture",
        "max_risk",
        "max_cert_age",
        "max_session",
        "requires_grant",
        "acknowledge_broad",
    ],
    allowed: "id, action, services, principals, sources, sni, alpn, schedule, posture, \
              max_risk, max_cert_age, max_session, requires_grant, acknowledge_broad",
};
const SCHEDULE: TableSpec = TableSpec {
    name: "schedule",
    keys: &["days", "hours", "time_zone"],
    allowed: "days, hours, time_zone",
};
const POSTURE: TableSpec = TableSpec {
    name: "posture",
    keys: &["managed", "compliant", "edr_running", "min_os_patch"],
    allowed: "managed, compliant, edr_running, min_os_patch",
};
const ALLOW_ONLY: &[&str] = &[
    "posture",
    "max_risk",
    "max_cert_age",
    "max_session",
    "requires_grant",
];

type Val<'i> = Spanned<DeValue<'i>>;

/// The known keys of one table, with their key spans.
struct Fields<'v, 'i> {
    entries: Vec<(&'static str, Range<usize>, &'v Val<'i>)>,
}

impl<'v, 'i> Fields<'v, 'i> {
    /// Collects the known keys of `table`, reporting unknown ones.
    fn collect(
        cx: &FileCx<'_>,
        errs: &mut Vec<PolicyError>,
        table: &'v DeTable<'i>,
        spec: &TableSpec,
    ) -> Fields<'v, 'i> {
        let mut entries = Vec::new();
        for (k, v) in table.iter() {
            let name: &str = k.get_ref();
            match spec.keys.iter().find(|known| **known == name) {
                Some(known) => entries.push((*known, k.span(), v)),
                None => errs.push(cx.error(
                    &k.span(),
                    ErrorKind::UnknownKey {
                        key: quote(name),
                        table: spec.name,
                        allowed: spec.allowed,
                    },
                )),
            }
        }
        Fields { entries }
    }

    fn get(&self, key: &str) -> Option<&'v Val<'i>> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, v)| *v)
    }

    fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, s, _)| s.clone())
    }
}

fn wrong_type(cx: &FileCx<'_>, key: &str, expected: &'static str, v: &Val<'_>) -> PolicyError {
    let span = v.span();
    cx.error(
        &span,
        ErrorKind::WrongType {
            key: key.to_owned(),
            expected,
            found: v.get_ref().type_str(),
            text: quote(&cx.snippet(&span)),
        },
    )
}

fn get_str<'v>(
    cx: &FileCx<'_>,
    errs: &mut Vec<PolicyError>,
    key: &str,
    v: &'v Val<'_>,
) -> Option<&'v str> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        _ => {
            errs.push(wrong_type(cx, key, "a string", v));
            None
        }
    }
}

fn get_bool(cx: &FileCx<'_>, errs: &mut Vec<PolicyError>, key: &str, v: &Val<'_>) -> Option<bool> {
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        _ => {
            errs.push(wrong_type(cx, key, "a boolean (`true` or `false`)", v));
            None
        }
    }
}

/// An array of strings with each entry's span. `None` when the value or an entry has
/// the wrong type (each such error is recorded).
fn get_str_list<'v>(
    cx: &FileCx<'_>,
    errs: &mut Vec<PolicyError>,
    key: &str,
    v: &'v Val<'_>,
) -> Option<Vec<(&'v str, Range<usize>)>> {
    let DeValue::Array(items) = v.get_ref() else {
        errs.push(wrong_type(cx, key, "an array of strings", v));
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items.iter() {
        match item.get_ref() {
            DeValue::String(s) => out.push((s.as_ref(), item.span())),
            _ => {
                errs.push(wrong_type(cx, key, "an array of strings", item));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// A non-empty list of strings; `*` may only stand alone. Returns the entries, or
/// `None` after recording errors.
fn get_list<'v>(
    cx: &FileCx<'_>,
    errs: &mut Vec<PolicyError>,
    key: &'static str,
    hint: &'static str,
    v: &'v Val<'_>,
    star_allowed: bool,
) -> Option<Vec<(&'v str, Range<usize>)>> {
    let list = get_str_list(cx, errs, key, v)?;
    if list.is_empty() {
        errs.push(cx.error(&v.span(), ErrorKind::EmptyList { key, hint }));
        return None;
    }
    if star_allowed && list.len() > 1 {
        if let Some((_, span)) = list.iter().find(|(s, _)| *s == "*") {
            errs.push(cx.error(span, ErrorKind::WildcardMixed { key }));
            return None;
        }
    }
    Some(list)
}

/// Parses one file. Errors go to `errs`; the returned items are what parsed cleanly.
pub(crate) fn load_file(cx: &FileCx<'_>, text: &str, errs: &mut Vec<PolicyError>) -> FileItems {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().lines().collect::<Vec<_>>().join("; ");
            errs.push(cx.error(&span, ErrorKind::Syntax { message }));
        }
        // A recovered tree would produce follow-on errors that only confuse.
        return FileItems::default();
    }
    let mut items = FileItems {
        parsed: true,
        ..FileItems::default()
    };
    let top = Fields::collect(cx, errs, doc.get_ref(), &TOP);
    for (key, _, v) in &top.entries {
        let expected = match *key {
            "group" => "an array of tables (`[[group]]`)",
            "service" => "an array of tables (`[[service]]`)",
            _ => "an array of tables (`[[rule]]`)",
        };
        let DeValue::Array(tables) = v.get_ref() else {
            errs.push(wrong_type(cx, key, expected, v));
            continue;
        };
        for t in tables.iter() {
            let DeValue::Table(table) = t.get_ref() else {
                errs.push(wrong_type(cx, key, expected, t));
                continue;
            };
            let span = t.span();
            match *key {
                "group" => {
                    if let Some(g) = load_group(cx, errs, table, &span) {
                        items.groups.push(g);
                    }
                }
                "service" => {
                    if let Some(s) = load_service(cx, errs, table, &span) {
                        items.services.push(s);
                    }
                }
                _ => items.rules.push(load_rule(cx, errs, table, &span)),
            }
        }
    }
    items
}

/// A required, well-formed name (`[A-Za-z0-9._-]+`).
fn load_name(
    cx: &FileCx<'_>,
    errs: &mut Vec<PolicyError>,
    f: &Fields<'_, '_>,
    table_name: &'static str,
    what: &'static str,
    table_span: &Range<usize>,
) -> Option<String> {
    let Some(v) = f.get("name") else {
        errs.push(cx.error(
            table_span,
            ErrorKind::MissingKey {
                key: "name",
                table: table_name,
            },
        ));
        return None;
    };
    let name = get_str(cx, errs, "name", v)?;
    if check_name(name).is_err() {
        errs.push(cx.error(
            &v.span(),
            ErrorKind::BadName {
                what,
                name: quote(name),
            },
        ));
        return None;
    }
    Some(name.to_owned())
}

fn load_group(
    cx: &FileCx<'_>,
    errs: &mut Vec<PolicyError>,
    table: &DeTable<'_>,
    span: &Range<usize>,
) -> Option<RawGroup> {
    let f = Fields::collect(cx, errs, table, &GROUP);
    let name = load_name(cx, errs, &f, "group", "group name", span);
    let members = match f.get("members") {
        None => {
            errs.push(cx.error(
                span,
                ErrorKind::MissingKey {
                    key: "members",
                    table: "group",
                },
            ));
            None
        }
        Some(v) => get_str_list(cx, errs, "members", v).and_then(|list| {
            let mut out = Vec::with_capacity(list.len());
            let mut ok = true;
            for (s, sp) in list {
                match member(cx, errs, s, &sp) {
                    Some(m) => out.push(m),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }),
    };
    Some(RawGroup {
        name: Loc {
            value: name?,
            origin: cx.origin(span.start),
            snippet: cx.snippet(span),
        },
        members: members?,
    })
}

fn load_service(
    cx: &FileCx<'_>,
    errs: &mut Vec<PolicyError>,
    table: &DeTable<'_>,
    span: &Range<usize>,
) -> Option<Loc<ServiceDecl>> {
    let f = Fields::collect(cx, errs, table, &SERVICE);
    let name = load_name(cx, errs, &f, "service", "service name", span);
    let sensitive = match f.get("sensitive") {
        None => Some(false),
        Some(v) => get_bool(cx, errs, "sensitive", v),
    };
    let origin = cx.origin(span.start);
    Some(Loc {
        value: ServiceDecl {
            name: name?,
            sensitive: sensitive?,
            origin: origin.clone(),
        },
        origin,
        snippet: cx.snippet(span),
    })
}

/// Parses one principal or group reference, recording an error on failure.
fn member(
    cx: &FileCx<'_>,
    errs: &mut Vec<PolicyError>,
    s: &str,
    span: &Range<usize>,
) -> Option<Loc<Member>> {
    match parse_member(s) {
        Ok(m) => Some(Loc {
            value: m,
            origin: cx.origin(span.start),
            snippet: cx.snippet(span),
        }),
        Err(e) => {
            let text = quote(s);
            let kind = match e {
                PrincipalError::Spiffe(reason) => ErrorKind::MalformedSpiffeId { text, reason },
                PrincipalError::Fingerprint(reason) => {
                    ErrorKind::MalformedFingerprint { text, reason }
                }
                reason => ErrorKind::MalformedPrincipal { text, reason },
            };
            errs.push(cx.error(span, kind));
            None
        }
    }
}

/// Tracks whether a rule is still clean while its fields are checked.
struct Check {
    ok: bool,
}

impl Check {
    /// Unwraps a field result, marking the rule failed on `None`.
    fn take<T>(&mut self, v: Option<T>) -> Option<T> {
        if v.is_none() {
            self.ok = false;
        }
        v
    }
}

fn load_rule(
    cx: &FileCx<'_>,
    errs: &mut Vec<PolicyError>,
    table: &DeTable<'_>,
    span: &Range<usize>,
) -> RawRule {
    let f = Fields::collect(cx, errs, table, &RULE);
    let errors_before = errs.len();
    let mut c = Check { ok: true };
    let missing = |errs: &mut Vec<PolicyError>, key: &'static str| {
        errs.push(cx.error(span, ErrorKind::MissingKey { key, table: "rule" }));
    };

    // id
    let id = match f.get("id") {
        None => {
            missing(errs, "id");
            None
        }
        Some(v) => get_str(cx, errs, "id", v).and_then(|id| {
            if check_name(id).is_err() {
                errs.push(cx.error(&v.span(), ErrorKind::BadRuleId { id: quote(id) }));
                None
            } else if id == "default-deny" {
                errs.push(cx.error(&v.span(), ErrorKind::ReservedRuleId { id: id.to_owned() }));
                None
            } else {
                Some(Loc {
                    value: id.to_owned(),
                    origin: cx.origin(v.span().start),
                    snippet: cx.snippet(&v.span()),
                })
            }
        }),
    };
    let id_text = id.as_ref().map_or_else(String::new, |l| l.value.clone());
    c.take(id.as_ref());

    // action
    let action = match f.get("action") {
        None => {
            missing(errs, "action");
            None
        }
        Some(v) => get_str(cx, errs, "action", v).and_then(|a| match a {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            other => {
                errs.push(cx.error(&v.span(), ErrorKind::BadAction { text: quote(other) }));
                None
            }
        }),
    };
    let action = c.take(action);

    // services
    let services = match f.get("services") {
        None => {
            missing(errs, "services");
            None
        }
        Some(v) => get_list(
            cx,
            errs,
            "services",
            "list service names, or `[\"*\"]` for every service",
            v,
            true,
        )
        .and_then(|list| {
            if list.first().is_some_and(|(s, _)| *s == "*") {
                return Some(ServiceSelector::Any);
            }
            let mut names = Vec::with_capacity(list.len());
            let mut ok = true;
            for (s, sp) in list {
                if check_name(s).is_err() {
                    errs.push(cx.error(
                        &sp,
                        ErrorKind::BadName {
                            what: "service name",
                            name: quote(s),
                        },
                    ));
                    ok = false;
                } else {
                    names.push(s.to_owned());
                }
            }
            ok.then(|| ServiceSelector::Named(dedupe(names)))
        }),
    };
    let services = c.take(services);

    // principals (group references resolved later)
    let mut group_refs = Vec::new();
    let principals = match f.get("principals") {
        None => Some(None),
        Some(v) => get_list(
            cx,
            errs,
            "principals",
            "leave `principals` out, or write `[\"*\"]`, to match anyone",
            v,
            true,
        )
        .and_then(|list| {
            let mut out = Vec::with_capacity(list.len());
            let mut ok = true;
            for (s, sp) in list {
                match member(cx, errs, s, &sp) {
                    Some(m) => {
                        if let Member::Group(name) = &m.value {
                            group_refs.push(Loc {
                                value: name.clone(),
                                origin: m.origin.clone(),
                                snippet: m.snippet.clone(),
                            });
                        }
                        out.push(m);
                    }
                    None => ok = false,
                }
            }
            ok.then_some(Some(out))
        }),
    };
    let principals = c.take(principals);

    // sources
    let sources = opt_list(
        cx,
        errs,
        &f,
        "sources",
        "leave `sources` out to match any source",
        |s, sp, errs| {
            parse_cidr(s).map_err(|reason| {
                errs.push(cx.error(
                    sp,
                    ErrorKind::MalformedCidr {
                        text: quote(s),
                        reason,
                    },
                ));
            })
        },
    );
    let sources: Option<Option<Vec<Cidr>>> = c.take(sources);

    // sni
    let sni = opt_list(
        cx,
        errs,
        &f,
        "sni",
        "leave `sni` out to match any sni",
        |s, sp, errs| {
            let lower = s.to_ascii_lowercase();
            check_dns_name(&lower, true)
                .map(|()| lower)
                .map_err(|reason| {
                    errs.push(cx.error(
                        sp,
                        ErrorKind::MalformedSni {
                            text: quote(s),
                            reason,
                        },
                    ));
                })
        },
    );
    let sni = c.take(sni);

    // alpn
    let alpn = opt_list(
        cx,
        errs,
        &f,
        "alpn",
        "leave `alpn` out to match any alpn",
        |s, sp, errs| {
            if s.is_empty() || s.len() > 255 {
                errs.push(cx.error(sp, ErrorKind::MalformedAlpn { text: quote(s) }));
                Err(())
            } else {
                Ok(s.to_owned())
            }
        },
    );
    let alpn = c.take(alpn);

    let schedule = match f.get("schedule") {
        None => Some(None),
        Some(v) => load_schedule(cx, errs, v).map(Some),
    };
    let schedule = c.take(schedule);

    let posture = match f.get("posture") {
        None => Some(None),
        Some(v) => load_posture(cx, errs, v).map(Some),
    };
    let posture = c.take(posture);

    let max_risk = match f.get("max_risk") {
        None => Some(None),
        Some(v) => match v.get_ref() {
            DeValue::Integer(i) => {
                let n = i64::from_str_radix(i.as_str(), i.radix()).ok();
                match n.and_then(|n| u8::try_from(n).ok()).filter(|n| *n <= 100) {
                    Some(n) => Some(Some(n)),
                    None => {
                        errs.push(cx.error(
                            &v.span(),
                            ErrorKind::MaxRiskOutOfRange {
                                text: quote(&cx.snippet(&v.span())),
                            },
                        ));
                        None
                    }
                }
            }
            _ => {
                errs.push(wrong_type(cx, "max_risk", "an integer from 0 to 100", v));
                None
            }
        },
    };
    let max_risk = c.take(max_risk);

    let max_cert_age = c.take(opt_duration(cx, errs, &f, "max_cert_age"));
    let max_session = c.take(opt_duration(cx, errs, &f, "max_session"));
    let requires_grant = match f.get("requires_grant") {
        None => Some(false),
        Some(v) => get_bool(cx, errs, "requires_grant", v),
    };
    let requires_grant = c.take(requires_grant);
    let acknowledge_broad = match f.get("acknowledge_broad") {
        None => Some(false),
        Some(v) => get_bool(cx, errs, "acknowledge_broad", v),
    };
    let acknowledge_broad = c.take(acknowledge_broad);

    if action == Some(Action::Deny) {
        for key in ALLOW_ONLY {
            if let Some(ks) = f.key_span(key) {
                errs.push(cx.error(
                    &ks,
                    ErrorKind::AllowOnlyField {
                        key,
                        rule: id_text.clone(),
                    },
                ));
                c.ok = false;
            }
        }
    }

    let draft = match (
        c.ok && errs.len() == errors_before,
        id.as_ref(),
        action,
        services,
        principals,
        sources,
        sni,
        alpn,
        schedule,
        posture,
        max_risk,
        max_cert_age,
        max_session,
        requires_grant,
        acknowledge_broad,
    ) {
        (
            true,
            Some(id),
            Some(action),
            Some(services),
            Some(principals),
            Some(sources),
            Some(sni),
            Some(alpn),
            Some(schedule),
            Some(posture),
            Some(max_risk),
            Some(max_cert_age_secs),
            Some(max_session_secs),
            Some(requires_grant),
            Some(acknowledge_broad),
        ) => Some(RuleDraft {
            rule: crate::model::Rule {
                id: id.value.clone(),
                action,
                services,
                principals: None,
                sources,
                sni,
                alpn,
                schedule,
                posture,
                max_risk,
                max_cert_age_secs,
                max_session_secs,
                requires_grant,
                acknowledge_broad,
                origin: cx.origin(span.start),
            },
            principals,
        }),
        _ => None,
    };
    RawRule {
        id,
        group_refs,
        draft,
    }
}

/// An optional non-empty list whose entries each parse with `parse`; duplicates are
/// dropped. `Some(None)` when the key is absent, `None` after an error.
fn opt_list<T: Eq + std::hash::Hash + Clone>(
    cx: &FileCx<'_>,
    errs: &mut Vec<PolicyError>,
    f: &Fields<'_, '_>,
    key: &'static str,
    hint: &'static str,
    mut parse: impl FnMut(&str, &Range<usize>, &mut Vec<PolicyError>) -> Result<T, ()>,
) -> Option<Option<Vec<T>>> {
    let Some(v) = f.get(key) else {
        return Some(None);
    };
    let list = get_list(cx, errs, key, hint, v, false)?;
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for (s, sp) in list {
        match parse(s, &sp, errs) {
            Ok(x) => out.push(x),
            Err(()) => ok = false,
        }
    }
    ok.then(|| Some(dedupe(out)))
}

fn opt_duration(
    cx: &FileCx<'_>,
    errs: &mut Vec<PolicyError>,
    f: &Fields<'_, '_>,
    key: &'static str,
) -> Option<Option<u64>> {
    let Some(v) = f.get(key) else {
        return Some(None);
    };
    let s = get_str(cx, errs, key, v)?;
    match parse_duration(s) {
        Ok(secs) => Some(Some(secs)),
        Err(reason) => {
            errs.push(cx.error(
                &v.span(),
                ErrorKind::MalformedDuration {
                    key,
                    text: quote(s),
                    reason,
                },
            ));
            None
        }
    }
}

fn schedule_error(cx: &FileCx<'_>, span: &Range<usize>, reason: ScheduleError) -> PolicyError {
    cx.error(span, ErrorKind::ImpossibleSchedule { reason })
}

fn load_schedule(cx: &FileCx<'_>, errs: &mut Vec<PolicyError>, v: &Val<'_>) -> Option<Schedule> {
    let DeValue::Table(table) = v.get_ref() else {
        errs.push(wrong_type(
            cx,
            "schedule",
            "a table like `{ days = [\"mon-fri\"], hours = [\"09:00-17:00\"], time_zone = \"UTC\" }`",
            v,
        ));
        return None;
    };
    let f = Fields::collect(cx, errs, table, &SCHEDULE);
    let span = v.span();
    let mut c = Check { ok: true };
    let need = |errs: &mut Vec<PolicyError>, key: &'static str| {
        let got = f.get(key);
        if got.is_none() {
            errs.push(cx.error(
                &span,
                ErrorKind::MissingKey {
                    key,
                    table: "schedule",
                },
            ));
        }
        got
    };
    let days_v = need(errs, "days");
    let hours_v = need(errs, "hours");
    let tz_v = need(errs, "time_zone");

    let days = days_v.and_then(|dv| {
        let list = get_str_list(cx, errs, "days", dv)?;
        if list.is_empty() {
            errs.push(schedule_error(cx, &dv.span(), ScheduleError::EmptyDays));
            return None;
        }
        let mut bits = 0u8;
        let mut ok = true;
        for (s, sp) in list {
            match parse_days(s) {
                Ok(Weekdays(b)) => bits |= b,
                Err(reason) => {
                    errs.push(schedule_error(cx, &sp, quote_schedule(reason)));
                    ok = false;
                }
            }
        }
        ok.then_some(Weekdays(bits))
    });
    let days = c.take(days);

    let ranges = hours_v.and_then(|hv| {
        let list = get_str_list(cx, errs, "hours", hv)?;
        if list.is_empty() {
            errs.push(schedule_error(cx, &hv.span(), ScheduleError::EmptyHours));
            return None;
        }
        let mut parsed: Vec<(MinuteRange, &str, Range<usize>)> = Vec::with_capacity(list.len());
        let mut ok = true;
        for (s, sp) in list {
            match parse_hours(s) {
                Ok(r) => parsed.push((r, s, sp)),
                Err(reason) => {
                    errs.push(schedule_error(cx, &sp, quote_schedule(reason)));
                    ok = false;
                }
            }
        }
        // Overlaps: report each later-written range against the first it overlaps.
        for (i, (r, s, sp)) in parsed.iter().enumerate() {
            let earlier = parsed
                .iter()
                .take(i)
                .find(|(o, _, _)| o.start_minute < r.end_minute && r.start_minute < o.end_minute);
            if let Some((_, first, _)) = earlier {
                errs.push(schedule_error(
                    cx,
                    sp,
                    ScheduleError::Overlap {
                        first: quote(first),
                        second: quote(s),
                    },
                ));
                ok = false;
            }
        }
        let mut ranges: Vec<MinuteRange> = parsed.into_iter().map(|(r, _, _)| r).collect();
        ranges.sort_by_key(|r| r.start_minute);
        ok.then_some(ranges)
    });
    let ranges = c.take(ranges);

    let tz = tz_v.and_then(|tv| {
        let name = get_str(cx, errs, "time_zone", tv)?;
        match check_time_zone(name) {
            Ok(()) => Some(name.to_owned()),
            Err(_) => {
                errs.push(schedule_error(
                    cx,
                    &tv.span(),
                    ScheduleError::UnknownTimeZone { name: quote(name) },
                ));
                None
            }
        }
    });
    let tz = c.take(tz);

    match (c.ok, days, ranges, tz) {
        (true, Some(days), Some(ranges), Some(time_zone)) => Some(Schedule {
            days,
            ranges,
            time_zone,
        }),
        _ => None,
    }
}

/// Shortens the user text held in a schedule error for a one-line message.
fn quote_schedule(e: ScheduleError) -> ScheduleError {
    match e {
        ScheduleError::UnknownDay { text } => ScheduleError::UnknownDay { text: quote(&text) },
        ScheduleError::WrappingDays { text } => ScheduleError::WrappingDays { text: quote(&text) },
        ScheduleError::BadTime { text } => ScheduleError::BadTime { text: quote(&text) },
        ScheduleError::StartNotBeforeEnd { text } => {
            ScheduleError::StartNotBeforeEnd { text: quote(&text) }
        }
        other => other,
    }
}

fn load_posture(
    cx: &FileCx<'_>,
    errs: &mut Vec<PolicyError>,
    v: &Val<'_>,
) -> Option<PostureRequirement> {
    let DeValue::Table(table) = v.get_ref() else {
        errs.push(wrong_type(
            cx,
            "posture",
            "a table like `{ managed = true, compliant = true }`",
            v,
        ));
        return None;
    };
    let f = Fields::collect(cx, errs, table, &POSTURE);
    let mut c = Check { ok: true };
    let flag = |errs: &mut Vec<PolicyError>, key: &str| match f.get(key) {
        None => Some(false),
        Some(b) => get_bool(cx, errs, key, b),
    };
    let managed = flag(errs, "managed");
    let compliant = flag(errs, "compliant");
    let edr_running = flag(errs, "edr_running");
    let (managed, compliant, edr_running) =
        (c.take(managed), c.take(compliant), c.take(edr_running));
    let min_os_patch = match f.get("min_os_patch") {
        None => Some(None),
        Some(pv) => {
            let text = match pv.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                // A bare TOML date (`min_os_patch = 2026-09-01`) means the same.
                DeValue::Datetime(dt) if dt.time.is_none() && dt.offset.is_none() => {
                    Some(cx.snippet(&pv.span()))
                }
                _ => {
                    errs.push(wrong_type(
                        cx,
                        "min_os_patch",
                        "a date string like `\"2026-09-01\"`",
                        pv,
                    ));
                    None
                }
            };
            text.and_then(|t| match parse_patch_date(&t) {
                Some(d) => Some(Some(d)),
                None => {
                    errs.push(cx.error(&pv.span(), ErrorKind::BadPatchDate { text: quote(&t) }));
                    None
                }
            })
        }
    };
    let min_os_patch = c.take(min_os_patch);
    let (true, Some(managed), Some(compliant), Some(edr_running), Some(min_os_patch)) =
        (c.ok, managed, compliant, edr_running, min_os_patch)
    else {
        return None;
    };
    let req = PostureRequirement {
        managed,
        compliant,
        edr_running,
        min_os_patch,
    };
    if req == PostureRequirement::default() {
        errs.push(cx.error(&v.span(), ErrorKind::EmptyPosture));
        return None;
    }
    Some(req)
}

/// Whether a principal list (after expansion) admits anyone.
pub(crate) fn is_anyone(principals: Option<&[Principal]>) -> bool {
    principals.is_none_or(|ps| ps.contains(&Principal::Any))
}

/// Distinct members, in written order (group members are flattened by the caller).
pub(crate) fn dedupe<T: Eq + std::hash::Hash + Clone>(
    items: impl IntoIterator<Item = T>,
) -> Vec<T> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|x| seen.insert(x.clone()))
        .collect()
}
