//! API keys that cannot leak by accident.
//!
//! [`ApiKey`] prints as `…abcd` in `Debug` and `Display`, so a key that ends up
//! in a log line, an error or a panic message shows only its fingerprint. The
//! text itself is read in exactly one place: the upstream client's
//! `x-goog-api-key` header, through [`ApiKey::expose`].

use std::fmt;

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
}
