"""Clients for a gemini-flux service that is already running (a container, a
sidecar, `gemini-flux serve` in another terminal).

`GeminiFluxClient` keeps the original package's client importable as
`from gemini_flux.client import GeminiFluxClient`, with its methods and return
shapes; `AsyncGeminiFluxClient` is its asyncio twin.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Awaitable, Dict, Optional, Type, TypeVar

import httpx

from ._api import Answer, Api, GeminiFluxError, Request, answer, headers, token_for, unreachable

__all__ = ["AsyncGeminiFluxClient", "GeminiFluxClient", "GeminiFluxError"]

C = TypeVar("C", bound="GeminiFluxClient")
A = TypeVar("A", bound="AsyncGeminiFluxClient")


class _Endpoint:
    """Where the service is and which tokens it wants (never shown in repr).
    Requests go to `base_url` + path, so a subclass may learn `base_url` late."""

    def __init__(self, base_url: str, api_token: Optional[str], admin_token: Optional[str]) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_token = api_token
        self._admin_token = admin_token

    def _headers(self, request: Request) -> Dict[str, str]:
        return headers(token_for(request, self._api_token, self._admin_token))

    def _unreachable(self, error: httpx.TransportError) -> GeminiFluxError:
        """The error for a call that got no answer (subclasses say more)."""
        return unreachable(self.base_url, error)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


class GeminiFluxClient(_Endpoint, Api[Answer]):
    """Blocking client: `GeminiFluxClient("http://localhost:8000").generate("hi")`.

    `api_token` is sent as `Authorization: Bearer` (one of the service's
    `FLUX_API_TOKENS`); `admin_token`, when the service sets
    `FLUX_ADMIN_TOKEN`, is sent on the admin calls instead. `trust_env=False`
    ignores proxy variables such as `HTTP_PROXY`.
    """

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        api_token: Optional[str] = None,
        *,
        admin_token: Optional[str] = None,
        trust_env: bool = True,
    ) -> None:
        super().__init__(base_url, api_token, admin_token)
        self._http = httpx.Client(trust_env=trust_env)

    def _send(self, request: Request) -> Answer:
        try:
            response = self._http.request(
                request.method,
                self.base_url + request.path,
                json=request.json,
                headers=self._headers(request),
                timeout=request.timeout,
            )
        except httpx.TransportError as error:
            raise self._unreachable(error) from error
        return answer(response)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self: C) -> C:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


class AsyncGeminiFluxClient(_Endpoint, Api[Awaitable[Answer]]):
    """The asyncio twin of `GeminiFluxClient`: the same methods, awaited."""

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        api_token: Optional[str] = None,
        *,
        admin_token: Optional[str] = None,
        trust_env: bool = True,
    ) -> None:
        super().__init__(base_url, api_token, admin_token)
        self._http = httpx.AsyncClient(trust_env=trust_env)

    async def _send(self, request: Request) -> Answer:
        try:
            response = await self._http.request(
                request.method,
                self.base_url + request.path,
                json=request.json,
                headers=self._headers(request),
                timeout=request.timeout,
            )
        except httpx.TransportError as error:
            raise self._unreachable(error) from error
        return answer(response)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self: A) -> A:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
