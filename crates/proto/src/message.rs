//! The messages and their payloads.

use crate::facts::{Change, MIN_CHANGE};
use crate::wire::{DecodeError, Reader, Writer};

/// A dataplane's first message: who it is and what it enforces now (from its state
/// directory, or nothing), so the control process sends only what is newer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The dataplane's name (`[control] name`, by default the host name).
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// The table version it enforces; 0 for none.
    pub table_version: u64,
    /// The fact-set version it enforces; 0 for none.
    pub facts_version: u64,
}

/// A table to enforce: the bytes of a `.zgt` file (which carry their own version and
/// SHA-256; the receiver verifies them and checks `version` against the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableUpdate {
    /// The table's version.
    pub version: u64,
    /// The encoded table.
    pub table: Vec<u8>,
}

/// The whole fact set at `version`: the changes that build it from nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactsSnapshot {
    /// Its version.
    pub version: u64,
    /// The changes, applied in order to an empty set.
    pub changes: Vec<Change>,
}

/// The changes that take the fact set from version `from` to version `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactsDelta {
    /// The version they apply to: the one the receiver must enforce.
    pub from: u64,
    /// The version they make; greater than `from`.
    pub to: u64,
    /// The changes, applied in order.
    pub changes: Vec<Change>,
}

/// A candidate table to evaluate beside the enforced one (never enforced), or `None`
/// to stop evaluating one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// The candidate, or none.
    pub table: Option<TableUpdate>,
}

/// One live flow the shadow table would close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImpactFlow {
    /// Its listener.
    pub listener: String,
    /// Its client's SPIFFE ID, if it has one.
    pub principal: Option<String>,
    /// Its client's address (`ip:port`).
    pub source: String,
    /// The shadow table's rule (or built-in) that would deny it.
    pub rule: String,
    /// Why, as the audit trail says it.
    pub reason: String,
}

/// A dataplane's answer to an impact query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImpactReport {
    /// The query's id.
    pub id: u64,
    /// The shadow table version the answer is about; 0 when none is evaluated.
    pub shadow_version: u64,
    /// The live flows it would close (at most [`ImpactReport::MAX_FLOWS`]).
    pub flows: Vec<ImpactFlow>,
    /// How many it would close in all (more than `flows.len()` when cut).
    pub total: u64,
}

impl ImpactReport {
    /// Most flows listed in one report; `total` still counts them all.
    pub const MAX_FLOWS: usize = 10_000;
}

/// What a dataplane enforces and how it is doing: sent after every change it applies
/// and once a second.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// The table version enforced; 0 for none.
    pub table_version: u64,
    /// The fact-set version enforced; 0 for none.
    pub facts_version: u64,
    /// The shadow table version evaluated; 0 for none.
    pub shadow_version: u64,
    /// Flows open now.
    pub flows: u64,
    /// Flows closed because policy or facts no longer allowed them, since start.
    pub closed_by_policy: u64,
    /// Decisions the shadow table would have made differently, since it was set.
    pub shadow_differences: u64,
    /// The last thing the dataplane refused from the control process, if any.
    pub last_error: Option<String>,
}

/// How fresh the facts a dataplane enforces are: the control process was last in step
/// with its fact store (its own state directory, or a fleet's shared store) at
/// `in_step_at_ms`, up to `store_revision`. Sent twice a second; a dataplane that stops
/// getting it (control process or store away) sees the age grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    /// The store's revision (with a file store: the fact-set version).
    pub store_revision: u64,
    /// When the control process last knew it had every change (Unix milliseconds).
    pub in_step_at_ms: u64,
}

/// Every message of the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Dataplane → control, first: subscribe.
    Hello(Hello),
    /// Control → dataplane: enforce this table.
    Table(TableUpdate),
    /// Control → dataplane: the whole fact set.
    Facts(FactsSnapshot),
    /// Control → dataplane: a fact delta.
    Delta(FactsDelta),
    /// Control → dataplane: evaluate this candidate in shadow (or stop).
    Shadow(Shadow),
    /// Control → dataplane: how fresh the facts are.
    Freshness(Freshness),
    /// Control → dataplane: list the live flows the shadow table would close.
    ImpactQuery {
        /// Echoed in the answer.
        id: u64,
    },
    /// Dataplane → control: the answer to an impact query.
    Impact(ImpactReport),
    /// Dataplane → control: what it enforces.
    Report(Report),
    /// Either way, before closing: why the sender refuses what it received.
    Refused {
        /// The reason, for the other side's log.
        reason: String,
    },
}

/// A message's kind: the frame's `kind` byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`Message::Hello`].
    Hello = 1,
    /// [`Message::Table`].
    Table = 2,
    /// [`Message::Facts`].
    Facts = 3,
    /// [`Message::Delta`].
    Delta = 4,
    /// [`Message::Shadow`].
    Shadow = 5,
    /// [`Message::ImpactQuery`].
    ImpactQuery = 6,
    /// [`Message::Impact`].
    Impact = 7,
    /// [`Message::Report`].
    Report = 8,
    /// [`Message::Refused`].
    Refused = 9,
    /// [`Message::Freshness`].
    Freshness = 10,
}

impl Kind {
    /// The kind for a frame's byte.
    pub fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Table,
            3 => Kind::Facts,
            4 => Kind::Delta,
            5 => Kind::Shadow,
            6 => Kind::ImpactQuery,
            7 => Kind::Impact,
            8 => Kind::Report,
            9 => Kind::Refused,
            10 => Kind::Freshness,
            _ => return None,
        })
    }

    /// Whether the control process sends this kind (else the dataplane does; `Refused`
    /// goes both ways).
    pub fn from_control(self) -> bool {
        matches!(
            self,
            Kind::Table
                | Kind::Facts
                | Kind::Delta
                | Kind::Shadow
                | Kind::ImpactQuery
                | Kind::Freshness
                | Kind::Refused
        )
    }

    /// Whether a dataplane sends this kind.
    pub fn from_dataplane(self) -> bool {
        matches!(
            self,
            Kind::Hello | Kind::Impact | Kind::Report | Kind::Refused
        )
    }
}

impl Message {
    /// This message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Table(_) => Kind::Table,
            Message::Facts(_) => Kind::Facts,
            Message::Delta(_) => Kind::Delta,
            Message::Shadow(_) => Kind::Shadow,
            Message::ImpactQuery { .. } => Kind::ImpactQuery,
            Message::Impact(_) => Kind::Impact,
            Message::Report(_) => Kind::Report,
            Message::Refused { .. } => Kind::Refused,
            Message::Freshness(_) => Kind::Freshness,
        }
    }

    /// Append the payload.
    pub(crate) fn encode_payload(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        match self {
            Message::Hello(h) => {
                w.str(&h.name);
                w.u32(h.pid);
                w.u64(h.table_version);
                w.u64(h.facts_version);
            }
            Message::Table(t) => table(&mut w, t),
            Message::Facts(f) => {
                w.u64(f.version);
                changes(&mut w, &f.changes);
            }
            Message::Delta(d) => {
                w.u64(d.from);
                w.u64(d.to);
                changes(&mut w, &d.changes);
            }
            Message::Shadow(s) => match &s.table {
                None => w.u8(0),
                Some(t) => {
                    w.u8(1);
                    table(&mut w, t);
                }
            },
            Message::ImpactQuery { id } => w.u64(*id),
            Message::Impact(i) => {
                w.u64(i.id);
                w.u64(i.shadow_version);
                w.u64(i.total);
                let listed = i.flows.get(..ImpactReport::MAX_FLOWS).unwrap_or(&i.flows);
                w.count(listed.len());
                for f in listed {
                    w.str(&f.listener);
                    w.opt_str(f.principal.as_deref());
                    w.str(&f.source);
                    w.str(&f.rule);
                    w.str(&f.reason);
                }
            }
            Message::Report(r) => {
                w.u64(r.table_version);
                w.u64(r.facts_version);
                w.u64(r.shadow_version);
                w.u64(r.flows);
                w.u64(r.closed_by_policy);
                w.u64(r.shadow_differences);
                w.opt_str(r.last_error.as_deref());
            }
            Message::Refused { reason } => w.str(reason),
            Message::Freshness(f) => {
                w.u64(f.store_revision);
                w.u64(f.in_step_at_ms);
            }
        }
    }

    /// Parse and validate a payload of `kind`.
    pub(crate) fn decode_payload(kind: Kind, payload: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(payload);
        let m = match kind {
            Kind::Hello => Message::Hello(Hello {
                name: r.name("name")?,
                pid: r.u32("pid")?,
                table_version: r.u64("table_version")?,
                facts_version: r.u64("facts_version")?,
            }),
            Kind::Table => Message::Table(read_table(&mut r)?),
            Kind::Facts => Message::Facts(FactsSnapshot {
                version: r.u64("version")?,
                changes: read_changes(&mut r)?,
            }),
            Kind::Delta => {
                let from = r.u64("from")?;
                let to = r.u64("to")?;
                if to <= from {
                    return Err(DecodeError::Invalid {
                        field: "to",
                        why: "not after `from`",
                    });
                }
                Message::Delta(FactsDelta {
                    from,
                    to,
                    changes: read_changes(&mut r)?,
                })
            }
            Kind::Shadow => Message::Shadow(Shadow {
                table: match r.u8("shadow")? {
                    0 => None,
                    1 => Some(read_table(&mut r)?),
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            field: "shadow",
                            tag,
                        })
                    }
                },
            }),
            Kind::ImpactQuery => Message::ImpactQuery { id: r.u64("id")? },
            Kind::Impact => {
                let id = r.u64("id")?;
                let shadow_version = r.u64("shadow_version")?;
                let total = r.u64("total")?;
                // Five string fields, each at least its 4-byte length.
                let n = r.count("flows", 5 * 4)?;
                if n > ImpactReport::MAX_FLOWS {
                    return Err(DecodeError::Invalid {
                        field: "flows",
                        why: "more than ImpactReport::MAX_FLOWS",
                    });
                }
                let mut flows = Vec::with_capacity(n);
                for _ in 0..n {
                    flows.push(ImpactFlow {
                        listener: r.name("listener")?,
                        principal: r.opt_str("principal")?,
                        source: r.name("source")?,
                        rule: r.name("rule")?,
                        reason: r.name("reason")?,
                    });
                }
                Message::Impact(ImpactReport {
                    id,
                    shadow_version,
                    flows,
                    total,
                })
            }
            Kind::Report => Message::Report(Report {
                table_version: r.u64("table_version")?,
                facts_version: r.u64("facts_version")?,
                shadow_version: r.u64("shadow_version")?,
                flows: r.u64("flows")?,
                closed_by_policy: r.u64("closed_by_policy")?,
                shadow_differences: r.u64("shadow_differences")?,
                last_error: r.opt_str("last_error")?,
            }),
            Kind::Refused => Message::Refused {
                reason: r.str("reason")?.to_owned(),
            },
            Kind::Freshness => Message::Freshness(Freshness {
                store_revision: r.u64("store_revision")?,
                in_step_at_ms: r.u64("in_step_at_ms")?,
            }),
        };
        r.finish()?;
        Ok(m)
    }
}

fn table(w: &mut Writer<'_>, t: &TableUpdate) {
    w.u64(t.version);
    w.bytes(&t.table);
}

fn read_table(r: &mut Reader<'_>) -> Result<TableUpdate, DecodeError> {
    let version = r.u64("version")?;
    if version == 0 {
        return Err(DecodeError::Invalid {
            field: "version",
            why: "0 means no table",
        });
    }
    let table = r.bytes("table")?.to_vec();
    Ok(TableUpdate { version, table })
}

fn changes(w: &mut Writer<'_>, changes: &[Change]) {
    w.count(changes.len());
    for c in changes {
        c.encode(w);
    }
}

fn read_changes(r: &mut Reader<'_>) -> Result<Vec<Change>, DecodeError> {
    let n = r.count("changes", MIN_CHANGE)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Change::decode(r)?);
    }
    Ok(out)
}
