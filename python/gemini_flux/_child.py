"""The bundled `gemini-flux` binary as a child process of Python.

`Launch` checks the arguments of `GeminiFlux(keys, mode, log, **settings)` and
builds the child's environment from them; `Launch.run()` finds the binary,
starts `gemini-flux serve` on a free loopback port and waits until it is
ready. The `Child` it returns forwards the service's output (or keeps it
quiet) and is stopped by `stop()`.

A child is never left behind: it runs in its own process group, which
`stop()` terminates (GeminiFlux calls it on close, when it is collected and at
interpreter exit), and on Linux the kernel sends it SIGTERM when the Python
process dies, however it dies (`PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Tuple, TypeVar

import httpx

from ._api import GeminiFluxError

#: Names the path of the binary to run instead of the bundled one.
BIN_ENV = "GEMINI_FLUX_BIN"
EXE = "gemini-flux.exe" if os.name == "nt" else "gemini-flux"

#: The variables that carry keys: `keys=` replaces all of them.
KEY_VAR = re.compile(r"GEMINI_KEY(S|_\d+)$")
#: The settings whose short name is not `FLUX_` + its upper case.
ALIASES = {"base_url": "GEMINI_BASE_URL"}
#: Variables GeminiFlux sets itself, and what to use instead.
RESERVED = {
    "FLUX_BIND": "GeminiFlux picks a free loopback port (see .base_url)",
    "GEMINI_MODE": "pass mode=",
    "GEMINI_LOG": "pass log=",
    "FLUX_API_TOKENS": "GeminiFlux makes its own token (see .api_token)",
    "FLUX_ADMIN_TOKEN": "GeminiFlux makes its own token (see .api_token)",
}
#: Lines of the child's output kept for error messages.
TAIL_LINES = 40
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: A `.env` line that sets a variable: `NAME=...` or `export NAME=...`.
DOTENV_NAME = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", re.MULTILINE)
#: How long a stopping child may take (it finishes calls already upstream).
STOP_GRACE_S = 15.0
PR_SET_PDEATHSIG = 1

T = TypeVar("T")


def fingerprint(key: str) -> str:
    """A key as the service names it: its last four characters."""
    return f"…{key[-4:]}"


def find_binary() -> str:
    """`$GEMINI_FLUX_BIN`, else the `gemini-flux` installed beside this
    interpreter (the wheel's), else the first one on PATH."""
    override = os.environ.get(BIN_ENV)
    if override:
        if not os.access(override, os.X_OK):
            raise GeminiFluxError(f"{BIN_ENV}={override!r} is not an executable file")
        return override
    for scheme in (None, f"{os.name}_user"):
        try:
            scripts = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:
            continue
        candidate = Path(scripts) / EXE
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(EXE)
    if found:
        return found
    raise GeminiFluxError(
        f"the {EXE} binary was not found beside {sys.executable} nor on PATH: "
        f"install the gemini-flux wheel, or set {BIN_ENV}"
    )


def env_name(setting: str) -> str:
    """`base_url` → `GEMINI_BASE_URL`, `state_path` → `FLUX_STATE_PATH`; names
    already spelled as variables (`FLUX_…`, `GEMINI_…`, `RUST_LOG`) as they are."""
    if setting in ALIASES:
        return ALIASES[setting]
    upper = setting.upper()
    if upper.startswith(("FLUX_", "GEMINI_")) or upper == "RUST_LOG":
        return upper
    return f"FLUX_{upper}"


def env_value(value: Any) -> str:
    """A Python value as the binary reads it: booleans as true/false, dicts as
    JSON (`limits=`), lists as comma-separated (`models=`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, os.PathLike):
        return str(os.fspath(value))
    return str(value)


def dotenv_names() -> List[str]:
    """The variables set by the `.env` the binary will read: the first one in
    the working directory or above it, as dotenvy finds it (values unread)."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        try:
            return DOTENV_NAME.findall((folder / ".env").read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Launch:
    """What to start: the checked arguments and the child's environment."""

    def __init__(
        self, keys: Iterable[str], mode: str, log: bool, settings: Mapping[str, Any], start_timeout: float
    ) -> None:
        if isinstance(keys, str):
            raise TypeError("keys must be a list of keys, not one string")
        self.keys = [k.strip() for k in keys]
        if not self.keys or not all(self.keys):
            raise ValueError("GeminiFlux needs at least one key, and no key may be empty")
        self.mode = mode
        self.log = bool(log)
        self.start_timeout = start_timeout
        self.token = secrets.token_urlsafe(24)
        self.settings: Dict[str, str] = {}
        for setting, value in settings.items():
            name = env_name(setting)
            if name in RESERVED or KEY_VAR.match(name):
                why = RESERVED.get(name, "pass the keys as keys=")
                raise ValueError(f"GeminiFlux sets {name} itself: {why}")
            self.settings[name] = env_value(value)

    def environment(self, port: int) -> Dict[str, str]:
        """The child's environment: ours without any key variable, the keys
        of `.env` masked (the binary reads `.env` itself, and `keys=` is the
        whole list), then the keys, mode, log flag, address, token and settings."""
        env = {name: value for name, value in os.environ.items() if not KEY_VAR.match(name)}
        env.update({name: "" for name in dotenv_names() if KEY_VAR.match(name)})
        env.update({f"GEMINI_KEY_{n}": key for n, key in enumerate(self.keys, 1)})
        env.update(
            GEMINI_MODE=self.mode,
            GEMINI_LOG="true" if self.log else "false",
            FLUX_BIND=f"127.0.0.1:{port}",
            FLUX_API_TOKENS=self.token,
            FLUX_ADMIN_TOKEN=self.token,
        )
        env.update(self.settings)
        return env

    def run(self) -> "Child":
        """Start the child and wait until it is ready. A port taken between
        our choosing it and the child binding it is tried again elsewhere."""
        binary = find_binary()
        for _ in range(3):
            child = Child(binary, self.environment(free_port()), self.log)
            try:
                child.wait_ready(self.start_timeout)
                return child
            except BaseException as error:  # a Ctrl-C while waiting too
                child.stop()
                if not (isinstance(error, GeminiFluxError) and child.lost_its_port()):
                    raise
        raise GeminiFluxError("gemini-flux could not bind a loopback port three times" + child.tail_text())


class _Spawner:
    """The one thread that forks every child. Linux sends the death signal
    when the *thread* that forked a child ends, not the process; forking from
    a thread that lives as long as the process makes it mean the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: The process whose thread serves `_jobs` (0: none has started yet).
        self._pid = 0
        self._jobs: "queue.Queue[Tuple[Callable[[], Any], concurrent.futures.Future[Any]]]" = queue.Queue()

    def run(self, job: Callable[[], T]) -> T:
        with self._lock:
            # Started here once per process: a fork (multiprocessing) has no copy of the thread.
            if self._pid != os.getpid():
                self._jobs = queue.Queue()
                threading.Thread(
                    target=self._serve, args=(self._jobs,), name="gemini-flux spawner", daemon=True
                ).start()
                self._pid = os.getpid()
            jobs = self._jobs
        done: "concurrent.futures.Future[T]" = concurrent.futures.Future()
        jobs.put((job, done))
        return done.result()

    @staticmethod
    def _serve(jobs: "queue.Queue[Tuple[Callable[[], Any], concurrent.futures.Future[Any]]]") -> None:
        while True:
            job, done = jobs.get()
            try:
                done.set_result(job())
            except BaseException as error:  # handed to the caller
                done.set_exception(error)


_SPAWNER = _Spawner()


def _die_with_parent() -> Optional[Callable[[], None]]:
    """On Linux, the `preexec_fn` that asks the kernel for SIGTERM when the
    parent dies (and exits at once if it already has)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class Child:
    """A running `gemini-flux serve`: its process, and a thread that reads its
    output (forwarded to our stderr when `log`, always kept in a short tail)."""

    def __init__(self, binary: str, env: Dict[str, str], log: bool) -> None:
        self.base_url = f"http://{env['FLUX_BIND']}"
        self.log = log
        self.tail: Deque[str] = collections.deque(maxlen=TAIL_LINES)
        options: Dict[str, Any] = dict(
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        if os.name == "posix":
            options["start_new_session"] = True
            options["preexec_fn"] = _die_with_parent()
        else:
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        self.process = _SPAWNER.run(lambda: subprocess.Popen([binary, "serve"], **options))
        self._reader = threading.Thread(target=self._read, name=f"gemini-flux {self.process.pid} output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            self.tail.append(ANSI.sub("", line.rstrip()))
            if self.log:
                sys.stderr.write(line)
                sys.stderr.flush()

    def tail_text(self) -> str:
        """The last lines the child printed, for an error message."""
        self._reader.join(1.0 if self.process.poll() is not None else 0)
        lines = "\n".join(f"  | {line}" for line in list(self.tail) if line)
        return f"\ngemini-flux said:\n{lines}" if lines else ""

    def lost_its_port(self) -> bool:
        return any("cannot listen on" in line for line in self.tail)

    def wait_ready(self, timeout: float) -> None:
        """Until `/readyz` answers 200. The child exiting, answering that it
        is not ready (no usable key), or staying silent past `timeout` is a
        `GeminiFluxError` with the end of its output."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, trust_env=False, timeout=2.0) as http:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise GeminiFluxError(f"gemini-flux exited with code {code} before it was ready" + self.tail_text())
                try:
                    ready = http.get("/readyz")
                except httpx.TransportError:
                    ready = None
                if ready is not None and ready.status_code == 200:
                    return
                if ready is not None:
                    raise GeminiFluxError(
                        f"gemini-flux started but is not ready: {ready.text}" + self.tail_text(), ready.status_code
                    )
                if time.monotonic() > deadline:
                    raise GeminiFluxError(
                        f"gemini-flux did not answer on {self.base_url} within {timeout:g} s" + self.tail_text()
                    )
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def running(self) -> bool:
        return self.process.poll() is None

    def exit_note(self) -> str:
        """Why calls get no answer, when the child is gone; else nothing."""
        code = self.process.poll()
        return (
            "" if code is None else f" (the gemini-flux process {self.pid} exited with code {code})" + self.tail_text()
        )

    def stop(self) -> None:
        """SIGTERM to the child's group (it finishes calls already upstream),
        SIGKILL after `STOP_GRACE_S`. Safe to call twice."""
        if self.process.poll() is None:
            self._signal(kill=False)
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._signal(kill=True)
                self.process.wait()
        self._reader.join(1.0)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def _signal(self, kill: bool) -> None:
        try:
            if os.name == "posix":
                os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            elif kill:
                self.process.kill()
            else:
                self.process.terminate()
        except ProcessLookupError:
            pass
