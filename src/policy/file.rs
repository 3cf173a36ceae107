//! `FLUX_POLICY_FILE`: the `FLUX_LIMITS` shape in a JSON or TOML file, with
//! an optional `keys` table of per-key limits in the `FLUX_KEY_LIMITS` shape.
//!
//! ```toml
//! ["gemini-2.5-flash"]
//! rpm = 10
//! tpm = 250000
//!
//! [keys.3."gemini-2.5-flash"]   # key 3 is on a paid tier
//! rpm = 1000
//! ```

use super::{KeyOverrides, LimitsOverride, validate_key_overrides, validate_overrides};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What a policy file sets: limits per model, and per key and model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyFile {
    pub models: BTreeMap<String, LimitsOverride>,
    pub keys: KeyOverrides,
}

/// The file as written: model entries, and perhaps `keys`. Read entry by
/// entry (not with `serde(flatten)`, which would lose the error's line).
#[derive(Default)]
struct Shape {
    keys: BTreeMap<String, BTreeMap<String, LimitsOverride>>,
    models: BTreeMap<String, LimitsOverride>,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of models (and perhaps `keys`)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Shape, A::Error> {
                let mut shape = Shape::default();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "keys" {
                        shape.keys = map.next_value()?;
                    } else {
                        shape.models.insert(name, map.next_value()?);
                    }
                }
                Ok(shape)
            }
        }
        d.deserialize_map(Entries)
    }
}

/// Reads and validates the file; the error names the file and, for a syntax
/// error, the line.
pub fn read_policy_file(path: &Path) -> Result<PolicyFile, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: cannot read it: {e}"))?;
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let parsed: Shape = if is_toml {
        toml::from_str(&text).map_err(|e| format!("{name}: {}", e.to_string().trim_end()))?
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?
    };
    Ok(PolicyFile {
        models: validate_overrides(parsed.models).map_err(|e| format!("{name}: {e}"))?,
        keys: validate_key_overrides(parsed.keys).map_err(|e| format!("{name}: keys: {e}"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gemini-flux-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn json_and_toml_read_alike() {
        let toml = write("p.toml", "[\"gemini-2.5-flash\"]\nrpm = 7\ntpm = 100000\n");
        let json = write(
            "p.json",
            r#"{"gemini-2.5-flash": {"rpm": 7, "tpm": 100000}}"#,
        );
        assert_eq!(
            read_policy_file(&toml).unwrap(),
            read_policy_file(&json).unwrap()
        );
    }

    #[test]
    fn per_key_limits_sit_beside_the_models() {
        let toml = write(
            "k.toml",
            "[\"gemini-2.5-flash\"]\nrpm = 7\n[keys.2.\"gemini-2.5-flash\"]\nrpm = 700\ntpd = 9000\n",
        );
        let file = read_policy_file(&toml).unwrap();
        assert_eq!(file.models["gemini-2.5-flash"].rpm, Some(7));
        assert_eq!(file.keys[&1]["gemini-2.5-flash"].tpd, Some(9_000));
        let bad = write("k.json", r#"{"keys": {"zero": {"m": {"rpm": 1}}}}"#);
        assert!(read_policy_file(&bad).unwrap_err().contains("keys"));
    }

    #[test]
    fn errors_name_the_file_and_the_line() {
        let bad = write("bad.json", "{\n  \"gemini-2.5-flash\": {\"rpm\": 7,,}\n}");
        let e = read_policy_file(&bad).unwrap_err();
        assert!(e.contains("bad.json") && e.contains("line 2"), "{e}");
        let bad = write("bad.toml", "[\"gemini-2.5-flash\"]\nrpm = \"seven\"\n");
        let e = read_policy_file(&bad).unwrap_err();
        assert!(e.contains("bad.toml") && e.contains("line 2"), "{e}");
        let zero = write("zero.toml", "[\"gemini-2.5-flash\"]\nrpd = 0\n");
        assert!(
            read_policy_file(&zero)
                .unwrap_err()
                .contains("rpd must be a positive integer")
        );
    }
}
