//! [`IdSet`]: a set of identity strings hashed with the table's own string hash.
//!
//! Why not `HashSet<String>`: `decide` hashes the flow's SPIFFE ID for the table's
//! index anyway; with the revocation set keyed by the same hash, one hash serves both
//! (a 40-byte ID costs about 40 instructions to hash, a tenth of a decision).
//!
//! Open addressing with linear probing, at most an eighth full: most lookups are of IDs
//! that are not revoked, and they end at an empty first slot, a predictable branch. The hash is not keyed: the
//! keys come from the control process (trusted), and a lookup with a hostile key costs
//! at most the longest probe run those keys make.

use crate::index::hash;

/// A set of strings (revoked SPIFFE IDs). Build it with [`IdSet::insert`], `extend` or
/// `collect`; ask it with [`IdSet::contains`].
#[derive(Clone, Default)]
pub struct IdSet {
    /// Power-of-two length or empty; each slot the key's hash and the key.
    slots: Vec<Option<(u64, Box<str>)>>,
    len: usize,
}

impl IdSet {
    /// An empty set.
    pub fn new() -> IdSet {
        IdSet::default()
    }

    /// Number of strings held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add `id`; `false` if it was already there.
    pub fn insert(&mut self, id: String) -> bool {
        let h = hash(id.as_bytes());
        if self.contains_hashed(&id, h) {
            return false;
        }
        if (self.len + 1) * 8 > self.slots.len() {
            self.grow();
        }
        self.place(h, id.into_boxed_str());
        self.len += 1;
        true
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: &str) -> bool {
        !self.is_empty() && self.contains_hashed(id, hash(id.as_bytes()))
    }

    /// [`Self::contains`] for an `id` whose [`hash`] is `h`.
    #[inline]
    pub(crate) fn contains_hashed(&self, id: &str, h: u64) -> bool {
        let mask = self.slots.len().wrapping_sub(1);
        let mut i = (h as usize) & mask;
        // At most an eighth full, so a run ends long before this bound.
        for _ in 0..self.slots.len() {
            match self.slots.get(i) {
                Some(Some((sh, key))) => {
                    if *sh == h && **key == *id {
                        return true;
                    }
                }
                _ => return false,
            }
            i = (i + 1) & mask;
        }
        false
    }

    /// Take `id` out; `false` if it was not there. Linear probing without tombstones:
    /// the keys after the hole in its run move back where their probe would find them.
    pub fn remove(&mut self, id: &str) -> bool {
        if self.is_empty() {
            return false;
        }
        let h = hash(id.as_bytes());
        let mask = self.slots.len().wrapping_sub(1);
        let mut i = (h as usize) & mask;
        let mut found = false;
        for _ in 0..self.slots.len() {
            match self.slots.get(i) {
                Some(Some((sh, key))) if *sh == h && **key == *id => {
                    found = true;
                    break;
                }
                Some(Some(_)) => i = (i + 1) & mask,
                _ => break,
            }
        }
        if !found {
            return false;
        }
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = None;
        }
        let mut hole = i;
        let mut j = (i + 1) & mask;
        while let Some(Some((hj, _))) = self.slots.get(j) {
            let home = (*hj as usize) & mask;
            // The key at `j` stays when its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots.swap(hole, j);
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.len -= 1;
        true
    }

    /// The strings held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().flatten().map(|(_, k)| &**k)
    }

    /// Double the slots (at least 16) and re-place every key.
    fn grow(&mut self) {
        let cap = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![None; cap]);
        for (h, key) in old.into_iter().flatten() {
            self.place(h, key);
        }
    }

    /// Put a key known to be absent into the first free slot of its run (one exists:
    /// the set is at most an eighth full).
    fn place(&mut self, h: u64, key: Box<str>) {
        let mask = self.slots.len().wrapping_sub(1);
        let mut i = (h as usize) & mask;
        for _ in 0..self.slots.len() {
            if let Some(slot @ None) = self.slots.get_mut(i) {
                *slot = Some((h, key));
                return;
            }
            i = (i + 1) & mask;
        }
    }
}

impl std::fmt::Debug for IdSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl<S: Into<String>> Extend<S> for IdSet {
    fn extend<I: IntoIterator<Item = S>>(&mut self, iter: I) {
        for id in iter {
            self.insert(id.into());
        }
    }
}

impl<S: Into<String>> FromIterator<S> for IdSet {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> IdSet {
        let mut set = IdSet::new();
        set.extend(iter);
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    proptest! {
        /// Any sequence of inserts (short, long and repeated strings, growth across
        /// several sizes) leaves the set agreeing with a `HashSet` on every probe.
        #[test]
        fn agrees_with_a_hash_set(
            inserts in prop::collection::vec("[a-z/:.]{0,40}", 0..200),
            probes in prop::collection::vec("[a-z/:.]{0,40}", 0..50),
        ) {
            let mut set = IdSet::new();
            let mut reference = HashSet::new();
            for s in &inserts {
                prop_assert_eq!(set.insert(s.clone()), reference.insert(s.clone()));
            }
            prop_assert_eq!(set.len(), reference.len());
            for s in inserts.iter().chain(&probes) {
                prop_assert_eq!(set.contains(s), reference.contains(s));
            }
            let listed: HashSet<String> = set.iter().map(str::to_owned).collect();
            prop_assert_eq!(listed, reference);
        }
    }

    proptest! {
        /// Inserts and removals interleaved (short keys over a small alphabet, so runs
        /// collide and wrap) agree with a `HashSet` after every step.
        #[test]
        fn removal_agrees_with_a_hash_set(
            ops in prop::collection::vec((any::<bool>(), "[ab]{0,3}"), 0..300),
        ) {
            let mut set = IdSet::new();
            let mut reference = HashSet::new();
            for (insert, s) in &ops {
                if *insert {
                    prop_assert_eq!(set.insert(s.clone()), reference.insert(s.clone()));
                } else {
                    prop_assert_eq!(set.remove(s), reference.remove(s));
                }
                prop_assert_eq!(set.len(), reference.len());
                for (_, p) in &ops {
                    prop_assert_eq!(set.contains(p), reference.contains(p));
                }
            }
        }
    }

    #[test]
    fn holds_what_was_inserted_and_nothing_else() {
        let mut set = IdSet::new();
        assert!(set.is_empty());
        assert!(!set.contains("spiffe://corp.example/a"));
        for i in 0..1_000 {
            assert!(set.insert(format!("spiffe://corp.example/ns/t{i}/sa/w")));
        }
        assert!(!set.insert("spiffe://corp.example/ns/t7/sa/w".to_owned()));
        assert_eq!(set.len(), 1_000);
        for i in 0..1_000 {
            assert!(set.contains(&format!("spiffe://corp.example/ns/t{i}/sa/w")));
            assert!(!set.contains(&format!("spiffe://corp.example/ns/t{i}/sa/x")));
        }
        assert!(!set.contains(""));
        assert_eq!(set.iter().count(), 1_000);
        let again: IdSet = set.iter().map(str::to_owned).collect();
        assert_eq!(again.len(), 1_000);
    }
}
