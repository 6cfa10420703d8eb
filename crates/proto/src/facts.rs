//! Fact changes: the deltas the control process sends, applied to the [`LiveFacts`]
//! that `decide` reads, and the keys of the flows each one can affect.

use zgate_table::facts::{DevicePosture, LiveFacts, UnixSeconds};

use crate::wire::{DecodeError, Reader, Writer};

/// What a revocation or a risk score is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A SPIFFE ID (`spiffe://trust-domain/path`).
    Principal(String),
    /// The SHA-256 of a DER end-entity certificate.
    Fingerprint([u8; 32]),
    /// A device id, as the listener reads it from client certificates.
    Device(String),
}

impl Subject {
    fn encode(&self, w: &mut Writer<'_>) {
        match self {
            Subject::Principal(p) => {
                w.u8(0);
                w.str(p);
            }
            Subject::Fingerprint(f) => {
                w.u8(1);
                w.0.extend_from_slice(f);
            }
            Subject::Device(d) => {
                w.u8(2);
                w.str(d);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Subject, DecodeError> {
        match r.u8("subject")? {
            0 => Ok(Subject::Principal(principal(r, "subject")?)),
            1 => Ok(Subject::Fingerprint(r.fixed("subject")?)),
            2 => Ok(Subject::Device(r.name("subject")?)),
            tag => Err(DecodeError::UnknownTag {
                field: "subject",
                tag,
            }),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Principal(p) => write!(f, "principal {p}"),
            Subject::Fingerprint(fp) => {
                f.write_str("fingerprint ")?;
                fp.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            Subject::Device(d) => write!(f, "device {d}"),
        }
    }
}

/// A SPIFFE ID field: `spiffe://` and something after it.
fn principal(r: &mut Reader<'_>, field: &'static str) -> Result<String, DecodeError> {
    let p = r.name(field)?;
    match p.strip_prefix("spiffe://") {
        Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => Ok(p),
        _ => Err(DecodeError::Invalid {
            field,
            why: "not a SPIFFE ID (spiffe://trust-domain/path)",
        }),
    }
}

/// One change to the fact set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Deny every flow presenting this principal or certificate.
    Revoke(Subject),
    /// Lift a revocation.
    Unrevoke(Subject),
    /// A device's posture, as last reported.
    SetPosture {
        /// The device id.
        device: String,
        /// What it reports.
        posture: DevicePosture,
    },
    /// Forget a device's posture: it then meets no posture requirement.
    ClearPosture {
        /// The device id.
        device: String,
    },
    /// A risk score (0 to 100) for a principal or a device.
    SetRisk {
        /// Whose.
        subject: Subject,
        /// The score.
        score: u8,
    },
    /// Forget a risk score (unknown risk counts as 0).
    ClearRisk {
        /// Whose.
        subject: Subject,
    },
    /// A just-in-time grant: `principal` may reach `service` until `until`.
    Grant {
        /// The listener (service) name.
        service: String,
        /// The SPIFFE ID.
        principal: String,
        /// End of the grant (Unix seconds, exclusive).
        until: UnixSeconds,
    },
    /// End a grant now.
    Ungrant {
        /// The listener (service) name.
        service: String,
        /// The SPIFFE ID.
        principal: String,
    },
}

/// What kind of fact a change is about: why a flow it closes was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// A revocation.
    Revocation,
    /// Device posture.
    Posture,
    /// A risk score.
    Risk,
    /// A just-in-time grant.
    Grant,
}

/// The keys of the live flows a set of changes can affect: only those are decided
/// again, each with the kind of fact that touched it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// By SPIFFE ID.
    pub principals: Vec<(String, Cause)>,
    /// By certificate fingerprint.
    pub fingerprints: Vec<([u8; 32], Cause)>,
    /// By device id.
    pub devices: Vec<(String, Cause)>,
}

impl Touched {
    /// The keys `changes` can affect.
    pub fn of(changes: &[Change]) -> Touched {
        let mut t = Touched::default();
        for c in changes {
            t.add(c);
        }
        t
    }

    /// Whether nothing is touched.
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty() && self.fingerprints.is_empty() && self.devices.is_empty()
    }

    fn subject(&mut self, s: &Subject, cause: Cause) {
        match s {
            Subject::Principal(p) => self.principals.push((p.clone(), cause)),
            Subject::Fingerprint(f) => self.fingerprints.push((*f, cause)),
            Subject::Device(d) => self.devices.push((d.clone(), cause)),
        }
    }

    fn add(&mut self, c: &Change) {
        match c {
            Change::Revoke(s) | Change::Unrevoke(s) => self.subject(s, Cause::Revocation),
            Change::SetPosture { device, .. } | Change::ClearPosture { device } => {
                self.devices.push((device.clone(), Cause::Posture));
            }
            Change::SetRisk { subject, .. } | Change::ClearRisk { subject } => {
                self.subject(subject, Cause::Risk);
            }
            Change::Grant { principal, .. } | Change::Ungrant { principal, .. } => {
                self.principals.push((principal.clone(), Cause::Grant));
            }
        }
    }
}

const T_REVOKE: u8 = 1;
const T_UNREVOKE: u8 = 2;
const T_POSTURE: u8 = 3;
const T_CLEAR_POSTURE: u8 = 4;
const T_RISK: u8 = 5;
const T_CLEAR_RISK: u8 = 6;
const T_GRANT: u8 = 7;
const T_UNGRANT: u8 = 8;

/// Smallest encoded change (a tag and a one-byte subject tag with a 32-byte key is
/// more; a tag and an empty-looking string is 5): bounds a hostile count.
pub(crate) const MIN_CHANGE: usize = 5;

impl Change {
    /// The kind of fact this change is about.
    pub fn cause(&self) -> Cause {
        match self {
            Change::Revoke(_) | Change::Unrevoke(_) => Cause::Revocation,
            Change::SetPosture { .. } | Change::ClearPosture { .. } => Cause::Posture,
            Change::SetRisk { .. } | Change::ClearRisk { .. } => Cause::Risk,
            Change::Grant { .. } | Change::Ungrant { .. } => Cause::Grant,
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) {
        match self {
            Change::Revoke(s) => {
                w.u8(T_REVOKE);
                s.encode(w);
            }
            Change::Unrevoke(s) => {
                w.u8(T_UNREVOKE);
                s.encode(w);
            }
            Change::SetPosture { device, posture } => {
                w.u8(T_POSTURE);
                w.str(device);
                w.bool(posture.managed);
                w.bool(posture.compliant);
                w.bool(posture.edr_running);
                w.bool(posture.compromised);
                w.u32(posture.os_patch);
            }
            Change::ClearPosture { device } => {
                w.u8(T_CLEAR_POSTURE);
                w.str(device);
            }
            Change::SetRisk { subject, score } => {
                w.u8(T_RISK);
                subject.encode(w);
                w.u8(*score);
            }
            Change::ClearRisk { subject } => {
                w.u8(T_CLEAR_RISK);
                subject.encode(w);
            }
            Change::Grant {
                service,
                principal,
                until,
            } => {
                w.u8(T_GRANT);
                w.str(service);
                w.str(principal);
                w.i64(*until);
            }
            Change::Ungrant { service, principal } => {
                w.u8(T_UNGRANT);
                w.str(service);
                w.str(principal);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Change, DecodeError> {
        let change = match r.u8("change")? {
            T_REVOKE => Change::Revoke(revocable(Subject::decode(r)?)?),
            T_UNREVOKE => Change::Unrevoke(revocable(Subject::decode(r)?)?),
            T_POSTURE => Change::SetPosture {
                device: r.name("device")?,
                posture: DevicePosture {
                    managed: r.bool("managed")?,
                    compliant: r.bool("compliant")?,
                    edr_running: r.bool("edr_running")?,
                    compromised: r.bool("compromised")?,
                    os_patch: r.u32("os_patch")?,
                },
            },
            T_CLEAR_POSTURE => Change::ClearPosture {
                device: r.name("device")?,
            },
            T_RISK => {
                let subject = scored(Subject::decode(r)?)?;
                let score = r.u8("score")?;
                if score > 100 {
                    return Err(DecodeError::Invalid {
                        field: "score",
                        why: "above 100",
                    });
                }
                Change::SetRisk { subject, score }
            }
            T_CLEAR_RISK => Change::ClearRisk {
                subject: scored(Subject::decode(r)?)?,
            },
            T_GRANT => {
                let service = r.name("service")?;
                let principal = principal(r, "principal")?;
                let until = r.i64("until")?;
                if until <= 0 {
                    return Err(DecodeError::Invalid {
                        field: "until",
                        why: "not after the Unix epoch",
                    });
                }
                Change::Grant {
                    service,
                    principal,
                    until,
                }
            }
            T_UNGRANT => Change::Ungrant {
                service: r.name("service")?,
                principal: principal(r, "principal")?,
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    field: "change",
                    tag,
                })
            }
        };
        Ok(change)
    }
}

/// Revocations name a principal or a certificate; a device is marked compromised.
fn revocable(s: Subject) -> Result<Subject, DecodeError> {
    match s {
        Subject::Device(_) => Err(DecodeError::Invalid {
            field: "subject",
            why: "a device is not revoked but reported compromised (posture)",
        }),
        s => Ok(s),
    }
}

/// Risk scores are kept per principal and per device.
fn scored(s: Subject) -> Result<Subject, DecodeError> {
    match s {
        Subject::Fingerprint(_) => Err(DecodeError::Invalid {
            field: "subject",
            why: "risk is scored per principal or device, not per certificate",
        }),
        s => Ok(s),
    }
}

/// Apply one change to `facts` (the version is the caller's).
pub fn apply(facts: &mut LiveFacts, change: &Change) {
    match change {
        Change::Revoke(Subject::Principal(p)) => {
            facts.revoked_ids.insert(p.clone());
        }
        Change::Revoke(Subject::Fingerprint(f)) => {
            facts.revoked_fingerprints.insert(*f);
        }
        Change::Unrevoke(Subject::Principal(p)) => {
            facts.revoked_ids.remove(p);
        }
        Change::Unrevoke(Subject::Fingerprint(f)) => {
            facts.revoked_fingerprints.remove(f);
        }
        // Refused by the decoder; nothing to do if built by hand.
        Change::Revoke(Subject::Device(_)) | Change::Unrevoke(Subject::Device(_)) => {}
        Change::SetPosture { device, posture } => {
            facts.posture.insert(device.clone(), *posture);
        }
        Change::ClearPosture { device } => {
            facts.posture.remove(device);
        }
        Change::SetRisk { subject, score } => match subject {
            Subject::Principal(p) => {
                facts.risk_by_id.insert(p.clone(), *score);
            }
            Subject::Device(d) => {
                facts.risk_by_device.insert(d.clone(), *score);
            }
            Subject::Fingerprint(_) => {}
        },
        Change::ClearRisk { subject } => match subject {
            Subject::Principal(p) => {
                facts.risk_by_id.remove(p);
            }
            Subject::Device(d) => {
                facts.risk_by_device.remove(d);
            }
            Subject::Fingerprint(_) => {}
        },
        Change::Grant {
            service,
            principal,
            until,
        } => {
            facts
                .grants
                .entry(service.clone())
                .or_default()
                .insert(principal.clone(), *until);
        }
        Change::Ungrant { service, principal } => {
            if let Some(by_id) = facts.grants.get_mut(service) {
                by_id.remove(principal);
                if by_id.is_empty() {
                    facts.grants.remove(service);
                }
            }
        }
    }
}

/// The changes that build `facts` from nothing, in a stable order (so that the same
/// facts always encode to the same bytes).
pub fn snapshot(facts: &LiveFacts) -> Vec<Change> {
    let mut ids: Vec<&str> = facts.revoked_ids.iter().collect();
    ids.sort_unstable();
    let mut fps: Vec<&[u8; 32]> = facts.revoked_fingerprints.iter().collect();
    fps.sort_unstable();
    let mut posture: Vec<_> = facts.posture.iter().collect();
    posture.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut risk_id: Vec<_> = facts.risk_by_id.iter().collect();
    risk_id.sort_unstable();
    let mut risk_dev: Vec<_> = facts.risk_by_device.iter().collect();
    risk_dev.sort_unstable();
    let mut grants: Vec<(&str, &str, UnixSeconds)> = facts
        .grants
        .iter()
        .flat_map(|(s, by_id)| by_id.iter().map(move |(p, u)| (s.as_str(), p.as_str(), *u)))
        .collect();
    grants.sort_unstable();

    let mut out = Vec::new();
    out.extend(
        ids.into_iter()
            .map(|p| Change::Revoke(Subject::Principal(p.to_owned()))),
    );
    out.extend(
        fps.into_iter()
            .map(|f| Change::Revoke(Subject::Fingerprint(*f))),
    );
    out.extend(posture.into_iter().map(|(d, p)| Change::SetPosture {
        device: d.clone(),
        posture: *p,
    }));
    out.extend(risk_id.into_iter().map(|(p, s)| Change::SetRisk {
        subject: Subject::Principal(p.clone()),
        score: *s,
    }));
    out.extend(risk_dev.into_iter().map(|(d, s)| Change::SetRisk {
        subject: Subject::Device(d.clone()),
        score: *s,
    }));
    out.extend(grants.into_iter().map(|(s, p, u)| Change::Grant {
        service: s.to_owned(),
        principal: p.to_owned(),
        until: u,
    }));
    out
}
