//! Stage 2: every file's drafts → one policy. Checks what needs all files at once:
//! duplicate ids and names, group references and cycles; then flattens groups.

use std::collections::HashMap;

use crate::error::{ErrorKind, PolicyError, Warning, WarningKind};
use crate::load::{dedupe, FileItems, Loc};
use crate::model::{Group, Origin, Principal, Rule, ServiceDecl};
use crate::values::Member;

/// The validated parts of a policy (everything but the source hash).
pub(crate) struct Resolved {
    pub(crate) groups: Vec<Group>,
    pub(crate) services: Vec<ServiceDecl>,
    pub(crate) rules: Vec<Rule>,
    /// Rules left out because they can never match.
    pub(crate) warnings: Vec<Warning>,
}

fn err_at<T>(loc: &Loc<T>, kind: ErrorKind) -> PolicyError {
    PolicyError {
        origin: loc.origin.clone(),
        snippet: loc.snippet.clone(),
        kind,
    }
}

/// Resolves the files' items, in file order. The result is only meaningful when `errs`
/// is empty on return.
pub(crate) fn resolve(files: &[FileItems], errs: &mut Vec<PolicyError>) -> Resolved {
    // A file that failed to parse may define the groups others reference: without it,
    // "undefined group" would be a guess, so those errors wait for the syntax fix.
    let all_parsed = files.iter().all(|f| f.parsed);

    // Groups: first definition wins, later ones are errors.
    let mut groups = Vec::new();
    let mut group_index: HashMap<&str, usize> = HashMap::new();
    for g in files.iter().flat_map(|f| &f.groups) {
        let first: Option<&&crate::load::RawGroup> = group_index
            .get(g.name.value.as_str())
            .and_then(|i| groups.get(*i));
        if let Some(first) = first {
            errs.push(err_at(
                &g.name,
                ErrorKind::DuplicateGroup {
                    name: g.name.value.clone(),
                    first: first.name.origin.clone(),
                },
            ));
        } else {
            group_index.insert(&g.name.value, groups.len());
            groups.push(g);
        }
    }

    let mut services: Vec<ServiceDecl> = Vec::new();
    for s in files.iter().flat_map(|f| &f.services) {
        if let Some(first) = services.iter().find(|d| d.name == s.value.name) {
            errs.push(err_at(
                s,
                ErrorKind::DuplicateService {
                    name: s.value.name.clone(),
                    first: first.origin.clone(),
                },
            ));
        } else {
            services.push(s.value.clone());
        }
    }

    let mut rule_ids: HashMap<&str, &Origin> = HashMap::new();
    for r in files.iter().flat_map(|f| &f.rules) {
        let Some(id) = &r.id else { continue };
        if let Some(first) = rule_ids.get(id.value.as_str()) {
            errs.push(err_at(
                id,
                ErrorKind::DuplicateRuleId {
                    id: id.value.clone(),
                    first: (*first).clone(),
                },
            ));
        } else {
            rule_ids.insert(&id.value, &id.origin);
        }
    }

    if all_parsed {
        for r in files.iter().flat_map(|f| &f.rules) {
            for g in &r.group_refs {
                if !group_index.contains_key(g.value.as_str()) {
                    errs.push(err_at(
                        g,
                        ErrorKind::UndefinedGroup {
                            name: g.value.clone(),
                        },
                    ));
                }
            }
        }
    }

    let expanded = expand_groups(&groups, &group_index, errs, all_parsed);

    let mut rules = Vec::new();
    let mut warnings = Vec::new();
    for raw in files.iter().flat_map(|f| &f.rules) {
        let Some(draft) = &raw.draft else { continue };
        let mut rule = draft.rule.clone();
        if let Some(members) = &draft.principals {
            let mut out = Vec::new();
            let mut group_refs = Vec::new();
            for m in members {
                match &m.value {
                    Member::Principal(p) => out.push(p.clone()),
                    Member::Group(name) => {
                        group_refs.push(name.clone());
                        // An undefined group was reported above, for every rule.
                        let list = group_index
                            .get(name.as_str())
                            .and_then(|i| expanded.get(*i));
                        if let Some(Some(list)) = list {
                            out.extend(list.iter().cloned());
                        }
                    }
                }
            }
            let out = dedupe(out);
            if out.is_empty() {
                // Only reachable when every entry is a group and all are empty: the
                // model cannot say "nobody", and the rule matches no flow, so it goes.
                warnings.push(Warning {
                    origin: rule.origin.clone(),
                    rule_id: Some(rule.id.clone()),
                    kind: WarningKind::NeverMatches {
                        rule: rule.id.clone(),
                        groups: dedupe(group_refs),
                    },
                });
                continue;
            }
            rule.principals = Some(out);
        }
        rules.push(rule);
    }

    let groups = groups
        .iter()
        .zip(expanded)
        .map(|(g, members)| Group {
            name: g.name.value.clone(),
            members: members.unwrap_or_default(),
            origin: g.name.origin.clone(),
        })
        .collect();
    Resolved {
        groups,
        services,
        rules,
        warnings,
    }
}

/// Flattens every group's members (iteratively: nesting depth is user input).
/// Reports undefined references (when `report_undefined`) and cycles. A group whose
/// expansion failed is `None`.
fn expand_groups(
    groups: &[&crate::load::RawGroup],
    index: &HashMap<&str, usize>,
    errs: &mut Vec<PolicyError>,
    report_undefined: bool,
) -> Vec<Option<Vec<Principal>>> {
    #[derive(Clone)]
    enum State {
        Unvisited,
        Visiting,
        Done(Option<Vec<Principal>>),
    }
    let mut state = vec![State::Unvisited; groups.len()];
    // Each frame: (group index, next member to look at).
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for root in 0..groups.len() {
        if !matches!(state.get(root), Some(State::Unvisited)) {
            continue;
        }
        if let Some(s) = state.get_mut(root) {
            *s = State::Visiting;
        }
        stack.push((root, 0));
        while let Some(&mut (g, ref mut next)) = stack.last_mut() {
            let Some(group) = groups.get(g) else {
                stack.pop();
                continue;
            };
            if let Some(m) = group.members.get(*next) {
                *next += 1;
                let Member::Group(name) = &m.value else {
                    continue;
                };
                let Some(&h) = index.get(name.as_str()) else {
                    if report_undefined {
                        errs.push(err_at(m, ErrorKind::UndefinedGroup { name: name.clone() }));
                    }
                    continue;
                };
                match state.get(h) {
                    Some(State::Unvisited) => {
                        if let Some(s) = state.get_mut(h) {
                            *s = State::Visiting;
                        }
                        stack.push((h, 0));
                    }
                    Some(State::Visiting) => {
                        let mut path: Vec<String> = stack
                            .iter()
                            .skip_while(|(x, _)| *x != h)
                            .filter_map(|(x, _)| groups.get(*x).map(|gr| gr.name.value.clone()))
                            .collect();
                        path.push(name.clone());
                        errs.push(err_at(m, ErrorKind::GroupCycle { path }));
                    }
                    _ => {}
                }
                continue;
            }
            // All members visited: flatten.
            let mut out = Vec::new();
            let mut ok = true;
            for m in &group.members {
                match &m.value {
                    Member::Principal(p) => out.push(p.clone()),
                    Member::Group(name) => {
                        match index.get(name.as_str()).and_then(|h| state.get(*h)) {
                            Some(State::Done(Some(list))) => out.extend(list.iter().cloned()),
                            _ => ok = false,
                        }
                    }
                }
            }
            if let Some(s) = state.get_mut(g) {
                *s = State::Done(ok.then(|| dedupe(out)));
            }
            stack.pop();
        }
    }
    state
        .into_iter()
        .map(|s| match s {
            State::Done(v) => v,
            _ => None,
        })
        .collect()
}
