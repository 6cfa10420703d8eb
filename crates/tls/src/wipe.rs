//! Traffic keys that are zeroed when they are dropped.
//!
//! ring's AEAD keys hold their expanded key schedule inline and do not zero it on drop,
//! so a key update (or the end of a flow) would leave the old key in freed memory.
//! [`WipedKey`] overwrites it instead. This is the crate's one `unsafe` block.

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
    }
}
