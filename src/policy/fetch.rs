//! The policy fetch: one `generateContent` that asks Gemini for its own
//! free-tier limits, and the validation of its answer. An LLM's answer is not
//! a fact: anything short of clean JSON with whole numbers in sane ranges for
//! models the chain knows is rejected with a reason, and the policy in force
//! stays.

use super::LimitsOverride;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;

/// How long an accepted answer (and the discovered model list) is trusted.
pub const CACHE_TTL: Duration = Duration::from_secs(7 * 86_400);

pub const RPM_RANGE: RangeInclusive<u64> = 1..=10_000;
pub const TPM_RANGE: RangeInclusive<u64> = 1_000..=100_000_000;
pub const RPD_RANGE: RangeInclusive<u64> = 1..=1_000_000;
pub const TPD_RANGE: RangeInclusive<u64> = 1_000..=100_000_000_000;

/// The `GenerateContentRequest` of the fetch, for the chain's models.
pub fn request(chain: &[String]) -> Value {
    let prompt = format!(
        "Give the current free-tier rate limits of the Gemini API for each of these models: {}. \
         For each, the requests per minute (rpm), input tokens per minute (tpm) and requests per day (rpd), \
         as whole numbers. Answer only with the JSON object.",
        chain.join(", ")
    );
    let entry = json!({
        "type": "OBJECT",
        "properties": {
            "model": {"type": "STRING"},
            "rpm": {"type": "INTEGER"},
            "tpm": {"type": "INTEGER"},
            "rpd": {"type": "INTEGER"}
        },
        "required": ["model", "rpm", "tpm", "rpd"]
    });
    json!({
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {
            "responseMimeType": "application/json",
            "responseSchema": {"type": "OBJECT", "properties": {"models": {"type": "ARRAY", "items": entry}}, "required": ["models"]},
            "temperature": 0
        }
    })
}

/// Accepts the answer's text, or says why not.
pub fn validate(text: &str, chain: &[String]) -> Result<BTreeMap<String, LimitsOverride>, String> {
    let answer: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("the answer is not JSON ({e}): {}", preview(text)))?;
    let entries = answer["models"]
        .as_array()
        .ok_or("the answer has no \"models\" list")?;
    if entries.is_empty() {
        return Err("the answer lists no model".into());
    }
    let mut accepted = BTreeMap::new();
    for entry in entries {
        let model = entry["model"]
            .as_str()
            .ok_or("an entry has no model name")?
            .trim_start_matches("models/");
        if !chain.iter().any(|m| m == model) {
            return Err(format!(
                "the answer names {model:?}, which is not in the chain"
            ));
        }
        let number = |field: &str, range: RangeInclusive<u64>| -> Result<u64, String> {
            let v = entry[field].as_u64().ok_or_else(|| {
                format!("{model}.{field} is not a whole number: {}", entry[field])
            })?;
            if range.contains(&v) {
                Ok(v)
            } else {
                Err(format!("{model}.{field} = {v} is outside {range:?}"))
            }
        };
        let limits = LimitsOverride {
            rpm: Some(number("rpm", RPM_RANGE)? as u32),
            tpm: Some(number("tpm", TPM_RANGE)?),
            rpd: Some(number("rpd", RPD_RANGE)? as u32),
            // Asked for only when the answer volunteers it.
            tpd: match entry.get("tpd") {
                None | Some(Value::Null) => None,
                Some(_) => Some(number("tpd", TPD_RANGE)?),
            },
            otpm: None,
        };
        if accepted.insert(model.to_string(), limits).is_some() {
            return Err(format!("the answer names {model:?} twice"));
        }
    }
    Ok(accepted)
}

fn preview(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let cut: String = one_line.chars().take(80).collect();
    if cut.len() < one_line.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Vec<String> {
        vec!["gemini-2.5-pro".into(), "gemini-2.5-flash".into()]
    }

    #[test]
    fn a_clean_answer_is_accepted() {
        let text = r#"{"models": [{"model": "gemini-2.5-flash", "rpm": 10, "tpm": 250000, "rpd": 250},
                                  {"model": "models/gemini-2.5-pro", "rpm": 5, "tpm": 250000, "rpd": 100}]}"#;
        let got = validate(text, &chain()).unwrap();
        assert_eq!(
            got["gemini-2.5-pro"],
            LimitsOverride {
                rpm: Some(5),
                tpm: Some(250_000),
                rpd: Some(100),
                tpd: None,
                otpm: None,
            }
        );
        assert_eq!(
            request(&chain())["generationConfig"]["responseMimeType"],
            "application/json"
        );
    }

    #[test]
    fn every_kind_of_bad_answer_is_rejected_with_a_reason() {
        let good = |m: &str, rpm: &str, tpm: &str, rpd: &str| {
            format!(
                r#"{{"models": [{{"model": "{m}", "rpm": {rpm}, "tpm": {tpm}, "rpd": {rpd}}}]}}"#
            )
        };
        let cases = [
            (
                "The free tier allows 10 requests per minute.".to_string(),
                "not JSON",
            ),
            ("```json\n{\"models\": []}\n```".to_string(), "not JSON"),
            (
                r#"{"models": [{"model": "gemini-2.5-flash", "rpm": 10"#.to_string(),
                "not JSON",
            ),
            (
                good("gemini-2.5-flash", "\"10\"", "250000", "250"),
                "rpm is not a whole number",
            ),
            (
                good("gemini-2.5-flash", "10.5", "250000", "250"),
                "rpm is not a whole number",
            ),
            (
                good("gemini-2.5-flash", "0", "250000", "250"),
                "rpm = 0 is outside",
            ),
            (
                good("gemini-2.5-flash", "-3", "250000", "250"),
                "rpm is not a whole number",
            ),
            (
                good("gemini-2.5-flash", "10", "1000000000000", "250"),
                "tpm = 1000000000000 is outside",
            ),
            (
                good("gemini-9-ultra", "10", "250000", "250"),
                "not in the chain",
            ),
            (r#"{"limits": {}}"#.to_string(), "no \"models\" list"),
            (r#"{"models": []}"#.to_string(), "lists no model"),
        ];
        for (text, reason) in cases {
            let e = validate(&text, &chain()).unwrap_err();
            assert!(e.contains(reason), "{text:?} -> {e}");
        }
    }
}
