"""`GeminiFlux`: gemini-flux from Python with no service to run.

`GeminiFlux(keys)` starts the bundled `gemini-flux` binary as a child process
on a free loopback port, with the keys, mode and settings in its environment
(the rest of the environment and `.env`, found from the working directory
up, are read by the binary itself), waits until it is ready, and is then a
`GeminiFluxClient` of it: `generate`, `status`, `set_mode`, `disable_key`,
`enable_key` and `refresh_policy`, with the original client's return shapes.
`AsyncGeminiFlux` is its asyncio twin.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Callable, Iterable, Optional

import httpx

from ._api import Answer, GeminiFluxError, Request, unreachable
from ._child import Child, Launch, fingerprint
from .client import H, AsyncGeminiFluxClient, GeminiFluxClient, _Endpoint

__all__ = ["AsyncGeminiFlux", "GeminiFlux"]

#: How long the child may take to validate its keys and start answering.
START_TIMEOUT_S = 60.0


class _ChildOwner(_Endpoint[H]):
    """What GeminiFlux and AsyncGeminiFlux add to their client: the arguments
    (checked at once), the child, a finalizer that stops it (on collection and
    at interpreter exit), and errors and a repr that say what became of it,
    naming keys only by fingerprint. The sync one starts its child at once."""

    _start_at_once: bool
    _child: Optional[Child] = None
    _stop_child: Callable[[], Any]

    def __init__(
        self,
        keys: Iterable[str],
        mode: str = "both",
        log: bool = True,
        *,
        start_timeout: float = START_TIMEOUT_S,
        **settings: Any,
    ) -> None:
        self._launch = Launch(keys, mode, log, settings, start_timeout)
        child = self._launch.run() if self._start_at_once else None
        super().__init__("", self._launch.token, trust_env=False)
        if child is not None:
            self._adopt(child)

    def _adopt(self, child: Child) -> None:
        self._child = child
        self.base_url = child.base_url
        self._stop_child = weakref.finalize(self, child.stop)

    @property
    def api_token(self) -> str:
        """The token the child wants: for other clients (an SDK, curl) of `base_url`."""
        return self._launch.token

    @property
    def pid(self) -> Optional[int]:
        """The child's process id (None before an async twin has started)."""
        return self._child.pid if self._child else None

    def _unreachable(self, error: httpx.TransportError) -> GeminiFluxError:
        return unreachable(self.base_url, error, self._child.exit_note() if self._child else "")

    def __repr__(self) -> str:
        keys = [fingerprint(k) for k in self._launch.keys]
        state = "running" if self._child and self._child.running() else "stopped"
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, keys={keys}, "
            f"mode={self._launch.mode!r}, pid={self.pid}, {state})"
        )


class GeminiFlux(_ChildOwner[httpx.Client], GeminiFluxClient):
    """`GeminiFlux(keys=[...], mode="both", log=True, **settings)`.

    `settings` become the child's environment: `base_url=` is
    `GEMINI_BASE_URL`, any other name `FLUX_` + its upper case
    (`state_path=` → `FLUX_STATE_PATH`, `limits={...}` → `FLUX_LIMITS` as
    JSON, `policy_fetch=False` → `FLUX_POLICY_FETCH=false`), and names
    already spelled as variables pass as they are. `log=True` forwards the
    service's output, one line per decision, to stderr; `log=False` keeps it
    quiet. `start_timeout` bounds the wait for the child to be ready.
    Stopped by `close()`, `with`, garbage collection and interpreter exit;
    on Linux also when Python is killed.
    """

    _start_at_once = True

    def close(self) -> None:
        """Stop the child and close the connection pool. Safe to call twice."""
        GeminiFluxClient.close(self)
        self._stop_child()


class AsyncGeminiFlux(_ChildOwner[httpx.AsyncClient], AsyncGeminiFluxClient):
    """The asyncio twin of `GeminiFlux`, with the same arguments:

        async with AsyncGeminiFlux(keys) as flux:
            r = await flux.generate("...")

    The child starts on `await flux.start()`, on entering `async with`, or
    on the first call, without blocking the event loop.
    """

    _start_at_once = False
    _starting: Optional[asyncio.Lock] = None

    async def start(self) -> "AsyncGeminiFlux":
        """Start the child and wait until it is ready (once)."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._child is None:
                self._adopt(await asyncio.to_thread(self._launch.run))
        return self

    async def _send(self, request: Request) -> Answer:
        await self.start()
        return await AsyncGeminiFluxClient._send(self, request)

    async def aclose(self) -> None:
        """Stop the child and close the connection pool. Safe to call twice."""
        await AsyncGeminiFluxClient.aclose(self)
        if self._child is not None:
            await asyncio.to_thread(self._stop_child)

    async def __aenter__(self) -> "AsyncGeminiFlux":
        return await self.start()
