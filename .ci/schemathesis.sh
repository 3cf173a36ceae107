#!/usr/bin/env bash
# Fuzzes `gemini-flux demo` against openapi.yaml with schemathesis (from PyPI,
# in a venv under target/). It must find no server error (5xx) and no
# response that contradicts the spec.
#
# Left out, on purpose:
# - /keys/{n}/disable and /enable: fuzzing them disables the demo's keys, after
#   which /generate rightly answers 503 (no usable key), which schemathesis
#   counts as a server error. tests/service.rs covers them.
# - the positive_data_acceptance check: some schema-valid values are refused
#   with a documented 400 because they depend on run-time state no schema can
#   express (a model outside the discovered chain, a key index beyond N).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/ci-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check schemathesis
fi

port=18199
state_dir=$(mktemp -d)
unlimited='{"rpm": 100000, "tpm": 100000000, "rpd": 10000000}'
limits=$(printf '{"gemini-2.5-pro": %s, "gemini-2.5-flash": %s, "gemini-2.5-flash-lite": %s, "gemini-3.1-pro-preview": %s, "gemini-3-flash-preview": %s, "gemini-3.1-flash-lite-preview": %s}' \
  "$unlimited" "$unlimited" "$unlimited" "$unlimited" "$unlimited" "$unlimited")
FLUX_BIND=127.0.0.1:$port FLUX_LIMITS="$limits" FLUX_MAX_WAIT_S=0 FLUX_STATE_PATH="$state_dir/state.db" \
  GEMINI_LOG=false RUST_LOG=warn target/debug/gemini-flux demo > "$state_dir/demo.log" 2>&1 &
demo=$!
trap 'kill $demo 2>/dev/null || true; rm -rf "$state_dir"' EXIT

for _ in $(seq 1 100); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.2
done

"$venv/bin/schemathesis" run openapi.yaml \
  --url "http://127.0.0.1:$port" \
  --exclude-path-regex '^/keys/' \
  --exclude-checks positive_data_acceptance \
  --max-time 60
