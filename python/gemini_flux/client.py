"""Clients for a gemini-flux service that is already running (a container, a
sidecar, `gemini-flux serve` in another terminal).

`GeminiFluxClient` keeps the original package's client importable as
`from gemini_flux.client import GeminiFluxClient`, with its methods and return
shapes; `AsyncGeminiFluxClient` is its asyncio twin.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Awaitable, Dict, Generic, Optional, Type, TypeVar

import httpx

from ._api import Answer, Api, GeminiFluxError, Request, answer, unreachable

__all__ = ["AsyncGeminiFluxClient", "GeminiFluxClient", "GeminiFluxError"]

C = TypeVar("C", bound="GeminiFluxClient")
A = TypeVar("A", bound="AsyncGeminiFluxClient")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class _Endpoint(Generic[H]):
    """Where the service is, which tokens it wants (never shown in repr), and
    the httpx client (`H`) that reaches it. Requests go to `base_url` + path,
    so a subclass may learn `base_url` late.

    `api_token` is sent as `Authorization: Bearer` (one of the service's
    `FLUX_API_TOKENS`); `admin_token`, when the service sets
    `FLUX_ADMIN_TOKEN`, is sent on the admin calls instead. `trust_env=False`
    ignores proxy variables such as `HTTP_PROXY`.
    """

    _http_class: Type[H]

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        api_token: Optional[str] = None,
        *,
        admin_token: Optional[str] = None,
        trust_env: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_token = api_token
        self._admin_token = admin_token
        self._http: H = self._http_class(trust_env=trust_env)

    def _arguments(self, request: Request) -> Dict[str, Any]:
        """What `httpx` needs to send `request`, with the token it wants."""
        token = (self._admin_token or self._api_token) if request.admin else self._api_token
        return dict(
            method=request.method,
            url=self.base_url + request.path,
            json=request.json,
            headers={"authorization": f"Bearer {token}"} if token else {},
            timeout=request.timeout,
        )

    def _unreachable(self, error: httpx.TransportError) -> GeminiFluxError:
        """The error for a call that got no answer (subclasses say more)."""
        return unreachable(self.base_url, error)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


class GeminiFluxClient(_Endpoint[httpx.Client], Api[Answer]):
    """Blocking client: `GeminiFluxClient("http://localhost:8000").generate("hi")`."""

    _http_class = httpx.Client

    def _send(self, request: Request) -> Answer:
        try:
            response = self._http.request(**self._arguments(request))
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


class AsyncGeminiFluxClient(_Endpoint[httpx.AsyncClient], Api[Awaitable[Answer]]):
    """The asyncio twin of `GeminiFluxClient`: the same methods, awaited."""

    _http_class = httpx.AsyncClient

    async def _send(self, request: Request) -> Answer:
        try:
            response = await self._http.request(**self._arguments(request))
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
