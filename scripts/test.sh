#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and the system packages the tests use (scripts/system-deps.sh), and run the whole test suite on all cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system-deps.sh
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
