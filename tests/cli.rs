//! The binary's start-up contract: bad settings stop it with exit code 2 and a
//! message naming what is wrong, before anything listens.

use std::process::Command;

fn gemini_flux(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("gemini-flux-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gemini-flux"));
    cmd.args(args)
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_keys_is_exit_code_2() {
    let (code, stderr) = gemini_flux(&["serve"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("GEMINI_KEY_1"), "{stderr}");
}

#[test]
fn malformed_settings_are_exit_code_2_and_named() {
    let (code, stderr) = gemini_flux(
        &[],
        &[
            ("GEMINI_KEYS", "k1"),
            ("FLUX_LIMITS", "{\"gemini-2.5-flash\": {\"rpm\": 0}}"),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("FLUX_LIMITS") && stderr.contains("rpm"),
        "{stderr}"
    );
    let (code, stderr) = gemini_flux(
        &["serve"],
        &[("GEMINI_KEYS", "k1"), ("GEMINI_MODE", "fast")],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("GEMINI_MODE"), "{stderr}");
}

#[test]
fn the_sim_refuses_bad_limits() {
    let (code, stderr) = gemini_flux(&["sim", "--port", "0", "--limits", "{bad"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("limits"), "{stderr}");
    let (code, stderr) = gemini_flux(
        &[
            "sim",
            "--port",
            "0",
            "--key-limits",
            r#"{"0": {"m": {"rpm": 1}}}"#,
        ],
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("--key-limits") && stderr.contains("\"0\""),
        "{stderr}"
    );
}

#[test]
fn per_key_limits_name_existing_keys_only() {
    let (code, stderr) = gemini_flux(
        &["serve"],
        &[
            ("GEMINI_KEYS", "k1,k2"),
            (
                "FLUX_KEY_LIMITS",
                r#"{"3": {"gemini-2.5-flash": {"rpm": 1000}}}"#,
            ),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("key 3") && stderr.contains("2 key(s)"),
        "{stderr}"
    );
}

#[test]
fn a_corrupt_state_file_is_refused_and_left_intact() {
    let dir = std::env::temp_dir().join(format!("gemini-flux-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.db");
    let notes = b"not a database: somebody's notes\n".repeat(200);
    std::fs::write(&path, &notes).unwrap();
    let path_text = path.display().to_string();
    let (code, stderr) = gemini_flux(
        &["serve"],
        &[
            ("GEMINI_KEYS", "k1"),
            ("FLUX_STATE_PATH", &path_text),
            ("GEMINI_BASE_URL", "http://127.0.0.1:9"),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&path_text) && stderr.contains("FLUX_STATE_PATH"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        notes,
        "the file is untouched"
    );
}

#[test]
fn an_unreachable_redis_is_exit_code_2_with_its_password_masked() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://flux:s3cret-pass@127.0.0.1:{port}/0");
    let (code, stderr) = gemini_flux(
        &["serve"],
        &[
            ("GEMINI_KEYS", "k1"),
            ("FLUX_POLICY_FETCH", "false"),
            ("FLUX_REDIS_URL", &url),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("redis://flux:***@127.0.0.1:{port}/0")),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret-pass"), "{stderr}");
    let (code, stderr) = gemini_flux(
        &["serve"],
        &[
            ("GEMINI_KEYS", "k1"),
            ("FLUX_REDIS_URL", "http://:s3cret-pass@x"),
        ],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("FLUX_REDIS_URL") && !stderr.contains("s3cret-pass"),
        "{stderr}"
    );
}
