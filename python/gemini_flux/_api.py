"""What every gemini-flux client says to the service, written once.

`Api` turns each method (`generate`, `status`, `set_mode`, ...) into one HTTP
request and leaves sending it to a subclass: `GeminiFluxClient` sends it with
a blocking `httpx.Client`, `AsyncGeminiFluxClient` with an `httpx.AsyncClient`
(so its methods return awaitables). `answer` turns the service's reply into a
dict, or into a `GeminiFluxError` carrying the service's own message.
"""

from __future__ import annotations

from typing import Any, Dict, Generic, List, Mapping, Optional, TypeVar

import httpx

#: What a sync client's methods return; an async client's return an awaitable of it.
Answer = Dict[str, Any]

R = TypeVar("R")

#: Read timeouts, in seconds, by kind of call. `generate` has none by default:
#: the service itself bounds how long a request waits for its slot
#: (`FLUX_MAX_WAIT_S`) and how long one upstream call may take.
ADMIN_TIMEOUT = 30.0
REFRESH_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0


class GeminiFluxError(Exception):
    """A call the service refused or could not serve.

    `status` is the HTTP status (None when the service could not be reached),
    `code` the service's status name (`RESOURCE_EXHAUSTED`, `INVALID_ARGUMENT`,
    ...), `message` the service's own words, `retry_after` its `Retry-After`
    in seconds when it sent one.
    """

    def __init__(
        self,
        message: str,
        status: Optional[int] = None,
        code: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        prefix = " ".join(str(part) for part in (status, code) if part is not None)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after


def answer(response: httpx.Response) -> Answer:
    """The JSON body of a 2xx reply; otherwise a `GeminiFluxError` built from
    the service's envelope `{"error": {"code", "status", "message"}}` (or
    from the first part of whatever else came back)."""
    if response.is_success:
        body = response.json()
        if not isinstance(body, dict):
            raise GeminiFluxError(f"expected a JSON object, got {type(body).__name__}", response.status_code)
        return body
    retry_after: Optional[float] = None
    try:
        retry_after = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        pass
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), error.get("status")
    except (ValueError, KeyError, TypeError):
        message, code = response.text[:500] or response.reason_phrase, None
    raise GeminiFluxError(message, response.status_code, code, retry_after)


def unreachable(base_url: str, error: httpx.TransportError, note: str = "") -> GeminiFluxError:
    """The error for a service that did not answer at all; `note` says why, when known."""
    return GeminiFluxError(f"gemini-flux at {base_url} did not answer: {error!r}{note}")


def _timeout(read: Optional[float]) -> httpx.Timeout:
    return httpx.Timeout(read, connect=CONNECT_TIMEOUT)


class Request:
    """One call to the service: method, path, JSON body, whether it is an
    admin route (then the admin token is presented), and its read timeout."""

    __slots__ = ("method", "path", "json", "admin", "timeout")

    def __init__(
        self,
        method: str,
        path: str,
        json: Optional[Mapping[str, Any]] = None,
        admin: bool = False,
        timeout: Optional[float] = ADMIN_TIMEOUT,
    ) -> None:
        self.method = method
        self.path = path
        self.json = json
        self.admin = admin
        self.timeout = _timeout(timeout)


class Api(Generic[R]):
    """The original `GeminiFluxClient`'s methods, with its argument names and
    return shapes. A subclass sends each `Request` in `_send`."""

    def _send(self, request: Request) -> R:
        raise NotImplementedError

    def generate(
        self,
        prompt: str,
        images: Optional[List[Any]] = None,
        files: Optional[List[Any]] = None,
        mode: Optional[str] = None,
        preferred_key: Optional[int] = None,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        retry: bool = True,
        *,
        model: Optional[str] = None,
        system: Optional[str] = None,
        max_wait_s: Optional[float] = None,
        timeout: Optional[float] = None,
    ) -> R:
        """Send a prompt; gemini-flux picks the key, the model and the instant.

        `images` and `files` are base64 strings (or `data:` URLs, or
        `{"data", "mime_type"}` dicts); `mode` narrows the chain for this call
        only, `model` pins one model instead; `preferred_key` is 1-based.
        Unset values take the service's (and the model's) defaults.
        `timeout` bounds the HTTP call in seconds (default: none; the service
        bounds the wait with `max_wait_s` / `FLUX_MAX_WAIT_S`).

        Returns `{"response", "key_used", "model_used", "tokens_used",
        "wait_applied", "retried", ...}`.
        """
        body: Dict[str, Any] = {"prompt": prompt, "retry": retry}
        optional = {
            "images": images,
            "files": files,
            "mode": mode,
            "preferred_key": preferred_key,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "model": model,
            "system": system,
            "max_wait_s": max_wait_s,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        return self._send(Request("POST", "/generate", body, timeout=timeout))

    def status(self) -> R:
        """Every key's state and every lane's use, the mode, the chain and the
        limits with the source of each number (`GET /status`)."""
        return self._send(Request("GET", "/status"))

    def health(self) -> R:
        """`{"status": "ok" | "degraded", "keys", "usable_keys"}` (`GET /health`)."""
        return self._send(Request("GET", "/health"))

    def refresh_policy(self) -> R:
        """Rediscover the models and ask Gemini for its limits now: the policy
        in force with its sources. When Gemini's answer is rejected the
        previous policy stays, `"refreshed"` is false and `"rejected"` says
        why (a 200, as the original service answered)."""
        return self._send(Request("POST", "/refresh-policy", admin=True, timeout=REFRESH_TIMEOUT))

    def set_mode(self, mode: str) -> R:
        """`both`, `pro_only`, `flash_only` or `flash_lite_only`; `{"changes": [...]}`."""
        return self._send(Request("POST", "/config", {"mode": mode}, admin=True))

    def disable_key(self, index: int) -> R:
        """Take key `index` (1-based) out of rotation; `{"changes": [...]}`."""
        return self._send(Request("POST", "/config", {"disable_key": index}, admin=True))

    def enable_key(self, index: int) -> R:
        """Put key `index` (1-based) back; `{"changes": [...]}`."""
        return self._send(Request("POST", "/config", {"enable_key": index}, admin=True))
