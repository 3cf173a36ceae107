#!/usr/bin/env bash
# Drives `gemini-flux demo` with the real google-genai, openai and anthropic SDKs
# (tests/sdk, pytest, in a venv under target/), tokens required: generate,
# stream, count, files, embeddings, tools and agent loops on both SDKs, and
# not one upstream 429 in the run. About ten seconds once the venv exists.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/demo.sh

ci_venv google-genai openai anthropic pytest
port=18198
start_demo "$port" FLUX_API_TOKENS=ci-sdk-token
FLUX_URL="http://127.0.0.1:$port" FLUX_TOKEN=ci-sdk-token target/ci-venv/bin/python -m pytest -q tests/sdk
