"""`GeminiFlux` against the simulator: every method with the original return
shapes and real values, errors as `GeminiFluxError`, settings and `.env`
reaching the child, keys shown only as fingerprints, start-up failures."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FINGERPRINTS, KEYS, NO_QUOTA_WAIT_S, Sim, sim_tokens
from gemini_flux import GeminiFlux, GeminiFluxClient, GeminiFluxError

ORIGINAL_FIELDS = {"response", "key_used", "model_used", "tokens_used", "wait_applied", "retried"}


def key_states(flux: GeminiFlux) -> list[str]:
    return [key["state"] for key in flux.status()["keys"]]


def test_generate_returns_the_original_fields_with_the_decision(start_flux: Any) -> None:
    flux = start_flux()
    prompt = "Translate this transcript to Spanish."
    r = flux.generate(prompt)
    assert ORIGINAL_FIELDS <= r.keys()
    answer = f"ok:{sim_tokens(prompt)}"
    assert r["response"] == answer
    assert r["model_used"] == "gemini-2.5-pro"
    assert r["key_used"] in (1, 2, 3)
    assert r["key_fingerprint"] == FINGERPRINTS[r["key_used"] - 1]
    assert r["tokens_used"] == sim_tokens(prompt) + sim_tokens(answer)
    assert 0 <= r["wait_applied"] < NO_QUOTA_WAIT_S
    assert r["retried"] is False


def test_generate_honours_its_arguments(start_flux: Any) -> None:
    flux = start_flux()
    assert flux.generate("hi", mode="flash_lite_only")["model_used"] == "gemini-2.5-flash-lite"
    assert flux.generate("hi", preferred_key=3)["key_used"] == 3
    assert flux.generate("hi", model="gemini-2.5-flash")["model_used"] == "gemini-2.5-flash"
    system = "You are terse."
    assert flux.generate("hi", system=system)["response"] == f"ok:{sim_tokens('hi' + system)}"


def test_threads_may_share_one_gemini_flux(start_flux: Any) -> None:
    flux = start_flux()
    prompts = [f"prompt number {n}" * n for n in range(1, 9)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(flux.generate, prompts))
    assert [a["response"] for a in answers] == [f"ok:{sim_tokens(p)}" for p in prompts]
    assert len({a["request_id"] for a in answers}) == 8


def test_set_mode_narrows_the_chain(start_flux: Any) -> None:
    flux = start_flux()
    assert flux.set_mode("flash_only") == {"changes": ["mode set to flash_only"]}
    assert flux.status()["mode"] == "flash_only"
    assert flux.generate("hi")["model_used"] == "gemini-2.5-flash"


def test_disable_and_enable_a_key(start_flux: Any) -> None:
    flux = start_flux()
    assert flux.disable_key(1) == {"changes": ["key 1 (…1111) disabled"]}
    flux.disable_key(2)
    assert key_states(flux) == ["disabled", "disabled", "healthy"]
    assert {flux.generate("hi")["key_used"] for _ in range(3)} == {3}
    assert flux.enable_key(1) == {"changes": ["key 1 (…1111) enabled"]}
    assert key_states(flux) == ["healthy", "disabled", "healthy"]


def test_refresh_policy_puts_gemini_s_answer_in_force(start_flux: Any, sim: Sim) -> None:
    flux = start_flux()
    sim.script_json_answer(json.dumps({"models": [{"model": "gemini-2.5-flash", "rpm": 7, "tpm": 200000, "rpd": 300}]}))
    policy = flux.refresh_policy()
    flash = policy["limits"]["gemini-2.5-flash"]
    assert (flash["rpm"], flash["tpm"], flash["rpd"]) == (7, 200000, 300)
    assert flash["sources"]["rpm"] == "fetched"
    assert flux.status()["limits"]["gemini-2.5-flash"]["rpm"] == 7


def test_a_rejected_refresh_keeps_the_policy_and_says_why(start_flux: Any) -> None:
    flux = start_flux()
    policy = flux.refresh_policy()  # the simulator answers "ok:…", not JSON
    assert policy["refreshed"] is False
    assert policy["rejected"].startswith("the answer is not JSON")
    assert policy["limits"]["gemini-2.5-flash"]["sources"]["rpm"] == "built-in"
    assert flux.status()["limits"]["gemini-2.5-flash"]["sources"]["rpm"] == "built-in"


def test_status_and_health(start_flux: Any) -> None:
    flux = start_flux()
    status = flux.status()
    assert [(k["index"], k["fingerprint"], k["state"]) for k in status["keys"]] == [
        (1, "…1111", "healthy"),
        (2, "…2222", "healthy"),
        (3, "…3333", "healthy"),
    ]
    assert status["chain"][0] == "gemini-2.5-pro"
    assert flux.health() == {"status": "ok", "keys": 3, "usable_keys": 3}


def test_the_service_s_refusals_are_exceptions_with_its_message(start_flux: Any) -> None:
    flux = start_flux()
    with pytest.raises(GeminiFluxError) as raised:
        flux.disable_key(9)
    assert (raised.value.status, raised.value.code) == (404, "NOT_FOUND")
    assert raised.value.message == "no key 9: keys are numbered 1 to 3"
    assert str(raised.value) == "404 NOT_FOUND: no key 9: keys are numbered 1 to 3"
    with pytest.raises(GeminiFluxError) as raised:
        flux.set_mode("fastest")
    assert raised.value.status == 400
    with pytest.raises(GeminiFluxError) as raised:
        flux.generate("   ")
    assert (raised.value.status, raised.value.message) == (400, "prompt is empty")


def test_a_quota_refusal_carries_retry_after(start_flux: Any) -> None:
    flux = start_flux(limits={"gemini-2.5-flash": {"rpm": 1}})
    flux.generate("hi", model="gemini-2.5-flash", preferred_key=1)
    for _ in range(2):
        flux.generate("hi", model="gemini-2.5-flash")
    with pytest.raises(GeminiFluxError) as raised:
        flux.generate("hi", model="gemini-2.5-flash", max_wait_s=0)
    assert raised.value.status == 429
    assert raised.value.retry_after is not None and 1 <= raised.value.retry_after <= 61


def test_settings_become_the_child_s_environment(start_flux: Any) -> None:
    flux = start_flux(
        models=["gemini-2.5-flash", "gemini-2.5-flash-lite"], limits={"gemini-2.5-flash": {"rpm": 3}}, FLUX_GUARD_MS=100
    )
    status = flux.status()
    assert status["chain"] == ["gemini-2.5-flash", "gemini-2.5-flash-lite"]
    assert status["limits"]["gemini-2.5-flash"]["rpm"] == 3
    assert status["limits"]["gemini-2.5-flash"]["sources"]["rpm"] == "env"


def test_the_state_file_is_where_state_path_says(start_flux: Any, tmp_path: Path) -> None:
    start_flux(state_path=tmp_path / "here" / "flux.db")
    assert (tmp_path / "here" / "flux.db").is_file()


def test_the_keys_argument_is_the_whole_list_even_with_a_dotenv(
    start_flux: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    # The binary reads .env itself (the first found from the working directory
    # up): its keys must not join the ones given.
    (tmp_path / ".env").write_text(
        "GEMINI_KEY_1=AIzaFromDotenvOne9999\nexport GEMINI_KEY_7=AIzaFromDotenvSeven8888\nGEMINI_KEYS=AIzaListed7777\n"
    )
    (tmp_path / "below").mkdir()
    monkeypatch.chdir(tmp_path / "below")
    monkeypatch.setenv("GEMINI_KEY_2", "AIzaFromEnvironment6666")
    flux = start_flux(KEYS[:2])
    assert [k["fingerprint"] for k in flux.status()["keys"]] == ["…1111", "…2222"]


def test_the_rest_of_dotenv_is_honoured(start_flux: Any, tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / ".env").write_text('FLUX_LIMITS=\'{"gemini-2.5-pro": {"rpd": 42}}\'\n')
    monkeypatch.chdir(tmp_path)
    flux = start_flux()
    assert flux.status()["limits"]["gemini-2.5-pro"]["rpd"] == 42


def test_settings_gemini_flux_sets_itself_are_refused() -> None:
    for setting in ({"bind": "0.0.0.0:8000"}, {"GEMINI_KEYS": "a,b"}, {"api_tokens": "t"}):
        with pytest.raises(ValueError, match="GeminiFlux sets"):
            GeminiFlux(KEYS, **setting)
    with pytest.raises(ValueError):
        GeminiFlux([])
    with pytest.raises(TypeError):
        GeminiFlux(KEYS[0])


def test_keys_appear_only_as_fingerprints(start_flux: Any) -> None:
    flux = start_flux()
    text = repr(flux)
    assert all(fp in text for fp in FINGERPRINTS)
    assert f"pid={flux.pid}" in text
    seen = [text, json.dumps(flux.status()), json.dumps(flux.generate("hi"))]
    with pytest.raises(GeminiFluxError) as raised:
        flux.disable_key(4)
    seen.append(str(raised.value))
    for secret in KEYS:
        assert all(secret not in s for s in seen)


def test_the_child_wants_its_token_and_shares_it(start_flux: Any) -> None:
    flux = start_flux()
    assert httpx.get(f"{flux.base_url}/status", trust_env=False).status_code == 401
    with GeminiFluxClient(flux.base_url, flux.api_token) as other:
        assert other.health()["usable_keys"] == 3
    assert flux.api_token not in repr(flux)


def test_a_bad_setting_stops_start_up_with_the_binary_s_message(sim: Sim, tmp_path: Path) -> None:
    with pytest.raises(GeminiFluxError) as raised:
        GeminiFlux(KEYS, mode="fastest", log=False, base_url=sim.url, state_path=tmp_path / "s.db")
    assert "exited with code 2 before it was ready" in str(raised.value)
    assert "GEMINI_MODE" in str(raised.value)


def test_keys_the_upstream_refuses_make_start_up_fail_with_the_key_table(sim: Sim, tmp_path: Path) -> None:
    refused = ["AIzaNotKnownToTheSimulatorAAAA", "AIzaNotKnownToTheSimulatorBBBB"]
    with pytest.raises(GeminiFluxError) as raised:
        GeminiFlux(refused, log=False, base_url=sim.url, state_path=tmp_path / "s.db", policy_fetch=False)
    message = str(raised.value)
    assert raised.value.status == 503
    assert "not ready" in message and "…AAAA" in message and "…BBBB" in message
    assert all(key not in message for key in refused)


def test_a_dead_child_is_named_in_the_error(start_flux: Any) -> None:
    flux = start_flux()
    flux._child.stop()
    with pytest.raises(GeminiFluxError) as raised:
        flux.status()
    assert raised.value.status is None
    assert f"the gemini-flux process {flux.pid} exited" in str(raised.value)
