//! Flat string indexes for the hot path: one open-addressing slot array and one byte
//! arena per index, a word-at-a-time hash inlined into `decide`, and a key comparison
//! that reads words, not bytes.
//!
//! Why not `HashMap<Box<str>, u32>`: a probe there hashes through the `Hasher` trait
//! (byte writes plus a terminator), follows a pointer per candidate to the key's own
//! allocation and compares through `memcmp`; about 100 instructions and three cache
//! lines for a 40-byte SPIFFE ID. Here a probe is one hash (a multiply per 16 bytes),
//! one slot (hash tag, key length and offset, and the value itself) and the key's
//! bytes in the arena: about 40 instructions and two lines. A key of at most 8 bytes
//! (most service names, ALPN names) sits whole in its slot, so its probe reads no
//! arena. The hash also gives the hash of any prefix of a SPIFFE ID from the same
//! words ([`PrefixHasher`]), so probing the `spiffe://td/a/*` keys an ID may fall
//! under does not re-read it.
//!
//! The hash is not keyed: the keys come from the (trusted) policy, and a lookup with a
//! hostile key costs at most the longest probe run, which the policy's keys alone
//! determine (load at most one half, so runs are short). Every loop is bounded by the
//! slot count.

/// Multiplier (from `rustc-hash` 2 and `foldhash`: odd, bits well spread).
const K: u64 = 0xf135_7aea_2e62_a9c5;
/// Start state, so that a zero word still changes the state.
const SEED: u64 = 0x243f_6a88_85a3_08d3;

/// 64x64 -> 128-bit multiply, folded: the high and low halves XORed.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a).wrapping_mul(u128::from(b));
    (p as u64) ^ ((p >> 64) as u64)
}

/// Second multiplier, XORed into the odd word of each 16-byte chunk (foldhash's and
/// `rustc-hash`'s two-word step).
const K2: u64 = 0x1319_8a2e_0370_7344;

/// Fold 16 bytes (two words) into the state: one multiply.
#[inline(always)]
fn step2(state: u64, a: u64, b: u64) -> u64 {
    fold_mul(state ^ a, K2 ^ b)
}

/// Mix in the length, last.
#[inline(always)]
fn finish(state: u64, len: usize) -> u64 {
    fold_mul(state ^ (len as u64), K)
}

/// Little-endian word at `at` (8 bytes must be there; 0 otherwise, which a caller that
/// checked the length never sees).
#[inline(always)]
fn word_at(b: &[u8], at: usize) -> u64 {
    match b.get(at..at.wrapping_add(8)) {
        Some(w) => match <[u8; 8]>::try_from(w) {
            Ok(a) => u64::from_le_bytes(a),
            Err(_) => 0,
        },
        None => 0,
    }
}

#[inline(always)]
fn u32_at(b: &[u8], at: usize) -> u64 {
    match b.get(at..at.wrapping_add(4)) {
        Some(w) => match <[u8; 4]>::try_from(w) {
            Ok(a) => u64::from(u32::from_le_bytes(a)),
            Err(_) => 0,
        },
        None => 0,
    }
}

/// All of a key of at most 8 bytes in one word (overlapping reads; with the length
/// mixed in by `finish`, distinct keys of one length give distinct words). Keys of 4
/// to 8 bytes take one path (at 8 bytes the two halves are the whole word), so names
/// of 7 and 8 bytes do not make the branch unpredictable.
#[inline(always)]
fn short_word(b: &[u8]) -> u64 {
    let n = b.len();
    debug_assert!(n <= INLINE_KEY);
    if n >= 4 {
        u32_at(b, 0) | (u32_at(b, n - 4) << 32)
    } else if n > 0 {
        let at = |i: usize| u64::from(b.get(i).copied().unwrap_or(0));
        at(0) | (at(n / 2) << 8) | (at(n - 1) << 16)
    } else {
        0
    }
}

/// 16-byte chunks folded before the last (tail) 16 bytes of a key of `len > 16`
/// bytes: the tail is the last 16 bytes, overlapping the chunks before it.
#[inline(always)]
fn body_chunks(len: usize) -> usize {
    len.saturating_sub(1) / 16
}

/// The hash of `key`: at most 8 bytes as one word, at most 16 as two (overlapping),
/// longer ones a 16-byte chunk per multiply and then their last 16 bytes; the length
/// last.
#[inline(always)]
pub(crate) fn hash(key: &[u8]) -> u64 {
    let n = key.len();
    if n <= 8 {
        return finish(step2(SEED, short_word(key), 0), n);
    }
    if n <= 16 {
        return finish(step2(SEED, word_at(key, 0), word_at(key, n - 8)), n);
    }
    let mut state = SEED;
    let body = key.get(..body_chunks(n) * 16).unwrap_or(&[]);
    for c in body.chunks_exact(16) {
        if let Ok(a) = <[u8; 16]>::try_from(c) {
            let w = u128::from_le_bytes(a);
            state = step2(state, w as u64, (w >> 64) as u64);
        }
    }
    finish(step2(state, word_at(key, n - 16), word_at(key, n - 8)), n)
}

/// Hashes of the prefixes of one string, in ascending length, folding each 16-byte
/// chunk once.
pub(crate) struct PrefixHasher<'a> {
    key: &'a [u8],
    state: u64,
    chunks: usize,
}

impl<'a> PrefixHasher<'a> {
    pub(crate) fn new(key: &'a [u8]) -> PrefixHasher<'a> {
        PrefixHasher {
            key,
            state: SEED,
            chunks: 0,
        }
    }

    /// `hash(&key[..len])`; `len` must not decrease between calls and must be at most
    /// the key's length (`None` otherwise).
    #[inline]
    pub(crate) fn hash(&mut self, len: usize) -> Option<u64> {
        let prefix = self.key.get(..len)?;
        if len <= 16 {
            return Some(hash(prefix));
        }
        let want = body_chunks(len);
        if want < self.chunks {
            return None;
        }
        while self.chunks < want {
            let at = self.chunks * 16;
            self.state = step2(self.state, word_at(prefix, at), word_at(prefix, at + 8));
            self.chunks += 1;
        }
        Some(finish(
            step2(
                self.state,
                word_at(prefix, len - 16),
                word_at(prefix, len - 8),
            ),
            len,
        ))
    }
}

/// Equality of two keys of the same length `n > 8`, a word at a time, inlined (the
/// keys are short; a `memcmp` call costs more than the comparison).
#[inline(always)]
fn same_long(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() || n < 8 {
        return false;
    }
    // Whole words, then the last 8 bytes (overlapping the words before them).
    let body = (n - 1) / 8 * 8;
    let (Some(a_body), Some(b_body)) = (a.get(..body), b.get(..body)) else {
        return false;
    };
    for (x, y) in a_body.chunks_exact(8).zip(b_body.chunks_exact(8)) {
        if x != y {
            return false;
        }
    }
    word_at(a, n - 8) == word_at(b, n - 8)
}

/// One slot. A key of at most 8 bytes is held whole in `key` (its [`short_word`]),
/// so a lookup reads no arena bytes; a longer key's `key` holds the high half of its
/// hash (low 32 bits) and its offset in the arena (high 32 bits). An empty slot has
/// length [`EMPTY_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot<V> {
    key: u64,
    len: u32,
    value: V,
}

/// Longest key held whole in its slot.
const INLINE_KEY: usize = 8;

/// The `len` of an empty slot (keys are shorter: the arena is under 4 GiB).
const EMPTY_LEN: u32 = u32::MAX;

/// Indexes of at most this many keys hold them in order, one slot each, and are
/// searched by comparing every key; larger ones are hashed, with at least
/// `2 * SMALL_KEYS` slots.
const SMALL_KEYS: usize = 4;

/// A map from byte strings to small `Copy` values, built once. The value sits in the
/// slot, so a hit reads the slot and, for keys over 8 bytes, the key's bytes: one or
/// two cache lines.
#[derive(Debug, Clone)]
pub(crate) struct StrIndex<V = u32> {
    /// Power-of-two length (or empty), at most half full; linear probing.
    slots: Box<[Slot<V>]>,
    /// The bytes of the keys over 8 bytes, back to back.
    text: Box<[u8]>,
}

impl<V> Default for StrIndex<V> {
    fn default() -> Self {
        StrIndex {
            slots: Box::default(),
            text: Box::default(),
        }
    }
}

/// Why an index could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexError {
    /// The same key twice.
    Duplicate,
    /// Over 2^32 - 1 bytes of keys or 2^30 keys.
    TooLarge,
}

/// What a slot holding `key` (whose [`hash`] is `h`) has in its `key` field, less the
/// arena offset: the whole key if short, else the hash tag.
#[inline(always)]
fn slot_word(key: &[u8], h: u64) -> u64 {
    if key.len() <= INLINE_KEY {
        short_word(key)
    } else {
        h >> 32
    }
}

/// Whether slot `s` holds `key`; `word` is [`slot_word`] of `key`.
#[inline(always)]
fn holds<V>(s: &Slot<V>, text: &[u8], key: &[u8], word: u64) -> bool {
    if s.len as usize != key.len() {
        return false;
    }
    if key.len() <= INLINE_KEY {
        return s.key == word;
    }
    if s.key as u32 != word as u32 {
        return false;
    }
    let off = (s.key >> 32) as usize;
    text.get(off..off.wrapping_add(key.len()))
        .is_some_and(|stored| same_long(stored, key))
}

impl<V: Copy + Default> StrIndex<V> {
    /// Index `(key, value)` pairs.
    pub(crate) fn build<'k>(
        entries: impl ExactSizeIterator<Item = (&'k [u8], V)> + Clone,
    ) -> Result<StrIndex<V>, IndexError> {
        let n = entries.len();
        if n == 0 {
            return Ok(StrIndex::default());
        }
        if n > 1 << 30 {
            return Err(IndexError::TooLarge);
        }
        // Load at most 1/2: a lookup usually ends at its first slot, so the probe
        // loop's exit is predictable whether the key is there or not.
        let small = n <= SMALL_KEYS;
        let cap = if small {
            n
        } else {
            (2 * n).next_power_of_two().max(2 * SMALL_KEYS)
        };
        let mask = cap - 1;
        let empty = Slot {
            key: 0,
            len: EMPTY_LEN,
            value: V::default(),
        };
        let mut slots = vec![empty; cap];
        let text_len: usize = entries.clone().map(|(k, _)| k.len()).sum();
        if u32::try_from(text_len).map_or(true, |t| t == EMPTY_LEN) {
            return Err(IndexError::TooLarge);
        }
        let mut text = Vec::new();
        for (at, (key, value)) in entries.enumerate() {
            let h = hash(key);
            let word = slot_word(key, h);
            if small && slots.iter().take(at).any(|s| holds(s, &text, key, word)) {
                return Err(IndexError::Duplicate);
            }
            // A short list keeps the keys in order; its slots are all filled.
            let mut i = if small { at } else { (h as usize) & mask };
            let slot = loop {
                let Some(s) = slots.get_mut(i) else {
                    return Err(IndexError::TooLarge);
                };
                if s.len == EMPTY_LEN {
                    break s;
                }
                if holds(s, &text, key, word) {
                    return Err(IndexError::Duplicate);
                }
                i = (i + 1) & mask;
            };
            let len = u32::try_from(key.len()).map_err(|_| IndexError::TooLarge)?;
            let key_word = if key.len() <= INLINE_KEY {
                word
            } else {
                let off = u32::try_from(text.len()).map_err(|_| IndexError::TooLarge)?;
                text.extend_from_slice(key);
                word | (u64::from(off) << 32)
            };
            *slot = Slot {
                key: key_word,
                len,
                value,
            };
        }
        Ok(StrIndex {
            slots: slots.into_boxed_slice(),
            text: text.into_boxed_slice(),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether a lookup hashes the key (more than [`SMALL_KEYS`] keys), rather than
    /// comparing it with every key.
    pub(crate) fn is_hashed(&self) -> bool {
        self.slots.len() > SMALL_KEYS
    }

    /// The value of `key`.
    #[inline(always)]
    pub(crate) fn get(&self, key: &[u8]) -> Option<V> {
        if self.slots.len() <= SMALL_KEYS {
            // A few keys (ALPN names, a gateway's own services): comparing them all
            // costs less than hashing the key.
            return self.scan_all(key);
        }
        self.get_hashed(key, hash(key))
    }

    /// The value of `key`, comparing it with every stored key.
    #[inline(always)]
    fn scan_all(&self, key: &[u8]) -> Option<V> {
        // The tag is not needed to compare a long key: the arena is.
        let word = if key.len() <= INLINE_KEY {
            short_word(key)
        } else {
            0
        };
        for s in self.slots.iter() {
            if s.len as usize != key.len() {
                continue;
            }
            let hit = if key.len() <= INLINE_KEY {
                s.key == word
            } else {
                let off = (s.key >> 32) as usize;
                self.text
                    .get(off..off.wrapping_add(key.len()))
                    .is_some_and(|stored| same_long(stored, key))
            };
            if hit {
                return Some(s.value);
            }
        }
        None
    }

    /// The value of `key`, whose [`hash`] is `h`.
    #[inline(always)]
    pub(crate) fn get_hashed(&self, key: &[u8], h: u64) -> Option<V> {
        if self.slots.len() <= SMALL_KEYS {
            return self.scan_all(key);
        }
        let mask = self.slots.len().wrapping_sub(1);
        let word = slot_word(key, h);
        let mut i = (h as usize) & mask;
        // At most 2/3 full, so a run ends long before this bound.
        for _ in 0..self.slots.len() {
            let s = self.slots.get(i)?;
            if s.len == EMPTY_LEN {
                return None;
            }
            if holds(s, &self.text, key, word) {
                return Some(s.value);
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots) + self.text.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_hashes_equal_whole_hashes() {
        let s = b"spiffe://corp.example/ns/team12/sa/svc3/and/a/long/tail/to/cross/words";
        for start in 0..=s.len() {
            let mut p = PrefixHasher::new(s);
            for len in start..=s.len() {
                assert_eq!(p.hash(len), Some(hash(&s[..len])), "{start} {len}");
            }
            assert_eq!(p.hash(s.len() + 1), None);
        }
    }

    #[test]
    fn finds_every_key_and_nothing_else() {
        let keys: Vec<Vec<u8>> = (0..300u32)
            .map(|i| {
                let mut k = b"key".repeat((i % 7) as usize);
                k.extend_from_slice(&i.to_le_bytes()[..(i % 5) as usize]);
                k.push(b'x');
                k.extend_from_slice(i.to_string().as_bytes());
                k
            })
            .chain([Vec::new(), b"a".to_vec(), b"ab".to_vec(), b"abc".to_vec()])
            .collect();
        let pairs: Vec<(&[u8], u32)> = keys.iter().zip(0u32..).map(|(k, v)| (&k[..], v)).collect();
        let idx = StrIndex::build(pairs.into_iter()).unwrap();
        for (v, k) in (0u32..).zip(&keys) {
            assert_eq!(idx.get(k), Some(v));
            let mut other = k.clone();
            other.push(0);
            assert_eq!(idx.get(&other), None);
            if let Some(last) = other.len().checked_sub(2) {
                other.truncate(last + 1);
                other[last] ^= 1;
                assert_eq!(idx.get(&other), None);
            }
        }
        assert_eq!(idx.get(b"\0"), None);
        assert_eq!(idx.get(b"a\0"), None);
        assert_eq!(StrIndex::<u32>::default().get(b"a"), None);
    }

    #[test]
    fn short_keys_differ_by_length_and_bytes() {
        let keys: [&[u8]; 8] = [b"", b"\0", b"\0\0", b"a", b"a\0", b"ab", b"ba", b"abcdefgh"];
        let pairs: Vec<(&[u8], u32)> = keys.iter().zip(0u32..).map(|(k, v)| (*k, v)).collect();
        let idx = StrIndex::build(pairs.into_iter()).unwrap();
        for (v, k) in (0u32..).zip(keys) {
            assert_eq!(idx.get(k), Some(v));
        }
    }

    #[test]
    fn short_lists_are_searched_without_hashing() {
        for n in 0..=4u32 {
            let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
            let pairs: Vec<(&[u8], u32)> = keys
                .iter()
                .zip(10u32..)
                .map(|(k, v)| (k.as_bytes(), v))
                .collect();
            let idx = StrIndex::build(pairs.into_iter()).unwrap();
            assert_eq!(idx.slots.len(), keys.len());
            for (k, v) in keys.iter().zip(10u32..) {
                assert_eq!(idx.get(k.as_bytes()), Some(v));
            }
            assert_eq!(idx.get(b"k"), None);
            assert_eq!(idx.get(b"k9"), None);
            assert_eq!(idx.get(b""), None);
        }
        let five: Vec<(&[u8], u32)> = vec![(b"a", 0), (b"b", 1), (b"c", 2), (b"d", 3), (b"e", 4)];
        let five = StrIndex::build(five.into_iter()).unwrap();
        assert!(five.slots.len() >= 2 * SMALL_KEYS);
        assert_eq!(five.get(b"e"), Some(4));
        let dup: Vec<(&[u8], u32)> = vec![(b"a", 0), (b"b", 1), (b"a", 2)];
        assert_eq!(
            StrIndex::build(dup.into_iter()).unwrap_err(),
            IndexError::Duplicate
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let keys: [&[u8]; 3] = [b"a", b"b", b"a"];
        assert_eq!(
            StrIndex::build(keys.iter().zip(0..3).map(|(k, v)| (*k, v))).unwrap_err(),
            IndexError::Duplicate
        );
    }
}
