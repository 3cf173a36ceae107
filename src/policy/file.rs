//! `FLUX_POLICY_FILE`: the `FLUX_LIMITS` shape in a JSON or TOML file.
//!
//! ```toml
//! ["gemini-2.5-flash"]
//! rpm = 10
//! tpm = 250000
//! ```

use super::{LimitsOverride, validate_overrides};
use std::collections::BTreeMap;
use std::path::Path;

/// Reads and validates the file; the error names the file and, for a syntax
/// error, the line.
pub fn read_policy_file(path: &Path) -> Result<BTreeMap<String, LimitsOverride>, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: cannot read it: {e}"))?;
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let parsed: BTreeMap<String, LimitsOverride> = if is_toml {
        toml::from_str(&text).map_err(|e| format!("{name}: {}", e.to_string().trim_end()))?
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?
    };
    validate_overrides(parsed).map_err(|e| format!("{name}: {e}"))
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
