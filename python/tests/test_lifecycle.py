"""The binary in the environment, and the child's life: it ends with `close()`,
`with`, garbage collection, and the Python process, however that process
ends (normally, by an exception, or SIGKILL), checked by pid."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

import pytest

import gemini_flux
from conftest import KEYS, Sim, alive, gone_within
from gemini_flux import GeminiFlux, GeminiFluxError
from gemini_flux._child import find_binary

SCRIPTS = Path(sysconfig.get_path("scripts"))


def test_gemini_flux_help_works_from_the_environment() -> None:
    done = subprocess.run([str(SCRIPTS / "gemini-flux"), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "Multiplexes N Gemini API keys" in done.stdout
    for command in ("serve", "demo", "sim"):
        assert f"\n  {command} " in done.stdout


def test_the_installed_package_runs_the_binary_installed_beside_it(monkeypatch: Any) -> None:
    assert Path(gemini_flux.__file__).resolve().is_relative_to(Path(sys.prefix).resolve())
    monkeypatch.delenv("GEMINI_FLUX_BIN", raising=False)
    assert find_binary() == str(SCRIPTS / "gemini-flux")
    monkeypatch.setenv("GEMINI_FLUX_BIN", "/nonexistent/gemini-flux")
    with pytest.raises(GeminiFluxError, match="GEMINI_FLUX_BIN"):
        find_binary()


def test_close_stops_the_child_and_may_be_called_twice(start_flux: Any) -> None:
    flux = start_flux()
    pid = flux.pid
    assert alive(pid)
    flux.close()
    assert not alive(pid)
    flux.close()
    assert "stopped" in repr(flux)


def test_the_context_manager_stops_the_child(sim: Sim, tmp_path: Path) -> None:
    with GeminiFlux(KEYS, log=False, base_url=sim.url, state_path=tmp_path / "s.db", policy_fetch=False) as flux:
        pid = flux.pid
        assert flux.generate("hi")["response"] == "ok:1"
    assert not alive(pid)


def test_a_collected_gemini_flux_stops_its_child(sim: Sim, tmp_path: Path) -> None:
    flux = GeminiFlux(KEYS, log=False, base_url=sim.url, state_path=tmp_path / "s.db", policy_fetch=False)
    pid = flux.pid
    del flux
    gc.collect()
    assert not alive(pid)


def our_gemini_flux_children() -> list[int]:
    """The pids of this process's children running gemini-flux."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, rest = stat.read_text().split("(", 1)[1].rsplit(")", 1)
        except OSError:
            continue
        if comm == "gemini-flux" and int(rest.split()[1]) == os.getpid() and rest.split()[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def test_a_child_not_ready_in_time_is_an_error_and_is_stopped(tmp_path: Path) -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("reads /proc")
    # An upstream that accepts connections and never answers: key validation
    # hangs, so the service never starts listening.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        upstream = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(GeminiFluxError, match="did not answer on http://127.0.0.1:[0-9]+ within 1 s"):
            GeminiFlux(KEYS, log=False, base_url=upstream, state_path=tmp_path / "s.db", start_timeout=1)
    assert our_gemini_flux_children() == []


def python_owning_a_child(sim: Sim, tmp_path: Path, then: str) -> subprocess.Popen[str]:
    """A Python process that starts GeminiFlux (from a thread that then ends,
    to show the child outlives that thread), prints the child's pid, and then
    does `then`."""
    script = textwrap.dedent(
        f"""
        import threading, time
        from gemini_flux import GeminiFlux
        made = []
        starter = threading.Thread(target=lambda: made.append(GeminiFlux(
            {KEYS!r}, log=False, base_url={sim.url!r}, state_path={str(tmp_path / "s.db")!r}, policy_fetch=False)))
        starter.start()
        starter.join()
        flux = made[0]
        time.sleep(0.3)
        assert flux.generate("hi")["response"] == "ok:1"
        print(flux.pid, flush=True)
        """
    ) + textwrap.dedent(then)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def child_pid(python: subprocess.Popen[str]) -> int:
    assert python.stdout is not None
    line = python.stdout.readline()
    if not line:
        raise AssertionError(python.communicate(timeout=30)[1])
    return int(line)


def finish(python: subprocess.Popen[str]) -> int:
    """The Python process's exit code, its pipes drained and closed."""
    python.communicate(timeout=30)
    return python.returncode


def test_no_child_is_left_when_python_exits(sim: Sim, tmp_path: Path) -> None:
    python = python_owning_a_child(sim, tmp_path, "")
    pid = child_pid(python)
    assert finish(python) == 0
    assert not alive(pid)


def test_no_child_is_left_when_python_dies_of_an_exception(sim: Sim, tmp_path: Path) -> None:
    python = python_owning_a_child(sim, tmp_path, "raise SystemExit(3)")
    pid = child_pid(python)
    assert finish(python) == 3
    assert not alive(pid)


def test_no_child_is_left_when_python_is_killed(sim: Sim, tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the kernel's parent-death signal is Linux's")
    python = python_owning_a_child(sim, tmp_path, "time.sleep(120)")
    pid = child_pid(python)
    assert alive(pid)
    os.kill(python.pid, signal.SIGKILL)
    assert finish(python) == -signal.SIGKILL
    assert gone_within(pid, 10)


def use_gemini_flux_in_a_fork(url: str, state: str) -> None:
    with GeminiFlux(KEYS, log=False, base_url=url, state_path=state, policy_fetch=False) as flux:
        assert flux.generate("hi")["response"] == "ok:1"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Python 3.12+ on fork() with threads
def test_a_forked_process_can_start_its_own_child(start_flux: Any, sim: Sim, tmp_path: Path) -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    start_flux()  # this process's spawner thread runs; the fork gets no copy of it
    worker = multiprocessing.get_context("fork").Process(
        target=use_gemini_flux_in_a_fork, args=(sim.url, str(tmp_path / "fork.db"))
    )
    worker.start()
    worker.join(30)
    if worker.exitcode is None:
        worker.kill()
    assert worker.exitcode == 0
