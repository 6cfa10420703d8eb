//! The hot path: one decision. Everything here is allocation-free and lock-free, reads
//! only the table and the caller's facts, and indexes nothing without a bounds check
//! (a decoded table is validated, but a wrong index must still not panic).
//!
//! Work per decision (see the crate doc for cache lines):
//! 1. revocation probes (skipped when the sets are empty; the SPIFFE ID is hashed
//!    once, for the revocation set and step 3);
//! 2. service name -> sub-table (one probe of a flat string index, see
//!    [`crate::index`]; a direct comparison for up to four services), plus the `*`
//!    sub-table if any; the source ranges of the flow's own sub-table are searched
//!    here, so that their dependent loads overlap step 3's;
//! 3. the flow's identity -> global principal key ids (one probe for the SPIFFE ID,
//!    whose slot lists the prefix keys it matches; prefix probes only for IDs no rule
//!    names, hashed in one pass; one probe per other name it carries; names scoped
//!    to a trust domain, `dns@td:`/`cn@td:`, only when the policy has any);
//! 4. per sub-table (the wide case out of line): with at most 128 rules, the candidates are one
//!    `u128` narrowed dimension by dimension (stopping as soon as it is empty, and
//!    skipping a dimension once every candidate left accepts any value in it); the
//!    sub-table's fixed rows sit inline in its derived [`SmallTable`] and each keyed
//!    row is one load from the derived `small_rows`. SNI -> up to two key ids and
//!    ALPN -> one (a direct comparison for up to four names) are looked up only
//!    when a sub-table reaches those dimensions; wider
//!    sub-tables resolve the rows of the matched keys once, then per bitset word OR
//!    the rows per dimension and AND the dimensions. Either way the surviving bits
//!    are walked in index order, deny rules first, checking residual conditions only
//!    where flagged.

use crate::facts::{
    Constraints, DecidedBy, Decision, FlowFacts, LiveFacts, PeerIdentity, Reason, UnixSeconds,
    Verdict,
};
use crate::index::{self, PrefixHasher};
use crate::tz::{Zone, CYCLE, CYCLE_START, LIST_END, MAX_INSTANT, MIN_INSTANT};
use crate::{
    key_slot, DecisionTable, Row, RuleInfo, SmallTable, Span, SubTable, EMPTY_ROW as EMPTY, NONE,
    UNCONSTRAINED_ALPN, UNCONSTRAINED_PRINCIPAL, UNCONSTRAINED_SNI, UNCONSTRAINED_SOURCE,
};

/// Matched principal key ids kept on the stack; an identity matching more keys than
/// this (dozens of DNS SANs all named in the policy) is handled by re-probing.
const MAX_MATCHED: usize = 16;

/// A row descriptor that reads as all zeros.
const NO_ROW: Row = Row {
    first: 0,
    len: 0,
    off: 0,
};

/// Row descriptors on the stack: the principal rows a flow matched in one sub-table.
struct RowList {
    rows: [Row; MAX_MATCHED + 1],
    len: usize,
}

impl RowList {
    fn new() -> RowList {
        RowList {
            rows: [NO_ROW; MAX_MATCHED + 1],
            len: 0,
        }
    }
    /// Rows past the capacity are dropped; callers only push up to `MAX_MATCHED + 1`.
    fn push(&mut self, r: Row) {
        if let Some(slot) = self.rows.get_mut(self.len) {
            *slot = r;
            self.len += 1;
        }
    }
    fn as_slice(&self) -> &[Row] {
        self.rows.get(..self.len).unwrap_or(&[])
    }
}

/// The global principal key ids an identity matched.
struct Matched<'f> {
    ids: [u32; MAX_MATCHED],
    len: usize,
    /// More than `MAX_MATCHED` ids: re-probe from `identity` instead of using `ids`.
    overflow: Option<&'f PeerIdentity<'f>>,
}

/// What one decision looks up in each sub-table.
struct Query<'q, 'f> {
    flow: &'q FlowFacts<'f>,
    live: &'q LiveFacts,
    matched: &'q Matched<'f>,
}

/// The row for `key` in one sub-table's key slots (a power-of-two hash table, linear
/// probing, `NONE` = empty), or the empty row. `key` must not be `NONE`.
#[inline(always)]
fn probe(slots: &[[u32; 2]], key: u32) -> u32 {
    let mask = slots.len().wrapping_sub(1);
    let mut i = key_slot(key, mask);
    // Bounded even if a (validated) table were full.
    for _ in 0..slots.len() {
        let Some(&[k, row]) = slots.get(i) else {
            break;
        };
        if k == key {
            return row;
        }
        if k == NONE {
            break;
        }
        i = (i + 1) & mask;
    }
    EMPTY
}

/// The row of the IPv4 range holding `a`, from one sub-table's ranges laid out by
/// [`crate::eytzinger_v4`] (`None` without ranges).
///
/// Eytzinger search: the bounds check ends the loop, with no size or midpoint to
/// track. `k` ends as the path to the first start above `a`; dropping its trailing
/// ones and one more bit gives that start's node (0: none above), whose row entry is
/// the range before it, the one holding `a`.
#[inline(always)]
pub(crate) fn v4_row<'t>(starts: &[u32], rows: &'t [u32], a: u32) -> Option<&'t u32> {
    let mut k = 1usize;
    while let Some(&x) = starts.get(k) {
        k = 2 * k + usize::from(x <= a);
    }
    let node = k.checked_shr(k.trailing_ones() + 1).unwrap_or(0);
    rows.get(node).filter(|_| starts.len() > 1)
}

/// Lowest matching deny and allow seen so far, across sub-tables (`NONE` = none yet).
/// Plain fields rather than `Option`s of tuples, so recording an allow is one store
/// of its constraints, not a copy through a temporary.
struct Best {
    deny: u32,
    allow: u32,
    /// The constraints of `allow`.
    constraints: Constraints,
}

impl Best {
    fn new() -> Best {
        Best {
            deny: NONE,
            allow: NONE,
            constraints: Constraints::default(),
        }
    }

    /// Record a matching deny rule.
    #[inline(always)]
    fn deny(&mut self, global: u32) {
        self.deny = self.deny.min(global);
    }

    /// Record a matching allow rule and its constraints.
    #[inline(always)]
    fn allow(&mut self, global: u32, constraints: Constraints) {
        if global < self.allow {
            self.allow = global;
            self.constraints = constraints;
        }
    }
}

impl DecisionTable {
    /// Decide one flow. Pure: the same table, flow and facts always give the same
    /// decision. Does not allocate, lock, or read a clock (`flow.now` is the time).
    pub fn decide(&self, flow: &FlowFacts<'_>, live: &LiveFacts) -> Decision {
        // The SPIFFE ID is hashed once, for the revocation set and the table's index.
        // (Not when neither needs it: no revocations, and an index of a few IDs is
        // searched by comparing them.)
        let spiffe_hash = flow
            .identity
            .and_then(|id| id.spiffe_id)
            .filter(|_| !live.revoked_ids.is_empty() || self.idx.spiffe.is_hashed())
            .map(|s| index::hash(s.as_bytes()));
        if let Some(id) = &flow.identity {
            if let (Some(s), Some(h)) = (id.spiffe_id, spiffe_hash) {
                if !live.revoked_ids.is_empty() && live.revoked_ids.contains_hashed(s, h) {
                    return revoked(DecidedBy::RevokedIdentity);
                }
            }
            if let Some(fp) = id.fingerprint {
                if !live.revoked_fingerprints.is_empty() && live.revoked_fingerprints.contains(fp) {
                    return revoked(DecidedBy::RevokedCertificate);
                }
            }
        }

        // The flow's own sub-table (which holds the `*` rules too when they were
        // merged into it), else the `*` sub-table; a second scan, of the `*`
        // sub-table, only when the service has a table of its own and they were not
        // merged.
        let service = self.idx.services.get(flow.service.as_bytes());
        let (first, second) = match service {
            Some(s) => (
                s,
                if self.any_merged {
                    NONE
                } else {
                    self.any_table
                },
            ),
            None if self.any_table != NONE => (self.any_table, NONE),
            None => return Decision::default_deny(Reason::UnknownService),
        };

        // The source search of the flow's own (small) sub-table goes first: its
        // chain of dependent loads then overlaps the identity lookups' chain, which it
        // does not depend on, instead of following it.
        let early_source = self
            .idx
            .small_tables
            .get(first as usize)
            .filter(|s| s.all & !s.source_any != 0)
            .map(|s| self.small_source(s, flow.source));

        let mut matched = Matched {
            ids: [NONE; MAX_MATCHED],
            len: 0,
            overflow: None,
        };
        self.match_principals(flow.identity.as_ref(), spiffe_hash, &mut matched);

        let mut best = Best::new();
        let q = Query {
            flow,
            live,
            matched: &matched,
        };
        // The scan is inlined here only: the second sub-table (rare) goes out of line.
        self.scan(first as usize, &q, &mut best, early_source);
        if second != NONE {
            self.scan_out_of_line(second as usize, &q, &mut best);
        }

        if best.deny != NONE {
            Decision {
                verdict: Verdict::Deny,
                decided_by: DecidedBy::Rule(best.deny),
                reason: Reason::DeniedByRule,
                constraints: Constraints::default(),
            }
        } else if best.allow != NONE {
            Decision {
                verdict: Verdict::Allow,
                decided_by: DecidedBy::Rule(best.allow),
                reason: Reason::AllowedByRule,
                constraints: best.constraints,
            }
        } else {
            Decision::default_deny(Reason::NoRuleMatched)
        }
    }

    /// Call `f` with every global principal key id the identity matches;
    /// `spiffe_hash` is the [`index::hash`] of its SPIFFE ID when the caller has it.
    fn visit_principals(
        &self,
        id: &PeerIdentity<'_>,
        spiffe_hash: Option<u64>,
        f: &mut impl FnMut(u32),
    ) {
        let idx = &self.idx;
        if let Some(s) = id.spiffe_id {
            if !idx.spiffe.is_empty() {
                let bytes = s.as_bytes();
                let entry = match spiffe_hash {
                    Some(h) => idx.spiffe.get_hashed(bytes, h),
                    None => idx.spiffe.get(bytes),
                };
                if let Some([exact, _, off, len]) = entry {
                    // A known text: its prefix keys were found at build time.
                    if exact != NONE {
                        f(exact);
                    }
                    let start = off as usize;
                    let unders = idx
                        .spiffe_unders
                        .get(start..start.saturating_add(len as usize))
                        .unwrap_or(&[]);
                    unders.iter().for_each(|&k| f(k));
                } else {
                    // `spiffe://td/a/*` matches when the ID continues past
                    // `spiffe://td/a` with a `/`: probe the text before each `/`
                    // after the scheme. Only lengths some prefix key has are probed
                    // (ascending, so stop at the first one the ID is not longer than);
                    // the prefix hashes share one pass over the ID's words.
                    let mut prefix = PrefixHasher::new(bytes);
                    for &len in &idx.under_lens {
                        let len = len as usize;
                        match bytes.get(len) {
                            None => break,
                            Some(b'/') => {}
                            Some(_) => continue,
                        }
                        let under = prefix
                            .hash(len)
                            .and_then(|h| Some((h, bytes.get(..len)?)))
                            .and_then(|(h, p)| idx.spiffe.get_hashed(p, h))
                            .map_or(NONE, |e| e[1]);
                        if under != NONE {
                            f(under);
                        }
                    }
                }
            }
        }
        if !idx.dns.is_empty() {
            for name in id.dns_sans {
                if let Some(k) = idx.dns.get(name.as_bytes()) {
                    f(k);
                }
            }
        }
        if let Some(cn) = id.common_name {
            if let Some(k) = idx.cn.get(cn.as_bytes()) {
                f(k);
            }
        }
        if let Some(fp) = id.fingerprint {
            if let Some(k) = idx.fingerprint.get(fp) {
                f(k);
            }
        }
        if !idx.scope_tds.is_empty() {
            self.visit_scoped(id, f);
        }
    }

    /// The scoped keys (`dns@td:…`, `cn@td:…`) the identity matches: its names whose
    /// scope is the trust domain of its SPIFFE ID. Out of line: few policies have them.
    #[inline(never)]
    fn visit_scoped(&self, id: &PeerIdentity<'_>, f: &mut impl FnMut(u32)) {
        let idx = &self.idx;
        let Some(td) = id
            .spiffe_id
            .and_then(zgate_policy::spiffe_trust_domain)
            .and_then(|td| idx.scope_tds.get(td.as_bytes()))
        else {
            return;
        };
        let mut visit = |entry: Option<[u32; 2]>| {
            let Some([off, len]) = entry else { return };
            let (off, len) = (off as usize, len as usize);
            let pairs = idx.scoped.get(off..off.saturating_add(len)).unwrap_or(&[]);
            for &[scope, key] in pairs {
                if scope == td {
                    f(key);
                }
            }
        };
        if !idx.dns_in.is_empty() {
            for name in id.dns_sans {
                visit(idx.dns_in.get(name.as_bytes()));
            }
        }
        if let Some(cn) = id.common_name {
            visit(idx.cn_in.get(cn.as_bytes()));
        }
    }

    /// Fill `m` (empty) with the key ids `identity` matches. In place rather than
    /// returned: a returned `Matched` was copied into the caller's frame.
    fn match_principals<'f>(
        &self,
        identity: Option<&'f PeerIdentity<'f>>,
        spiffe_hash: Option<u64>,
        m: &mut Matched<'f>,
    ) {
        if let Some(id) = identity {
            let mut full = false;
            self.visit_principals(id, spiffe_hash, &mut |k| match m.ids.get_mut(m.len) {
                Some(slot) => {
                    *slot = k;
                    m.len += 1;
                }
                None => full = true,
            });
            if full {
                m.overflow = Some(id);
            }
        }
    }

    fn each_principal(&self, m: &Matched<'_>, f: &mut impl FnMut(u32)) {
        match m.overflow {
            Some(id) => self.visit_principals(id, None, f),
            None => m.ids.iter().take(m.len).for_each(|&k| f(k)),
        }
    }

    /// Key id for the ALPN protocol, or `NONE`.
    #[inline]
    fn alpn_id(&self, alpn: Option<&str>) -> u32 {
        alpn.and_then(|a| self.idx.alpn.get(a.as_bytes()))
            .unwrap_or(NONE)
    }

    /// Key ids for the SNI: exact name, and the suffix after a non-empty first label.
    fn sni_ids(&self, sni: Option<&str>) -> [u32; 2] {
        let Some(s) = sni else {
            return [NONE; 2];
        };
        let bytes = s.as_bytes();
        let exact = self.idx.sni_exact.get(bytes).unwrap_or(NONE);
        if self.idx.sni_wildcard.is_empty() {
            return [exact, NONE];
        }
        // The first label is short: a plain loop beats `split_once`'s `memchr`.
        let wildcard = match bytes.iter().position(|&b| b == b'.') {
            Some(dot) if dot > 0 => bytes
                .get(dot + 1..)
                .and_then(|suffix| self.idx.sni_wildcard.get(suffix))
                .unwrap_or(NONE),
            _ => NONE,
        };
        [exact, wildcard]
    }

    /// The row for key `key` in the sub-table's key hash table `span`, if present.
    #[inline]
    fn key_row(&self, span: Span, key: u32) -> Option<u32> {
        if key == NONE || span.len == 0 {
            return None;
        }
        let slots = self.slots.get(span.range())?;
        let mask = slots.len() - 1;
        let mut i = key_slot(key, mask);
        // Bounded even if a (validated) table were full.
        for _ in 0..slots.len() {
            let &[k, row] = slots.get(i)?;
            if k == key {
                return Some(row);
            }
            if k == NONE {
                return None;
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// The row of the disjoint source range containing `ip`.
    fn source_row(&self, t: &SubTable, ip: std::net::IpAddr) -> Option<u32> {
        let (pos, span) = match ip {
            std::net::IpAddr::V4(a) => {
                let starts = self.v4_starts.get(t.v4.range())?;
                (starts.partition_point(|&s| s <= u32::from(a)), t.v4)
            }
            std::net::IpAddr::V6(a) => {
                let starts = self.v6_starts.get(t.v6.range())?;
                (starts.partition_point(|&s| s <= u128::from(a)), t.v6)
            }
        };
        let at = (span.off as usize).checked_add(pos.checked_sub(1)?)?;
        match ip {
            std::net::IpAddr::V4(_) => self.v4_rows.get(at).copied(),
            std::net::IpAddr::V6(_) => self.v6_rows.get(at).copied(),
        }
    }

    /// The row's id resolved to its descriptor (the empty row for a bad id).
    #[inline]
    fn row(&self, id: u32) -> Row {
        self.rows.get(id as usize).copied().unwrap_or(NO_ROW)
    }

    /// Word `w` of a row's bitset.
    #[inline]
    fn word(&self, r: Row, w: usize) -> u64 {
        let i = w.wrapping_sub(r.first as usize);
        if i < r.len as usize {
            self.pool.get(r.off as usize + i).copied().unwrap_or(0)
        } else {
            0
        }
    }

    /// OR of word `w` over a list of rows.
    #[inline]
    fn any_word(&self, rows: &[Row], w: usize) -> u64 {
        rows.iter().fold(0, |acc, &r| acc | self.word(r, w))
    }

    /// [`Self::scan`], not inlined: for the `*` sub-table when it is scanned after the
    /// flow's own.
    #[inline(never)]
    fn scan_out_of_line(&self, ti: usize, q: &Query<'_, '_>, best: &mut Best) {
        self.scan(ti, q, best, None);
    }

    /// Narrow sub-table `ti` to the flow's candidates and record its lowest matching
    /// deny or allow in `best`.
    #[inline(always)]
    fn scan(&self, ti: usize, q: &Query<'_, '_>, best: &mut Best, early_source: Option<u128>) {
        // A small sub-table (the common case) reads only its `SmallTable`, whose
        // `all` is non-zero; wide ones (and empty ones, which hold no rule) are
        // told by the sub-table header.
        match self.idx.small_tables.get(ti) {
            Some(s) if s.all != 0 => self.scan_small(s, q, best, early_source),
            _ => {
                let Some(t) = self.tables.get(ti).filter(|t| t.words > 2) else {
                    return;
                };
                if let Some(locals) = self.local_rules.get(t.rules.range()) {
                    let (sni, alpn) = (self.sni_ids(q.flow.sni), self.alpn_id(q.flow.alpn));
                    self.scan_wide(t, locals, q.flow, q.live, q.matched, sni, alpn, best);
                }
            }
        }
    }

    /// [`Self::scan`] for a sub-table of more than 128 rules: resolve the rows of
    /// the matched keys once, then per bitset word OR the rows per dimension and AND
    /// the dimensions.
    #[expect(
        clippy::too_many_arguments,
        reason = "hot path; the inputs are distinct"
    )]
    #[inline(never)]
    fn scan_wide(
        &self,
        t: &SubTable,
        locals: &[u32],
        flow: &FlowFacts<'_>,
        live: &LiveFacts,
        matched: &Matched<'_>,
        sni: [u32; 2],
        alpn: u32,
        best: &mut Best,
    ) {
        let words = t.words as usize;
        // Resolve every row this sub-table needs once; the word loop then only reads
        // the pool. A dimension no rule here constrains is skipped outright.
        let dims = t.unconstrained;
        let mut principal = RowList::new();
        let use_principal = dims & UNCONSTRAINED_PRINCIPAL == 0;
        if use_principal {
            principal.push(self.row(t.principal_any));
            if matched.overflow.is_none() {
                self.each_principal(matched, &mut |k| {
                    if let Some(r) = self.key_row(t.principals, k) {
                        principal.push(self.row(r));
                    }
                });
            }
        }
        let source = if dims & UNCONSTRAINED_SOURCE == 0 {
            let at = self.source_row(t, flow.source).unwrap_or(EMPTY);
            Some([self.row(t.source_any), self.row(at)])
        } else {
            None
        };
        let sni_rows = if dims & UNCONSTRAINED_SNI == 0 {
            let exact = self.key_row(t.sni, sni[0]).unwrap_or(EMPTY);
            let wildcard = self.key_row(t.sni, sni[1]).unwrap_or(EMPTY);
            Some([self.row(t.sni_any), self.row(exact), self.row(wildcard)])
        } else {
            None
        };
        let alpn_rows = if dims & UNCONSTRAINED_ALPN == 0 {
            let at = self.key_row(t.alpn, alpn).unwrap_or(EMPTY);
            Some([self.row(t.alpn_any), self.row(at)])
        } else {
            None
        };
        let deny_row = self.row(t.deny);
        let check_row = self.row(t.check);
        let tail = locals.len() % 64;

        let mut allow_found = false;
        for w in 0..words {
            let mut c = if w + 1 == words && tail != 0 {
                (1u64 << tail) - 1
            } else {
                u64::MAX
            };
            if use_principal {
                c &= match matched.overflow {
                    None => self.any_word(principal.as_slice(), w),
                    // Over MAX_MATCHED keys: re-probe per word (rare and slow).
                    Some(_) => {
                        let mut p = self.any_word(principal.as_slice(), w);
                        self.each_principal(matched, &mut |k| {
                            if let Some(r) = self.key_row(t.principals, k) {
                                p |= self.word(self.row(r), w);
                            }
                        });
                        p
                    }
                };
            }
            if let Some(rows) = &source {
                c &= self.any_word(rows, w);
            }
            if let Some(rows) = &sni_rows {
                c &= self.any_word(rows, w);
            }
            if let Some(rows) = &alpn_rows {
                c &= self.any_word(rows, w);
            }
            if c == 0 {
                continue;
            }
            let dn = self.word(deny_row, w);
            let ck = self.word(check_row, w);
            if self.walk(w, c, dn, ck, locals, flow, live, best, &mut allow_found) {
                return;
            }
        }
    }

    /// The rules of small sub-table `s` whose sources contain `ip` (its `source_any`
    /// rules not included).
    #[inline(always)]
    fn small_source(&self, s: &SmallTable, ip: std::net::IpAddr) -> u128 {
        let at = match ip {
            std::net::IpAddr::V4(a) => {
                let idx = &self.idx;
                v4_row(
                    idx.v4_eyt_starts.get(s.v4_eyt.range()).unwrap_or(&[]),
                    idx.v4_eyt_rows.get(s.v4_eyt.range()).unwrap_or(&[]),
                    u32::from(a),
                )
            }
            std::net::IpAddr::V6(a) => {
                let a = u128::from(a);
                let starts = self.v6_starts.get(s.v6.range()).unwrap_or(&[]);
                let pos = starts.partition_point(|&x| x <= a);
                (s.v6.off as usize + pos)
                    .checked_sub(1)
                    .filter(|_| pos > 0)
                    .and_then(|i| self.v6_rows.get(i))
            }
        };
        at.and_then(|&r| self.idx.small_rows.get(r as usize))
            .copied()
            .unwrap_or(0)
    }

    /// [`Self::scan`] for a sub-table of at most 128 rules (the common case): the
    /// candidates are one `u128`, narrowed dimension by dimension and given up as
    /// soon as it is empty. The fixed rows are inline in the [`SmallTable`]; each keyed
    /// row is one load from `small_rows`. Inlined (into the one call site in
    /// `decide`): out of line, its arguments and spills cost more than its body saves
    /// in code size.
    #[inline(always)]
    fn scan_small(
        &self,
        s: &SmallTable,
        q: &Query<'_, '_>,
        best: &mut Best,
        early_source: Option<u128>,
    ) {
        let rows = &*self.idx.small_rows;
        let load = |id: u32| rows.get(id as usize).copied().unwrap_or(0);
        // A dimension is looked up only while some candidate constrains it: once
        // every candidate left is in the dimension's `*_any` row, it cannot narrow
        // them (this also skips the dimensions no rule here constrains).
        let mut c = s.all;
        if c & !s.principal_any != 0 {
            let mut p = s.principal_any;
            let slots = self.slots.get(s.principals.range()).unwrap_or(&[]);
            if !slots.is_empty() {
                match q.matched.overflow {
                    None => {
                        for &k in q.matched.ids.get(..q.matched.len).unwrap_or(&[]) {
                            p |= load(probe(slots, k));
                        }
                    }
                    Some(id) => {
                        self.visit_principals(id, None, &mut |k| p |= load(probe(slots, k)))
                    }
                }
            }
            c &= p;
            if c == 0 {
                return;
            }
        }
        if c & !s.source_any != 0 {
            c &= s.source_any | early_source.unwrap_or_else(|| self.small_source(s, q.flow.source));
            if c == 0 {
                return;
            }
        }
        if c & !s.sni_any != 0 {
            let mut m = s.sni_any;
            // Looked up here, not per decision: most rules name no SNI, so most
            // decisions never get this far.
            let [exact, wildcard] = self.sni_ids(q.flow.sni);
            if exact & wildcard != NONE {
                let slots = self.slots.get(s.sni.range()).unwrap_or(&[]);
                if !slots.is_empty() {
                    if exact != NONE {
                        m |= load(probe(slots, exact));
                    }
                    if wildcard != NONE {
                        m |= load(probe(slots, wildcard));
                    }
                }
            }
            c &= m;
            if c == 0 {
                return;
            }
        }
        if c & !s.alpn_any != 0 {
            let mut m = s.alpn_any;
            let alpn = self.alpn_id(q.flow.alpn);
            if alpn != NONE {
                let slots = self.slots.get(s.alpn.range()).unwrap_or(&[]);
                if !slots.is_empty() {
                    m |= load(probe(slots, alpn));
                }
            }
            c &= m;
            if c == 0 {
                return;
            }
        }
        let Some(locals) = self.local_rules.get(s.rules.range()) else {
            return;
        };
        let (flow, live) = (q.flow, q.live);
        let (dn, ck) = (s.deny, s.check);
        // The lowest deny whose residual conditions pass decides this sub-table.
        let mut d = c & dn;
        while d != 0 {
            let low = d & d.wrapping_neg();
            let bit = d.trailing_zeros();
            d ^= low;
            let Some(&global) = locals.get(bit as usize) else {
                continue;
            };
            if ck & low == 0 || self.residual(global, flow, live).is_some() {
                best.deny(global);
                return;
            }
        }
        // Otherwise the lowest allow whose residual conditions pass.
        let mut a = c & !dn;
        while a != 0 {
            let low = a & a.wrapping_neg();
            let bit = a.trailing_zeros();
            a ^= low;
            let Some(&global) = locals.get(bit as usize) else {
                continue;
            };
            let constraints = self.matched(global, ck & low != 0, flow, live);
            if let Some(constraints) = constraints {
                best.allow(global, constraints);
                return;
            }
        }
    }

    /// Walk the candidates `c` of word `w` in index order: the lowest deny whose
    /// residual conditions pass decides the sub-table (returns `true`); otherwise the
    /// lowest such allow is recorded once (`allow_found`).
    #[expect(
        clippy::too_many_arguments,
        reason = "hot path; the inputs are distinct"
    )]
    #[inline]
    fn walk(
        &self,
        w: usize,
        c: u64,
        dn: u64,
        ck: u64,
        locals: &[u32],
        flow: &FlowFacts<'_>,
        live: &LiveFacts,
        best: &mut Best,
        allow_found: &mut bool,
    ) -> bool {
        let base = w * 64;
        let mut d = c & dn;
        while d != 0 {
            let bit = d.trailing_zeros();
            d &= d - 1;
            let Some(&global) = locals.get(base + bit as usize) else {
                continue;
            };
            if ck & (1 << bit) == 0 || self.residual(global, flow, live).is_some() {
                // The lowest deny in this sub-table: nothing later matters here.
                best.deny(global);
                return true;
            }
        }
        if *allow_found {
            return false;
        }
        let mut a = c & !dn;
        while a != 0 {
            let bit = a.trailing_zeros();
            a &= a - 1;
            let Some(&global) = locals.get(base + bit as usize) else {
                continue;
            };
            let constraints = self.matched(global, ck & (1 << bit) != 0, flow, live);
            if let Some(constraints) = constraints {
                *allow_found = true;
                best.allow(global, constraints);
                break;
            }
        }
        false
    }

    /// Whether a rule the bitsets matched holds, and its constraints if so: rules with no
    /// residual condition (`has_residual` false) hold with only their max session.
    #[inline(always)]
    fn matched(
        &self,
        global: u32,
        has_residual: bool,
        flow: &FlowFacts<'_>,
        live: &LiveFacts,
    ) -> Option<Constraints> {
        if has_residual {
            self.residual(global, flow, live)
        } else {
            self.rules.info(global as usize).map(|r| Constraints {
                max_session_secs: r.max_session_secs,
                ..Constraints::default()
            })
        }
    }

    /// Check the rule's conditions that bitsets cannot express; on success, the
    /// constraints the rule puts on an allow.
    fn residual(&self, global: u32, flow: &FlowFacts<'_>, live: &LiveFacts) -> Option<Constraints> {
        let r: &RuleInfo = self.rules.info(global as usize)?;
        let mut out = Constraints {
            max_session_secs: r.max_session_secs,
            ..Constraints::default()
        };
        if r.schedule != NONE {
            out.schedule_end = Some(self.schedule_end(r.schedule, flow.now)?);
        }
        if let Some(req) = &r.posture {
            let p = live.posture.get(flow.device_id?)?;
            let ok = !p.compromised
                && (!req.managed || p.managed)
                && (!req.compliant || p.compliant)
                && (!req.edr_running || p.edr_running)
                && req.min_os_patch.is_none_or(|min| p.os_patch >= min);
            if !ok {
                return None;
            }
        }
        let spiffe = flow.identity.and_then(|i| i.spiffe_id);
        if let Some(max) = r.max_risk {
            let by_id = spiffe.and_then(|s| live.risk_by_id.get(s).copied());
            let by_device = flow
                .device_id
                .and_then(|d| live.risk_by_device.get(d).copied());
            if by_id.unwrap_or(0).max(by_device.unwrap_or(0)) > max {
                return None;
            }
        }
        if let Some(max) = r.max_cert_age_secs {
            if flow.cert_age_secs? > max {
                return None;
            }
        }
        if r.requires_grant {
            let end = *live.grants.get(flow.service)?.get(spiffe?)?;
            if end <= flow.now {
                return None;
            }
            out.grant_end = Some(end);
        }
        Some(out)
    }

    /// If `now` is inside the schedule, the end of the range it is in.
    fn schedule_end(&self, sched: u32, now: UnixSeconds) -> Option<UnixSeconds> {
        let s = self.schedules.get(sched as usize)?;
        let zone = self.zones.get(s.zone as usize)?;
        let (day, secs) = local_time(zone, now)?;
        if day >= 7 || s.days & (1 << day) == 0 {
            return None;
        }
        let minute = secs / 60;
        let &(_, end) = s
            .ranges
            .iter()
            .find(|&&(a, b)| i64::from(a) <= minute && minute < i64::from(b))?;
        Some(now + (i64::from(end) * 60 - secs))
    }
}

/// Local weekday (0 = Monday) and second of the day at `now` in `zone`; `None` outside
/// the instants jiff can represent (the reference fails such schedules closed).
pub(crate) fn local_time(zone: &Zone, now: UnixSeconds) -> Option<(u8, i64)> {
    if !(MIN_INSTANT..=MAX_INSTANT).contains(&now) {
        return None;
    }
    let probe = if now >= LIST_END {
        CYCLE_START + (now - CYCLE_START).rem_euclid(CYCLE)
    } else {
        now
    };
    let offset = match zone.at.partition_point(|&t| t <= probe) {
        0 => zone.initial,
        n => *zone.offsets.get(n - 1)?,
    };
    let local = now + i64::from(offset);
    // 1970-01-01 was a Thursday (3 with Monday = 0).
    let day = u8::try_from((local.div_euclid(86_400) + 3).rem_euclid(7)).ok()?;
    Some((day, local.rem_euclid(86_400)))
}

fn revoked(by: DecidedBy) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        decided_by: by,
        reason: Reason::Revoked,
        constraints: Constraints::default(),
    }
}
