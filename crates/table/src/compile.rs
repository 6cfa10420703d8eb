//! Policy -> table. Runs in the control process; allocates freely, runs once per
//! policy version.

use std::net::IpAddr;

use rustc_hash::FxHashMap;
use zgate_policy::model::{Action, Cidr, Policy, Principal, Rule, Schedule, ServiceSelector};

use crate::tz::Zone;
use crate::{
    CompileError, DecisionTable, Indexes, PrincipalKey, Row, RuleInfo, Sched, SniKey, Span,
    SubTable, EMPTY_ROW, MAX_RULES, MAX_SERVICES, NONE,
};

/// A rule's keys in the global key spaces. `None` = unconstrained in that dimension.
struct RuleKeys<'p> {
    principals: Option<Vec<u32>>,
    sources: Option<&'p [Cidr]>,
    sni: Option<Vec<u32>>,
    alpn: Option<Vec<u32>>,
}

#[derive(Default)]
struct Builder {
    principal_ids: FxHashMap<PrincipalKey, u32>,
    principal_keys: Vec<PrincipalKey>,
    sni_ids: FxHashMap<SniKey, u32>,
    sni_keys: Vec<SniKey>,
    alpn_ids: FxHashMap<Box<str>, u32>,
    alpn_keys: Vec<Box<str>>,
    zone_ids: FxHashMap<String, u32>,
    zones: Vec<Zone>,
    schedules: Vec<Sched>,
    row_ids: FxHashMap<(u32, Box<[u64]>), u32>,
    pool: Vec<u64>,
    rows: Vec<Row>,
    slots: Vec<[u32; 2]>,
    v4_starts: Vec<u32>,
    v4_rows: Vec<u32>,
    v6_starts: Vec<u128>,
    v6_rows: Vec<u32>,
    local_rules: Vec<u32>,
}

/// Most `*` rules copied into every service's sub-table.
const MERGE_MAX_ANY_RULES: usize = 64;

fn to_u32(n: usize, what: &'static str) -> Result<u32, CompileError> {
    u32::try_from(n)
        .ok()
        .filter(|&v| v != NONE)
        .ok_or(CompileError::TooLarge { what })
}

fn intern<K: std::hash::Hash + Eq + Clone>(
    ids: &mut FxHashMap<K, u32>,
    keys: &mut Vec<K>,
    key: K,
    what: &'static str,
) -> Result<u32, CompileError> {
    if let Some(&id) = ids.get(&key) {
        return Ok(id);
    }
    let id = to_u32(keys.len(), what)?;
    ids.insert(key.clone(), id);
    keys.push(key);
    Ok(id)
}

pub(crate) fn compile(policy: &Policy, version: u64) -> Result<DecisionTable, CompileError> {
    let count = policy.rules.len();
    if count > MAX_RULES {
        return Err(CompileError::TooManyRules {
            count,
            max: MAX_RULES,
        });
    }
    let mut b = Builder::default();
    // Row 0 is the empty set, so "no row" and "empty row" are the same thing.
    b.rows.push(Row {
        first: 0,
        len: 0,
        off: 0,
    });

    let mut rules = crate::RulesBuilder::with_capacity(count);
    let mut infos = Vec::with_capacity(count);
    let mut keys = Vec::with_capacity(count);
    let mut service_ids: FxHashMap<&str, u32> = FxHashMap::default();
    let mut service_names: Vec<Box<str>> = Vec::new();
    let mut service_rules: Vec<Vec<u32>> = Vec::new();
    let mut any_rules: Vec<u32> = Vec::new();
    let mut seen_principals: FxHashMap<&Principal, u32> = FxHashMap::default();

    for (index, rule) in (0u32..).zip(&policy.rules) {
        let info = b.rule_info(rule)?;
        rules
            .push(&rule.id, info)
            .ok_or(CompileError::TooLarge { what: "rule ids" })?;
        infos.push(info);
        keys.push(b.rule_keys(rule, &mut seen_principals)?);
        match &rule.services {
            ServiceSelector::Any => any_rules.push(index),
            ServiceSelector::Named(names) => {
                for name in names {
                    let svc = match service_ids.get(name.as_str()) {
                        Some(&s) => s,
                        None => {
                            if service_names.len() >= MAX_SERVICES {
                                return Err(CompileError::TooManyServices {
                                    count: service_names.len() + 1,
                                    max: MAX_SERVICES,
                                });
                            }
                            let s = to_u32(service_names.len(), "services")?;
                            service_ids.insert(name, s);
                            service_names.push(name.as_str().into());
                            service_rules.push(Vec::new());
                            s
                        }
                    };
                    if let Some(list) = service_rules.get_mut(svc as usize) {
                        // A name listed twice in one rule still means one rule.
                        if list.last() != Some(&index) {
                            list.push(index);
                        }
                    }
                }
            }
        }
    }

    // Copy the `*` rules into each service's sub-table when that at most about doubles
    // the work, so a flow reads one sub-table instead of two.
    let named_total: usize = service_rules.iter().map(Vec::len).sum();
    let any_merged = !any_rules.is_empty()
        && any_rules.len() <= MERGE_MAX_ANY_RULES
        && any_rules.len().saturating_mul(service_rules.len()) <= named_total.max(4096);
    let mut tables = Vec::with_capacity(service_rules.len() + 1);
    let mut merged = Vec::new();
    for locals in &service_rules {
        let locals = if any_merged {
            merged.clear();
            merged.extend_from_slice(locals);
            merged.extend_from_slice(&any_rules);
            merged.sort_unstable();
            &merged
        } else {
            locals
        };
        tables.push(b.sub_table(locals, &infos, &keys)?);
    }
    let any_table = if any_rules.is_empty() {
        NONE
    } else {
        tables.push(b.sub_table(&any_rules, &infos, &keys)?);
        to_u32(tables.len() - 1, "tables")?
    };

    let mut idx = Indexes::build(&service_names, &b.principal_keys, &b.sni_keys, &b.alpn_keys)
        .map_err(|_| CompileError::TooLarge {
            what: "key index (duplicate key)",
        })?;
    idx.small_rows = crate::small_rows(&b.rows, &b.pool);
    crate::derive_small(&mut idx, &tables, &b.v4_starts, &b.v4_rows).ok_or(
        CompileError::TooLarge {
            what: "ipv4 search arrays",
        },
    )?;
    Ok(DecisionTable {
        version,
        policy_hash: policy.source_hash,
        rules: rules.finish(),
        zones: b.zones,
        schedules: b.schedules,
        principal_keys: b.principal_keys,
        sni_keys: b.sni_keys,
        alpn_keys: b.alpn_keys,
        pool: b.pool,
        rows: b.rows,
        slots: b.slots,
        v4_starts: b.v4_starts,
        v4_rows: b.v4_rows,
        v6_starts: b.v6_starts,
        v6_rows: b.v6_rows,
        local_rules: b.local_rules,
        tables,
        service_names,
        any_table,
        any_merged,
        idx,
    })
}

/// Address range `[start, end]` of a CIDR inside its family, as `u128`.
fn cidr_range(c: &Cidr) -> (bool, u128, u128) {
    match c.addr {
        IpAddr::V4(a) => {
            let start = u128::from(u32::from(a));
            let host = u128::from(u32::MAX.checked_shr(u32::from(c.prefix_len)).unwrap_or(0));
            (true, start, start | host)
        }
        IpAddr::V6(a) => {
            let start = u128::from(a);
            let host = u128::MAX.checked_shr(u32::from(c.prefix_len)).unwrap_or(0);
            (false, start, start | host)
        }
    }
}

impl Builder {
    fn rule_info(&mut self, rule: &Rule) -> Result<RuleInfo, CompileError> {
        let schedule = match &rule.schedule {
            None => NONE,
            Some(s) => self.schedule(s, &rule.id)?,
        };
        Ok(RuleInfo {
            deny: rule.action == Action::Deny,
            schedule,
            posture: rule.posture,
            max_risk: rule.max_risk,
            max_cert_age_secs: rule.max_cert_age_secs,
            max_session_secs: rule.max_session_secs,
            requires_grant: rule.requires_grant,
        })
    }

    fn schedule(&mut self, s: &Schedule, rule: &str) -> Result<u32, CompileError> {
        let zone = match self.zone_ids.get(&s.time_zone) {
            Some(&z) => z,
            None => {
                let built =
                    Zone::build(&s.time_zone).ok_or_else(|| CompileError::UnknownTimeZone {
                        rule: rule.to_owned(),
                        zone: s.time_zone.clone(),
                    })?;
                let z = to_u32(self.zones.len(), "zones")?;
                self.zones.push(built);
                self.zone_ids.insert(s.time_zone.clone(), z);
                z
            }
        };
        let sched = Sched {
            zone,
            days: s.days.0,
            ranges: s
                .ranges
                .iter()
                .map(|r| (r.start_minute, r.end_minute))
                .collect(),
        };
        // Schedules are few and often repeated; a linear scan keeps this simple.
        if let Some(i) = self.schedules.iter().position(|x| *x == sched) {
            return to_u32(i, "schedules");
        }
        self.schedules.push(sched);
        to_u32(self.schedules.len() - 1, "schedules")
    }

    fn rule_keys<'p>(
        &mut self,
        rule: &'p Rule,
        seen: &mut FxHashMap<&'p Principal, u32>,
    ) -> Result<RuleKeys<'p>, CompileError> {
        let principals = match &rule.principals {
            None => None,
            Some(list) if list.contains(&Principal::Any) => None,
            Some(list) => {
                let mut ids = Vec::with_capacity(list.len());
                for p in list {
                    // Groups repeat the same principals across many rules: skip the
                    // formatting and hashing of text for ones already interned.
                    if let Some(&id) = seen.get(p) {
                        ids.push(id);
                        continue;
                    }
                    let key = match p {
                        Principal::Any => continue,
                        Principal::SpiffeExact(id) => PrincipalKey::Exact(id.to_string().into()),
                        Principal::SpiffeUnder(id) => PrincipalKey::Under(id.to_string().into()),
                        Principal::DnsSan(n) => PrincipalKey::Dns(n.as_str().into()),
                        Principal::CommonName(n) => PrincipalKey::Cn(n.as_str().into()),
                        Principal::DnsSanIn { trust_domain, name } => PrincipalKey::DnsIn {
                            td: trust_domain.as_str().into(),
                            name: name.as_str().into(),
                        },
                        Principal::CommonNameIn { trust_domain, name } => PrincipalKey::CnIn {
                            td: trust_domain.as_str().into(),
                            name: name.as_str().into(),
                        },
                        Principal::Fingerprint(fp) => PrincipalKey::Fingerprint(*fp),
                    };
                    let id = intern(
                        &mut self.principal_ids,
                        &mut self.principal_keys,
                        key,
                        "principal keys",
                    )?;
                    seen.insert(p, id);
                    ids.push(id);
                }
                Some(ids)
            }
        };
        let sni = match &rule.sni {
            None => None,
            Some(names) => {
                let mut ids = Vec::with_capacity(names.len());
                for n in names {
                    // A `*.x` entry also equals the literal SNI `*.x`, as in the reference.
                    ids.push(intern(
                        &mut self.sni_ids,
                        &mut self.sni_keys,
                        SniKey::Exact(n.as_str().into()),
                        "sni keys",
                    )?);
                    if let Some(suffix) = n.strip_prefix("*.") {
                        ids.push(intern(
                            &mut self.sni_ids,
                            &mut self.sni_keys,
                            SniKey::Wildcard(suffix.into()),
                            "sni keys",
                        )?);
                    }
                }
                Some(ids)
            }
        };
        let alpn = match &rule.alpn {
            None => None,
            Some(names) => {
                let mut ids = Vec::with_capacity(names.len());
                for n in names {
                    ids.push(intern(
                        &mut self.alpn_ids,
                        &mut self.alpn_keys,
                        n.as_str().into(),
                        "alpn keys",
                    )?);
                }
                Some(ids)
            }
        };
        Ok(RuleKeys {
            principals,
            sources: rule.sources.as_deref(),
            sni,
            alpn,
        })
    }

    /// Store a bitset given as full-width words, trimmed to its non-zero words, once.
    fn row_from_words(&mut self, words: &[u64]) -> Result<u32, CompileError> {
        let Some(first) = words.iter().position(|&w| w != 0) else {
            return Ok(EMPTY_ROW);
        };
        let last = words.iter().rposition(|&w| w != 0).unwrap_or(first);
        let trimmed: Box<[u64]> = words.get(first..=last).unwrap_or(&[]).into();
        let first = to_u32(first, "bitset words")?;
        match self.row_ids.entry((first, trimmed)) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(*e.get()),
            std::collections::hash_map::Entry::Vacant(e) => {
                let words = &e.key().1;
                let off = to_u32(self.pool.len(), "bitset pool")?;
                let len = to_u32(words.len(), "bitset words")?;
                to_u32(self.pool.len() + words.len(), "bitset pool")?;
                self.pool.extend_from_slice(words);
                let id = to_u32(self.rows.len(), "rows")?;
                self.rows.push(Row { first, len, off });
                e.insert(id);
                Ok(id)
            }
        }
    }

    /// Store the set of the given local indices (ascending or not).
    fn row_from_locals(
        &mut self,
        locals: impl IntoIterator<Item = u32>,
        scratch: &mut Vec<u64>,
    ) -> Result<u32, CompileError> {
        scratch.iter_mut().for_each(|w| *w = 0);
        for l in locals {
            if let Some(w) = scratch.get_mut((l / 64) as usize) {
                *w |= 1u64 << (l % 64);
            }
        }
        let words = std::mem::take(scratch);
        let row = self.row_from_words(&words);
        *scratch = words;
        row
    }

    /// Sorted (key, row) pairs for one dimension of one sub-table.
    fn key_span(
        &mut self,
        mut by_key: FxHashMap<u32, Vec<u32>>,
        scratch: &mut Vec<u64>,
    ) -> Result<Span, CompileError> {
        let mut entries: Vec<(u32, Vec<u32>)> = by_key.drain().collect();
        entries.sort_unstable_by_key(|e| e.0);
        if entries.is_empty() {
            return Ok(Span::default());
        }
        // Load factor at most 1/2: a probe usually ends at its first slot, so its
        // loop exit is predictable (at 3/4, runs of two or three slots were common and
        // each cost a branch miss). Memory: 8 to 16 bytes a key.
        let cap = entries.len().saturating_mul(2).next_power_of_two();
        let off = to_u32(self.slots.len(), "key index")?;
        let len = to_u32(cap, "key index")?;
        to_u32(self.slots.len() + cap, "key index")?;
        let mut table = vec![[NONE, EMPTY_ROW]; cap];
        for (key, locals) in entries {
            let row = self.row_from_locals(locals, scratch)?;
            let mut i = crate::key_slot(key, cap - 1);
            while let Some(slot) = table.get_mut(i) {
                if slot[0] == NONE {
                    *slot = [key, row];
                    break;
                }
                i = (i + 1) & (cap - 1);
            }
        }
        self.slots.extend_from_slice(&table);
        Ok(Span { off, len })
    }

    /// Sweep one family's CIDRs into disjoint ranges, each mapped to the set of rules
    /// whose networks cover it. Returns `(range start, row)`, starting at 0, adjacent
    /// ranges with equal rows merged.
    fn sweep(
        &mut self,
        ranges: &[(u128, u128, u32)],
        max: u128,
        words: usize,
    ) -> Result<Vec<(u128, u32)>, CompileError> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        // (point, +1 / -1, local)
        let mut events: Vec<(u128, bool, u32)> = Vec::with_capacity(ranges.len() * 2);
        for &(start, end, local) in ranges {
            events.push((start, true, local));
            if end < max {
                events.push((end + 1, false, local));
            }
        }
        events.sort_unstable();
        let mut active = vec![0u64; words];
        // A rule may list overlapping networks: count coverage per rule.
        let mut depth: FxHashMap<u32, u32> = FxHashMap::default();
        let mut out: Vec<(u128, u32)> = vec![(0, EMPTY_ROW)];
        let mut i = 0;
        while let Some(&(point, _, _)) = events.get(i) {
            while let Some(&(p, add, local)) = events.get(i) {
                if p != point {
                    break;
                }
                let d = depth.entry(local).or_insert(0);
                if add {
                    *d += 1;
                } else {
                    *d = d.saturating_sub(1);
                }
                if let Some(w) = active.get_mut((local / 64) as usize) {
                    let bit = 1u64 << (local % 64);
                    if *d > 0 {
                        *w |= bit;
                    } else {
                        *w &= !bit;
                    }
                }
                i += 1;
            }
            let row = self.row_from_words(&active)?;
            match out.last_mut() {
                Some(last) if last.0 == point => last.1 = row,
                Some(last) if last.1 == row => {}
                _ => out.push((point, row)),
            }
        }
        // Merging at point 0 can leave two equal neighbours at the start.
        out.dedup_by(|b, a| a.1 == b.1);
        Ok(out)
    }

    fn sub_table(
        &mut self,
        globals: &[u32],
        infos: &[RuleInfo],
        keys: &[RuleKeys<'_>],
    ) -> Result<SubTable, CompileError> {
        let n = globals.len();
        let words = n.div_ceil(64);
        let mut scratch = vec![0u64; words];
        let rules = Span {
            off: to_u32(self.local_rules.len(), "local rules")?,
            len: to_u32(n, "local rules")?,
        };
        self.local_rules.extend_from_slice(globals);
        to_u32(self.local_rules.len(), "local rules")?;

        let mut deny = Vec::new();
        let mut check = Vec::new();
        let mut principal_any = Vec::new();
        let mut source_any = Vec::new();
        let mut sni_any = Vec::new();
        let mut alpn_any = Vec::new();
        let mut principals: FxHashMap<u32, Vec<u32>> = FxHashMap::default();
        let mut sni: FxHashMap<u32, Vec<u32>> = FxHashMap::default();
        let mut alpn: FxHashMap<u32, Vec<u32>> = FxHashMap::default();
        let mut v4: Vec<(u128, u128, u32)> = Vec::new();
        let mut v6: Vec<(u128, u128, u32)> = Vec::new();

        fn add_keys(map: &mut FxHashMap<u32, Vec<u32>>, ids: &[u32], local: u32) {
            for &id in ids {
                let list = map.entry(id).or_default();
                if list.last() != Some(&local) {
                    list.push(local);
                }
            }
        }

        for (local, &global) in (0u32..).zip(globals) {
            let (Some(info), Some(k)) = (infos.get(global as usize), keys.get(global as usize))
            else {
                continue;
            };
            if info.deny {
                deny.push(local);
            }
            if info.has_residual() {
                check.push(local);
            }
            match &k.principals {
                None => principal_any.push(local),
                Some(ids) => add_keys(&mut principals, ids, local),
            }
            match k.sources {
                None => source_any.push(local),
                Some(cidrs) => {
                    for c in cidrs {
                        let (is_v4, start, end) = cidr_range(c);
                        if is_v4 { &mut v4 } else { &mut v6 }.push((start, end, local));
                    }
                }
            }
            match &k.sni {
                None => sni_any.push(local),
                Some(ids) => add_keys(&mut sni, ids, local),
            }
            match &k.alpn {
                None => alpn_any.push(local),
                Some(ids) => add_keys(&mut alpn, ids, local),
            }
        }

        let v4_ranges = self.sweep(&v4, u128::from(u32::MAX), words)?;
        let v4_span = Span {
            off: to_u32(self.v4_starts.len(), "ipv4 ranges")?,
            len: to_u32(v4_ranges.len(), "ipv4 ranges")?,
        };
        for (start, row) in v4_ranges {
            self.v4_starts
                .push(u32::try_from(start).unwrap_or(u32::MAX));
            self.v4_rows.push(row);
        }
        to_u32(self.v4_starts.len(), "ipv4 ranges")?;
        let v6_ranges = self.sweep(&v6, u128::MAX, words)?;
        let v6_span = Span {
            off: to_u32(self.v6_starts.len(), "ipv6 ranges")?,
            len: to_u32(v6_ranges.len(), "ipv6 ranges")?,
        };
        for (start, row) in v6_ranges {
            self.v6_starts.push(start);
            self.v6_rows.push(row);
        }
        to_u32(self.v6_starts.len(), "ipv6 ranges")?;

        let unconstrained = [
            (principal_any.len() == n, crate::UNCONSTRAINED_PRINCIPAL),
            (source_any.len() == n, crate::UNCONSTRAINED_SOURCE),
            (sni_any.len() == n, crate::UNCONSTRAINED_SNI),
            (alpn_any.len() == n, crate::UNCONSTRAINED_ALPN),
        ]
        .iter()
        .filter(|(all, _)| *all)
        .fold(0, |acc, (_, bit)| acc | bit);
        Ok(SubTable {
            unconstrained,
            rules,
            words: to_u32(words, "bitset words")?,
            deny: self.row_from_locals(deny, &mut scratch)?,
            check: self.row_from_locals(check, &mut scratch)?,
            principal_any: self.row_from_locals(principal_any, &mut scratch)?,
            source_any: self.row_from_locals(source_any, &mut scratch)?,
            sni_any: self.row_from_locals(sni_any, &mut scratch)?,
            alpn_any: self.row_from_locals(alpn_any, &mut scratch)?,
            principals: self.key_span(principals, &mut scratch)?,
            sni: self.key_span(sni, &mut scratch)?,
            alpn: self.key_span(alpn, &mut scratch)?,
            v4: v4_span,
            v6: v6_span,
        })
    }
}
