#!/usr/bin/env bash
# Other providers with no Gemini key, driven by the official openai and
# anthropic SDKs (tests/sdk_providers, pytest): `gemini-flux sim --kind openai`
# (2 keys at 5 RPM) and `--kind anthropic` (1 key at 2,000 output tokens a
# minute), the service in front with only a providers file. 12 chats and 6
# messages at once all succeed in one window plus the guard, no upstream 429.
# About 70 seconds: the second window is waited for in real time.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/demo.sh

ci_venv openai anthropic pytest
bin=target/debug/gemini-flux
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bin" sim --kind openai --port 18191 --keys ci-groq-1,ci-groq-2 \
  --limits '{"llama-3.3-70b-versatile": {"rpm": 5}}' > "$dir/groq.log" 2>&1 &
pids+=($!)
"$bin" sim --kind anthropic --port 18192 --keys ci-claude-1 \
  --limits '{"claude-haiku-4-5": {"otpm": 2000}}' > "$dir/claude.log" 2>&1 &
pids+=($!)
cat > "$dir/providers.toml" <<'TOML'
[[providers]]
name = "groq"
kind = "openai"
base_url = "http://127.0.0.1:18191/v1"
keys = ["ci-groq-1", "ci-groq-2"]
[providers.models."llama-3.3-70b-versatile"]
rpm = 5

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "http://127.0.0.1:18192"
keys = ["ci-claude-1"]
[providers.models."claude-haiku-4-5"]
otpm = 2000
TOML
# Only the providers file: no Gemini key anywhere (nor a .env's).
(cd "$dir" && env -u GEMINI_KEYS -u GEMINI_BASE_URL FLUX_PROVIDERS_FILE="$dir/providers.toml" \
  FLUX_BIND=127.0.0.1:18193 FLUX_STATE_PATH="$dir/state.db" FLUX_API_TOKENS=ci-providers-token \
  GEMINI_LOG=false RUST_LOG=warn "$OLDPWD/$bin" > "$dir/service.log" 2>&1) &
pids+=($!)
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:18193/readyz', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
FLUX_URL=http://127.0.0.1:18193 FLUX_TOKEN=ci-providers-token \
  GROQ_SIM=http://127.0.0.1:18191 CLAUDE_SIM=http://127.0.0.1:18192 \
  target/ci-venv/bin/python -m pytest -q tests/sdk_providers || { cat "$dir/service.log" >&2; exit 1; }
