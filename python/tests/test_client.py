"""`GeminiFluxClient` (importable as the original's `gemini_flux.client`) and
the asyncio twins `AsyncGeminiFluxClient` and `AsyncGeminiFlux`, against a
service on the simulator."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from conftest import FINGERPRINTS, KEYS, NO_QUOTA_WAIT_S, Sim, alive, sim_tokens
from gemini_flux import AsyncGeminiFlux, AsyncGeminiFluxClient, GeminiFluxError
from gemini_flux.client import GeminiFluxClient


def test_every_original_client_method(start_flux: Any, sim: Sim) -> None:
    flux = start_flux()
    with GeminiFluxClient(base_url=flux.base_url, api_token=flux.api_token) as client:
        r = client.generate("hello", None, None, "flash_only", 2, 100, 0.5, True)
        assert (r["response"], r["key_used"], r["model_used"]) == (f"ok:{sim_tokens('hello')}", 2, "gemini-2.5-flash")
        assert (r["tokens_used"], r["retried"]) == (sim_tokens("hello") + sim_tokens("ok:2"), False)
        assert 0 <= r["wait_applied"] < NO_QUOTA_WAIT_S
        assert client.set_mode("pro_only") == {"changes": ["mode set to pro_only"]}
        assert client.status()["mode"] == "pro_only"
        assert client.disable_key(3) == {"changes": ["key 3 (…3333) disabled"]}
        assert client.status()["keys"][2]["state"] == "disabled"
        assert client.enable_key(3) == {"changes": ["key 3 (…3333) enabled"]}
        assert client.status()["keys"][2]["state"] == "healthy"
        sim.script_json_answer('{"models": [{"model": "gemini-2.5-pro", "rpm": 4, "tpm": 100000, "rpd": 90}]}')
        assert client.refresh_policy()["limits"]["gemini-2.5-pro"]["rpd"] == 90


def test_the_client_presents_its_tokens(start_flux: Any) -> None:
    flux = start_flux()
    with GeminiFluxClient(flux.base_url) as anonymous:
        with pytest.raises(GeminiFluxError) as raised:
            anonymous.status()
    assert raised.value.status == 401
    assert raised.value.message.startswith("a token is required")
    with GeminiFluxClient(flux.base_url, "not-the-token") as wrong:
        with pytest.raises(GeminiFluxError, match="the token is not valid"):
            wrong.status()
    with GeminiFluxClient(flux.base_url, "not-the-token", admin_token=flux.api_token) as admin_only:
        assert admin_only.set_mode("both") == {"changes": ["mode set to both"]}
    assert "not-the-token" not in repr(wrong)


def test_a_service_that_does_not_answer_is_a_gemini_flux_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with GeminiFluxClient(url) as client:
        with pytest.raises(GeminiFluxError) as raised:
            client.status()
    assert raised.value.status is None
    assert f"gemini-flux at {url} did not answer" in str(raised.value)


def test_the_async_client_has_the_same_methods(start_flux: Any) -> None:
    flux = start_flux()

    async def drive() -> None:
        async with AsyncGeminiFluxClient(flux.base_url, flux.api_token) as client:
            answers = await asyncio.gather(*(client.generate(f"prompt {n}", mode="flash_only") for n in range(3)))
            assert [a["response"] for a in answers] == [f"ok:{sim_tokens(f'prompt {n}')}" for n in range(3)]
            assert {a["model_used"] for a in answers} == {"gemini-2.5-flash"}
            assert await client.disable_key(1) == {"changes": ["key 1 (…1111) disabled"]}
            assert await client.enable_key(1) == {"changes": ["key 1 (…1111) enabled"]}
            assert await client.set_mode("flash_lite_only") == {"changes": ["mode set to flash_lite_only"]}
            assert (await client.status())["mode"] == "flash_lite_only"
            rejected = await client.refresh_policy()
            assert (rejected["refreshed"], rejected["rejected"][:21]) == (False, "the answer is not JSO")

    asyncio.run(drive())


def test_async_gemini_flux_starts_on_first_use_and_stops_on_exit(sim: Sim, tmp_path: Any) -> None:
    flux = AsyncGeminiFlux(KEYS, log=False, base_url=sim.url, state_path=tmp_path / "a.db", policy_fetch=False)
    assert flux.pid is None

    async def drive() -> int:
        async with flux:
            r = await flux.generate("hello")
            assert (r["response"], r["model_used"]) == ("ok:2", "gemini-2.5-pro")
            assert flux.pid is not None and alive(flux.pid)
            assert await flux.set_mode("flash_only") == {"changes": ["mode set to flash_only"]}
            assert await flux.disable_key(2) == {"changes": ["key 2 (…2222) disabled"]}
            assert [k["state"] for k in (await flux.status())["keys"]] == ["healthy", "disabled", "healthy"]
            assert await flux.enable_key(2) == {"changes": ["key 2 (…2222) enabled"]}
            assert (await flux.refresh_policy())["refreshed"] is False
            assert all(fp in repr(flux) for fp in FINGERPRINTS)
            return flux.pid

    pid = asyncio.run(drive())
    assert not alive(pid)  # `flux` is still referenced: stopped by `async with`, not collected
    assert "stopped" in repr(flux)
