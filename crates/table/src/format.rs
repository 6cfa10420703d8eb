//! The binary table format (see `docs/table-format.md`): a 64-byte header, a body of
//! length-prefixed sections, and a SHA-256 trailer over header and body.
//!
//! Decoding treats the bytes as hostile: every read is bounds-checked, every count is
//! checked against the bytes left before anything is allocated for it, and after
//! parsing every cross-reference is validated, so `decide` on a decoded table can only
//! ever see indices in range.

use sha2::{Digest, Sha256};
use zgate_policy::model::PostureRequirement;

use crate::tz::{Zone, MAX_OFFSET};
use crate::{
    DecisionTable, Indexes, LoadError, PrincipalKey, Row, RuleInfo, Sched, SniKey, Span, SubTable,
    FORMAT_VERSION, MAX_RULES, MAX_SERVICES, NONE,
};

/// First eight bytes of every table. The CR LF catches text-mode mangling, as in PNG.
pub(crate) const MAGIC: [u8; 8] = *b"ZGTBL\0\r\n";
/// Magic, version, flags, policy version, policy hash, body length.
pub(crate) const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 32 + 8;
pub(crate) const CHECKSUM_LEN: usize = 32;

// RuleInfo flag bits.
const F_DENY: u8 = 1;
const F_POSTURE: u8 = 1 << 1;
const F_MANAGED: u8 = 1 << 2;
const F_COMPLIANT: u8 = 1 << 3;
const F_EDR: u8 = 1 << 4;
const F_GRANT: u8 = 1 << 5;
const F_ALL: u8 = (1 << 6) - 1;
// RuleInfo option bits.
const O_MIN_PATCH: u8 = 1;
const O_RISK: u8 = 1 << 1;
const O_CERT_AGE: u8 = 1 << 2;
const O_SESSION: u8 = 1 << 3;
const O_ALL: u8 = (1 << 4) - 1;

const K_EXACT: u8 = 0;
const K_UNDER: u8 = 1;
const K_DNS: u8 = 2;
const K_CN: u8 = 3;
const K_FINGERPRINT: u8 = 4;
const K_DNS_IN: u8 = 5;
const K_CN_IN: u8 = 6;

// ---------------------------------------------------------------- encode

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u128(&mut self, v: u128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Counts and lengths are bounded by the compiler's limits (< 2^32).
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn span(&mut self, s: Span) {
        self.u32(s.off);
        self.u32(s.len);
    }
    fn u32s(&mut self, v: &[u32]) {
        self.len(v.len());
        v.iter().for_each(|&x| self.u32(x));
    }
}

pub(crate) fn encode(t: &DecisionTable) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(HEADER_LEN + t.heap_bytes() / 2));
    w.0.extend_from_slice(&MAGIC);
    w.u32(FORMAT_VERSION);
    w.u32(0); // flags: none defined
    w.u64(t.version);
    w.0.extend_from_slice(&t.policy_hash);
    w.u64(0); // body length, patched below
    encode_body(t, &mut w);
    let body_len = (w.0.len() - HEADER_LEN) as u64;
    if let Some(slot) = w.0.get_mut(HEADER_LEN - 8..HEADER_LEN) {
        slot.copy_from_slice(&body_len.to_le_bytes());
    }
    let sum = Sha256::digest(&w.0);
    w.0.extend_from_slice(&sum);
    w.0
}

fn encode_body(t: &DecisionTable, w: &mut W) {
    // Rules.
    w.len(t.rules.len());
    for (id, r) in t.rules.iter() {
        w.str(id);
        let p = r.posture.unwrap_or_default();
        let flags = [
            (r.deny, F_DENY),
            (r.posture.is_some(), F_POSTURE),
            (p.managed, F_MANAGED),
            (p.compliant, F_COMPLIANT),
            (p.edr_running, F_EDR),
            (r.requires_grant, F_GRANT),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, bit)| acc | bit);
        let opts = [
            (p.min_os_patch.is_some(), O_MIN_PATCH),
            (r.max_risk.is_some(), O_RISK),
            (r.max_cert_age_secs.is_some(), O_CERT_AGE),
            (r.max_session_secs.is_some(), O_SESSION),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, bit)| acc | bit);
        w.u8(flags);
        w.u8(opts);
        w.u8(r.max_risk.unwrap_or(0));
        w.u32(r.schedule);
        w.u32(p.min_os_patch.unwrap_or(0));
        w.u64(r.max_cert_age_secs.unwrap_or(0));
        w.u64(r.max_session_secs.unwrap_or(0));
    }
    // Zones.
    w.len(t.zones.len());
    for z in &t.zones {
        w.str(&z.name);
        w.i32(z.initial);
        w.len(z.at.len());
        for (&at, &off) in z.at.iter().zip(z.offsets.iter()) {
            w.i64(at);
            w.i32(off);
        }
    }
    // Schedules.
    w.len(t.schedules.len());
    for s in &t.schedules {
        w.u32(s.zone);
        w.u8(s.days);
        w.len(s.ranges.len());
        for &(a, b) in s.ranges.iter() {
            w.u16(a);
            w.u16(b);
        }
    }
    // Key spaces.
    w.len(t.principal_keys.len());
    for k in &t.principal_keys {
        match k {
            PrincipalKey::Exact(s) => {
                w.u8(K_EXACT);
                w.str(s);
            }
            PrincipalKey::Under(s) => {
                w.u8(K_UNDER);
                w.str(s);
            }
            PrincipalKey::Dns(s) => {
                w.u8(K_DNS);
                w.str(s);
            }
            PrincipalKey::Cn(s) => {
                w.u8(K_CN);
                w.str(s);
            }
            PrincipalKey::Fingerprint(fp) => {
                w.u8(K_FINGERPRINT);
                w.0.extend_from_slice(fp);
            }
            PrincipalKey::DnsIn { td, name } => {
                w.u8(K_DNS_IN);
                w.str(td);
                w.str(name);
            }
            PrincipalKey::CnIn { td, name } => {
                w.u8(K_CN_IN);
                w.str(td);
                w.str(name);
            }
        }
    }
    w.len(t.sni_keys.len());
    for k in &t.sni_keys {
        let (kind, s) = match k {
            SniKey::Exact(s) => (0, s),
            SniKey::Wildcard(s) => (1, s),
        };
        w.u8(kind);
        w.str(s);
    }
    w.len(t.alpn_keys.len());
    t.alpn_keys.iter().for_each(|s| w.str(s));
    // Bitsets.
    w.len(t.pool.len());
    t.pool.iter().for_each(|&x| w.u64(x));
    w.len(t.rows.len());
    for r in &t.rows {
        w.u32(r.first);
        w.u32(r.len);
        w.u32(r.off);
    }
    // Index arrays.
    w.len(t.slots.len());
    for &[k, row] in &t.slots {
        w.u32(k);
        w.u32(row);
    }
    w.u32s(&t.v4_starts);
    w.u32s(&t.v4_rows);
    w.len(t.v6_starts.len());
    t.v6_starts.iter().for_each(|&x| w.u128(x));
    w.u32s(&t.v6_rows);
    w.u32s(&t.local_rules);
    // Sub-tables.
    w.len(t.tables.len());
    for s in &t.tables {
        w.span(s.rules);
        w.u32(s.words);
        for row in [
            s.deny,
            s.check,
            s.principal_any,
            s.source_any,
            s.sni_any,
            s.alpn_any,
        ] {
            w.u32(row);
        }
        for span in [s.principals, s.sni, s.alpn, s.v4, s.v6] {
            w.span(span);
        }
        w.u8(s.unconstrained);
    }
    // Services (service i uses sub-table i), then the `*` sub-table.
    w.len(t.service_names.len());
    t.service_names.iter().for_each(|s| w.str(s));
    w.u32(t.any_table);
    w.u8(u8::from(t.any_merged));
}

// ---------------------------------------------------------------- decode

fn corrupt(what: &'static str) -> LoadError {
    LoadError::Corrupt { what }
}

struct R<'a> {
    buf: &'a [u8],
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LoadError> {
        if n > self.buf.len() {
            return Err(corrupt("a section runs past the end of the body"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], LoadError> {
        let b = self.take(N)?;
        <[u8; N]>::try_from(b).map_err(|_| corrupt("a section runs past the end of the body"))
    }
    fn u8(&mut self) -> Result<u8, LoadError> {
        Ok(u8::from_le_bytes(self.array()?))
    }
    fn u16(&mut self) -> Result<u16, LoadError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, LoadError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, LoadError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn u128(&mut self) -> Result<u128, LoadError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    /// A count of items each at least `min_size` bytes long, checked against what is
    /// left so that a forged count cannot make us allocate more than the input's size.
    fn count(&mut self, min_size: usize) -> Result<usize, LoadError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_size.max(1)) > self.buf.len() {
            return Err(corrupt("a count exceeds the bytes that follow it"));
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<Box<str>, LoadError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(Box::from)
            .map_err(|_| corrupt("a string is not utf-8"))
    }
    fn span(&mut self) -> Result<Span, LoadError> {
        Ok(Span {
            off: self.u32()?,
            len: self.u32()?,
        })
    }
    fn u32s(&mut self) -> Result<Vec<u32>, LoadError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.u32()).collect()
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<DecisionTable, LoadError> {
    let available = bytes.len() as u64;
    let truncated = |needed: usize| LoadError::Truncated {
        needed: needed as u64,
        available,
    };
    let magic: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| truncated(HEADER_LEN + CHECKSUM_LEN))?;
    if magic != MAGIC {
        return Err(LoadError::BadMagic { found: magic });
    }
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| truncated(HEADER_LEN + CHECKSUM_LEN))?;
    let mut h = R {
        buf: header.get(8..).unwrap_or(&[]),
    };
    let format = h.u32()?;
    if format != FORMAT_VERSION {
        return Err(LoadError::UnsupportedVersion {
            found: format,
            supported: FORMAT_VERSION,
        });
    }
    if h.u32()? != 0 {
        return Err(corrupt("unknown header flags"));
    }
    let version = h.u64()?;
    let policy_hash: [u8; 32] = h.array()?;
    let body_len = h.u64()?;
    let total = usize::try_from(body_len)
        .ok()
        .and_then(|b| b.checked_add(HEADER_LEN + CHECKSUM_LEN));
    let Some(total) = total else {
        return Err(LoadError::Truncated {
            needed: u64::MAX,
            available,
        });
    };
    if bytes.len() < total {
        return Err(truncated(total));
    }
    if bytes.len() > total {
        return Err(LoadError::TrailingBytes {
            extra: (bytes.len() - total) as u64,
        });
    }
    let signed_len = total - CHECKSUM_LEN;
    let (signed, sum) = bytes.split_at(signed_len);
    if Sha256::digest(signed).as_slice() != sum {
        return Err(LoadError::ChecksumMismatch);
    }
    let body = signed.get(HEADER_LEN..).unwrap_or(&[]);
    let mut t = decode_body(&mut R { buf: body }, version, policy_hash)?;
    validate(&t)?;
    t.idx = Indexes::build(
        &t.service_names,
        &t.principal_keys,
        &t.sni_keys,
        &t.alpn_keys,
    )
    .map_err(|d| corrupt(d.0))?;
    t.idx.small_rows = crate::small_rows(&t.rows, &t.pool);
    crate::derive_small(&mut t.idx, &t.tables, &t.v4_starts, &t.v4_rows)
        .ok_or(corrupt("ipv4 ranges do not fit the search arrays"))?;
    Ok(t)
}

fn decode_body(
    r: &mut R<'_>,
    version: u64,
    policy_hash: [u8; 32],
) -> Result<DecisionTable, LoadError> {
    let n = r.count(4 + 3 + 4 + 4 + 16)?;
    if n > MAX_RULES {
        return Err(corrupt("more rules than the format allows"));
    }
    let mut rules = crate::RulesBuilder::with_capacity(n);
    for _ in 0..n {
        let id = r.str()?;
        let flags = r.u8()?;
        let opts = r.u8()?;
        if flags & !F_ALL != 0 || opts & !O_ALL != 0 {
            return Err(corrupt("unknown rule flags"));
        }
        let risk = r.u8()?;
        let schedule = r.u32()?;
        let min_patch = r.u32()?;
        let cert_age = r.u64()?;
        let session = r.u64()?;
        let on = |bit: u8| flags & bit != 0;
        let opt = |bit: u8| opts & bit != 0;
        // Absent values are written as zero; anything else is not our encoding (and
        // would not survive a re-encode byte for byte).
        if (!opt(O_RISK) && risk != 0)
            || (!opt(O_MIN_PATCH) && min_patch != 0)
            || (!opt(O_CERT_AGE) && cert_age != 0)
            || (!opt(O_SESSION) && session != 0)
        {
            return Err(corrupt("a value is set for an absent rule option"));
        }
        if !on(F_POSTURE) && (on(F_MANAGED) || on(F_COMPLIANT) || on(F_EDR) || opt(O_MIN_PATCH)) {
            return Err(corrupt("posture bits without a posture requirement"));
        }
        let info = RuleInfo {
            deny: on(F_DENY),
            schedule,
            posture: on(F_POSTURE).then_some(PostureRequirement {
                managed: on(F_MANAGED),
                compliant: on(F_COMPLIANT),
                edr_running: on(F_EDR),
                min_os_patch: opt(O_MIN_PATCH).then_some(min_patch),
            }),
            max_risk: opt(O_RISK).then_some(risk),
            max_cert_age_secs: opt(O_CERT_AGE).then_some(cert_age),
            max_session_secs: opt(O_SESSION).then_some(session),
            requires_grant: on(F_GRANT),
        };
        rules
            .push(&id, info)
            .ok_or(corrupt("rule ids over 4 GiB"))?;
    }
    let rules = rules.finish();

    let n = r.count(4 + 4 + 4)?;
    let mut zones = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.str()?;
        let initial = r.i32()?;
        let m = r.count(12)?;
        let mut at = Vec::with_capacity(m);
        let mut offsets = Vec::with_capacity(m);
        for _ in 0..m {
            at.push(r.i64()?);
            offsets.push(r.i32()?);
        }
        zones.push(Zone {
            name,
            initial,
            at: at.into_boxed_slice(),
            offsets: offsets.into_boxed_slice(),
        });
    }

    let n = r.count(4 + 1 + 4)?;
    let mut schedules = Vec::with_capacity(n);
    for _ in 0..n {
        let zone = r.u32()?;
        let days = r.u8()?;
        let m = r.count(4)?;
        let mut ranges = Vec::with_capacity(m);
        for _ in 0..m {
            ranges.push((r.u16()?, r.u16()?));
        }
        schedules.push(Sched {
            zone,
            days,
            ranges: ranges.into_boxed_slice(),
        });
    }

    let n = r.count(1 + 4)?;
    let mut principal_keys = Vec::with_capacity(n);
    for _ in 0..n {
        principal_keys.push(match r.u8()? {
            K_EXACT => PrincipalKey::Exact(r.str()?),
            K_UNDER => PrincipalKey::Under(r.str()?),
            K_DNS => PrincipalKey::Dns(r.str()?),
            K_CN => PrincipalKey::Cn(r.str()?),
            K_FINGERPRINT => PrincipalKey::Fingerprint(r.array()?),
            K_DNS_IN => PrincipalKey::DnsIn {
                td: r.str()?,
                name: r.str()?,
            },
            K_CN_IN => PrincipalKey::CnIn {
                td: r.str()?,
                name: r.str()?,
            },
            _ => return Err(corrupt("unknown principal key kind")),
        });
    }
    let n = r.count(1 + 4)?;
    let mut sni_keys = Vec::with_capacity(n);
    for _ in 0..n {
        sni_keys.push(match r.u8()? {
            0 => SniKey::Exact(r.str()?),
            1 => SniKey::Wildcard(r.str()?),
            _ => return Err(corrupt("unknown sni key kind")),
        });
    }
    let n = r.count(4)?;
    let alpn_keys = (0..n).map(|_| r.str()).collect::<Result<Vec<_>, _>>()?;

    let n = r.count(8)?;
    let pool = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
    let n = r.count(12)?;
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        rows.push(Row {
            first: r.u32()?,
            len: r.u32()?,
            off: r.u32()?,
        });
    }
    let n = r.count(8)?;
    let slots = (0..n)
        .map(|_| Ok([r.u32()?, r.u32()?]))
        .collect::<Result<Vec<_>, LoadError>>()?;
    let v4_starts = r.u32s()?;
    let v4_rows = r.u32s()?;
    let n = r.count(16)?;
    let v6_starts = (0..n).map(|_| r.u128()).collect::<Result<Vec<_>, _>>()?;
    let v6_rows = r.u32s()?;
    let local_rules = r.u32s()?;

    let n = r.count(8 + 4 + 6 * 4 + 5 * 8 + 1)?;
    let mut tables = Vec::with_capacity(n);
    for _ in 0..n {
        tables.push(SubTable {
            rules: r.span()?,
            words: r.u32()?,
            deny: r.u32()?,
            check: r.u32()?,
            principal_any: r.u32()?,
            source_any: r.u32()?,
            sni_any: r.u32()?,
            alpn_any: r.u32()?,
            principals: r.span()?,
            sni: r.span()?,
            alpn: r.span()?,
            v4: r.span()?,
            v6: r.span()?,
            unconstrained: r.u8()?,
        });
    }
    let n = r.count(4)?;
    if n > MAX_SERVICES {
        return Err(corrupt("more services than the format allows"));
    }
    let service_names = (0..n).map(|_| r.str()).collect::<Result<Vec<_>, _>>()?;
    let any_table = r.u32()?;
    let any_merged = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(corrupt("bad merged flag")),
    };
    if !r.buf.is_empty() {
        return Err(corrupt("bytes left over after the last section"));
    }
    Ok(DecisionTable {
        version,
        policy_hash,
        rules,
        zones,
        schedules,
        principal_keys,
        sni_keys,
        alpn_keys,
        pool,
        rows,
        slots,
        v4_starts,
        v4_rows,
        v6_starts,
        v6_rows,
        local_rules,
        tables,
        service_names,
        any_table,
        any_merged,
        idx: Indexes::default(),
    })
}

fn check(ok: bool, what: &'static str) -> Result<(), LoadError> {
    if ok {
        Ok(())
    } else {
        Err(corrupt(what))
    }
}

/// Every cross-reference in range, every sorted array sorted, every bitset inside
/// its sub-table's width. After this, `decide` finds what it looks up.
fn validate(t: &DecisionTable) -> Result<(), LoadError> {
    let nrules = t.rules.len();
    for r in t.rules.infos() {
        check(
            r.schedule == NONE || (r.schedule as usize) < t.schedules.len(),
            "rule names a missing schedule",
        )?;
    }
    for z in &t.zones {
        check(
            z.at.windows(2).all(|w| matches!(w, [a, b] if a < b)),
            "zone transitions out of order",
        )?;
        check(
            std::iter::once(&z.initial)
                .chain(z.offsets.iter())
                .all(|o| o.unsigned_abs() <= MAX_OFFSET.unsigned_abs()),
            "zone offset out of range",
        )?;
    }
    for s in &t.schedules {
        check(
            (s.zone as usize) < t.zones.len(),
            "schedule names a missing zone",
        )?;
        check(s.days < 1 << 7, "schedule days out of range")?;
        check(
            s.ranges.iter().all(|&(a, b)| a < b && b <= 1440),
            "schedule range out of range",
        )?;
    }
    for row in &t.rows {
        let end = u64::from(row.off) + u64::from(row.len);
        check(end <= t.pool.len() as u64, "bitset row outside the pool")?;
    }
    check(
        t.rows.first().is_some_and(|r| r.len == 0),
        "row 0 is not the empty set",
    )?;
    check(
        !t.any_merged || t.any_table != NONE,
        "merged `*` rules without a `*` sub-table",
    )?;
    check(
        t.v4_starts.len() == t.v4_rows.len(),
        "ipv4 arrays differ in length",
    )?;
    check(
        t.v6_starts.len() == t.v6_rows.len(),
        "ipv6 arrays differ in length",
    )?;

    let any = usize::from(t.any_table != NONE);
    check(
        t.tables.len() == t.service_names.len() + any,
        "sub-table count does not match the services",
    )?;
    check(
        t.any_table == NONE || t.any_table as usize == t.service_names.len(),
        "the `*` sub-table is not last",
    )?;
    for s in &t.tables {
        validate_sub_table(t, s, nrules)?;
    }
    Ok(())
}

fn validate_sub_table(t: &DecisionTable, s: &SubTable, nrules: usize) -> Result<(), LoadError> {
    let locals = t
        .local_rules
        .get(s.rules.range())
        .ok_or(corrupt("sub-table rules outside the rule array"))?;
    check(!locals.is_empty(), "empty sub-table")?;
    check(
        locals.windows(2).all(|w| matches!(w, [a, b] if a < b)),
        "sub-table rules out of order",
    )?;
    check(
        locals.iter().all(|&g| (g as usize) < nrules),
        "sub-table names a missing rule",
    )?;
    check(
        s.words as usize == locals.len().div_ceil(64),
        "sub-table width does not match its rules",
    )?;
    // A row must lie inside the sub-table's words and set no bit past its last rule.
    let row_ok = |id: u32| -> Result<(), LoadError> {
        let r = t
            .rows
            .get(id as usize)
            .ok_or(corrupt("sub-table names a missing row"))?;
        if r.len == 0 {
            return Ok(());
        }
        let end = u64::from(r.first) + u64::from(r.len);
        check(end <= u64::from(s.words), "row wider than its sub-table")?;
        if end == u64::from(s.words) {
            let tail_bits = locals.len() % 64;
            let last = t
                .pool
                .get((r.off as usize + r.len as usize).saturating_sub(1))
                .ok_or(corrupt("bitset row outside the pool"))?;
            check(
                tail_bits == 0 || last >> tail_bits == 0,
                "row sets bits past the last rule",
            )?;
        }
        Ok(())
    };
    for id in [
        s.deny,
        s.check,
        s.principal_any,
        s.source_any,
        s.sni_any,
        s.alpn_any,
    ] {
        row_ok(id)?;
    }
    for (span, space) in [
        (s.principals, t.principal_keys.len()),
        (s.sni, t.sni_keys.len()),
        (s.alpn, t.alpn_keys.len()),
    ] {
        let slots = t
            .slots
            .get(span.range())
            .ok_or(corrupt("key span outside the key array"))?;
        check(
            slots.is_empty() || slots.len().is_power_of_two(),
            "key table size is not a power of two",
        )?;
        for &[k, row] in slots {
            check(
                k == NONE || (k as usize) < space,
                "sub-table names a missing key",
            )?;
            row_ok(row)?;
        }
    }
    let v4 = t
        .v4_starts
        .get(s.v4.range())
        .ok_or(corrupt("ipv4 span outside the range array"))?;
    check(
        v4.first().is_none_or(|&a| a == 0) && v4.windows(2).all(|w| matches!(w, [a, b] if a < b)),
        "ipv4 ranges out of order",
    )?;
    let v6 = t
        .v6_starts
        .get(s.v6.range())
        .ok_or(corrupt("ipv6 span outside the range array"))?;
    check(
        v6.first().is_none_or(|&a| a == 0) && v6.windows(2).all(|w| matches!(w, [a, b] if a < b)),
        "ipv6 ranges out of order",
    )?;
    for &row in t
        .v4_rows
        .get(s.v4.range())
        .unwrap_or(&[])
        .iter()
        .chain(t.v6_rows.get(s.v6.range()).unwrap_or(&[]))
    {
        row_ok(row)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn reseal(bytes: &mut [u8]) {
    let n = bytes.len().saturating_sub(CHECKSUM_LEN);
    let (signed, sum) = bytes.split_at_mut(n);
    let digest = Sha256::digest(signed);
    if sum.len() == CHECKSUM_LEN {
        sum.copy_from_slice(&digest);
    }
}
