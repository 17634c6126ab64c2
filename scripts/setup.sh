#!/usr/bin/env bash
# One-step set-up on a fresh Debian/Ubuntu machine (run as root or with sudo available).
#   bash scripts/setup.sh          the venv with nanoforge and CPU PyTorch (enough for the demo pipeline)
#   bash scripts/setup.sh --dev    also the test tools and the real services the tests start
#                                  (SLURM, munge, sshd, Prometheus, Chromium, shellcheck)
# Idempotent: packages already present are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

sudo_cmd=()
[[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)

apt_packages=(git)
# python3 and venv may come from elsewhere (pyenv, a module system): only ask apt when they are really absent.
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_packages+=(python3 python3-venv python3-dev)
if (( dev )); then
  apt_packages+=(slurm-wlm munge openssh-server prometheus prometheus-pushgateway chromium shellcheck procps psmisc)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
# torch is pinned: an unpinned torch resolves to a multi-GB CUDA build on CPU machines.
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.13.0"
if (( dev )); then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
echo "nanoforge is installed in $(pwd)/.venv (activate with: . .venv/bin/activate)"
