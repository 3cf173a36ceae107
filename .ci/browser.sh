#!/usr/bin/env bash
# The dashboard in headless Chromium (Debian's package, installed here if
# missing) driven by Playwright (PyPI, in the CI venv; it uses that Chromium,
# no browser download). Screenshots go to target/.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/demo.sh

if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
ci_venv playwright pytest
port=18197
start_demo "$port"
FLUX_URL="http://127.0.0.1:$port" SHOT_DIR=target target/ci-venv/bin/python -m pytest -q tests/browser
