//! `ChainHash`: the 32-byte SHA-256 link of the hash chain, written as
//! lowercase hex.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The `prev_hash` of the first event of a partition.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_slice(bytes: &[u8]) -> Option<ChainHash> {
        <[u8; 32]>::try_from(bytes).ok().map(ChainHash)
    }

    pub fn to_hex(&self) -> String {
        self.with_hex(str::to_owned)
    }

    /// The lowercase hex form as a `&str` for `f`, without allocating
    /// (every event serialized carries two).
    pub fn with_hex<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 64];
        for (pair, byte) in text.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        // Hex digits only: always UTF-8.
        f(std::str::from_utf8(&text).unwrap_or_default())
    }

    pub fn from_hex(text: &str) -> Option<ChainHash> {
        let bytes = hex::decode(text).ok()?;
        ChainHash::from_slice(&bytes)
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({})", self.to_hex())
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_hex(|hex| f.write_str(hex))
    }
}

impl Serialize for ChainHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.with_hex(|hex| serializer.serialize_str(hex))
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ChainHash::from_hex(&text).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}
