#!/usr/bin/env bash
# Set up everything on a fresh Debian/Ubuntu machine: system packages (speech synthesizers),
# the CPU build of PyTorch, and this project with its evaluation extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_PKGS="espeak-ng flite festival festlex-cmu festlex-poslex festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox libsndfile1"
# the web page's browser test (tests/test_serve_browser.py): Debian's chromium and its driver
APT_PKGS="$APT_PKGS chromium chromium-driver"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "[setup] apt-get install$missing"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi
PY=${PYTHON:-python3}
# CPU wheel of torch first, so no dependency can pull a CUDA build
$PY -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
  || $PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[eval,dev]"
echo "[setup] done: $($PY -c 'import torch; print("torch", torch.__version__)')"
