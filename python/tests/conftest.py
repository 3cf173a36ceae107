"""Fixtures for the Python package's tests: a fresh `gemini-flux sim` per test
(the in-repo Gemini simulator, on a free loopback port, enforcing the real
free-tier quotas) that accepts the fake keys below, and helpers to start
`GeminiFlux` against it and to tell whether a process is still alive.

The binary is the one the package finds (the wheel's, in the venv), or
`$GEMINI_FLUX_BIN`."""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from gemini_flux import GeminiFlux
from gemini_flux._child import find_binary

#: Fake keys the simulator accepts; the service names them …1111, …2222, …3333.
KEYS = ["AIzaFakeKeyForTestsNumberOne1111", "AIzaFakeKeyForTestsNumberTwo2222", "AIzaFakeKeyForTestsNumberThree3333"]
FINGERPRINTS = ["…1111", "…2222", "…3333"]


#: `wait_applied` of a call no quota held back: the service reports the time it
#: actually waited for the grant's instant, a millisecond on a busy machine.
NO_QUOTA_WAIT_S = 0.05


def sim_tokens(text: str) -> int:
    """The simulator's token count: a quarter of the characters, rounded up."""
    return max(1, math.ceil(len(text) / 4))


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


class Sim:
    """A running `gemini-flux sim` and its base URL."""

    def __init__(self, tmp: Path) -> None:
        self.log = tmp / "sim.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [find_binary(), "sim", "--port", "0", "--bind", "127.0.0.1", "--keys", ",".join(KEYS)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
            )
        deadline = time.monotonic() + 20
        while True:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.log.read_text(errors="replace"))
            if found:
                self.url = found.group(1)
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gemini-flux sim did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def script_json_answer(self, answer: str) -> None:
        """What the simulated model says when asked for JSON (the policy fetch)."""
        httpx.post(f"{self.url}/__sim/faults", json={"json_answer": answer}, trust_env=False).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    running = Sim(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def start_flux(sim: Sim, tmp_path: Path) -> Iterator[Any]:
    """`start_flux(**settings)`: a GeminiFlux on the sim's keys, quiet, with a
    state file of its own and no policy fetch at start (so every test begins
    with the same spent quota: none). Closed after the test."""
    started = []

    def start(keys: Any = KEYS, **settings: Any) -> GeminiFlux:
        settings.setdefault("log", False)
        settings.setdefault("base_url", sim.url)
        settings.setdefault("state_path", tmp_path / f"state-{len(started)}.db")
        settings.setdefault("policy_fetch", False)
        flux = GeminiFlux(keys, **settings)
        started.append(flux)
        return flux

    yield start
    for flux in started:
        flux.close()
