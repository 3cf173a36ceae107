"""The original package's `test.py` (python/tests/original/test.py), run
unchanged as its users ran it: beside a `.env` made from `.env.example` with
the keys and GEMINI_BASE_URL (here the simulator's), in a Python process of
its own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import FINGERPRINTS, KEYS, NO_QUOTA_WAIT_S, Sim, sim_tokens

SCRIPT = Path(__file__).parent / "original" / "test.py"
EXAMPLE = Path(__file__).parents[2] / ".env.example"
PROMPT = "Say hello in 5 different languages. Keep it short."
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def filled_example(sim: Sim, **values: str) -> str:
    """The repository's `.env.example` filled in as a user would: our keys in
    GEMINI_KEY_1..3 (the rest left empty), the simulator as GEMINI_BASE_URL,
    and `values` in place of the lines they name. Its FLUX_BIND (port 8000)
    and empty tokens stay: GeminiFlux must set its own."""
    values = {f"GEMINI_KEY_{n}": key for n, key in enumerate(KEYS, 1)} | {"GEMINI_BASE_URL": sim.url} | values
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values[name]}" if name in values else line)
    return "\n".join(lines) + "\n"


def run_original(sim: Sim, folder: Path, **values: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(SCRIPT, folder / "test.py")
    (folder / ".env").write_text(filled_example(sim, **values))
    # Only .env configures it, as for the original's users.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GEMINI_KEY", "GEMINI_MODE", "GEMINI_LOG", "FLUX_"))
    }
    return subprocess.run([sys.executable, "test.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def test_the_original_script_prints_key_model_tokens_and_wait(sim: Sim, tmp_path: Path) -> None:
    done = run_original(sim, tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Loaded 3 keys from .env" in out
    # The simulator answers "ok:<input tokens>"; its answer costs a quarter of its length.
    answer = f"ok:{sim_tokens(PROMPT)}"
    assert f"--- Response ---\n{answer}\n" in out
    key = int(re.search(r"^Key used: #(\d+)$", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert key in (1, 2, 3)
    assert "\nModel: gemini-2.5-pro\n" in out
    assert f"\nTokens: {sim_tokens(PROMPT) + sim_tokens(answer):,}\n" in out
    wait = re.search(r"\nWait applied: (\d+\.\d+)s\n$", out)
    assert wait and float(wait.group(1)) < NO_QUOTA_WAIT_S, out
    # log=True (GEMINI_LOG unset): the service's decision line for that very call.
    log = ANSI.sub("", done.stderr)
    assert re.search(
        rf"granted grant=\d+ key={key} fingerprint={FINGERPRINTS[key - 1]} model=gemini-2.5-pro tokens=13", log
    ), log
    for secret in KEYS:
        assert secret not in out + log


def test_gemini_log_false_keeps_the_service_quiet(sim: Sim, tmp_path: Path) -> None:
    done = run_original(sim, tmp_path, GEMINI_LOG="false")
    assert done.returncode == 0, done.stderr
    assert "\nModel: gemini-2.5-pro\n" in done.stdout
    assert done.stderr == ""
