#!/usr/bin/env bash
# Set up everything the tests need (Debian packages, the venv) and run them. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the long tests or `-m ''` for all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
exec .venv/bin/python -m pytest "$@"
