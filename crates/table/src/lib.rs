//! zgate's compiled decision table: the policy turned into flat, immutable lookup data.
//!
//! # Purpose
//!
//! [`DecisionTable::compile`] turns a validated [`Policy`](zgate_policy::model::Policy) into a table that answers
//! "may this flow proceed, and for how long?" ([`DecisionTable::decide`]) in tens of
//! nanoseconds, with no allocation, no lock and no clock. [`DecisionTable::encode`] and
//! [`DecisionTable::decode`] move a table from the control process to the dataplanes
//! in a checksummed, versioned binary format (`docs/table-format.md`).
//! [`reference`](mod@reference) holds the slow evaluator the table is tested against.
//!
//! # Non-goals
//!
//! - Parsing or validating policy text (`zgate-policy` does; this crate trusts the model).
//! - Mutation. A new policy is a new table; the dataplane swaps pointers.
//! - Fast-changing facts (revocations, posture, risk, grants): they arrive as
//!   [`LiveFacts`] beside the table and are read, never copied into it.
//! - IO of any kind: no files, sockets, clock, environment or threads (sans-IO).
//! - Authenticating table bytes: the checksum catches corruption, not forgery; the
//!   control channel is what is trusted.
//!
//! # Shape
//!
//! Every rule gets a local index inside a *sub-table*: one per service named by some
//! rule, plus one for the `*`-service rules, which serves services no rule names. When
//! there are few `*` rules they are also copied into every service's sub-table, so a
//! flow reads one sub-table; otherwise it reads its service's and the `*` one. A
//! sub-table keeps, per matching dimension, rule sets as bitsets over its local indices:
//!
//! ```text
//!   flow ──► service id (index) ─► sub-table ─┬─ principal key slots ─► rows ┐
//!        └─► global principal ids (indexes)   ├─ source ranges (bsearch) ─► row ├─ AND ─► candidates
//!                                             ├─ SNI key slots ─────────► rows │        │
//!                                             └─ ALPN key slot ─────────► row ─┘        ▼
//!        lowest deny candidate whose residual checks (schedule, posture, risk,
//!        certificate age, grant) pass; else lowest such allow; else default deny
//! ```
//!
//! A bitset row stores only the words between its first and last set bit, and identical
//! rows are stored once, so memory follows the number of (key, rule) pairs rather than
//! keys times rules in the common case where a key's rules are near each other.
//! Schedules read a per-zone transition list computed with `jiff` at compile time.
//!
//! # Invariants
//!
//! - A table is immutable once built and is `Send + Sync`; share it behind an `Arc`.
//! - [`DecisionTable::decide`] gives the same [`Decision`] as [`reference::evaluate`]
//!   on the policy it was compiled from, for every flow and fact set (the differential
//!   test checks this), and `decode(encode(t))` decides identically to `t`.
//! - [`DecisionTable::decode`] never panics and never allocates more than a small
//!   multiple of its input; a table it returns is internally consistent (every index in
//!   range), which is what lets `decide` never fail. It does not prove the table came
//!   from any particular policy.
//! - `decide` does not allocate, lock, or call into `jiff`.
//!
//! # Cost of a decision (common case)
//!
//! For a service with up to 128 rules (the candidates are a single `u128`, narrowed
//! one dimension at a time, given up as soon as they are empty, and a dimension
//! skipped once every candidate left accepts any value in it; each row is one
//! 16-byte load), a decision reads: the service name (one probe of a flat string
//! index: a 16-byte slot, which holds a key of up to 8 bytes whole, else the key's
//! bytes too; compared in order when the table has at most four services); one
//! probe for the SPIFFE ID, whose slot already lists the prefix keys the ID matches
//! when the ID is itself a policy key (otherwise one probe per prefix length some
//! policy prefix has that falls on a `/`, hashed from the same pass over the ID's
//! words); one probe per DNS SAN, common name and fingerprint the flow carries (empty
//! indexes skipped); the sub-table's derived header with its fixed rows inline (2-3
//! lines); one key slot per matched key and dimension (1 each); the source ranges
//! (IPv4 in Eytzinger order: the top levels share lines, 2-4); one 16-byte row per
//! keyed dimension (often shared); the SNI and ALPN names only when a candidate left
//! constrains them; the local-to-global rule map (1); and the winning rule's
//! condition record (deduplicated, so usually cached) plus, with a schedule, the
//! zone's transition array (1-2). About 12-18 lines, none of which depend on the
//! total rule count. Instruction counts (callgrind, the benchmark's flows,
//! `benches/examples/decide_count.rs`): ~690 per decision at 10 rules, ~810-860 at
//! 1,000 and ~830-870 at 100,000 rules (see `docs/benchmarks.md`). `LiveFacts` maps are
//! consulted only for rules with residual conditions and for non-empty revocation
//! sets.

#![forbid(unsafe_code)]

pub mod facts;
pub mod reference;

mod compile;
mod decide;
mod format;
mod idset;
mod index;
mod tz;

pub use facts::*;

use index::StrIndex;
use rustc_hash::FxHashMap;
use zgate_policy::model::PostureRequirement;

/// Most rules one table can hold (format limit: local and global indices are `u32`,
/// and a bound keeps decode's allocation checks simple).
pub const MAX_RULES: usize = 1 << 24;
/// Most distinct services one table can hold.
pub const MAX_SERVICES: usize = 1 << 24;
/// The binary format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Home slot of `key` in a key hash table of `mask + 1` slots.
#[inline]
pub(crate) fn key_slot(key: u32, mask: usize) -> usize {
    ((u64::from(key).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize) & mask
}

/// "No such index" in the `u32` index fields.
pub(crate) const NONE: u32 = u32::MAX;
/// Row id of the empty bitset; always present.
pub(crate) const EMPTY_ROW: u32 = 0;

/// A compiled, immutable policy. See the crate documentation.
#[derive(Debug, Clone)]
pub struct DecisionTable {
    pub(crate) version: u64,
    pub(crate) policy_hash: [u8; 32],
    /// Per global rule: id, action and residual conditions.
    pub(crate) rules: Rules,
    pub(crate) zones: Vec<tz::Zone>,
    pub(crate) schedules: Vec<Sched>,
    /// Global principal key space; the position is the key id.
    pub(crate) principal_keys: Vec<PrincipalKey>,
    /// Global SNI key space.
    pub(crate) sni_keys: Vec<SniKey>,
    /// Global ALPN key space.
    pub(crate) alpn_keys: Vec<Box<str>>,
    /// Bitset words of every row, rows back to back.
    pub(crate) pool: Vec<u64>,
    pub(crate) rows: Vec<Row>,
    /// Per sub-table span, an open-addressing hash table of `[key id, row]` slots
    /// (power-of-two size, linear probing, `NONE` key = empty; see [`key_slot`]).
    pub(crate) slots: Vec<[u32; 2]>,
    /// Disjoint IPv4 ranges: start of each range (first is 0), and its row.
    pub(crate) v4_starts: Vec<u32>,
    pub(crate) v4_rows: Vec<u32>,
    pub(crate) v6_starts: Vec<u128>,
    pub(crate) v6_rows: Vec<u32>,
    /// Local index -> global rule index, per sub-table span.
    pub(crate) local_rules: Vec<u32>,
    /// One per service (same order as `service_names`), then the `*` table if any.
    pub(crate) tables: Vec<SubTable>,
    pub(crate) service_names: Vec<Box<str>>,
    /// Index in `tables` of the `*`-service sub-table, or `NONE`.
    pub(crate) any_table: u32,
    /// The `*` rules are also merged into every service's sub-table, so a flow for a
    /// named service reads one sub-table; the `*` sub-table then serves only services
    /// no rule names. Chosen at compile time when the copies are cheap.
    pub(crate) any_merged: bool,
    /// Hash indexes derived from the lists above (rebuilt on decode).
    pub(crate) idx: Indexes,
}

/// A global principal key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PrincipalKey {
    /// A SPIFFE ID, as text.
    Exact(Box<str>),
    /// A SPIFFE prefix (`spiffe://td/a` for `spiffe://td/a/*`).
    Under(Box<str>),
    Dns(Box<str>),
    Cn(Box<str>),
    Fingerprint([u8; 32]),
    /// A DNS SAN on a certificate whose SPIFFE ID is in trust domain `td`.
    DnsIn {
        td: Box<str>,
        name: Box<str>,
    },
    /// A common name on a certificate whose SPIFFE ID is in trust domain `td`.
    CnIn {
        td: Box<str>,
        name: Box<str>,
    },
}

/// A global SNI key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum SniKey {
    /// The name as written (including a literal `*.x`, which also matches itself).
    Exact(Box<str>),
    /// The `suffix` of a `*.suffix` entry.
    Wildcard(Box<str>),
}

/// A range of an index array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub off: u32,
    pub len: u32,
}

impl Span {
    pub(crate) fn range(self) -> std::ops::Range<usize> {
        let off = self.off as usize;
        off..off.saturating_add(self.len as usize)
    }
}

/// A bitset stored as its words `first..first + len`; words are `pool[off..off + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Row {
    pub first: u32,
    pub len: u32,
    pub off: u32,
}

/// The rules' ids and conditions, compact: the ids back to back in one string, and
/// each distinct [`RuleInfo`] stored once (most rules share one of a few dozen), so
/// per rule this costs its id's bytes plus 8 bytes rather than ~70 in separate
/// allocations.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    id_text: String,
    /// End of each rule's id in `id_text`.
    id_ends: Vec<u32>,
    /// Per rule: index into `infos`.
    info_of: Vec<u32>,
    infos: Vec<RuleInfo>,
}

/// Builds [`Rules`], deduplicating conditions.
#[derive(Debug, Default)]
pub(crate) struct RulesBuilder {
    rules: Rules,
    seen: rustc_hash::FxHashMap<RuleInfo, u32>,
}

impl RulesBuilder {
    pub(crate) fn with_capacity(n: usize) -> RulesBuilder {
        RulesBuilder {
            rules: Rules {
                id_ends: Vec::with_capacity(n),
                info_of: Vec::with_capacity(n),
                ..Rules::default()
            },
            seen: rustc_hash::FxHashMap::default(),
        }
    }

    /// Append a rule; `None` when the ids outgrow 4 GiB.
    pub(crate) fn push(&mut self, id: &str, info: RuleInfo) -> Option<()> {
        let r = &mut self.rules;
        let end = u32::try_from(r.id_text.len().checked_add(id.len())?).ok()?;
        let next = u32::try_from(r.infos.len()).ok()?;
        let at = *self.seen.entry(info).or_insert(next);
        if at == next {
            r.infos.push(info);
        }
        r.id_text.push_str(id);
        r.id_ends.push(end);
        r.info_of.push(at);
        Some(())
    }

    pub(crate) fn finish(self) -> Rules {
        self.rules
    }
}

impl Rules {
    pub(crate) fn len(&self) -> usize {
        self.info_of.len()
    }

    /// The id of rule `i`.
    pub(crate) fn id(&self, i: usize) -> Option<&str> {
        let end = *self.id_ends.get(i)? as usize;
        let start = match i.checked_sub(1) {
            None => 0,
            Some(p) => *self.id_ends.get(p)? as usize,
        };
        self.id_text.get(start..end)
    }

    /// The conditions of rule `i`.
    #[inline]
    pub(crate) fn info(&self, i: usize) -> Option<&RuleInfo> {
        self.infos.get(*self.info_of.get(i)? as usize)
    }

    /// Every distinct condition set.
    pub(crate) fn infos(&self) -> &[RuleInfo] {
        &self.infos
    }

    /// `(id, conditions)` per rule, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &RuleInfo)> {
        (0..self.len()).filter_map(|i| Some((self.id(i)?, self.info(i)?)))
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.id_text.len()
            + std::mem::size_of_val(&*self.id_ends)
            + std::mem::size_of_val(&*self.info_of)
            + std::mem::size_of_val(&*self.infos)
    }
}

/// Per global rule: what `decide` needs beyond the bitsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RuleInfo {
    pub deny: bool,
    /// Index into `schedules`, or `NONE`.
    pub schedule: u32,
    pub posture: Option<PostureRequirement>,
    pub max_risk: Option<u8>,
    pub max_cert_age_secs: Option<u64>,
    pub max_session_secs: Option<u64>,
    pub requires_grant: bool,
}

impl RuleInfo {
    /// Whether some condition must be checked against the flow and live facts after
    /// the bitsets say the rule is a candidate.
    pub(crate) fn has_residual(&self) -> bool {
        self.schedule != NONE
            || self.posture.is_some()
            || self.max_risk.is_some()
            || self.max_cert_age_secs.is_some()
            || self.requires_grant
    }
}

/// A compiled schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sched {
    pub zone: u32,
    pub days: u8,
    /// `(start_minute, end_minute)`, in the policy's order.
    pub ranges: Box<[(u16, u16)]>,
}

/// One sub-table: the rules that apply to one service (or the `*` rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SubTable {
    /// Into `local_rules`.
    pub rules: Span,
    /// Bitset width in words: `rules.len.div_ceil(64)`.
    pub words: u32,
    /// Rows: deny rules; rules with residual conditions; rules unconstrained in each
    /// dimension (principal, source, SNI, ALPN).
    pub deny: u32,
    pub check: u32,
    pub principal_any: u32,
    pub source_any: u32,
    pub sni_any: u32,
    pub alpn_any: u32,
    /// Into `slots`.
    pub principals: Span,
    pub sni: Span,
    pub alpn: Span,
    /// Into `v4_starts` / `v4_rows` and `v6_starts` / `v6_rows`.
    pub v4: Span,
    pub v6: Span,
    /// `UNCONSTRAINED_*` bits: dimensions no rule of this sub-table constrains (its
    /// `*_any` row holds every rule), which `decide` skips.
    pub unconstrained: u8,
}

pub(crate) const UNCONSTRAINED_PRINCIPAL: u8 = 1;
pub(crate) const UNCONSTRAINED_SOURCE: u8 = 1 << 1;
pub(crate) const UNCONSTRAINED_SNI: u8 = 1 << 2;
pub(crate) const UNCONSTRAINED_ALPN: u8 = 1 << 3;

/// Hash indexes over the key lists, rebuilt from them after decode (see [`index`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Indexes {
    pub services: StrIndex,
    /// SPIFFE text -> [exact key id, prefix key id, offset, count] (ids `NONE` where
    /// absent). `spiffe_unders[offset..offset + count]` are the prefix keys the text
    /// itself matches as an ID, so a flow whose ID is a known key needs one probe.
    pub spiffe: StrIndex<[u32; 4]>,
    pub spiffe_unders: Vec<u32>,
    /// The distinct lengths of the prefix keys, ascending: a flow's SPIFFE ID is
    /// probed only where one of these lengths falls on a `/`.
    pub under_lens: Vec<u32>,
    pub dns: StrIndex,
    pub cn: StrIndex,
    pub fingerprint: StrIndex,
    /// Trust domains named by scoped keys (`dns@td:…`, `cn@td:…`) -> a small id.
    pub scope_tds: StrIndex,
    /// Scoped DNS and CN keys by name -> `[offset, count]` into `scoped`, whose
    /// entries are `[trust domain id, key id]`: a flow's name is probed once, then
    /// the few trust domains that scope it are compared with the flow's.
    pub dns_in: StrIndex<[u32; 2]>,
    pub cn_in: StrIndex<[u32; 2]>,
    pub scoped: Vec<[u32; 2]>,
    pub sni_exact: StrIndex,
    pub sni_wildcard: StrIndex,
    pub alpn: StrIndex,
    /// Per row id: its first two words as one `u128` (zero for a row that reaches
    /// past word 1, which no sub-table of at most 128 rules names). Sub-tables that
    /// narrow read this instead of the row descriptor and the pool: one load.
    pub small_rows: Vec<u128>,
    /// Per sub-table (same order as `tables`): its header with the fixed rows
    /// resolved to `u128`s, for sub-tables of at most 128 rules (default for wider
    /// ones, which `decide` does not read here).
    pub small_tables: Vec<SmallTable>,
    /// Per small sub-table ([`SmallTable::v4_eyt`]), its IPv4 range starts in
    /// Eytzinger (breadth-first) order, 1-based: entry 0 is unused.
    pub v4_eyt_starts: Vec<u32>,
    /// Beside `v4_eyt_starts`: at each start, the row of the range *before* it
    /// (entry 0: the last range's row). The search finds the first start above the
    /// address, whose predecessor range holds it.
    pub v4_eyt_rows: Vec<u32>,
}

/// A sub-table of at most 128 rules as `decide` reads it: the fixed rows inline (one
/// or two cache lines instead of the header plus six row loads), and the spans of its
/// key slots, ranges and rules. Derived from [`SubTable`] and `small_rows` after
/// compile and decode; not part of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SmallTable {
    /// One bit per rule of the sub-table.
    pub all: u128,
    pub deny: u128,
    pub check: u128,
    pub principal_any: u128,
    pub source_any: u128,
    pub sni_any: u128,
    pub alpn_any: u128,
    pub rules: Span,
    pub principals: Span,
    pub sni: Span,
    pub alpn: Span,
    pub v4: Span,
    pub v6: Span,
    /// Into `v4_eyt_starts` / `v4_eyt_rows`: `v4.len + 1` entries (none without
    /// IPv4 ranges).
    pub v4_eyt: Span,
}

impl SmallTable {
    /// The small form of `t`, reading rows from `small_rows`.
    fn of(t: &SubTable, small_rows: &[u128]) -> SmallTable {
        let row = |id: u32| small_rows.get(id as usize).copied().unwrap_or(0);
        let n = (t.rules.len as usize).min(128);
        SmallTable {
            all: u128::MAX.checked_shr(128 - n as u32).unwrap_or(0),
            deny: row(t.deny),
            check: row(t.check),
            principal_any: row(t.principal_any),
            source_any: row(t.source_any),
            sni_any: row(t.sni_any),
            alpn_any: row(t.alpn_any),
            rules: t.rules,
            principals: t.principals,
            sni: t.sni,
            alpn: t.alpn,
            v4: t.v4,
            v6: t.v6,
            v4_eyt: Span::default(),
        }
    }
}

/// Lay one sub-table's sorted IPv4 range `starts` (with their `rows`) out in
/// Eytzinger order after `eyt_starts` / `eyt_rows`; returns their span.
pub(crate) fn eytzinger_v4(
    starts: &[u32],
    rows: &[u32],
    eyt_starts: &mut Vec<u32>,
    eyt_rows: &mut Vec<u32>,
) -> Option<Span> {
    let n = starts.len();
    if n == 0 || rows.len() != n {
        return Some(Span::default());
    }
    let off = eyt_starts.len();
    let len = n + 1;
    eyt_starts.resize(off + len, u32::MAX);
    eyt_rows.resize(off + len, EMPTY_ROW);
    let (es, er) = (eyt_starts.get_mut(off..)?, eyt_rows.get_mut(off..)?);
    // In-order walk of the implicit tree (node k has children 2k and 2k + 1) hands
    // out the sorted starts in order.
    let mut next = 0usize;
    let mut stack: Vec<(usize, bool)> = vec![(1, false)];
    while let Some((k, visited)) = stack.pop() {
        if k > n {
            continue;
        }
        if visited {
            *es.get_mut(k)? = *starts.get(next)?;
            *er.get_mut(k)? = match next.checked_sub(1) {
                Some(prev) => *rows.get(prev)?,
                None => EMPTY_ROW,
            };
            next += 1;
        } else {
            stack.push((2 * k + 1, false));
            stack.push((k, true));
            stack.push((2 * k, false));
        }
    }
    *er.first_mut()? = *rows.last()?;
    Some(Span {
        off: u32::try_from(off).ok()?,
        len: u32::try_from(len).ok()?,
    })
}

/// Fill `idx.small_tables` and the Eytzinger IPv4 arrays: per sub-table its
/// [`SmallTable`] (default for sub-tables wider than 128 rules). `None` when an
/// array outgrows `u32` offsets or a span is out of range (a validated or compiled
/// table never is).
pub(crate) fn derive_small(
    idx: &mut Indexes,
    tables: &[SubTable],
    v4_starts: &[u32],
    v4_rows: &[u32],
) -> Option<()> {
    let mut small = Vec::with_capacity(tables.len());
    for t in tables {
        if t.words > 2 {
            small.push(SmallTable::default());
            continue;
        }
        let mut s = SmallTable::of(t, &idx.small_rows);
        s.v4_eyt = eytzinger_v4(
            v4_starts.get(t.v4.range())?,
            v4_rows.get(t.v4.range())?,
            &mut idx.v4_eyt_starts,
            &mut idx.v4_eyt_rows,
        )?;
        small.push(s);
    }
    idx.small_tables = small;
    Some(())
}

/// [`Indexes::small_rows`] for `rows` over `pool`.
pub(crate) fn small_rows(rows: &[Row], pool: &[u64]) -> Vec<u128> {
    rows.iter()
        .map(|r| {
            let word = |w: u32| -> u128 {
                match w.checked_sub(r.first) {
                    Some(i) if i < r.len => pool
                        .get(r.off as usize + i as usize)
                        .map_or(0, |&x| u128::from(x)),
                    _ => 0,
                }
            };
            if u64::from(r.first) + u64::from(r.len) > 2 {
                0
            } else {
                word(0) | (word(1) << 64)
            }
        })
        .collect()
}

/// A duplicate key found while building the indexes: the lists are corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DuplicateKey(pub &'static str);

/// Fill `scope_tds`, `dns_in`, `cn_in` and `scoped` from the scoped keys
/// `(is CN, name, trust domain, key id)`.
fn scoped_indexes(
    idx: &mut Indexes,
    mut keys: Vec<(bool, &str, &str, u32)>,
) -> Result<(), DuplicateKey> {
    if keys.is_empty() {
        return Ok(());
    }
    let too_many = || DuplicateKey("too many scoped keys");
    let mut tds: Vec<&str> = keys.iter().map(|k| k.2).collect();
    tds.sort_unstable();
    tds.dedup();
    let td_id = |td: &str| {
        tds.binary_search(&td)
            .ok()
            .and_then(|i| u32::try_from(i).ok())
    };
    keys.sort_unstable();
    // Per (kind, name): its run of (trust domain id, key id) in `scoped`.
    let mut dns: Vec<(&[u8], [u32; 2])> = Vec::new();
    let mut cn: Vec<(&[u8], [u32; 2])> = Vec::new();
    let mut i = 0;
    while let Some(&(is_cn, name, _, _)) = keys.get(i) {
        let off = u32::try_from(idx.scoped.len()).map_err(|_| too_many())?;
        let mut seen_td = None;
        while let Some(&(c, n, td, id)) = keys.get(i) {
            if c != is_cn || n != name {
                break;
            }
            if seen_td == Some(td) {
                return Err(DuplicateKey("scoped principal"));
            }
            seen_td = Some(td);
            idx.scoped.push([td_id(td).ok_or_else(too_many)?, id]);
            i += 1;
        }
        let len = u32::try_from(idx.scoped.len()).map_err(|_| too_many())? - off;
        let entry = (name.as_bytes(), [off, len]);
        if is_cn {
            cn.push(entry);
        } else {
            dns.push(entry);
        }
    }
    let build = |v: Vec<(&[u8], [u32; 2])>| {
        StrIndex::build(v.into_iter()).map_err(|e| match e {
            index::IndexError::Duplicate => DuplicateKey("scoped principal"),
            index::IndexError::TooLarge => too_many(),
        })
    };
    idx.dns_in = build(dns)?;
    idx.cn_in = build(cn)?;
    let n = u32::try_from(tds.len()).map_err(|_| too_many())?;
    idx.scope_tds = StrIndex::build(tds.iter().map(|t| t.as_bytes()).zip(0..n))
        .map_err(|_| DuplicateKey("scope trust domain"))?;
    Ok(())
}

impl Indexes {
    /// Build every index from the key lists. Fails on a duplicate key.
    pub(crate) fn build(
        service_names: &[Box<str>],
        principal_keys: &[PrincipalKey],
        sni_keys: &[SniKey],
        alpn_keys: &[Box<str>],
    ) -> Result<Indexes, DuplicateKey> {
        /// Index the keys of one kind: `(key, id)` pairs.
        fn one(keys: Vec<(&[u8], u32)>, what: &'static str) -> Result<StrIndex, DuplicateKey> {
            StrIndex::build(keys.into_iter()).map_err(|e| match e {
                index::IndexError::Duplicate => DuplicateKey(what),
                index::IndexError::TooLarge => DuplicateKey("too many keys"),
            })
        }
        let ids = |n: usize| (0u32..).take(n);
        let mut idx = Indexes {
            services: one(
                service_names
                    .iter()
                    .map(|s| s.as_bytes())
                    .zip(ids(service_names.len()))
                    .collect(),
                "service name",
            )?,
            ..Indexes::default()
        };

        let (mut dns, mut cn, mut fingerprint) = (Vec::new(), Vec::new(), Vec::new());
        // (is CN, name, trust domain, key id)
        let mut scoped: Vec<(bool, &str, &str, u32)> = Vec::new();
        let mut spiffe_entries: Vec<[u32; 4]> = Vec::new();
        // SPIFFE texts in first-seen order, and where each is.
        let mut spiffe_texts: Vec<&str> = Vec::new();
        let mut spiffe_at: FxHashMap<&str, usize> = FxHashMap::default();
        for (id, key) in (0u32..).zip(principal_keys) {
            match key {
                PrincipalKey::Exact(s) | PrincipalKey::Under(s) => {
                    let at = *spiffe_at.entry(s).or_insert_with(|| {
                        spiffe_texts.push(s);
                        spiffe_entries.push([NONE, NONE, 0, 0]);
                        spiffe_entries.len() - 1
                    });
                    let which = usize::from(matches!(key, PrincipalKey::Under(_)));
                    match spiffe_entries.get_mut(at).and_then(|e| e.get_mut(which)) {
                        Some(v) if *v == NONE => *v = id,
                        _ => return Err(DuplicateKey("spiffe principal")),
                    }
                    if which == 1 {
                        idx.under_lens
                            .push(u32::try_from(s.len()).unwrap_or(u32::MAX));
                    }
                }
                PrincipalKey::Dns(s) => dns.push((s.as_bytes(), id)),
                PrincipalKey::Cn(s) => cn.push((s.as_bytes(), id)),
                PrincipalKey::Fingerprint(fp) => fingerprint.push((&fp[..], id)),
                PrincipalKey::DnsIn { td, name } => scoped.push((false, &**name, &**td, id)),
                PrincipalKey::CnIn { td, name } => scoped.push((true, &**name, &**td, id)),
            }
        }
        scoped_indexes(&mut idx, scoped)?;
        idx.under_lens.sort_unstable();
        idx.under_lens.dedup();
        // Precompute, per known SPIFFE text, the prefix keys it matches.
        for (text, at) in spiffe_texts.iter().zip(0usize..) {
            let off = idx.spiffe_unders.len();
            let bytes = text.as_bytes();
            for &len in &idx.under_lens {
                let len = len as usize;
                if bytes.get(len) != Some(&b'/') {
                    continue;
                }
                let under = text
                    .get(..len)
                    .and_then(|p| spiffe_at.get(p))
                    .and_then(|&p| spiffe_entries.get(p))
                    .map_or(NONE, |e| e[1]);
                if under != NONE {
                    idx.spiffe_unders.push(under);
                }
            }
            let too_many = || DuplicateKey("too many spiffe keys");
            let off32 = u32::try_from(off).map_err(|_| too_many())?;
            let len32 = u32::try_from(idx.spiffe_unders.len() - off).map_err(|_| too_many())?;
            if let Some(e) = spiffe_entries.get_mut(at) {
                e[2] = off32;
                e[3] = len32;
            }
        }
        let spiffe: Vec<(&[u8], [u32; 4])> = spiffe_texts
            .iter()
            .map(|s| s.as_bytes())
            .zip(spiffe_entries)
            .collect();
        idx.spiffe = StrIndex::build(spiffe.into_iter()).map_err(|e| match e {
            index::IndexError::Duplicate => DuplicateKey("spiffe principal"),
            index::IndexError::TooLarge => DuplicateKey("too many keys"),
        })?;
        idx.dns = one(dns, "dns principal")?;
        idx.cn = one(cn, "cn principal")?;
        idx.fingerprint = one(fingerprint, "fingerprint principal")?;
        let (mut exact, mut wildcard) = (Vec::new(), Vec::new());
        for (id, key) in (0u32..).zip(sni_keys) {
            match key {
                SniKey::Exact(s) => exact.push((s.as_bytes(), id)),
                SniKey::Wildcard(s) => wildcard.push((s.as_bytes(), id)),
            }
        }
        idx.sni_exact = one(exact, "sni name")?;
        idx.sni_wildcard = one(wildcard, "sni wildcard")?;
        idx.alpn = one(
            alpn_keys
                .iter()
                .map(|s| s.as_bytes())
                .zip(ids(alpn_keys.len()))
                .collect(),
            "alpn protocol",
        )?;
        Ok(idx)
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.services.heap_bytes()
            + self.spiffe.heap_bytes()
            + std::mem::size_of_val(&*self.spiffe_unders)
            + std::mem::size_of_val(&*self.under_lens)
            + self.dns.heap_bytes()
            + self.cn.heap_bytes()
            + self.fingerprint.heap_bytes()
            + self.sni_exact.heap_bytes()
            + self.sni_wildcard.heap_bytes()
            + self.alpn.heap_bytes()
            + std::mem::size_of_val(&*self.small_rows)
            + std::mem::size_of_val(&*self.small_tables)
            + std::mem::size_of_val(&*self.v4_eyt_starts)
            + std::mem::size_of_val(&*self.v4_eyt_rows)
    }
}

/// Why a policy could not be compiled into a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// More rules than the format can index.
    #[error("the policy has {count} rules; a table holds at most {max}")]
    TooManyRules {
        /// Rules in the policy.
        count: usize,
        /// [`MAX_RULES`].
        max: usize,
    },
    /// More distinct services than the format can index.
    #[error("the policy names {count} services; a table holds at most {max}")]
    TooManyServices {
        /// Distinct services named.
        count: usize,
        /// [`MAX_SERVICES`].
        max: usize,
    },
    /// A schedule names a time zone the bundled database does not know.
    #[error("rule `{rule}` uses unknown time zone `{zone}`")]
    UnknownTimeZone {
        /// The rule's id.
        rule: String,
        /// The zone name.
        zone: String,
    },
    /// Some index array outgrew the format's 32-bit offsets.
    #[error("the compiled table is too large: {what} exceeds 2^32 entries")]
    TooLarge {
        /// Which array.
        what: &'static str,
    },
}

/// Why table bytes were rejected. Decoding never changes anything outside its result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The bytes do not start with the table magic.
    #[error("not a zgate table: magic is {found:02x?}")]
    BadMagic {
        /// The first eight bytes.
        found: [u8; 8],
    },
    /// The table was written in a format version this build does not read.
    #[error("table format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
        /// [`FORMAT_VERSION`].
        supported: u32,
    },
    /// Fewer bytes than the header says there are.
    #[error("table truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes given.
        available: u64,
    },
    /// More bytes than the header says there are.
    #[error("table has {extra} bytes after its checksum")]
    TrailingBytes {
        /// Bytes past the end.
        extra: u64,
    },
    /// The SHA-256 trailer does not match the header and body.
    #[error("table checksum mismatch")]
    ChecksumMismatch,
    /// The checksum is right but the body is not a well-formed table.
    #[error("table body is corrupt: {what}")]
    Corrupt {
        /// The check that failed.
        what: &'static str,
    },
}

impl DecisionTable {
    /// Compile a validated policy. `version` is the policy version the control process
    /// assigned; it is carried in the table and its encoding.
    pub fn compile(
        policy: &zgate_policy::model::Policy,
        version: u64,
    ) -> Result<DecisionTable, CompileError> {
        compile::compile(policy, version)
    }

    /// Serialize to the binary format described in `docs/table-format.md`.
    pub fn encode(&self) -> Vec<u8> {
        format::encode(self)
    }

    /// Parse and verify table bytes (from an untrusted source). Checks magic, format
    /// version, length and checksum, then every count and index in the body. Never
    /// panics; on error nothing is returned and nothing else changes.
    pub fn decode(bytes: &[u8]) -> Result<DecisionTable, LoadError> {
        format::decode(bytes)
    }

    /// The id of the rule at `index`, if there is one.
    pub fn rule_id(&self, index: u32) -> Option<&str> {
        self.rules.id(index as usize)
    }

    /// What decided, as a name for logs: the rule id, `default-deny`,
    /// `revoked-identity` or `revoked-certificate` (`unknown-rule` for an index this
    /// table does not have).
    pub fn decided_by_name(&self, by: DecidedBy) -> &str {
        match by {
            DecidedBy::Rule(i) => self.rule_id(i).unwrap_or("unknown-rule"),
            DecidedBy::DefaultDeny => "default-deny",
            DecidedBy::RevokedIdentity => "revoked-identity",
            DecidedBy::RevokedCertificate => "revoked-certificate",
        }
    }

    /// Whether some rule names a DNS SAN or a common name without a trust domain
    /// (`dns:NAME`, `cn:NAME`): on a listener that trusts several trust domains, any of
    /// their CAs can issue such a name (the dataplane warns about it).
    pub fn names_without_trust_domain(&self) -> bool {
        self.principal_keys
            .iter()
            .any(|k| matches!(k, PrincipalKey::Dns(_) | PrincipalKey::Cn(_)))
    }

    /// The policy version given to [`DecisionTable::compile`].
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The same table under another version: how the control process re-publishes old
    /// content (a rollback) without ever sending a version older than one enforced.
    pub fn restamped(mut self, version: u64) -> DecisionTable {
        self.version = version;
        self
    }

    /// The policy's source hash (SHA-256 over its files), carried through.
    pub fn policy_hash(&self) -> &[u8; 32] {
        &self.policy_hash
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The services some rule names, in order of first mention.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.service_names.iter().map(|s| &**s)
    }

    /// Approximate heap memory held by the table, in bytes (for benchmarks).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        fn vec<T>(v: &[T]) -> usize {
            std::mem::size_of_val(v)
        }
        fn strs(v: &[Box<str>]) -> usize {
            vec(v) + v.iter().map(|s| s.len()).sum::<usize>()
        }
        let key_text = |k: &PrincipalKey| match k {
            PrincipalKey::Exact(s)
            | PrincipalKey::Under(s)
            | PrincipalKey::Dns(s)
            | PrincipalKey::Cn(s) => s.len(),
            PrincipalKey::DnsIn { td, name } | PrincipalKey::CnIn { td, name } => {
                td.len() + name.len()
            }
            PrincipalKey::Fingerprint(_) => 0,
        };
        let sni_text = |k: &SniKey| match k {
            SniKey::Exact(s) | SniKey::Wildcard(s) => s.len(),
        };
        let principal_text: usize = self.principal_keys.iter().map(key_text).sum();
        let sni_text: usize = self.sni_keys.iter().map(sni_text).sum();
        self.rules.heap_bytes()
            + self.zones.iter().map(tz::Zone::heap_bytes).sum::<usize>()
            + self
                .schedules
                .iter()
                .map(|s| size_of::<Sched>() + vec(&s.ranges))
                .sum::<usize>()
            + vec(&self.principal_keys)
            + principal_text
            + vec(&self.sni_keys)
            + sni_text
            + strs(&self.alpn_keys)
            + vec(&self.pool)
            + vec(&self.rows)
            + vec(&self.slots)
            + vec(&self.v4_starts)
            + vec(&self.v4_rows)
            + vec(&self.v6_starts)
            + vec(&self.v6_rows)
            + vec(&self.local_rules)
            + vec(&self.tables)
            + strs(&self.service_names)
            + self.idx.heap_bytes()
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<DecisionTable>();
};

#[cfg(test)]
mod tests;
