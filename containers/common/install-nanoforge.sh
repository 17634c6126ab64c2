#!/bin/sh
# Install the pinned torch wheel from its PyTorch index, then nanoforge (editable, from /opt/nanoforge) with its
# dependencies from PyPI. A constraints file keeps that second step from swapping torch for another build or the
# locally built rustbpe for the PyPI wheel. Editable, so that development mode can bind a source tree over
# /opt/nanoforge/src and run it with the image's dependencies.
#   install-nanoforge.sh --extra gpu --torch torch==2.13.0 --torch-index https://download.pytorch.org/whl/cu128
set -eu
VENV=${NANOFORGE_VENV:-/opt/venv}
SOURCE=${NANOFORGE_SOURCE:-/opt/nanoforge}

extra="" torch="" torch_index=""
while [ $# -gt 0 ]; do
    case "$1" in
        --extra) extra=$2; shift 2 ;;
        --torch) torch=$2; shift 2 ;;
        --torch-index) torch_index=$2; shift 2 ;;
        *) echo "install-nanoforge.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
case "$torch" in
    torch==[0-9]*) ;;
    *) echo "install-nanoforge.sh: --torch needs an exact pin like torch==2.13.0, got '$torch'" >&2; exit 2 ;;
esac
if [ -z "$extra" ] || [ -z "$torch_index" ]; then
    echo "install-nanoforge.sh: --extra and --torch-index are required" >&2; exit 2
fi

"$VENV/bin/pip" install --no-cache-dir --index-url "$torch_index" "$torch"

constraints=$(mktemp)
"$VENV/bin/python" - "$constraints" <<'PY'
import sys
from importlib import metadata

with open(sys.argv[1], "w") as out:
    for name in ("torch", "rustbpe"):
        out.write(f"{name}=={metadata.version(name)}\n")
PY
"$VENV/bin/pip" install --no-cache-dir --constraint "$constraints" --editable "${SOURCE}[${extra}]"
rm -f "$constraints"
"$VENV/bin/nanoforge" --version
