# Sourced by the CI scripts: `start_demo PORT [VAR=VALUE ...]` runs
# `gemini-flux demo` (the debug build) in the background with a state file of
# its own, waits until it is ready, and stops it when the script exits.
# `ci_venv` makes sure target/ci-venv holds the given PyPI packages.

ci_venv() {
  local venv=target/ci-venv
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
}

start_demo() {
  local port=$1
  shift
  demo_dir=$(mktemp -d)
  env FLUX_BIND="127.0.0.1:$port" FLUX_STATE_PATH="$demo_dir/state.db" GEMINI_LOG=false RUST_LOG=warn "$@" \
    target/debug/gemini-flux demo > "$demo_dir/demo.log" 2>&1 &
  demo_pid=$!
  # Wait for it to stop before removing its files: a stop still writes them.
  trap 'kill $demo_pid 2>/dev/null || true; wait $demo_pid 2>/dev/null || true; rm -rf "$demo_dir"' EXIT
  for _ in $(seq 1 100); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=1)" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "gemini-flux demo did not become ready:" >&2
  cat "$demo_dir/demo.log" >&2
  return 1
}
