//! openapi.yaml stays honest: every path and method it lists is served, and
//! every route the router declares is in it.

mod common;

use common::*;
use gemini_flux::sim::SimConfig;
use std::collections::BTreeSet;

/// (method, path) pairs of the spec's `paths:` section. The file keeps a
/// fixed layout: paths at two spaces, methods at four.
fn spec_operations() -> BTreeSet<(String, String)> {
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let mut ops = BTreeSet::new();
    let mut in_paths = false;
    let mut path = String::new();
    for line in spec.lines() {
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            path = format!("/{p}");
        } else if let Some(m) = line.strip_prefix("    ").and_then(|m| m.strip_suffix(':'))
            && ["get", "post", "put", "delete", "patch"].contains(&m)
        {
            ops.insert((m.to_string(), path.clone()));
        }
    }
    ops
}

/// (method, path) pairs the router declares, read from the `.route(...)`
/// calls of `src/api` (axum cannot list its routes).
fn router_operations() -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api");
    for entry in std::fs::read_dir(dir).unwrap() {
        let source = std::fs::read_to_string(entry.unwrap().path())
            .unwrap()
            .replace(['\n', ' '], "");
        for part in source.split(".route(\"").skip(1) {
            let (path, rest) = part.split_once('"').unwrap();
            let handlers = &rest[..rest
                .find(")).")
                .or_else(|| rest.find("))"))
                .unwrap_or(rest.len())];
            for method in ["get", "post", "put", "delete", "patch"] {
                if handlers.starts_with(&format!(",{method}("))
                    || handlers.contains(&format!(".{method}("))
                {
                    ops.insert((method.to_string(), path.to_string()));
                }
            }
        }
    }
    ops
}

#[test]
fn every_route_is_in_the_spec_and_every_spec_path_is_a_route() {
    let spec = spec_operations();
    let router = router_operations();
    assert!(spec.len() >= 8, "the spec was read: {spec:?}");
    assert_eq!(router, spec, "router and openapi.yaml disagree");
}

/// A batch of one request: its id.
async fn new_batch(stack: &Stack) -> String {
    let body = serde_json::json!({"batch": {"inputConfig": {"requests": {"requests": [
        {"request": {"contents": [{"parts": [{"text": "hi"}]}]}}
    ]}}}});
    let (status, op) = stack
        .post("/v1beta/models/gemini-2.5-flash:batchGenerateContent", body)
        .await;
    assert_eq!(status, 200, "{op}");
    op["name"].as_str().unwrap()["batches/".len()..].to_string()
}

#[tokio::test(start_paused = true)]
async fn every_spec_operation_is_served() {
    let stack = Stack::start(
        SimConfig::new(["sim-key-0001", "sim-key-0002"]),
        quiet_noon(),
        &[],
    )
    .await;
    for (method, path) in spec_operations() {
        let target = if method == "get" {
            "gemini-2.5-flash"
        } else {
            "gemini-2.5-flash:countTokens"
        };
        let mut path = path
            .replace("{n}", "2")
            .replace("{target}", target)
            .replace("{id}", "abc123");
        if path.contains("{name}") {
            let batch = new_batch(&stack).await;
            let name = if method == "post" {
                format!("{batch}:cancel")
            } else {
                batch
            };
            path = path.replace("{name}", &name);
        }
        let url = stack.url(&path);
        let request = match method.as_str() {
            "get" => stack.http.get(url),
            "delete" => stack.http.delete(url),
            _ => stack
                .http
                .post(url)
                .json(&serde_json::json!({"prompt": "hi", "mode": "both"})),
        };
        let resp = request.send().await.unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        assert!(
            status != 404 && status != 405,
            "{method} {path} is not served: {status} {body}"
        );
    }
}
