#!/bin/sh
# System packages every nanoforge image needs, plus the image-specific ones given as arguments.
# - build-essential: Rust links rustbpe with cc, and torch.compile (Inductor/Triton) compiles C/C++ at run time.
# - curl, ca-certificates: rustup-init download. git: nanoforge records the source revision when it can.
set -eu
apt-get update
apt-get install -y --no-install-recommends ca-certificates curl git build-essential pkg-config "$@"
rm -rf /var/lib/apt/lists/*
