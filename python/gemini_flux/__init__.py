"""gemini-flux from Python: many Gemini API keys, one scheduler that never
spends a request a quota would refuse.

- `GeminiFlux(keys)` runs the bundled `gemini-flux` binary as a child process
  and talks to it (`AsyncGeminiFlux` is its asyncio twin);
- `GeminiFluxClient(base_url)` talks to a service already running
  (`AsyncGeminiFluxClient` is its asyncio twin).

Every failure the service reports is a `GeminiFluxError` carrying its message.
"""

from ._api import GeminiFluxError
from .client import AsyncGeminiFluxClient, GeminiFluxClient
from .flux import AsyncGeminiFlux, GeminiFlux

__all__ = [
    "AsyncGeminiFlux",
    "AsyncGeminiFluxClient",
    "GeminiFlux",
    "GeminiFluxClient",
    "GeminiFluxError",
]
