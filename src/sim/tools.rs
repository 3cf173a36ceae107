//! Function calling as the simulated model does it, on both surfaces (the
//! native `tools[].functionDeclarations`, here, and the OpenAI layer's
//! `tools`, in `openai`): which function a turn calls, the arguments it
//! makes for it, and gemini-3's thought signatures, which it puts on each
//! call it makes and wants back, in the current turn, on each step's first
//! call.

use super::routes::{Failure, invalid_argument};
use base64::Engine;
use serde_json::{Map, Value, json};

/// The signature the real API documents as a stand-in for one that was lost.
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// Whether `model` signs its calls (gemini-3 does).
pub(super) fn signs(model: &str) -> bool {
    model.starts_with("gemini-3")
}

/// The thought signature the simulated gemini-3 gives a call of `name`.
pub(super) fn signature(name: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("sim-thought:{name}"))
}

/// A call of `name` came back in the current turn with `given` as its
/// signature, at `position` among the contents: the real 400 unless it is
/// the one the call was given (or the documented stand-in).
pub(super) fn check_signed(
    name: &str,
    given: Option<&str>,
    position: usize,
) -> Result<(), Failure> {
    if given == Some(&signature(name)) || given == Some(SKIP_SIGNATURE) {
        return Ok(());
    }
    Err(invalid_argument(&format!(
        "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `default_api:{name}` , position {position}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
    )))
}

/// Arguments a function's `parameters` schema accepts: each required
/// property (every property when none is marked required) gets a value of
/// its type (the schema's `type` in either case: JSON Schema's `string`, or
/// Gemini's `STRING`), its first `enum` value when it has one.
pub(super) fn arguments(parameters: &Value) -> Value {
    let properties = parameters["properties"].as_object();
    let required: Vec<&str> = match parameters["required"].as_array() {
        Some(names) => names.iter().filter_map(Value::as_str).collect(),
        None => properties
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default(),
    };
    let arguments: Map<String, Value> = required
        .into_iter()
        .map(|name| {
            let schema = properties.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
            let kind = schema["type"].as_str().map(str::to_ascii_lowercase);
            let value = match (schema["enum"].get(0), kind.as_deref()) {
                (Some(first), _) => first.clone(),
                (None, Some("integer" | "number")) => json!(1),
                (None, Some("boolean")) => json!(true),
                (None, Some("array")) => json!([]),
                (None, Some("object")) => json!({}),
                _ => json!("sim"),
            };
            (name.to_string(), value)
        })
        .collect();
    Value::Object(arguments)
}

/// `v[camel]`, or `v[snake]`: the API takes both spellings.
fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> &'a Value {
    v.get(camel).unwrap_or(&v[snake])
}

/// The `functionCall` part a native generate call is answered with, if
/// any: with `tools[].functionDeclarations` declared, calling not turned off
/// (`toolConfig.functionCallingConfig.mode` `NONE`) and the user's text last
/// (not a `functionResponse`), a call of the first declared function (or of
/// the first of `allowedFunctionNames`). A gemini-3 model signs it
/// (`thoughtSignature`), and first checks that every call of the current
/// turn came back with its signature.
pub(super) fn native_call(request: &Value, model: &str) -> Result<Option<Value>, Failure> {
    let contents = request["contents"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let user_text = |c: &Value| {
        c["role"].as_str().is_none_or(|r| r == "user")
            && c["parts"]
                .as_array()
                .is_some_and(|parts| parts.iter().any(|p| p.get("text").is_some()))
    };
    if signs(model) {
        let turn = contents.iter().rposition(user_text).map_or(0, |i| i + 1);
        for (i, content) in contents.iter().enumerate().skip(turn) {
            let parts = content["parts"].as_array().map_or(&[][..], Vec::as_slice);
            let first = parts
                .iter()
                .find(|p| !field(p, "functionCall", "function_call").is_null());
            if let Some(part) = first {
                let name = field(part, "functionCall", "function_call")["name"]
                    .as_str()
                    .unwrap_or_default();
                let given = field(part, "thoughtSignature", "thought_signature").as_str();
                check_signed(name, given, i + 1)?;
            }
        }
    }
    let config = field(
        field(request, "toolConfig", "tool_config"),
        "functionCallingConfig",
        "function_calling_config",
    );
    if config["mode"] == "NONE" || !contents.last().is_some_and(user_text) {
        return Ok(None);
    }
    let declarations: Vec<&Value> = request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|tool| field(tool, "functionDeclarations", "function_declarations").as_array())
        .flatten()
        .collect();
    let allowed = field(config, "allowedFunctionNames", "allowed_function_names");
    let chosen = match allowed.get(0).and_then(Value::as_str) {
        Some(name) => declarations.into_iter().find(|d| d["name"] == name),
        None => declarations.into_iter().next(),
    };
    Ok(chosen.map(|declaration| {
        let name = declaration["name"].as_str().unwrap_or_default();
        let parameters = match field(declaration, "parameters", "parameters") {
            Value::Null => field(
                declaration,
                "parametersJsonSchema",
                "parameters_json_schema",
            ),
            declared => declared,
        };
        let mut part = json!({"functionCall": {"name": name, "args": arguments(parameters)}});
        if signs(model) {
            part["thoughtSignature"] = json!(signature(name));
        }
        part
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_follow_the_schema_in_either_spelling() {
        let openai = json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"type": "string", "enum": ["C", "F"]}}, "required": ["city", "unit"]});
        assert_eq!(arguments(&openai), json!({"city": "sim", "unit": "C"}));
        let native = json!({"type": "OBJECT", "properties": {"days": {"type": "INTEGER"}, "hot": {"type": "BOOLEAN"}}});
        assert_eq!(arguments(&native), json!({"days": 1, "hot": true}));
        assert_eq!(arguments(&Value::Null), json!({}));
    }

    #[test]
    fn only_the_given_signature_or_the_stand_in_passes() {
        assert!(check_signed("f", Some(&signature("f")), 2).is_ok());
        assert!(check_signed("f", Some(SKIP_SIGNATURE), 2).is_ok());
        assert!(check_signed("f", Some(&signature("g")), 2).is_err());
        assert!(check_signed("f", None, 2).is_err());
    }
}
