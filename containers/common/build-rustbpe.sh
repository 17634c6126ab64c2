#!/bin/sh
# Build rustbpe from its source distribution with the pinned Rust toolchain and install that wheel.
# The build fails unless the installed rustbpe is provably the wheel compiled here:
#   1. cargo produced the extension library in this build's target folder,
#   2. pip installed exactly that wheel file with --no-index (pip's direct_url.json names the file and its hash).
# The record in /opt/nanoforge/build-info/rustbpe.json lets %test check later that nothing replaced it.
#   build-rustbpe.sh --rustbpe rustbpe==0.1.0 --maturin maturin==1.9.6 [--keep-toolchain]
set -eu
VENV=${NANOFORGE_VENV:-/opt/venv}
RUST_HOME=${NANOFORGE_RUST_HOME:-/opt/rust}
BUILD_INFO=${NANOFORGE_BUILD_INFO:-/opt/nanoforge/build-info}

rustbpe="" maturin="" keep_toolchain=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rustbpe) rustbpe=$2; shift 2 ;;
        --maturin) maturin=$2; shift 2 ;;
        --keep-toolchain) keep_toolchain=1; shift ;;
        *) echo "build-rustbpe.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
for pin in "$rustbpe" "$maturin"; do
    case "$pin" in
        *==[0-9]*) ;;
        *) echo "build-rustbpe.sh: '$pin' is not an exact pin like name==1.2.3" >&2; exit 2 ;;
    esac
done

export RUSTUP_HOME="$RUST_HOME/rustup" CARGO_HOME="$RUST_HOME/cargo"
export PATH="$RUST_HOME/cargo/bin:$PATH"
work=$(mktemp -d)
export CARGO_TARGET_DIR="$work/target"
# Build with the Cargo.lock shipped in the sdist: the crate versions rustbpe was released with.
export MATURIN_PEP517_ARGS="--locked"

"$VENV/bin/pip" install --no-cache-dir "$maturin"
"$VENV/bin/pip" wheel --no-cache-dir --no-deps --no-build-isolation --no-binary rustbpe \
    --wheel-dir "$work/wheels" "$rustbpe"

set -- "$work"/wheels/rustbpe-*.whl
if [ $# -ne 1 ] || [ ! -f "$1" ]; then
    echo "build-rustbpe.sh: expected one rustbpe wheel in $work/wheels, found: $*" >&2; exit 1
fi
wheel=$1
if [ -z "$(find "$CARGO_TARGET_DIR" -name 'librustbpe*.so' -print -quit)" ]; then
    echo "build-rustbpe.sh: cargo left no librustbpe*.so in $CARGO_TARGET_DIR: the wheel was not compiled here" >&2
    exit 1
fi
"$VENV/bin/pip" install --no-cache-dir --no-deps --no-index --force-reinstall "$wheel"

mkdir -p "$BUILD_INFO"
"$VENV/bin/python" - "$wheel" "$BUILD_INFO/rustbpe.json" "$(rustc --version)" <<'PY'
import hashlib, json, os, sys
from importlib import metadata
from pathlib import Path

wheel, record_path, rustc = Path(os.path.abspath(sys.argv[1])), Path(sys.argv[2]), sys.argv[3]
dist = metadata.distribution("rustbpe")
direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
wheel_sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
if direct_url.get("url") != wheel.as_uri():
    sys.exit(f"build-rustbpe.sh: installed rustbpe came from {direct_url.get('url')!r}, not the local build {wheel}")
if direct_url.get("archive_info", {}).get("hashes", {}).get("sha256") != wheel_sha256:
    sys.exit("build-rustbpe.sh: installed rustbpe's archive hash differs from the locally built wheel")
libraries = [f for f in dist.files if f.name.endswith(".so")]
if not libraries:
    sys.exit("build-rustbpe.sh: installed rustbpe has no extension library")
record = {
    "wheel": wheel.name,
    "wheel_sha256": wheel_sha256,
    "version": dist.version,
    "rustc": rustc,
    "libraries": {str(f): hashlib.sha256(f.locate().read_bytes()).hexdigest() for f in libraries},
}
record_path.write_text(json.dumps(record, indent=2) + "\n")
print(f"build-rustbpe.sh: rustbpe {dist.version} built locally with {rustc}: {wheel.name}")
PY

"$VENV/bin/pip" uninstall -y maturin
rm -rf "$work"
if [ "$keep_toolchain" -eq 0 ]; then
    # The toolchain is only needed to build rustbpe; dropping it saves about 600 MB in the image.
    rm -rf "$RUST_HOME"
fi
