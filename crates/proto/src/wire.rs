//! Field encoding inside a payload: little-endian integers, length-prefixed byte
//! strings, and a reader that checks every length against the bytes left.

/// Longest string field (identities, device ids, service and listener names, reasons).
pub const MAX_STRING: usize = 2048;

/// Why a payload is not the message its kind says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload ended inside `field`.
    #[error("payload ends inside `{field}`")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A string field longer than [`MAX_STRING`].
    #[error("`{field}` is {len} bytes long, more than {MAX_STRING}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its declared length.
        len: usize,
    },
    /// A string field that is not UTF-8.
    #[error("`{field}` is not UTF-8")]
    NotUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A tag byte with no meaning.
    #[error("`{field}` has unknown tag {tag}")]
    UnknownTag {
        /// The field.
        field: &'static str,
        /// The tag found.
        tag: u8,
    },
    /// A value outside its domain.
    #[error("`{field}`: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Bytes left after the message.
    #[error("{extra} byte(s) after the message")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// Appends fields to a payload.
pub(crate) struct Writer<'a>(pub(crate) &'a mut Vec<u8>);

impl Writer<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    /// Lengths past `u32::MAX` cannot be framed; the frame limit is far below.
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
    }
    pub(crate) fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    pub(crate) fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    pub(crate) fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
}

/// Reads fields from a payload; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        self.take(N, field)?
            .try_into()
            .map_err(|_| DecodeError::Truncated { field })
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>(field)?;
        Ok(b)
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn fixed<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        self.array(field)
    }
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::UnknownTag { field, tag }),
        }
    }
    /// A byte string of any length the payload holds (a table).
    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(field)? as usize;
        self.take(n, field)
    }
    /// A UTF-8 string of at most [`MAX_STRING`] bytes.
    pub(crate) fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let n = self.u32(field)? as usize;
        if n > MAX_STRING {
            return Err(DecodeError::TooLong { field, len: n });
        }
        std::str::from_utf8(self.take(n, field)?).map_err(|_| DecodeError::NotUtf8 { field })
    }
    /// A non-empty string without control characters (names, identities).
    pub(crate) fn name(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let s = self.str(field)?;
        if s.is_empty() {
            return Err(DecodeError::Invalid {
                field,
                why: "empty",
            });
        }
        if s.chars().any(char::is_control) {
            return Err(DecodeError::Invalid {
                field,
                why: "contains control characters",
            });
        }
        Ok(s.to_owned())
    }
    pub(crate) fn opt_str(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.str(field)?.to_owned())),
            tag => Err(DecodeError::UnknownTag { field, tag }),
        }
    }
    /// An element count, checked against the bytes left: each element takes at least
    /// `min_size` bytes, so a hostile count cannot make the caller reserve memory the
    /// payload does not back.
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        min_size: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(min_size.max(1)) > self.buf.len() {
            return Err(DecodeError::Truncated { field });
        }
        Ok(n)
    }
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                extra: self.buf.len(),
            })
        }
    }
}
