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
