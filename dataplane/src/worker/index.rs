//! A worker's live flows indexed by principal, certificate fingerprint and device id,
//! so that a fact delta re-decides only the flows it names (DESIGN "Live") instead of
//! scanning every flow.
//!
//! Each key heads an intrusive doubly-linked list through the slots: adding and
//! removing a flow is O(1) and allocates nothing but the key's map entry, however many
//! flows share a principal.

use std::sync::Arc;

use rustc_hash::FxHashMap;

const NIL: u32 = u32::MAX;

/// The three keys.
const PRINCIPAL: usize = 0;
const FINGERPRINT: usize = 1;
const DEVICE: usize = 2;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

impl Link {
    const OFF: Link = Link {
        prev: NIL,
        next: NIL,
    };
}

/// What a flow is indexed by.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// Its SPIFFE ID.
    pub principal: Option<Arc<str>>,
    /// Its leaf certificate's SHA-256.
    pub fingerprint: Option<[u8; 32]>,
    /// Its device id.
    pub device: Option<Arc<str>>,
}

/// Per slot: whether it is indexed, under which keys, and its links.
#[derive(Debug, Default)]
struct Entry {
    keys: Option<Keys>,
    links: [Option<Link>; 3],
}

/// The index. Slots are the worker's slot numbers.
#[derive(Debug, Default)]
pub struct FlowIndex {
    principals: FxHashMap<Arc<str>, u32>,
    fingerprints: FxHashMap<[u8; 32], u32>,
    devices: FxHashMap<Arc<str>, u32>,
    entries: Vec<Entry>,
}

impl FlowIndex {
    /// Index the flow in `slot` under `keys` (once; a second call is ignored).
    pub fn insert(&mut self, slot: u32, keys: Keys) {
        let i = slot as usize;
        if self.entries.len() <= i {
            self.entries.resize_with(i + 1, Entry::default);
        }
        if self.entries.get(i).is_some_and(|e| e.keys.is_some()) {
            return;
        }
        if let Some(p) = &keys.principal {
            let head = self.principals.entry(Arc::clone(p)).or_insert(NIL);
            let old = std::mem::replace(head, slot);
            Self::push_front(&mut self.entries, PRINCIPAL, slot, old);
        }
        if let Some(f) = keys.fingerprint {
            let head = self.fingerprints.entry(f).or_insert(NIL);
            let old = std::mem::replace(head, slot);
            Self::push_front(&mut self.entries, FINGERPRINT, slot, old);
        }
        if let Some(d) = &keys.device {
            let head = self.devices.entry(Arc::clone(d)).or_insert(NIL);
            let old = std::mem::replace(head, slot);
            Self::push_front(&mut self.entries, DEVICE, slot, old);
        }
        if let Some(e) = self.entries.get_mut(i) {
            e.keys = Some(keys);
        }
    }

    fn push_front(entries: &mut [Entry], list: usize, slot: u32, old_head: u32) {
        if let Some(l) = entries
            .get_mut(slot as usize)
            .and_then(|e| e.links.get_mut(list))
        {
            *l = Some(Link {
                prev: NIL,
                next: old_head,
            });
        }
        if let Some(Some(l)) = entries
            .get_mut(old_head as usize)
            .and_then(|e| e.links.get_mut(list))
        {
            l.prev = slot;
        }
    }

    /// Take the flow in `slot` out of the index (if it is in).
    pub fn remove(&mut self, slot: u32) {
        let Some(keys) = self
            .entries
            .get_mut(slot as usize)
            .and_then(|e| e.keys.take())
        else {
            return;
        };
        if let Some(p) = &keys.principal {
            let head = Self::unlink(&mut self.entries, PRINCIPAL, slot);
            fix_head(&mut self.principals, &**p, slot, head);
        }
        if let Some(f) = &keys.fingerprint {
            let head = Self::unlink(&mut self.entries, FINGERPRINT, slot);
            fix_head(&mut self.fingerprints, f, slot, head);
        }
        if let Some(d) = &keys.device {
            let head = Self::unlink(&mut self.entries, DEVICE, slot);
            fix_head(&mut self.devices, &**d, slot, head);
        }
    }

    /// Unlink `slot` from `list`; returns its `next` (the new head if it was the head)
    /// and whether it was the head (`prev == NIL`).
    fn unlink(entries: &mut [Entry], list: usize, slot: u32) -> (bool, u32) {
        let link = entries
            .get_mut(slot as usize)
            .and_then(|e| e.links.get_mut(list))
            .and_then(Option::take)
            .unwrap_or(Link::OFF);
        if let Some(Some(p)) = entries
            .get_mut(link.prev as usize)
            .and_then(|e| e.links.get_mut(list))
        {
            p.next = link.next;
        }
        if let Some(Some(n)) = entries
            .get_mut(link.next as usize)
            .and_then(|e| e.links.get_mut(list))
        {
            n.prev = link.prev;
        }
        (link.prev == NIL, link.next)
    }

    /// Append the slots of the flows presenting `principal` to `out`.
    pub fn by_principal(&self, principal: &str, out: &mut Vec<u32>) {
        self.walk(self.principals.get(principal).copied(), PRINCIPAL, out);
    }

    /// Append the slots of the flows whose leaf certificate is `fingerprint`.
    pub fn by_fingerprint(&self, fingerprint: &[u8; 32], out: &mut Vec<u32>) {
        self.walk(
            self.fingerprints.get(fingerprint).copied(),
            FINGERPRINT,
            out,
        );
    }

    /// Append the slots of the flows from device `device`.
    pub fn by_device(&self, device: &str, out: &mut Vec<u32>) {
        self.walk(self.devices.get(device).copied(), DEVICE, out);
    }

    fn walk(&self, head: Option<u32>, list: usize, out: &mut Vec<u32>) {
        let mut at = head.unwrap_or(NIL);
        // Bounded by the slots: a list never holds a slot twice.
        for _ in 0..self.entries.len() {
            let Some(Some(link)) = self
                .entries
                .get(at as usize)
                .and_then(|e| e.links.get(list))
            else {
                return;
            };
            out.push(at);
            at = link.next;
        }
    }

    /// Flows indexed now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.keys.is_some()).count()
    }
}

/// After unlinking `slot` from a key's list: if it was the head, the key's head is its
/// `next`, or the key goes when that is the end.
fn fix_head<K, Q>(heads: &mut FxHashMap<K, u32>, key: &Q, slot: u32, (was_head, next): (bool, u32))
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if !was_head || heads.get(key) != Some(&slot) {
        return;
    }
    if next == NIL {
        heads.remove(key);
    } else if let Some(h) = heads.get_mut(key) {
        *h = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(p: &str, f: u8, d: Option<&str>) -> Keys {
        Keys {
            principal: Some(Arc::from(p)),
            fingerprint: Some([f; 32]),
            device: d.map(Arc::from),
        }
    }

    fn of(index: &FlowIndex, p: &str) -> Vec<u32> {
        let mut v = Vec::new();
        index.by_principal(p, &mut v);
        v.sort_unstable();
        v
    }

    #[test]
    fn flows_are_found_by_each_key_and_gone_once_removed() {
        let mut x = FlowIndex::default();
        x.insert(3, keys("a", 1, Some("laptop")));
        x.insert(7, keys("a", 2, None));
        x.insert(9, keys("b", 1, Some("laptop")));
        assert_eq!(of(&x, "a"), [3, 7]);
        assert_eq!(of(&x, "b"), [9]);
        let mut f = Vec::new();
        x.by_fingerprint(&[1; 32], &mut f);
        f.sort_unstable();
        assert_eq!(f, [3, 9]);
        let mut d = Vec::new();
        x.by_device("laptop", &mut d);
        d.sort_unstable();
        assert_eq!(d, [3, 9]);
        // Head, middle and tail removals alike; a second removal does nothing.
        x.remove(7);
        x.remove(7);
        assert_eq!(of(&x, "a"), [3]);
        x.remove(3);
        assert_eq!(of(&x, "a"), Vec::<u32>::new());
        assert!(!x.principals.contains_key("a"), "empty keys are dropped");
        let mut d = Vec::new();
        x.by_device("laptop", &mut d);
        assert_eq!(d, [9]);
        assert_eq!(x.len(), 1);
    }

    #[test]
    fn many_flows_under_one_principal_come_and_go_in_any_order() {
        let mut x = FlowIndex::default();
        for s in 0..1000 {
            x.insert(s, keys("shared", (s % 7) as u8, None));
        }
        for s in (0..1000).filter(|s| s % 3 == 0) {
            x.remove(s);
        }
        let want: Vec<u32> = (0..1000).filter(|s| s % 3 != 0).collect();
        assert_eq!(of(&x, "shared"), want);
        for s in 0..1000 {
            x.remove(s);
        }
        assert!(x.principals.is_empty() && x.fingerprints.is_empty());
    }
}
