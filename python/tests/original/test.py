"""The original gemini-flux package's quick test, as its users ran it: keys
from .env, one request, the decision printed. It must run unchanged against
this package; python/tests/test_original.py copies it next to a .env and
runs it."""

import os
import sys

from dotenv import load_dotenv

load_dotenv()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemini_flux import GeminiFlux  # noqa: E402

# GEMINI_KEY_1, GEMINI_KEY_2, ... up to the first one missing.
keys = []
n = 1
while os.environ.get(f"GEMINI_KEY_{n}"):
    keys.append(os.environ[f"GEMINI_KEY_{n}"].strip())
    n += 1

if not keys:
    print("No keys found: put GEMINI_KEY_1, GEMINI_KEY_2, ... in .env")
    sys.exit(1)

print(f"Loaded {len(keys)} keys from .env\n")

flux = GeminiFlux(
    keys=keys,
    mode=os.environ.get("GEMINI_MODE", "both"),
    log=os.environ.get("GEMINI_LOG", "true").lower() == "true",
)

print("\n--- Sending test request ---\n")
response = flux.generate("Say hello in 5 different languages. Keep it short.")

print("\n--- Response ---")
print(response["response"])
print(f"\nKey used: #{response['key_used']}")
print(f"Model: {response['model_used']}")
print(f"Tokens: {response['tokens_used']:,}")
print(f"Wait applied: {response['wait_applied']}s")
