//! API keys that cannot leak by accident, and whether each may be used.
//!
//! [`ApiKey`] prints as `…abcd` in `Debug` and `Display`, so a key that ends up
//! in a log line, an error or a panic message shows only its fingerprint. The
//! text itself is read in exactly one place: the upstream client's
//! `x-goog-api-key` header, through [`ApiKey::expose`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// Whether a key may be used, and if not, why. The scheduler decides it;
/// the state store keeps it (so it lives here, below both).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum KeyState {
    Healthy,
    /// Taken out by an operator.
    Disabled,
    /// The upstream said the key is not valid (400 API_KEY_INVALID),
    /// and a second, free call confirmed it.
    Invalid(String),
    /// The upstream refused the key's project (401/403 with a key- or
    /// project-level reason), and a second, free call confirmed it.
    Blocked(String),
}

/// Which key: counted from 0 inside the service, and from 1 wherever people
/// read it (the API, logs, metrics, the ledger's rows). `Display` and
/// `Serialize` write it 1-based, so the `+ 1` is written once, here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyIndex(usize);

impl KeyIndex {
    /// The key at position `zero_based` of the configuration.
    pub const fn new(zero_based: usize) -> Self {
        KeyIndex(zero_based)
    }

    /// A key as people number it (`1` is the first); `None` for 0.
    pub fn from_one_based(n: u64) -> Option<Self> {
        let n = usize::try_from(n).ok()?;
        n.checked_sub(1).map(KeyIndex)
    }

    /// Its position in the configuration (0-based).
    pub const fn get(self) -> usize {
        self.0
    }

    /// How people number it (1-based).
    pub const fn one_based(self) -> usize {
        self.0 + 1
    }

    /// Every key of a configuration of `count` keys, in order.
    pub fn all(count: usize) -> impl Iterator<Item = KeyIndex> {
        (0..count).map(KeyIndex)
    }
}

impl fmt::Display for KeyIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.one_based())
    }
}

impl Serialize for KeyIndex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.one_based() as u64)
    }
}

impl<T> std::ops::Index<KeyIndex> for [T] {
    type Output = T;
    fn index(&self, key: KeyIndex) -> &T {
        &self[key.0]
    }
}

impl<T> std::ops::Index<KeyIndex> for Vec<T> {
    type Output = T;
    fn index(&self, key: KeyIndex) -> &T {
        &self[key.0]
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyState::Healthy => f.write_str("healthy"),
            KeyState::Disabled => f.write_str("disabled"),
            KeyState::Invalid(why) => write!(f, "invalid: {why}"),
            KeyState::Blocked(why) => write!(f, "blocked: {why}"),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(text: impl Into<String>) -> Self {
        ApiKey(text.into())
    }

    /// The key's text, for the request header to Gemini and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The last four characters, which is how operators tell keys apart.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }

    /// A stable identity for the state store (FNV-1a, 64 bits, in hex): it
    /// follows a key across restarts and reorderings of the configuration
    /// without the key's text ever being written to disk.
    pub fn stable_id(&self) -> String {
        let hash = self.0.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

/// The last four characters of a key, prefixed with an ellipsis.
pub fn fingerprint(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    format!("…{tail}")
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.fingerprint())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_index_is_written_one_based() {
        let third = KeyIndex::new(2);
        assert_eq!(third.to_string(), "3");
        assert_eq!(serde_json::to_string(&third).unwrap(), "3");
        assert_eq!(KeyIndex::from_one_based(3), Some(third));
        assert_eq!(KeyIndex::from_one_based(0), None);
        assert_eq!(["a", "b", "c"][third], "c");
    }

    #[test]
    fn formatting_never_shows_the_key() {
        let key = ApiKey::new("AIzaSySecretSecretWXYZ");
        assert_eq!(format!("{key}"), "…WXYZ");
        assert_eq!(format!("{key:?}"), "ApiKey(…WXYZ)");
        assert_eq!(fingerprint("ab"), "…ab");
    }

    #[test]
    fn stable_ids_are_stable_and_distinct() {
        let a = ApiKey::new("AIzaSySecretSecretWXYZ");
        assert_eq!(
            a.stable_id(),
            ApiKey::new("AIzaSySecretSecretWXYZ").stable_id()
        );
        assert_ne!(
            a.stable_id(),
            ApiKey::new("AIzaSySecretSecretWXYA").stable_id()
        );
        assert!(!a.stable_id().contains("WXYZ"));
        assert_eq!(a.stable_id().len(), 16);
    }
}
