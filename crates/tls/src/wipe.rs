//! Traffic keys that are zeroed when they are dropped.
//!
//! ring's AEAD keys hold their expanded key schedule inline and do not zero it on drop,
//! so a key update (or the end of a flow) would leave the old key in freed memory.
//! [`WipedKey`] overwrites it instead. This is the crate's one `unsafe` block (its test
//! reads the dropped key's bytes with two more).

use std::mem::ManuallyDrop;
use std::ops::Deref;

use ring::aead::LessSafeKey;

/// A ring AEAD key, overwritten with zeros when dropped.
pub(crate) struct WipedKey(ManuallyDrop<LessSafeKey>);

impl WipedKey {
    pub(crate) fn new(key: LessSafeKey) -> WipedKey {
        WipedKey(ManuallyDrop::new(key))
    }
}

impl Deref for WipedKey {
    type Target = LessSafeKey;

    fn deref(&self) -> &LessSafeKey {
        &self.0
    }
}

impl Drop for WipedKey {
    fn drop(&mut self) {
        let key: *mut LessSafeKey = &mut *self.0;
        // SAFETY: `key` points to the `LessSafeKey` this value owns exclusively (we hold
        // `&mut self`), `size_of::<LessSafeKey>()` writable bytes in one allocation. It
        // is flat: ring 0.17 keeps the key schedule inline and its one reference is to a
        // `'static` algorithm descriptor, so nothing outside is freed or leaked by not
        // running its (trivial) drop, which `ManuallyDrop` never runs. The zeroed value
        // (a null reference inside) is never read: this is its last use.
        unsafe { zeroize::zeroize_flat_type(key) }
        #[cfg(test)]
        WIPES.with(|w| w.set(w.get() + 1));
    }
}

#[cfg(test)]
thread_local! {
    /// Keys this thread has wiped: lets the record layer's tests check that a key
    /// update and the end of a session drop their keys through [`WipedKey`].
    static WIPES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many keys this thread has wiped so far.
#[cfg(test)]
pub(crate) fn wipes() -> u64 {
    WIPES.with(std::cell::Cell::get)
}

#[cfg(test)]
mod tests {
    use std::mem::{size_of, MaybeUninit};

    use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

    use super::WipedKey;

    #[test]
    fn a_dropped_key_leaves_only_zeros_where_it_lay() {
        for (alg, len) in [
            (&aead::AES_128_GCM, 16),
            (&aead::AES_256_GCM, 32),
            (&aead::CHACHA20_POLY1305, 32),
        ] {
            let key = LessSafeKey::new(UnboundKey::new(alg, &vec![0x5a; len]).unwrap());
            // A working key, in a slot whose bytes the test can read after the drop.
            let mut data = *b"secret";
            let nonce = Nonce::assume_unique_for_key([0; aead::NONCE_LEN]);
            let _tag = key
                .seal_in_place_separate_tag(nonce, Aad::empty(), &mut data)
                .unwrap();
            assert_ne!(&data, b"secret");
            let mut slot = MaybeUninit::new(WipedKey::new(key));
            // SAFETY: `slot` holds an initialised `WipedKey`, dropped once here and
            // never used as one again.
            unsafe { std::ptr::drop_in_place(slot.as_mut_ptr()) };
            // SAFETY: the drop wrote every one of the slot's `size_of::<WipedKey>()`
            // bytes (`zeroize_flat_type` writes the whole value, padding included), so
            // each is an initialised `u8`; the slot outlives the slice.
            let bytes = unsafe {
                std::slice::from_raw_parts(slot.as_ptr().cast::<u8>(), size_of::<WipedKey>())
            };
            assert!(
                bytes.iter().all(|&b| b == 0),
                "{alg:?}: key bytes left after the drop: {bytes:02x?}"
            );
        }
    }
}
