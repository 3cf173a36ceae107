//! A newcomer's path: every commented example of `.env.example` works once
//! uncommented (the FLUX_LIMITS line starts the service), `demo` on a busy
//! port names FLUX_BIND and prints no "try it" line pointing at someone
//! else's process, the start-up table spells limit sources as `/status`
//! does, and the small refusals are exact.

mod common;

use common::*;
use gemini_flux::clock::Clock;
use gemini_flux::config::Settings;
use gemini_flux::sim::{SimConfig, SimServer};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn env_example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".env.example")).unwrap()
}

/// The `.env.example` lines that are commented-out settings (`# NAME=value`).
fn commented_examples(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            })
        })
        .map(str::to_string)
        .collect()
}

/// A scratch directory of the test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gemini-flux-newcomer-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_commented_example_parses_once_uncommented() {
    let example = env_example();
    let examples = commented_examples(&example);
    assert!(examples.len() >= 8, "found {examples:?}");
    let dir = scratch("examples");
    for line in &examples {
        // The file as shipped, one example uncommented, three keys filled in
        // (the per-key example names key 3; naming a key that is not
        // configured is refused, and says so).
        let keys = "GEMINI_KEY_1=AIza-example-key1\nGEMINI_KEY_2=AIza-example-key2\nGEMINI_KEY_3=AIza-example-key3";
        let text = format!("{example}\n{line}\n{keys}\n");
        let path = dir.join(".env");
        std::fs::write(&path, text).unwrap();
        let vars: Vec<(String, String)> = dotenvy::from_path_iter(&path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!(".env with {line:?}: {e}"));
        // Relative paths in the examples are relative to the repository.
        let vars = vars
            .into_iter()
            .map(|(k, v)| match v.strip_prefix("./examples/") {
                Some(rest) => (k, format!("{}/examples/{rest}", env!("CARGO_MANIFEST_DIR"))),
                None => (k, v),
            });
        if let Err(e) = Settings::from_vars(vars) {
            panic!("{line:?} uncommented: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flux_limits_example_in_a_dot_env_starts_the_service() {
    let sim = SimServer::start(
        SimConfig::new(["sim-key-0001"]),
        Clock::system(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let limits_line = commented_examples(&env_example())
        .into_iter()
        .find(|l| l.starts_with("FLUX_LIMITS="))
        .unwrap();
    let dir = scratch("limits");
    let port = free_port();
    std::fs::write(
        dir.join(".env"),
        format!(
            "GEMINI_KEYS=sim-key-0001\nGEMINI_BASE_URL={}\nFLUX_BIND=127.0.0.1:{port}\nFLUX_MODELS=gemini-2.5-pro,gemini-2.5-flash\nFLUX_POLICY_FETCH=false\nGEMINI_LOG=false\n{limits_line}\n",
            sim.base_url()
        ),
    )
    .unwrap();
    let log = dir.join("out.log");
    let child = Command::new(env!("CARGO_BIN_EXE_gemini-flux"))
        .arg("serve")
        .current_dir(&dir)
        .env_clear()
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let process = ServeProcess {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    process.ready(&client()).await;
    let status = get_json(&client(), &format!("{}/status", process.base)).await;
    drop(process);
    let flash = &status["limits"]["gemini-2.5-flash"];
    assert_eq!(
        (&flash["rpm"], &flash["sources"]["rpm"]),
        (&json!(10), &json!("env")),
        "{status}"
    );
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(
        out.contains("rpm (env)") && out.contains("rpm (built-in)") && !out.contains("BuiltIn"),
        "the start-up table spells sources as /status does:\n{out}"
    );
}

#[test]
fn demo_on_a_busy_port_names_flux_bind_and_shows_no_try_it_line() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = scratch("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_gemini-flux"))
        .arg("demo")
        .current_dir(&dir)
        .env_clear()
        .env("FLUX_BIND", addr.to_string())
        .env("FLUX_POLICY_FETCH", "false")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("FLUX_BIND") && text.contains(&addr.to_string()),
        "{text}"
    );
    assert!(!text.contains("Try it"), "{text}");
    assert!(!text.contains("demo-key"), "no key table either: {text}");
}

#[tokio::test(start_paused = true)]
async fn key_indexes_are_plain_numbers_and_bearer_is_any_case() {
    let stack = Stack::start(
        SimConfig::new(["sim-key-0001", "sim-key-0002"]),
        quiet_noon(),
        &[("FLUX_API_TOKENS", "client-token")],
    )
    .await;
    for spelling in ["+1", "01"] {
        let resp = stack
            .http
            .post(stack.url(&format!("/keys/{spelling}/disable")))
            .header("authorization", "bearer client-token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "/keys/{spelling}/disable");
    }
    let resp = stack
        .http
        .get(stack.url("/status"))
        .header("authorization", "bearer client-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "lower-case bearer is accepted");
    let status: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status["keys"][0]["state"], "healthy", "key 1 untouched");
}
