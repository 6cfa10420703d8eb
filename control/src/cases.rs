//! Flows described by people: command-line flags for `explain`, and the cases file of
//! `test`.
//!
//! A cases file is TOML:
//!
//! ```toml
//! [defaults]                       # optional; any flow field, applied to every case
//! at = "2026-11-23T15:00:00Z"
//! service = "redis-trading"
//!
//! [[case]]
//! name = "desk trader reads redis in market hours"
//! source = "10.20.1.5"
//! principal = "spiffe://corp.example/ns/trading/sa/desk7"
//! expect = "allow"                 # allow | deny
//! rule = "desk-reads-redis"        # optional: the rule (or default-deny, revoked-identity…) that must decide
//! # a flow field set to "" clears its default: principal = "" is an anonymous client
//! [case.facts]                     # optional live facts
//! posture = { managed = true, compliant = true, edr_running = true, os_patch = "2026-10-01" }
//! risk = 10
//! ```

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;
use zgate_policy::{parse_duration, parse_fingerprint, parse_spiffe_id};
use zgate_table::{DevicePosture, FlowFacts, LiveFacts, PeerIdentity, UnixSeconds, Verdict};

/// A flow field or a cases file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The cases file is not valid TOML or has unknown keys.
    #[error("{file}: {message}")]
    CasesSyntax {
        /// The cases file.
        file: String,
        /// The TOML error, with its position.
        message: String,
    },
    /// A required flow field is absent.
    #[error("{context}: `{field}` is required")]
    Missing {
        /// Where: `--flags` or `file:line`.
        context: String,
        /// The field.
        field: &'static str,
    },
    /// A field's value is malformed.
    #[error("{context}: invalid {field} `{value}`: {reason}")]
    Invalid {
        /// Where.
        context: String,
        /// The field.
        field: &'static str,
        /// The value as written.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// The cases file holds no cases: a test that cannot fail.
    #[error("{0}: no [[case]] entries")]
    NoCases(String),
}

/// A flow as written, before validation.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlow {
    /// Service (listener name).
    pub service: Option<String>,
    /// Source IP or IP:port.
    pub source: Option<String>,
    /// SPIFFE ID.
    pub principal: Option<String>,
    /// DNS SANs.
    #[serde(default)]
    pub dns: Vec<String>,
    /// Subject CN.
    pub cn: Option<String>,
    /// Certificate fingerprint.
    pub fingerprint: Option<String>,
    /// SNI.
    pub sni: Option<String>,
    /// ALPN.
    pub alpn: Option<String>,
    /// Device id.
    pub device: Option<String>,
    /// Certificate age (duration).
    pub cert_age: Option<String>,
    /// Instant, RFC 3339.
    pub at: Option<String>,
}

impl RawFlow {
    /// Fills every field this flow leaves out from `defaults`; a field written as an
    /// empty string clears the default (`principal = ""` is an anonymous client).
    fn or_defaults(mut self, d: &RawFlow) -> RawFlow {
        fn fill(slot: &mut Option<String>, default: &Option<String>) {
            if slot.is_none() {
                slot.clone_from(default);
            }
            if slot.as_deref() == Some("") {
                *slot = None;
            }
        }
        fill(&mut self.service, &d.service);
        fill(&mut self.source, &d.source);
        fill(&mut self.principal, &d.principal);
        fill(&mut self.cn, &d.cn);
        fill(&mut self.fingerprint, &d.fingerprint);
        fill(&mut self.sni, &d.sni);
        fill(&mut self.alpn, &d.alpn);
        fill(&mut self.device, &d.device);
        fill(&mut self.cert_age, &d.cert_age);
        fill(&mut self.at, &d.at);
        if self.dns.is_empty() {
            self.dns.clone_from(&d.dns);
        }
        self
    }
}

/// A validated flow that owns its strings; [`FlowSpec::with_facts`] lends it out as
/// the borrowed [`FlowFacts`] the table takes.
#[derive(Debug, Clone)]
pub struct FlowSpec {
    /// Service.
    pub service: String,
    /// Source address.
    pub source: IpAddr,
    /// Normalised SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// DNS SANs, lowercase.
    pub dns_sans: Vec<String>,
    /// Common name.
    pub common_name: Option<String>,
    /// Fingerprint.
    pub fingerprint: Option<[u8; 32]>,
    /// SNI, lowercase.
    pub sni: Option<String>,
    /// ALPN.
    pub alpn: Option<String>,
    /// Device id.
    pub device_id: Option<String>,
    /// Certificate age in seconds.
    pub cert_age_secs: Option<u64>,
    /// Decision instant.
    pub now: UnixSeconds,
}

impl FlowSpec {
    /// Validates a flow given on the command line (`at` defaults to now).
    pub fn parse(raw: RawFlow) -> Result<FlowSpec, InputError> {
        FlowSpec::parse_in("command line", raw, true)
    }

    fn parse_in(context: &str, raw: RawFlow, clock_allowed: bool) -> Result<FlowSpec, InputError> {
        let invalid = |field: &'static str, value: &str, reason: String| InputError::Invalid {
            context: context.to_string(),
            field,
            value: value.to_string(),
            reason,
        };
        let missing = |field| InputError::Missing {
            context: context.to_string(),
            field,
        };
        let service = raw.service.ok_or_else(|| missing("service"))?;
        let source_text = raw.source.ok_or_else(|| missing("source"))?;
        let source = source_text
            .parse::<IpAddr>()
            .or_else(|_| source_text.parse::<SocketAddr>().map(|s| s.ip()))
            .map_err(|_| {
                invalid(
                    "source",
                    &source_text,
                    "expected an IPv4 or IPv6 address, optionally with a port".into(),
                )
            })?;
        let spiffe_id = match raw.principal {
            Some(p) => Some(
                parse_spiffe_id(&p)
                    .map_err(|e| invalid("principal", &p, e.to_string()))?
                    .to_string(),
            ),
            None => None,
        };
        let fingerprint = match raw.fingerprint {
            Some(f) => {
                Some(parse_fingerprint(&f).map_err(|e| invalid("fingerprint", &f, e.to_string()))?)
            }
            None => None,
        };
        let cert_age_secs = match raw.cert_age {
            Some(d) => {
                Some(parse_duration(&d).map_err(|e| invalid("cert_age", &d, e.to_string()))?)
            }
            None => None,
        };
        let now = match raw.at {
            Some(at) => parse_instant(&at).map_err(|reason| invalid("at", &at, reason))?,
            None if clock_allowed => jiff::Timestamp::now().as_second(),
            None => return Err(missing("at")),
        };
        Ok(FlowSpec {
            service,
            source,
            spiffe_id,
            dns_sans: raw.dns.iter().map(|d| d.to_ascii_lowercase()).collect(),
            common_name: raw.cn,
            fingerprint,
            sni: raw.sni.map(|s| s.to_ascii_lowercase()),
            alpn: raw.alpn,
            device_id: raw.device,
            cert_age_secs,
            now,
        })
    }

    /// Whether the flow presents a client certificate at all.
    fn has_identity(&self) -> bool {
        self.spiffe_id.is_some()
            || !self.dns_sans.is_empty()
            || self.common_name.is_some()
            || self.fingerprint.is_some()
    }

    /// Calls `f` with the borrowed facts of this flow.
    pub fn with_facts<R>(&self, f: impl FnOnce(&FlowFacts<'_>) -> R) -> R {
        let dns: Vec<&str> = self.dns_sans.iter().map(String::as_str).collect();
        let identity = self.has_identity().then(|| PeerIdentity {
            spiffe_id: self.spiffe_id.as_deref(),
            dns_sans: &dns,
            common_name: self.common_name.as_deref(),
            fingerprint: self.fingerprint.as_ref(),
        });
        let facts = FlowFacts {
            service: &self.service,
            source: self.source,
            sni: self.sni.as_deref(),
            alpn: self.alpn.as_deref(),
            identity,
            device_id: self.device_id.as_deref(),
            cert_age_secs: self.cert_age_secs,
            now: self.now,
        };
        f(&facts)
    }
}

/// Parses an RFC 3339 instant into Unix seconds.
pub fn parse_instant(s: &str) -> Result<UnixSeconds, String> {
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_second())
        .map_err(|_| "expected an RFC 3339 instant such as 2026-11-23T15:00:00Z".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCasesFile {
    #[serde(default)]
    defaults: RawFlow,
    #[serde(default)]
    case: Vec<toml::Spanned<RawCase>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    expect: RawVerdict,
    rule: Option<String>,
    #[serde(default)]
    facts: RawFacts,
    // The flow fields, spelled out: serde's `flatten` cannot be combined with
    // `deny_unknown_fields`, and a misspelled key must be an error.
    service: Option<String>,
    source: Option<String>,
    principal: Option<String>,
    #[serde(default)]
    dns: Vec<String>,
    cn: Option<String>,
    fingerprint: Option<String>,
    sni: Option<String>,
    alpn: Option<String>,
    device: Option<String>,
    cert_age: Option<String>,
    at: Option<String>,
}

impl RawCase {
    fn take_flow(&mut self) -> RawFlow {
        RawFlow {
            service: self.service.take(),
            source: self.source.take(),
            principal: self.principal.take(),
            dns: std::mem::take(&mut self.dns),
            cn: self.cn.take(),
            fingerprint: self.fingerprint.take(),
            sni: self.sni.take(),
            alpn: self.alpn.take(),
            device: self.device.take(),
            cert_age: self.cert_age.take(),
            at: self.at.take(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawVerdict {
    Allow,
    Deny,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFacts {
    posture: Option<RawPosture>,
    /// Risk of the case's SPIFFE ID.
    risk: Option<u8>,
    /// Risk of the case's device.
    device_risk: Option<u8>,
    /// The case's SPIFFE ID is revoked.
    #[serde(default)]
    revoked: bool,
    /// The case's certificate fingerprint is revoked.
    #[serde(default)]
    revoked_certificate: bool,
    /// A just-in-time grant for (service, SPIFFE ID) until this instant.
    grant_until: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPosture {
    #[serde(default)]
    managed: bool,
    #[serde(default)]
    compliant: bool,
    #[serde(default)]
    edr_running: bool,
    #[serde(default)]
    compromised: bool,
    /// `YYYY-MM-DD`.
    os_patch: Option<String>,
}

/// One policy test case.
#[derive(Debug)]
pub struct Case {
    /// Its name.
    pub name: String,
    /// 1-based line of the `[[case]]` in the cases file.
    pub line: usize,
    /// The flow.
    pub flow: FlowSpec,
    /// Live facts for this case only.
    pub live: LiveFacts,
    /// Expected verdict.
    pub expect: Verdict,
    /// Expected deciding rule name, if given.
    pub rule: Option<String>,
}

/// Parses a cases file; every case must be complete (an explicit `at`, so tests do
/// not depend on the clock).
pub fn parse_cases(file: &str, text: &str) -> Result<Vec<Case>, InputError> {
    let raw: RawCasesFile = toml::from_str(text).map_err(|e| InputError::CasesSyntax {
        file: file.to_string(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    if raw.case.is_empty() {
        return Err(InputError::NoCases(file.to_string()));
    }
    let mut cases = Vec::with_capacity(raw.case.len());
    for spanned in raw.case {
        let line = line_of(text, spanned.span().start);
        let mut rc = spanned.into_inner();
        let context = format!("{file}:{line} (case `{}`)", rc.name);
        let flow = FlowSpec::parse_in(&context, rc.take_flow().or_defaults(&raw.defaults), false)?;
        let live = live_facts(&context, &flow, &rc.facts)?;
        cases.push(Case {
            name: rc.name,
            line,
            flow,
            live,
            expect: match rc.expect {
                RawVerdict::Allow => Verdict::Allow,
                RawVerdict::Deny => Verdict::Deny,
            },
            rule: rc.rule,
        });
    }
    Ok(cases)
}

fn live_facts(context: &str, flow: &FlowSpec, f: &RawFacts) -> Result<LiveFacts, InputError> {
    let needs = |field: &'static str, what: &str| InputError::Invalid {
        context: context.to_string(),
        field,
        value: "…".into(),
        reason: format!("the case has no {what} to attach it to"),
    };
    let mut live = LiveFacts::default();
    if let Some(p) = &f.posture {
        let device = flow
            .device_id
            .clone()
            .ok_or_else(|| needs("posture", "device"))?;
        let os_patch = match &p.os_patch {
            Some(d) => parse_patch_date(d).ok_or_else(|| InputError::Invalid {
                context: context.to_string(),
                field: "os_patch",
                value: d.clone(),
                reason: "expected a date YYYY-MM-DD".into(),
            })?,
            None => 0,
        };
        live.posture.insert(
            device,
            DevicePosture {
                managed: p.managed,
                compliant: p.compliant,
                edr_running: p.edr_running,
                compromised: p.compromised,
                os_patch,
            },
        );
    }
    if let Some(r) = f.risk {
        let id = flow
            .spiffe_id
            .clone()
            .ok_or_else(|| needs("risk", "principal"))?;
        live.risk_by_id.insert(id, r.min(100));
    }
    if let Some(r) = f.device_risk {
        let device = flow
            .device_id
            .clone()
            .ok_or_else(|| needs("device_risk", "device"))?;
        live.risk_by_device.insert(device, r.min(100));
    }
    if f.revoked {
        let id = flow
            .spiffe_id
            .clone()
            .ok_or_else(|| needs("revoked", "principal"))?;
        live.revoked_ids.insert(id);
    }
    if f.revoked_certificate {
        let fp = flow
            .fingerprint
            .ok_or_else(|| needs("revoked_certificate", "fingerprint"))?;
        live.revoked_fingerprints.insert(fp);
    }
    if let Some(until) = &f.grant_until {
        let end = parse_instant(until).map_err(|reason| InputError::Invalid {
            context: context.to_string(),
            field: "grant_until",
            value: until.clone(),
            reason,
        })?;
        let id = flow
            .spiffe_id
            .clone()
            .ok_or_else(|| needs("grant_until", "principal"))?;
        live.grants
            .entry(flow.service.clone())
            .or_default()
            .insert(id, end);
    }
    Ok(live)
}

/// `YYYY-MM-DD` as the `YYYYMMDD` number posture compares.
fn parse_patch_date(s: &str) -> Option<u32> {
    let d: jiff::civil::Date = s.parse().ok()?;
    let year = u32::try_from(d.year()).ok()?;
    let month = u32::try_from(d.month()).ok()?;
    let day = u32::try_from(d.day()).ok()?;
    Some(year * 10_000 + month * 100 + day)
}

fn line_of(text: &str, byte_offset: usize) -> usize {
    text.get(..byte_offset)
        .map_or(0, |prefix| prefix.bytes().filter(|&b| b == b'\n').count())
        + 1
}
