//! Faults the simulator can inject, for reliability tests. All off by default;
//! set at start (`gemini-flux sim --unavailable-ratio 0.1 …`) or at run time
//! through `POST /__sim/faults`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every generate call after it is admitted (the model "thinking").
    pub latency_ms: u64,
    /// Pause between the chunks of a streamed answer.
    pub stream_chunk_delay_ms: u64,
    /// Fraction of generate calls answered 503 UNAVAILABLE (not counted in quota).
    pub unavailable_ratio: f64,
    /// Fraction of generate calls answered with a 429 that carries no details.
    pub bare_429_ratio: f64,
    /// Fraction of admitted generate calls whose connection drops mid-answer.
    pub drop_mid_stream_ratio: f64,
    /// What the model says when asked for JSON (`responseMimeType:
    /// application/json`), instead of `ok:<tokens>`: lets a test script the
    /// answer to gemini-flux's policy fetch.
    pub json_answer: Option<String>,
    /// 429s leave out `quotaValue` (seen in the wild): the limit is then only
    /// in the message.
    pub omit_quota_value: bool,
}

impl Faults {
    pub fn validate(&self) -> Result<(), String> {
        let ratios = [
            ("unavailable_ratio", self.unavailable_ratio),
            ("bare_429_ratio", self.bare_429_ratio),
            ("drop_mid_stream_ratio", self.drop_mid_stream_ratio),
        ];
        match ratios.iter().find(|(_, r)| !(0.0..=1.0).contains(r)) {
            Some((name, r)) => Err(format!("{name} must be between 0 and 1, got {r}")),
            None => Ok(()),
        }
    }
}
