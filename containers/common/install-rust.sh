#!/bin/sh
# Install one exact Rust toolchain (the one rustbpe is built with) under /opt/rust.
# rustup-init itself is pinned too (RUSTUP_VERSION) and checked against its published sha256,
# rather than piping the moving https://sh.rustup.rs script into a shell.
#   install-rust.sh --rust 1.90.0
set -eu
RUSTUP_VERSION=1.28.2
RUST_HOME=${NANOFORGE_RUST_HOME:-/opt/rust}

rust=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rust) rust=$2; shift 2 ;;
        *) echo "install-rust.sh: unknown argument '$1' (use --rust X.Y.Z)" >&2; exit 2 ;;
    esac
done
case "$rust" in
    [0-9]*.[0-9]*.[0-9]*) ;;
    *) echo "install-rust.sh: --rust needs an exact version like 1.90.0, got '$rust'" >&2; exit 2 ;;
esac

triple="$(uname -m)-unknown-linux-gnu"
url="https://static.rust-lang.org/rustup/archive/$RUSTUP_VERSION/$triple/rustup-init"
tmp=$(mktemp -d)
curl --proto '=https' --tlsv1.2 -fsSL -o "$tmp/rustup-init" "$url"
curl --proto '=https' --tlsv1.2 -fsSL -o "$tmp/rustup-init.sha256" "$url.sha256"
expected=$(cut -d ' ' -f 1 "$tmp/rustup-init.sha256")
echo "$expected  $tmp/rustup-init" | sha256sum -c -
chmod +x "$tmp/rustup-init"

RUSTUP_HOME="$RUST_HOME/rustup" CARGO_HOME="$RUST_HOME/cargo" \
    "$tmp/rustup-init" -y --no-modify-path --profile minimal --default-toolchain "$rust"
rm -rf "$tmp"

installed=$("$RUST_HOME/cargo/bin/rustc" --version)
case "$installed" in
    "rustc $rust "*) echo "install-rust.sh: $installed" ;;
    *) echo "install-rust.sh: asked for Rust $rust but got '$installed'" >&2; exit 1 ;;
esac
