#!/usr/bin/env bash
# The Python package as a user gets it: a fresh venv, `pip install .` (maturin
# builds the gemini-flux binary with cargo and puts it in the venv beside the
# gemini_flux package), then python/tests with pytest against the simulator.
# The script's exit code is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== the Python package: pip install . into a fresh venv, then python/tests"

venv=target/python-venv
rm -rf "$venv"
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
  # Debian's python3 needs python3-venv for ensurepip.
  apt-get update -qq && apt-get install -y -qq python3-venv
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
# Users get the release profile (pyproject.toml). CI builds the wheel with the
# dev profile instead: only the binary is compiled again (stripped), on the
# dependencies .ci/run has just built in target/debug, where a release build
# would add some ten minutes on two cores. The wheel's layout is the same.
MATURIN_PEP517_ARGS="--profile dev" "$venv/bin/pip" install --quiet --disable-pip-version-check .
"$venv/bin/pip" install --quiet --disable-pip-version-check pytest python-dotenv

# The installed package and its binary are under test, not this checkout's.
unset GEMINI_FLUX_BIN
cd python/tests
exec "../../$venv/bin/python" -m pytest -q -p no:cacheprovider
